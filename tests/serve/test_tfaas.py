"""TFaaS clients switch by changing the URL: POST /json with keys and values, a bare array back."""

from __future__ import annotations

import pytest
import requests


@pytest.fixture
def served(serve_standin, store, standins):
    served = serve_standin()
    standins.serve_version(served, store, 3, weight=0.5)
    return served


def test_round_trip(served, standins):
    row = {"keys": ["nMuon", "Muon_pt", "MET_pt"], "values": [2, [51.0, 33.2], 41.2], "model": "demo"}
    answer = requests.post(f"{served.url}/json", json=row, timeout=10)
    assert answer.status_code == 200 and answer.headers["X-Model-Version"] == "3"
    assert answer.json() == [float(standins.score_of(41.2, [51.0, 33.2], 0.5))]
    del row["model"]  # TFaaS then uses the model it serves
    assert requests.post(f"{served.url}/json", json=row, timeout=10).json() == answer.json()


@pytest.mark.parametrize("row, status, field", [
    ({"keys": ["MET_pt", "Muon_pt"], "values": [1.0], "model": "demo"}, 422, "values"),
    ({"keys": ["MET_pt"], "values": [1.0]}, 422, "keys"),
    ({"keys": ["MET_pt", "Muon_pt"], "values": ["x", []]}, 422, "values[0]"),
    ({"keys": ["Muon_pt", "MET_pt"], "values": [[1.0, None], 2.0]}, 422, "values[0][1]"),
    ({"keys": ["MET_pt", "Muon_pt"], "values": [1.0, []], "model": "other"}, 404, "model"),
    ({"values": [1.0]}, 400, "keys"),
    ({"keys": ["MET_pt", "Muon_pt"], "values": [1e308, []]}, 422, "values[0]"),
    ({"keys": ["Muon_pt", "MET_pt"], "values": [[1.0, 1e39], 2.0]}, 422, "values[0][1]"),
])
def test_mistakes_name_the_field(served, row, status, field):
    answer = requests.post(f"{served.url}/json", json=row, timeout=10)
    assert (answer.status_code, answer.json()["field"]) == (status, field), answer.text


def test_a_value_beyond_float32_is_named_with_its_type(served):
    answer = requests.post(f"{served.url}/json", json={"keys": ["MET_pt", "Muon_pt"], "values": [1e308, []]}, timeout=10)
    assert answer.json()["error"].startswith("values[0]: 1e+308 is too large for float32"), answer.text
