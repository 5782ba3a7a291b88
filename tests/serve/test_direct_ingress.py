"""Serve's HAProxy and direct ingress: ``serve.ray.haproxy`` answers through HAProxy, and the replica on its own port.

Serve reads these flags when Ray starts, so this module lets ``serving``
start a Ray of its own with :func:`ray_environment` in the environment, as
``hepstream serve`` does.
"""

from __future__ import annotations

import json
import os

import pytest
import ray
import requests

from hepstream.config import ServeConfig, config_from_dict
from hepstream.serve.deployment import ray_environment, serving
from hepstream.stack.ports import free_port
from tests.serve.test_real_store import EVENTS, local_scores

pytestmark = pytest.mark.integration


TIMEOUTS = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "hepstream.serve.slow_clients.ray_http_callback",
            "HEPSTREAM_HEADER_TIMEOUT_S": "10.0", "HEPSTREAM_BODY_TIMEOUT_S": "60.0"}


def test_ray_environment_asks_for_ports_only_when_configured():
    python_proxy = {"haproxy": False}
    assert ray_environment(ServeConfig(ray=python_proxy)) == {**TIMEOUTS, "RAY_enable_metrics_collection": "0"}
    assert ray_environment(ServeConfig(ray={**python_proxy, "metrics": True},
                                       http={"header_timeout_s": 2, "body_timeout_s": 3.5})) == {
        **TIMEOUTS, "HEPSTREAM_HEADER_TIMEOUT_S": "2.0", "HEPSTREAM_BODY_TIMEOUT_S": "3.5"}
    two = ServeConfig(ray={**python_proxy, "direct_ingress_port": 30100, "metrics": True}, scaling={"replicas": 2})
    assert ray_environment(two) == {
        **TIMEOUTS, "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "30100",
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "30103", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2.0",
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
    autoscaled = ServeConfig(ray={"direct_ingress_port": 30100},
                             scaling={"autoscaling": {"min_replicas": 1, "max_replicas": 3}})
    assert ray_environment(autoscaled)["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "30105"


def test_haproxy_is_the_default_needs_the_replica_ports_and_runs_through_the_wrapper():
    environment = ray_environment(ServeConfig())
    assert environment["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert (environment["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"],
            environment["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == ("30000", "30001")
    wrapper = environment["RAY_SERVE_HAPROXY_BINARY_PATH"]
    assert wrapper.endswith("/hepstream-haproxy") and os.access(wrapper, os.X_OK)


def test_haproxy_and_the_replica_answer_as_the_app_does_and_only_on_loopback(tmp_path, standins, monkeypatch):
    root = tmp_path / "store"
    version = standins.publish_real_version(root, "demo", seed=2)
    port, direct = free_port(), free_port()
    others = {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": free_port(), "RAY_SERVE_HAPROXY_STATS_PORT": free_port(),
              "RAY_SERVE_HAPROXY_METRICS_PORT": free_port()}
    config = config_from_dict({"store": {"path": str(root)}, "model": {"name": "demo"}, "serve": {
        "http": {"port": port}, "ray": {"direct_ingress_port": direct, "haproxy": True},
        "versions": {"poll_interval_s": 0.05}}})
    for name, value in {**others, "HEPSTREAM_TOKENS": "s3cret", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0.5"
                        }.items():
        monkeypatch.setenv(name, str(value))  # undone after the test; Ray's processes have it by then
    assert not ray.is_initialized()
    with serving(config, num_cpus=2, log_to_driver=False) as haproxy_url:
        direct_url = f"http://127.0.0.1:{direct}"
        assert haproxy_url == f"http://127.0.0.1:{port}"
        for url in (haproxy_url, direct_url):
            standins.wait_for(lambda: _ready(url), timeout_s=60, what=f"{url} to be ready")
        expected = {"model": "demo", "version": version, "scores": local_scores(root, version)}
        token = {"Authorization": "Bearer s3cret"}
        for url in (haproxy_url, direct_url):
            answer = requests.post(f"{url}/v1/models/demo/predict", data=json.dumps({"events": EVENTS}),
                                   headers={"Content-Type": "application/json", **token}, timeout=10)
            assert answer.status_code == 200, answer.text
            assert answer.json() == expected
            assert answer.headers["X-Model-Version"] == str(version)
        bad = requests.post(f"{haproxy_url}/v1/models/demo/predict", json={"events": [{"MET_pt": 1}]}, headers=token,
                            timeout=10)
        assert (bad.status_code, bad.json()["field"]) == (422, "events[0].Muon_pt")
        unauthorised = requests.post(f"{haproxy_url}/v1/models/demo/predict", json={"events": EVENTS}, timeout=10)
        assert unauthorised.status_code == 401

        for bound in (port, direct, *others.values()):
            assert _listening_addresses(bound) == {"0100007F"}, bound  # 127.0.0.1 only, as serve.http.host says
    assert not ray.is_initialized()  # serving started this Ray, and stopped it
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ  # and put the environment back
    standins.wait_for(lambda: not _listening_addresses(port), timeout_s=30, what="HAProxy to stop")


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/v1/health/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port``, from the kernel's tables (hex, as /proc shows them)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found
