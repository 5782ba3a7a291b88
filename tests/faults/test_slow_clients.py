"""Slow clients are cut off: headers or a body trickling in are answered 408 and disconnected after
``serve.http.header_timeout_s`` / ``body_timeout_s``, through HAProxy and on a replica's own port, while a normal
request is answered meanwhile."""

from __future__ import annotations

import concurrent.futures
import select
import socket
import time

import pytest

from tests.faults.served import TOKEN, predict, serve_real_model

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 1.0, 2.0
REQUEST_LINE = b"POST /v1/models/demo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
FULL_HEAD = (REQUEST_LINE + f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
             "Content-Length: 1000\r\n\r\n".encode())


def trickle(port: int, sent_at_once: bytes, trickled: bytes, give_up_s: float = 20.0) -> tuple[bytes, float]:
    """Send ``sent_at_once``, then ``trickled`` a byte every 0.25 s, until the server answers or closes;
    the answer and the seconds since the connection opened."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(sent_at_once)
        for byte in trickled:
            if select.select([connection], [], [], 0.25)[0]:
                break
            try:
                connection.sendall(bytes([byte]))
            except OSError:  # closed by the server
                break
            if time.monotonic() - started > give_up_s:
                pytest.fail(f"port {port} still reads a slow client after {give_up_s} s")
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer, time.monotonic() - started


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One service for both ports: starting Ray and Serve is most of each case's time, and every connection of
    a case is closed before the next one opens its own."""
    sections = {"http": {"header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S}}
    with pytest.MonkeyPatch.context() as monkeypatch, \
            serve_real_model(tmp_path_factory.mktemp("slow-clients"), monkeypatch, **sections) as served:
        yield served


@pytest.mark.parametrize("port_of", [lambda served: served.haproxy, lambda served: served.direct],
                         ids=["HAProxy", "replica"])
def test_slow_headers_and_bodies_are_cut_off_while_a_normal_request_is_answered(served, port_of):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        port = port_of(served)
        slow_headers = pool.submit(trickle, port, REQUEST_LINE, b"X-Slow: " + b"a" * 200)
        slow_body = pool.submit(trickle, port, FULL_HEAD, b"{" + b" " * 999)
        time.sleep(0.3)
        normal = predict(port)
        assert normal.status_code == 200, normal.text

        answer, took_s = slow_headers.result()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert HEADER_TIMEOUT_S * 0.9 < took_s < HEADER_TIMEOUT_S + 3, took_s
        answer, took_s = slow_body.result()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"serve.http.body_timeout_s" in answer
        assert BODY_TIMEOUT_S * 0.9 < took_s < BODY_TIMEOUT_S + 3, took_s
