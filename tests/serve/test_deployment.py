"""The app on Ray Serve: a replica builds its own store and watcher, and swaps versions without stalling."""

from __future__ import annotations

import functools
import json
import socket
import time

from ray import cloudpickle  # the copy Ray serialises with
import pytest
import ray
import requests
from ray import serve

from hepstream.models.store import ModelStore
from hepstream.serve.deployment import HepstreamServer, start_serve, stop_serve
from hepstream.serve.events import parse_events

pytestmark = pytest.mark.integration

EVENTS = [{"MET_pt": 41.2, "Muon_pt": [51.0, 33.2]}, {"MET_pt": 7, "Muon_pt": []}]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_replica_serves_the_newest_version_and_swaps_without_stalling(ray_cluster, port, store, standins):
    # The replica unpickles the stand-in store, which lives in a conftest no Ray worker can import.
    cloudpickle.register_pickle_by_value(standins)
    url = f"http://127.0.0.1:{port}"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        open_store = functools.partial(standins.StandinStore, str(store.folder.parent), "demo")
        serve.run(HepstreamServer.bind(open_store, "demo", 0.05, 10), name="hepstream", route_prefix="/")
        assert requests.get(f"{url}/v1/health/live", timeout=10).status_code == 200
        assert requests.get(f"{url}/v1/health/ready", timeout=10).status_code == 503

        store.publish(1, weight=0.5)
        standins.wait_for(lambda: requests.get(f"{url}/v1/health/ready", timeout=10).status_code == 200,
                          timeout_s=30, what="the replica to load version 1")
        answer = requests.post(f"{url}/v1/models/demo/predict", json={"events": EVENTS}, timeout=10)
        assert answer.headers["X-Model-Version"] == "1"
        old_scores = [standins.score_of(e["MET_pt"], e["Muon_pt"], 0.5) for e in EVENTS]
        assert answer.json() == {"model": "demo", "version": 1, "scores": old_scores}

        store.publish(2, weight=-1.0, load_delay_s=1.5)
        standins.wait_for((store.folder / "2.loading").exists, what="the replica to begin loading version 2")
        slowest, versions = 0.0, set()
        for _ in range(10):
            started = time.perf_counter()
            answer = requests.post(f"{url}/v1/models/demo/predict", json={"events": EVENTS}, timeout=10)
            slowest = max(slowest, time.perf_counter() - started)
            versions.add(answer.json()["version"])
        assert versions == {1} and slowest < 0.5, (versions, slowest)

        new_scores = [standins.score_of(e["MET_pt"], e["Muon_pt"], -1.0) for e in EVENTS]
        standins.wait_for(lambda: requests.post(f"{url}/v1/models/demo/predict", json={"events": EVENTS},
                                                timeout=10).json()["scores"] == new_scores,
                          timeout_s=10, what="version 2 to be swapped in")
        described = requests.get(f"{url}/v1/models/demo", timeout=10).json()
        assert (described["version"], described["versions"]) == (2, [1, 2])

        bad = requests.post(f"{url}/v1/models/demo/predict", json={"events": [{"MET_pt": True, "Muon_pt": []}]},
                            timeout=10)
        assert (bad.status_code, bad.json()["field"]) == (422, "events[0].MET_pt")
        assert requests.post(f"{url}/v1/models/nope/predict", json={"events": EVENTS}, timeout=10).status_code == 404
    finally:
        serve.shutdown()
        cloudpickle.unregister_pickle_by_value(standins)


def test_start_serve_serves_the_model_store_folder(ray_cluster, port, tmp_path, standins):
    root = tmp_path / "store"
    url = start_serve(root, "demo", port=port, poll_interval_s=0.05)
    try:
        assert url == f"http://127.0.0.1:{port}"
        ready = requests.get(f"{url}/v1/health/ready", timeout=10)
        assert (ready.status_code, ready.headers["Retry-After"]) == (503, "1")  # an empty store: nothing to serve

        version = standins.publish_real_version(root, "demo", seed=3)
        standins.wait_for(lambda: requests.get(f"{url}/v1/health/ready", timeout=10).ok, timeout_s=30,
                          what="the replica to load the first real version")
        loaded = ModelStore(root, "demo").load(version)
        expected = loaded.predict(parse_events(json.dumps({"events": EVENTS}), loaded.inputs, 10)).tolist()
        answer = requests.post(f"{url}/v1/models/demo/predict", json={"events": EVENTS}, timeout=10)
        assert answer.json() == {"model": "demo", "version": version, "scores": expected}
    finally:
        stop_serve()
