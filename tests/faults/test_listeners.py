"""Nothing listens beyond what the config asks: with ``serve.http.host: 127.0.0.1`` every socket of the service's
process tree (Ray's GCS, raylet, workers, agents, Serve's actors, HAProxy) is on loopback, and every port that
reaches the app asks for the token."""

from __future__ import annotations

import os

import pytest
import ray  # puts Ray's bundled psutil on the path
import requests

import psutil
from tests.faults.served import predict, serve_real_model
from tests.serve.test_real_store import EVENTS

pytestmark = pytest.mark.integration

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
# Processes that keep a socket off loopback although Ray runs on one machine, because Ray 2.60 gives no option
# (docs/http-api.md, "What listens where"): by the start of their name, and why.
KNOWN_EXCEPTIONS = {
    # Serve's inter-deployment gRPC server, bound to "[::]:0" in ray/serve/_private/replica.py; it calls the
    # same app, so the token check applies, but the HTTP deadlines do not.
    "ray::ServeReplica:": "one inter-deployment gRPC port per replica, on every interface",
}


def listening_sockets() -> dict[tuple[str, int], str]:
    """(address, port) -> process name, for every listening TCP socket of this process and its descendants."""
    me = psutil.Process(os.getpid())
    found = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            for connection in process.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    found[(connection.laddr.ip, connection.laddr.port)] = process.name()
        except psutil.Error:  # a worker that exited meanwhile
            continue
    return found


def test_every_socket_of_the_service_is_on_loopback_and_every_app_port_wants_the_token(tmp_path, monkeypatch):
    assert not ray.is_initialized()
    with serve_real_model(tmp_path, monkeypatch) as served:
        sockets = listening_sockets()
        names = set(sockets.values())
        assert {"gcs_server", "raylet"} <= names and any("haproxy" in name for name in names), names
        ports = {port for _, port in sockets}
        assert set(served.app_ports.values()) | {served.stats, served.exporter} <= ports
        beyond = {where: name for where, name in sockets.items() if where[0] not in LOOPBACK}
        exposed = {where: name for where, name in beyond.items() if not name.startswith(tuple(KNOWN_EXCEPTIONS))}
        assert not exposed, f"listening beyond loopback: {exposed}"
        assert len(beyond) == 1, beyond  # the one replica's gRPC port, none of the app's

        for what, port in served.app_ports.items():
            refused = predict(port, headers={})
            assert refused.status_code == 401, (what, refused.text)
            assert refused.headers["WWW-Authenticate"] == 'Bearer realm="hepstream"'
            assert predict(port, headers={"Authorization": "Bearer wrong"}).status_code == 403, what
            answered = predict(port)
            assert answered.status_code == 200, (what, answered.text)
            assert len(answered.json()["scores"]) == len(EVENTS)
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            assert metrics.status_code == 401, what  # hepstream's /metrics is behind the token too

        root = requests.get(f"http://127.0.0.1:{served.stats}/", timeout=10)
        assert (root.status_code, root.text) == (404, "HAProxy statistics are at /stats")
        assert requests.get(f"http://127.0.0.1:{served.stats}/stats", timeout=10).status_code == 200
    assert not ray.is_initialized()
