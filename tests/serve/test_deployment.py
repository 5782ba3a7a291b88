"""The app on Ray Serve: replicas batch, swap without stalling, converge, roll back, and check tokens."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import threading
import time

from ray import cloudpickle  # the copy Ray serialises with; not a dependency of its own
import pytest
import ray
import requests
from prometheus_client.parser import text_string_to_metric_families

from hepstream.config import config_from_dict
from hepstream.models.store import ModelStore
from hepstream.serve.deployment import serving
from hepstream.serve.events import parse_events
from hepstream.stack.ports import free_port

pytestmark = pytest.mark.integration

EVENTS = [{"MET_pt": 41.2, "Muon_pt": [51.0, 33.2]}, {"MET_pt": 7, "Muon_pt": []}]
TOKEN = {"Authorization": "Bearer replica-token"}


@pytest.fixture(scope="module")
def ray_cluster():
    """One Ray for the module's tests: ``serving`` finds it connected, and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def port() -> int:
    return free_port()


def replica_versions(url) -> dict[str, int]:
    """The version each replica reports in /metrics; requests are spread, so a few reach every replica."""
    versions = {}
    for _ in range(30):
        text = requests.get(f"{url}/metrics", headers=TOKEN, timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "hepstream_model_version":
                    versions[sample.labels["replica"]] = int(sample.value)
    return versions


def test_replicas_batch_swap_converge_and_roll_back(ray_cluster, port, store, standins, tmp_path):
    # The replica unpickles the stand-in store, which lives in a conftest no Ray worker can import.
    cloudpickle.register_pickle_by_value(standins)
    (tmp_path / "tokens").write_text("replica-token\n")
    config = config_from_dict({"serve": {
        "http": {"port": port}, "versions": {"poll_interval_s": 0.2}, "scaling": {"replicas": 2},
        "batching": {"max_size": 16, "wait_timeout_s": 0.005}, "auth": {"tokens_file": str(tmp_path / "tokens")}}})
    open_store = functools.partial(standins.StandinStore, str(store.folder.parent), "demo")
    try:
        with serving(config, open_store=open_store) as url:
            assert url == f"http://127.0.0.1:{port}"
            _batch_swap_converge_and_roll_back(url, store, standins)
        assert ray.is_initialized()  # the module's Ray, which serving did not start
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/v1/health/ready", timeout=10)  # Serve stopped with the block
    finally:
        cloudpickle.unregister_pickle_by_value(standins)


def _batch_swap_converge_and_roll_back(url, store, standins):
    predict = f"{url}/v1/models/demo/predict"
    assert requests.get(f"{url}/v1/health/ready", timeout=10).status_code == 503
    assert requests.post(predict, json={"events": EVENTS}, timeout=10).status_code == 401

    store.publish(1, weight=0.5)
    standins.wait_for(lambda: requests.get(f"{url}/v1/health/ready", timeout=10).ok, timeout_s=30,
                      what="a replica to load version 1")
    standins.wait_for(lambda: set(replica_versions(url).values()) == {1} and len(replica_versions(url)) == 2,
                      timeout_s=30, what="both replicas on version 1")

    # Concurrent requests are scored in batches.
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: requests.post(predict, json={"events": EVENTS}, headers=TOKEN,
                                                        timeout=10), range(64)))
    assert {a.status_code for a in answers} == {200}
    text = requests.get(f"{url}/metrics", headers=TOKEN, timeout=10).text
    assert "hepstream_batch_requests_bucket" in text

    # Hot swap under load: no failure, versions only grow per client, every replica converges.
    failures, seen, stop = [], {}, threading.Event()

    def client(number):
        session, versions = requests.Session(), []
        while not stop.is_set():
            answer = session.post(predict, json={"events": EVENTS}, headers=TOKEN, timeout=10)
            if answer.status_code != 200:
                failures.append(answer.text)
            else:
                versions.append(answer.json()["version"])
        seen[number] = versions

    clients = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for thread in clients:
        thread.start()
    try:
        store.publish(2, weight=-1.0, load_delay_s=0.3, created=time.time())  # replicas swap 1 s after this
        published = time.monotonic()
        standins.wait_for(lambda: set(replica_versions(url).values()) == {2}, timeout_s=10,
                          what="every replica on version 2")
        assert time.monotonic() - published < 2.0 + 1.0  # the delay, plus the time to ask every replica
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in clients:
            thread.join(10)
    assert failures == []
    for versions in seen.values():
        assert versions == sorted(versions) and versions[-1] == 2

    # Operator rollback reaches every replica.
    pin = requests.put(f"{url}/v1/models/demo/pin", json={"version": 1}, headers=TOKEN, timeout=10)
    assert pin.status_code == 202
    standins.wait_for(lambda: set(replica_versions(url).values()) == {1}, timeout_s=10,
                      what="every replica rolled back to version 1")
    requests.delete(f"{url}/v1/models/demo/pin", headers=TOKEN, timeout=10)
    standins.wait_for(lambda: set(replica_versions(url).values()) == {2}, timeout_s=10,
                      what="every replica back on version 2")


def test_serving_serves_the_model_store_folder(ray_cluster, port, tmp_path, standins):
    root = tmp_path / "store"
    config = config_from_dict({"store": {"path": str(root)}, "model": {"name": "demo"},
                               "serve": {"http": {"port": port}, "versions": {"poll_interval_s": 0.05}}})
    with serving(config) as url:
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
