"""The native API beyond JSON rows: columns, Arrow IPC, pinned versions, rollback, hot swap under load."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import requests

from hepstream.serve.arrow_io import ARROW_STREAM, read_scores, write_stream

EVENTS = [{"MET_pt": 41.2, "Muon_pt": [51.0, 33.2]}, {"MET_pt": 7, "Muon_pt": []}, {"MET_pt": 120.5, "Muon_pt": [12.25]}]
COLUMNS = {"MET_pt": [e["MET_pt"] for e in EVENTS], "Muon_pt": [e["Muon_pt"] for e in EVENTS]}


@pytest.fixture
def served(serve_standin, store, standins):
    served = serve_standin(http={"max_events_per_request": 5})
    standins.serve_version(served, store, 1, weight=0.5)
    return served


def expected(standins, weight):
    return [float(standins.score_of(e["MET_pt"], e["Muon_pt"], weight)) for e in EVENTS]


def post(served, body=None, path="/v1/models/demo/predict", **kwargs):
    return requests.post(served.url + path, json=body, timeout=10, **kwargs)


def test_columns_score_like_rows(served, standins):
    rows, columns = post(served, {"events": EVENTS}).json(), post(served, {"columns": COLUMNS}).json()
    assert rows == columns == {"model": "demo", "version": 1, "scores": expected(standins, 0.5)}


@pytest.mark.parametrize("columns, status, field", [
    ({"MET_pt": [1.0, 2.0], "Muon_pt": [[]]}, 422, "columns.Muon_pt"),
    ({"MET_pt": [1.0]}, 422, "columns.Muon_pt"),
    ({"MET_pt": [1.0], "Muon_pt": [[1.0, "x"]]}, 422, "columns.Muon_pt[0][1]"),
    ({"MET_pt": 1.0, "Muon_pt": [[]]}, 422, "columns.MET_pt"),
    ({"MET_pt": [1.0] * 6, "Muon_pt": [[]] * 6}, 413, "columns"),
    ([1.0], 400, "columns"),
])
def test_bad_columns_name_the_field(served, columns, status, field):
    answer = post(served, {"columns": columns})
    assert (answer.status_code, answer.json()["field"]) == (status, field), answer.text


def test_arrow_in_arrow_out(served, standins):
    table = pa.table({"MET_pt": pa.array([41.2, 7, 120.5], pa.float32()), "Muon_pt": COLUMNS["Muon_pt"],
                      "run": [1, 1, 1]})  # extra columns are ignored
    answer = requests.post(f"{served.url}/v1/models/demo/predict", data=write_stream(table),
                           headers={"Content-Type": ARROW_STREAM}, timeout=10)
    assert answer.headers["content-type"] == ARROW_STREAM and answer.headers["X-Model-Version"] == "1"
    scores, model, version = read_scores(answer.content)
    assert (model, version) == ("demo", 1)
    np.testing.assert_allclose(scores, expected(standins, 0.5), rtol=1e-6)
    # JSON in, Arrow out on request.
    answer = post(served, {"events": EVENTS}, headers={"Accept": ARROW_STREAM})
    assert read_scores(answer.content)[0].tolist() == expected(standins, 0.5)


@pytest.mark.parametrize("table, status, field", [
    (pa.table({"MET_pt": [1.0, float("nan")], "Muon_pt": [[], []]}), 422, "MET_pt[1]"),
    (pa.table({"MET_pt": [1.0, None], "Muon_pt": [[], []]}), 422, "MET_pt[1]"),
    (pa.table({"MET_pt": ["a"], "Muon_pt": [[]]}), 422, "MET_pt"),
    (pa.table({"MET_pt": [1.0, 2.0], "Muon_pt": [[1.0], [2.0, float("inf")]]}), 422, "Muon_pt[1]"),
    (pa.table({"MET_pt": [1.0], "Muon_pt": [1.0]}), 422, "Muon_pt"),
    (pa.table({"MET_pt": [1.0]}), 422, "Muon_pt"),
    (pa.table({"MET_pt": [1.0] * 6, "Muon_pt": [[]] * 6}), 413, "body"),
], ids=["nan", "null", "string", "inf-inside", "flat-for-jagged", "missing", "too-many"])
def test_bad_arrow_names_the_column(served, table, status, field):
    answer = requests.post(f"{served.url}/v1/models/demo/predict", data=write_stream(table),
                           headers={"Content-Type": ARROW_STREAM}, timeout=10)
    assert (answer.status_code, answer.json()["field"]) == (status, field), answer.text


@pytest.mark.parametrize("body, field, value", [
    ({"events": [EVENTS[0], {"MET_pt": 1e308, "Muon_pt": []}]}, "events[1].MET_pt", "1e+308"),
    ({"columns": {"MET_pt": [1.0, 2.0], "Muon_pt": [[], [1.0, -3.5e38]]}}, "columns.Muon_pt[1][1]", "-3.5e+38"),
], ids=["rows", "columns"])
def test_json_beyond_float32_is_422_naming_event_value_and_type(served, body, field, value):
    answer = post(served, body)
    assert (answer.status_code, answer.json()["field"]) == (422, field), answer.text
    assert answer.json()["error"].startswith(f"{field}: {value} is too large for float32"), answer.text


@pytest.mark.parametrize("table, field, value", [
    (pa.table({"MET_pt": [1.0, 2.0, 1e308], "Muon_pt": [[], [], []]}), "MET_pt[2]", "1e+308"),
    (pa.table({"MET_pt": [1.0, 2.0], "Muon_pt": [[1.0], [2.0, -1e39]]}), "Muon_pt[1]", "-1e+39"),
], ids=["flat", "jagged"])
def test_arrow_beyond_float32_is_422_naming_event_value_and_type(served, table, field, value):
    answer = requests.post(f"{served.url}/v1/models/demo/predict", data=write_stream(table),
                           headers={"Content-Type": ARROW_STREAM}, timeout=10)
    assert (answer.status_code, answer.json()["field"]) == (422, field), answer.text
    assert answer.json()["error"].startswith(f"{field}: {value} is too large for float32"), answer.text
    # float32's largest value itself is scored.
    largest = pa.table({"MET_pt": pa.array([np.finfo(np.float32).max], pa.float32()), "Muon_pt": [[1.0]]})
    answer = requests.post(f"{served.url}/v1/models/demo/predict", data=write_stream(largest),
                           headers={"Content-Type": ARROW_STREAM}, timeout=10)
    assert answer.status_code == 200, answer.text


def test_bytes_that_are_not_arrow_are_400(served):
    answer = requests.post(f"{served.url}/v1/models/demo/predict", data=b"\xff" * 64,
                           headers={"Content-Type": ARROW_STREAM}, timeout=10)
    assert answer.status_code == 400 and "Arrow" in answer.json()["error"]


def test_a_request_can_pin_an_older_version(served, store, standins):
    standins.serve_version(served, store, 2, weight=-1.0)
    assert post(served, {"events": EVENTS}).json()["version"] == 2
    pinned = post(served, {"events": EVENTS}, params={"version": 1})
    assert pinned.headers["X-Model-Version"] == "1"
    assert pinned.json() == {"model": "demo", "version": 1, "scores": expected(standins, 0.5)}
    assert post(served, {"events": EVENTS}, params={"version": 1}).json()["version"] == 1
    assert store.loads.count(1) == 2  # once as the newest, once for the pin, then kept
    missing = post(served, {"events": EVENTS}, params={"version": 9})
    assert (missing.status_code, missing.json()["field"]) == (404, "version")
    assert "versions on disk: [1, 2]" in missing.json()["error"]
    bad = post(served, {"events": EVENTS}, params={"version": "latest"})
    assert (bad.status_code, bad.json()["field"]) == (422, "version")


def test_an_operator_rolls_back_and_forward(served, store, standins):
    standins.serve_version(served, store, 2, weight=-1.0)
    pin = requests.put(f"{served.url}/v1/models/demo/pin", json={"version": 1}, timeout=10)
    assert (pin.status_code, pin.json()) == (202, {"model": "demo", "pinned": 1})
    standins.wait_for(lambda: post(served, {"events": EVENTS}).json()["version"] == 1, what="the rollback")
    assert requests.get(f"{served.url}/v1/models/demo", timeout=10).json()["pinned"] == 1
    store.publish(3)
    time.sleep(0.1)  # several polls: a pinned server does not move to a newer version
    assert post(served, {"events": EVENTS}).json()["version"] == 1
    assert requests.delete(f"{served.url}/v1/models/demo/pin", timeout=10).status_code == 202
    standins.wait_for(lambda: post(served, {"events": EVENTS}).json()["version"] == 3, what="the newest again")
    for body, status in (({"version": 7}, 404), ({"version": "1"}, 422), ({}, 422)):
        answer = requests.put(f"{served.url}/v1/models/demo/pin", json=body, timeout=10)
        assert (answer.status_code, answer.json()["field"]) == (status, "version")


def test_hot_swap_under_load_fails_no_request_and_versions_only_grow(served, store, standins):
    failures, seen = [], {}
    stop = threading.Event()

    def client(number):
        session, versions = requests.Session(), []
        while not stop.is_set():
            answer = session.post(f"{served.url}/v1/models/demo/predict", json={"events": EVENTS}, timeout=10)
            if answer.status_code != 200:
                failures.append(answer.text)
            versions.append(answer.json()["version"])
        seen[number] = versions

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    for version in range(2, 7):
        time.sleep(0.1)
        store.publish(version, weight=version / 10, load_delay_s=0.05)
    standins.wait_for(lambda: served.app.state.watcher.current.version == 6, what="version 6")
    time.sleep(0.1)
    stop.set()
    for thread in clients:
        thread.join(10)
    assert failures == []
    for versions in seen.values():
        assert versions == sorted(versions), "a client saw an older version after a newer one"
        assert versions[-1] == 6
    assert len(set().union(*map(set, seen.values()))) >= 3
