"""The HTTP API over a real uvicorn server on 127.0.0.1, as the bare-uvicorn baseline runs it."""

from __future__ import annotations

import math
import time

import pytest
import requests

from hepstream.serve.app import create_app

EVENTS = [
    {"MET_pt": 41.2, "Muon_pt": [51.0, 33.2], "Jet_pt": [1.0]},
    {"MET_pt": 7, "Muon_pt": []},
    {"MET_pt": 120.5, "Muon_pt": [12.25]},
]


@pytest.fixture
def server(store, standins):
    app = create_app(store, model_name="demo", settings=standins.quick_settings(http={"max_events_per_request": 5}))
    with standins.ServedApp(app) as served:
        served.watcher = app.state.watcher
        yield served
    assert not app.state.watcher._thread.is_alive(), "the app's lifespan did not stop its watcher"


def predict(server, body, name="demo"):
    return requests.post(f"{server.url}/v1/models/{name}/predict", json=body, timeout=10)


def wait_version(server, standins, version):
    standins.wait_for(lambda: getattr(server.watcher.current, "version", None) == version, what=f"version {version}")


def expected(standins, weight, events=EVENTS):
    return [standins.score_of(event["MET_pt"], event["Muon_pt"], weight) for event in events]


def test_before_any_version_only_liveness_is_200(server):
    assert requests.get(f"{server.url}/v1/health/live", timeout=5).json() == {"live": True}
    ready = requests.get(f"{server.url}/v1/health/ready", timeout=5)
    assert (ready.status_code, ready.headers["Retry-After"]) == (503, "1")
    assert ready.json() == {"ready": False, "model": "demo", "error": "none published so far"}
    answer = predict(server, {"events": EVENTS})
    assert (answer.status_code, answer.headers["Retry-After"]) == (503, "1")
    assert "no version loaded yet" in answer.json()["error"]
    assert requests.get(f"{server.url}/v1/models/demo", timeout=5).status_code == 503
    assert requests.get(f"{server.url}/v1/models", timeout=5).json() == {
        "models": [{"name": "demo", "version": None, "ready": False}]}


def test_an_app_started_over_a_published_version_answers_with_it_from_its_first_request(store, standins):
    # As a replica started beside serving ones (a lost node's replacement): no 503 while the version loads.
    store.publish(1, weight=0.5, load_delay_s=0.3)
    with standins.ServedApp(create_app(store, model_name="demo", settings=standins.quick_settings())) as served:
        answer = predict(served, {"events": EVENTS})
    assert (answer.status_code, answer.json()["scores"]) == (200, expected(standins, 0.5))


def test_scores_come_from_the_newest_version_and_name_it(server, store, standins):
    store.publish(1, weight=0.5)
    wait_version(server, standins, 1)
    answer = predict(server, {"events": EVENTS})
    assert answer.status_code == 200
    assert answer.headers["X-Model-Version"] == "1"
    body = answer.json()
    assert (body["model"], body["version"]) == ("demo", 1)
    assert [float(score) for score in body["scores"]] == expected(standins, 0.5)  # float32 values, exactly

    store.publish(2, weight=-1.0)
    wait_version(server, standins, 2)
    body = predict(server, {"events": EVENTS}).json()
    assert body["version"] == 2 and body["scores"] == expected(standins, -1.0)
    assert requests.get(f"{server.url}/v1/health/ready", timeout=5).json() == {
        "ready": True, "model": "demo", "version": 2}
    assert predict(server, {"events": []}).json() == {"model": "demo", "version": 2, "scores": []}


def test_model_description(server, store, standins):
    store.publish(1)
    store.publish(2)
    wait_version(server, standins, 2)
    store.publish(3, promoted=False, reason="validation AUC 0.6 is 0.2 below served version 2's 0.8")
    assert requests.get(f"{server.url}/v1/models", timeout=5).json() == {
        "models": [{"name": "demo", "version": 2, "ready": True}]}
    answer = requests.get(f"{server.url}/v1/models/demo", timeout=5)
    assert answer.headers["X-Model-Version"] == "2"
    assert answer.json() == {
        "name": "demo", "version": 2, "versions": [1, 2, 3], "pinned": None,
        "promoted": True, "promotion_reason": None, "validation": None,
        "not_served": [{"version": 3, "promoted": False,
                        "why": "validation AUC 0.6 is 0.2 below served version 2's 0.8"}],
        "events_trained": 2000, "metrics": {"loss": 0.25, "auc": 0.8},
        "inputs": [{"name": "MET_pt", "jagged": False, "type": "float64"},
                   {"name": "Muon_pt", "jagged": True, "type": "list<float64>"}],
    }


def test_nan_metrics_are_described_as_null(server, store, standins):
    store.publish(1)  # the stand-in's version 1 has an AUC of NaN, as before both classes were seen
    wait_version(server, standins, 1)
    assert requests.get(f"{server.url}/v1/models/demo", timeout=5).json()["metrics"] == {"loss": 0.5, "auc": None}


def test_client_mistakes_are_4xx_naming_the_field(server, store, standins):
    store.publish(1)
    wait_version(server, standins, 1)
    url = f"{server.url}/v1/models/demo/predict"
    cases = [
        (requests.post(f"{server.url}/v1/models/other/predict", json={"events": EVENTS}), 404, "name", "'other'"),
        (requests.get(f"{server.url}/v1/models/other"), 404, "name", "serves 'demo'"),
        (requests.get(url), 405, None, "Method Not Allowed"),
        (requests.get(f"{server.url}/v2/models"), 404, None, "Not Found"),
        (requests.post(url, data=b'{"events": [', headers={"Content-Type": "application/json"}), 400, None, "JSON"),
        (requests.post(url, json=[1, 2]), 400, "events", "expected a JSON object"),
        (requests.post(url, json={"events": EVENTS * 2}), 413, "events", "limit is 5"),
        (requests.post(url, json={"events": [EVENTS[0], {"MET_pt": "high", "Muon_pt": []}]}), 422,
         "events[1].MET_pt", "got a string"),
        (requests.post(url, data='{"events": [{"MET_pt": NaN, "Muon_pt": []}]}'), 422, "events[0].MET_pt", "finite"),
        (requests.post(url, json={"events": [{"MET_pt": 1.0}]}), 422, "events[0].Muon_pt", "missing branch"),
    ]
    for answer, status, field, words in cases:
        assert answer.status_code == status, answer.text
        assert answer.headers.get("X-Model-Version") == (None if status in (404, 405) else "1")
        assert answer.json()["field"] == field
        assert words in answer.json()["error"]


def test_a_feature_error_from_the_model_is_422_naming_the_branch(server, store, standins):
    store.publish(1, needs=["Jet_pt"])
    wait_version(server, standins, 1)
    answer = predict(server, {"events": EVENTS})
    assert answer.status_code == 422
    assert answer.json() == {"error": "branch 'Jet_pt': missing", "field": "Jet_pt"}


def test_an_event_the_model_cannot_score_is_422_naming_it(server, store, standins):
    store.publish(1, nan=True)
    wait_version(server, standins, 1)
    answer = predict(server, {"events": EVENTS})
    assert (answer.status_code, answer.json()["field"]) == (422, "events[2]")


def test_a_broken_model_is_a_json_500_and_the_server_goes_on(server, store, standins):
    store.publish(1, explode=True)
    wait_version(server, standins, 1)
    answer = predict(server, {"events": EVENTS})
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error (RuntimeError); the server log has the details", "field": None}
    store.publish(2)
    wait_version(server, standins, 2)
    assert predict(server, {"events": EVENTS}).json()["scores"] == expected(standins, 0.0)


def test_requests_during_a_slow_load_get_the_old_version_without_waiting(server, store, standins):
    store.publish(1, weight=0.5)
    wait_version(server, standins, 1)
    store.publish(2, weight=-1.0, load_delay_s=1.5)
    standins.wait_for(lambda: 2 in store.loads, what="the load of version 2 to begin")
    slowest, versions = 0.0, set()
    load_ends = time.monotonic() + 1.0  # stay well inside the 1.5 s load
    while time.monotonic() < load_ends:
        started = time.perf_counter()
        answer = predict(server, {"events": EVENTS})
        slowest = max(slowest, time.perf_counter() - started)
        versions.add(answer.json()["version"])
        assert answer.json()["scores"] == expected(standins, 0.5)
    assert versions == {1}
    assert slowest < 0.5, f"a request waited {slowest:.3f} s during the load"
    wait_version(server, standins, 2)
    assert not math.isclose(predict(server, {"events": EVENTS}).json()["scores"][0], expected(standins, 0.5)[0])
