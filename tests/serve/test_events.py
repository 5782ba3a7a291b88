"""JSON events in branch space -> Arrow batch, and every way a request can be wrong."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from hepstream.serve.errors import RequestError
from hepstream.serve.events import parse_events


@pytest.fixture
def parse(standins):
    def parse(body, max_events=100):
        return parse_events(body if isinstance(body, (bytes, str)) else json.dumps(body), standins.INPUTS, max_events)

    return parse


def test_good_events_become_one_column_per_model_input_in_its_order(parse):
    body = {"events": [
        {"Muon_pt": [51.0, 33.2], "MET_pt": 41.2, "Jet_pt": [1.0], "run": "A"},
        {"MET_pt": 7, "Muon_pt": []},
        {"MET_pt": -0.0, "Muon_pt": [3, 4.5, 6]},
    ]}
    batch = parse(body)
    assert batch.schema == pa.schema([("MET_pt", pa.float64()), ("Muon_pt", pa.list_(pa.float64()))])
    assert batch.column("MET_pt").to_pylist() == [41.2, 7.0, -0.0]
    assert batch.column("Muon_pt").to_pylist() == [[51.0, 33.2], [], [3.0, 4.5, 6.0]]


def test_integers_beyond_int64_that_a_double_holds_are_numbers_too(parse):
    batch = parse({"events": [{"MET_pt": 2**63 + 5, "Muon_pt": [1, 2**63 + 5]}, {"MET_pt": 0, "Muon_pt": []}]})
    assert batch.column("MET_pt").to_pylist() == [float(2**63), 0.0]
    assert batch.column("Muon_pt").to_pylist() == [[1.0, float(2**63)], []]


def test_bytes_and_an_empty_event_list_are_fine(parse):
    batch = parse(b'{"events": []}')
    assert batch.num_rows == 0
    assert batch.schema.names == ["MET_pt", "Muon_pt"]


def test_the_event_limit_is_inclusive_and_one_more_is_413(parse):
    events = [{"MET_pt": 1.0, "Muon_pt": [2.0]}] * 3
    assert parse({"events": events}, max_events=3).num_rows == 3
    with pytest.raises(RequestError) as caught:
        parse({"events": events + events[:1]}, max_events=3)
    assert (caught.value.status, caught.value.field) == (413, "events")
    assert "4 events" in caught.value.message and "limit is 3" in caught.value.message


@pytest.mark.parametrize("body", [
    b"", b"{", b"\xff\xfe{", "[" * 100_000 + "]" * 100_000,
], ids=["empty", "truncated", "not-utf8", "deep-nesting"])
def test_unreadable_json_is_400(parse, body):
    with pytest.raises(RequestError) as caught:
        parse(body)
    assert caught.value.status == 400
    assert "not valid JSON" in caught.value.message


@pytest.mark.parametrize("document", [
    [], {"event": []}, {"events": {"MET_pt": 1.0}}, {"events": None}, 42,
], ids=["list", "misspelt-key", "object", "null", "number"])
def test_wrong_top_level_shape_is_400_naming_events(parse, document):
    with pytest.raises(RequestError) as caught:
        parse(document)
    assert (caught.value.status, caught.value.field) == (400, "events")


GOOD = {"MET_pt": 10.0, "Muon_pt": [20.0]}


@pytest.mark.parametrize("bad_event, field, words", [
    ([1, 2], "events[1]", "got an array"),
    ({"Muon_pt": [1.0]}, "events[1].MET_pt", "missing branch 'MET_pt'"),
    ({"met_pt": 1.0, "Muon_pt": [1.0]}, "events[1].MET_pt", "did you mean 'met_pt'"),
    ({"MET_pt": 1.0}, "events[1].Muon_pt", "missing branch 'Muon_pt'"),
    ({"MET_pt": 1.0, "muon_PT": [1.0]}, "events[1].Muon_pt", "did you mean 'muon_PT'"),
    ({"MET_pt": True, "Muon_pt": []}, "events[1].MET_pt", "got a boolean"),
    ({"MET_pt": "41.2", "Muon_pt": []}, "events[1].MET_pt", "got a string"),
    ({"MET_pt": None, "Muon_pt": []}, "events[1].MET_pt", "got null"),
    ({"MET_pt": [41.2], "Muon_pt": []}, "events[1].MET_pt", "got an array"),
    ({"MET_pt": 1.0, "Muon_pt": 51.0}, "events[1].Muon_pt", "got a number"),
    ({"MET_pt": 1.0, "Muon_pt": [1.0, 2.0, "3"]}, "events[1].Muon_pt[2]", "got a string"),
    ({"MET_pt": 1.0, "Muon_pt": [False]}, "events[1].Muon_pt[0]", "got a boolean"),
    ({"MET_pt": 1.0, "Muon_pt": [[1.0]]}, "events[1].Muon_pt[0]", "got an array"),
    ({"MET_pt": 10**400, "Muon_pt": []}, "events[1].MET_pt", "too large"),
    ({"MET_pt": 1.0, "Muon_pt": [1.0, 10**400]}, "events[1].Muon_pt[1]", "too large"),
    ({"MET_pt": 1e308, "Muon_pt": []}, "events[1].MET_pt", "events[1].MET_pt: 1e+308 is too large for float32"),
    ({"MET_pt": 1.0, "Muon_pt": [-3.5e38]}, "events[1].Muon_pt[0]", "-3.5e+38 is too large for float32"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_a_bad_branch_is_422_naming_the_event_and_branch(parse, bad_event, field, words):
    with pytest.raises(RequestError) as caught:
        parse({"events": [GOOD, bad_event, GOOD]})
    assert (caught.value.status, caught.value.field) == (422, field)
    assert words in caught.value.message


@pytest.mark.parametrize("text, field", [
    ('{"MET_pt": NaN, "Muon_pt": []}', "events[2].MET_pt"),
    ('{"MET_pt": -Infinity, "Muon_pt": []}', "events[2].MET_pt"),
    ('{"MET_pt": 1e400, "Muon_pt": []}', "events[2].MET_pt"),
    ('{"MET_pt": 1, "Muon_pt": [1, 2, Infinity]}', "events[2].Muon_pt[2]"),
])
def test_nan_and_infinities_are_422(parse, text, field):
    body = '{"events": [{"MET_pt": 1, "Muon_pt": [5, 6]}, {"MET_pt": 2, "Muon_pt": []}, %s]}' % text
    with pytest.raises(RequestError) as caught:
        parse(body)
    assert (caught.value.status, caught.value.field) == (422, field)
    assert "finite" in caught.value.message


def test_the_first_bad_event_is_the_one_named(parse):
    events = [GOOD] * 5 + [{"MET_pt": "x", "Muon_pt": []}, {"MET_pt": "y", "Muon_pt": []}]
    with pytest.raises(RequestError) as caught:
        parse({"events": events})
    assert caught.value.field == "events[5].MET_pt"
