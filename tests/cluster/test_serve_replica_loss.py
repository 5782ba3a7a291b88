"""A Serve replica lost with its node on a real multi-node Ray cluster, under steady HTTP load.

``hepstream serve --address`` joins the cluster with one replica per node
(``serve.scaling.max_replicas_per_node: 1``), one of them on a node the test
adds; clients keep asking for predictions while that node's raylet is
killed. Only the requests in flight to the lost replica may fail; every other
answer carries the scores a local prediction of the same version gives. A
node comes back at once (as a rescheduled pod would); with one replica per
node the surviving nodes are full, so Serve starts the replacement there. The
session's head and worker are left as they were.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import yaml

from hepstream.stack.ports import free_port
from hepstream.waiting import poll_until
from tests.cluster.test_node_loss import _lose
from tests.ray_cluster import RayCluster, wait_for_nodes
from tests.serve.conftest import publish_real_version
from tests.serve.test_real_store import EVENTS, local_scores

pytestmark = pytest.mark.integration

CLIENTS = 4
REPLICAS = 3  # one on each node: the head, the session's worker and the node to lose
LOAD_AFTER_KILL_S = 20.0


@dataclasses.dataclass(frozen=True)
class Answer:
    sent: float
    answered: float
    status: int | None  # None: no HTTP answer at all
    body: dict | str


class Load:
    """``CLIENTS`` threads sending one prediction after another until stopped; every answer kept."""

    def __init__(self, url: str):
        self.url, self.answers, self.lock = url, [], threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self) -> None:
        with requests.Session() as session:
            while not self.stopping.is_set():
                sent = time.monotonic()
                try:
                    response = session.post(self.url, json={"events": EVENTS}, timeout=30)
                    status = response.status_code
                    body = response.json() if status == 200 else response.text
                except requests.RequestException as error:
                    status, body = None, repr(error)
                with self.lock:
                    self.answers.append(Answer(sent, time.monotonic(), status, body))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)


def _application(cluster: RayCluster) -> dict:
    """The hepstream application as Serve's REST API describes it (status, deployments, replicas); {} if none."""
    answer = requests.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=10,
                          headers={"Authorization": f"Bearer {cluster.token}"}).json()
    return answer["applications"].get("hepstream", {})


def _running_on(cluster: RayCluster) -> list[str]:
    """The nodes of the running replicas."""
    deployments = _application(cluster).get("deployments", {}).values()
    return sorted(r["node_id"] for d in deployments for r in d["replicas"] if r["state"] == "RUNNING")


def test_a_serve_replica_lost_with_its_node_fails_only_requests_in_flight_to_it(ray_cluster, tmp_path):
    root = tmp_path / "store"
    version = publish_real_version(root, "demo", seed=3)
    expected = local_scores(root, version)
    port = free_port()
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({
        "store": {"path": str(root)}, "model": {"name": "demo"},
        "serve": {"http": {"port": port}, "ray": {"haproxy": False},
                  "scaling": {"replicas": REPLICAS, "max_replicas_per_node": 1}}}))
    environment = {**os.environ, **ray_cluster.client_env()}
    environment.pop("RAY_ADDRESS", None)
    # Every node's Serve proxy binds serve.http.port with SO_REUSEPORT: on one machine the kernel would hand the
    # clients' connections to the lost node's proxy too. Separate hosts have separate ports; here the added
    # nodes' proxies get a port of their own, so the clients reach only the proxies of nodes that stay.
    own_proxy = {"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(free_port())}
    node = ray_cluster.add_worker(environment=own_proxy)
    later, server = None, None
    try:
        doomed = ray_cluster.node_id(node)
        server = subprocess.Popen([sys.executable, "-m", "hepstream", "serve", "--address", ray_cluster.address,
                                   "--config", str(tmp_path / "pipeline.yaml")], env=environment,
                                  stdout=(tmp_path / "stdout").open("w"), stderr=(tmp_path / "stderr").open("w"))
        poll_until(lambda: len(set(_running_on(ray_cluster))) == REPLICAS, timeout_s=120, interval_s=0.5,
                   what="not one running replica on each node")
        assert doomed in _running_on(ray_cluster)
        url = f"http://127.0.0.1:{port}/v1/models/demo/predict"
        poll_until(lambda: requests.post(url, json={"events": EVENTS}, timeout=10).status_code == 200, timeout_s=60,
                   what="no prediction answered")

        with Load(url) as load:
            time.sleep(2.0)
            node.kill_raylet()
            killed = time.monotonic()
            _lose(ray_cluster, node)
            # A node comes back at once (as a rescheduled pod would): the replacement replica can go only there.
            later = ray_cluster.add_worker(environment=own_proxy)
            poll_until(lambda: doomed not in _running_on(ray_cluster), timeout_s=60,
                       what="Serve still lists the lost node's replica as running")
            dropped = time.monotonic()
            survivors, meanwhile = _running_on(ray_cluster), _application(ray_cluster)["status"]
            poll_until(lambda: len(set(_running_on(ray_cluster))) == REPLICAS, timeout_s=90, interval_s=0.5,
                       what="no replacement replica on the returned node")
            replaced = time.monotonic()
            time.sleep(max(2.0, killed + LOAD_AFTER_KILL_S - replaced))
        status = _application(ray_cluster)["status"]
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        for added in (node, later):
            if added in ray_cluster.workers:
                _lose(ray_cluster, added)
    wait_for_nodes(ray_cluster, 2)

    answers = sorted(load.answers, key=lambda a: a.sent)
    failed = [a for a in answers if a.status != 200]
    in_flight = [a for a in answers if a.sent <= killed < a.answered]
    first_ok = min(a.answered for a in answers if a.status == 200 and a.sent > killed)
    print(f"\n{len(answers)} requests, {len(failed)} failed ({[(a.status, str(a.body)[:200]) for a in failed]}); "
          f"{len(in_flight)} in flight at the kill; node lost -> next success {first_ok - killed:.2f} s; "
          f"last failure {max((a.answered - killed for a in failed), default=0):.2f} s after the kill; "
          f"Serve dropped the replica {dropped - killed:.1f} s after the kill; node lost -> replacement running "
          f"{replaced - killed:.1f} s; application {meanwhile} meanwhile, {status} after")
    assert len(survivors) == REPLICAS - 1 and doomed not in survivors
    assert len(failed) <= len(in_flight) <= CLIENTS
    assert all(a.sent <= killed for a in failed)  # nothing sent after the kill failed
    # Scores as the local prediction's, to float32 rounding (a batch's size changes the last bit).
    assert all(a.body["version"] == version and np.allclose(a.body["scores"], expected, rtol=1e-6, atol=0)
               for a in answers if a.status == 200)
    assert status == "RUNNING"
    assert server.returncode == 0, (tmp_path / "stderr").read_text()[-3000:]
