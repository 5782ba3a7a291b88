"""The real service, started as ``hepstream serve`` starts it, with every port it opens known to the test."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator

import requests

from hepstream.config import config_from_dict
from hepstream.serve.deployment import serving
from hepstream.stack.ports import free_port
from tests.serve.conftest import publish_real_version, wait_for
from tests.serve.test_real_store import EVENTS

TOKEN = "s3cret"


@dataclasses.dataclass(frozen=True)
class Served:
    """The ports of one running service: ``app`` ports reach the app (HAProxy, the replica's own, Serve's proxy)."""

    haproxy: int
    direct: int
    fallback_proxy: int
    stats: int
    exporter: int

    @property
    def app_ports(self) -> dict[str, int]:
        return {"HAProxy": self.haproxy, "replica": self.direct, "Serve's proxy": self.fallback_proxy}


@contextlib.contextmanager
def serve_real_model(tmp_path, monkeypatch, **serve_sections) -> Iterator[Served]:
    """Serve a real model version with a bearer token, on the default ingress, until the block ends."""
    root = tmp_path / "store"
    publish_real_version(root, "demo", seed=2)
    served = Served(free_port(), free_port(), free_port(), free_port(), free_port())
    config = config_from_dict({"store": {"path": str(root)}, "model": {"name": "demo"}, "serve": {
        **serve_sections, "http": {"port": served.haproxy, **serve_sections.get("http", {})},
        "ray": {"direct_ingress_port": served.direct}, "versions": {"poll_interval_s": 0.05}}})
    for name, value in {"RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": served.fallback_proxy,
                        "RAY_SERVE_HAPROXY_STATS_PORT": served.stats, "RAY_SERVE_HAPROXY_METRICS_PORT": served.exporter,
                        "HEPSTREAM_TOKENS": TOKEN, "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0.5"}.items():
        monkeypatch.setenv(name, str(value))  # Ray's processes inherit them when serving starts Ray
    with serving(config, num_cpus=2, log_to_driver=False):
        for port in served.app_ports.values():
            wait_for(lambda: ready(port), timeout_s=90, what=f"port {port} to be ready")
        yield served


def ready(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def predict(port: int, headers: dict[str, str] | None = None) -> requests.Response:
    """A small, well-formed prediction request, with the token unless ``headers`` say otherwise."""
    headers = {"Authorization": f"Bearer {TOKEN}"} if headers is None else headers
    return requests.post(f"http://127.0.0.1:{port}/v1/models/demo/predict", data=json.dumps({"events": EVENTS}),
                         headers={"Content-Type": "application/json", **headers}, timeout=30)
