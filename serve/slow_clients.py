"""Deadlines for slow clients on the HTTP servers Ray Serve runs: headers within ``serve.http.header_timeout_s``,
bodies within ``serve.http.body_timeout_s``, else 408 and the connection closed.

Without them a client sending a byte a second holds a connection, a buffer and a
coroutine for as long as it likes, and a few hundred such clients fill a
replica. uvicorn, which Serve runs for its proxy and for every replica's own
port, has no deadline for either (its only timeout is for idle keep-alive
connections), and an ASGI app never sees a request before its headers are
complete. Serve offers one hook in both places, before their server starts:
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names a function whose ASGI
middlewares wrap the app. :func:`ray_http_callback` is that function: it
returns :class:`BodyDeadline` and registers :class:`HeaderDeadlineProtocol` as
uvicorn's ``auto`` protocol, the one Serve's servers are built with, in that
process only. HAProxy gets the same two timeouts in its own terms
(:mod:`hepstream.serve.haproxy`). The timeouts travel in the environment Ray
starts with (:func:`timeout_environment`), as Serve's own settings do.
"""

from __future__ import annotations

import asyncio
import os

import uvicorn.config
from starlette.middleware import Middleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hepstream.config import HttpConfig
from hepstream.serve.errors import RequestError, send_error

HEADER_TIMEOUT_ENV = "HEPSTREAM_HEADER_TIMEOUT_S"
BODY_TIMEOUT_ENV = "HEPSTREAM_BODY_TIMEOUT_S"
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"

_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def timeout_environment(http: HttpConfig) -> dict[str, str]:
    """The variables that carry ``serve.http``'s timeouts to Serve's servers and HAProxy."""
    return {CALLBACK_ENV: f"{__name__}.ray_http_callback", HEADER_TIMEOUT_ENV: str(http.header_timeout_s),
            BODY_TIMEOUT_ENV: str(http.body_timeout_s)}


def timeouts_from_environment() -> tuple[float, float]:
    """(header, body) timeouts in seconds, as :func:`timeout_environment` set them, else the defaults."""
    defaults = HttpConfig()
    return (float(os.environ.get(HEADER_TIMEOUT_ENV, defaults.header_timeout_s)),
            float(os.environ.get(BODY_TIMEOUT_ENV, defaults.body_timeout_s)))


def ray_http_callback() -> list[Middleware]:
    """Serve's proxy callback: runs in the proxy and in each replica before its HTTP server starts."""
    header_timeout_s, body_timeout_s = timeouts_from_environment()
    HeaderDeadlineProtocol.header_timeout_s = header_timeout_s
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:HeaderDeadlineProtocol"
    return [Middleware(BodyDeadline, timeout_s=body_timeout_s)]


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers are not complete in time.

    The clock starts when the connection opens and again when a kept-alive
    connection's next request begins; idle kept-alive connections are uvicorn's
    own ``timeout_keep_alive``'s to close.
    """

    header_timeout_s = 10.0  # set by ray_http_callback, before Serve builds its server

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.headers_deadline: asyncio.TimerHandle | None = None
        self._start_header_clock()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_clock()

    def on_headers_complete(self) -> None:
        self._stop_header_clock()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def _start_header_clock(self) -> None:
        if self.headers_deadline is None:
            self.headers_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_clock(self) -> None:
        if self.headers_deadline is not None:
            self.headers_deadline.cancel()
            self.headers_deadline = None

    def _headers_too_slow(self) -> None:
        self.headers_deadline = None
        if not self.transport.is_closing():
            self.transport.write(_TIMED_OUT)
            self.transport.close()


class BodyDeadline:
    """ASGI middleware answering 408 (and closing) when a request's body is not all there ``timeout_s`` after its
    headers; the app, which may be reading it, sees the client disconnect."""

    def __init__(self, app, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        state = {"body_done": False, "timed_out": False, "responding": False}

        async def receive_in_time():
            if state["timed_out"]:
                return {"type": "http.disconnect"}
            if state["body_done"]:  # waiting for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                state["timed_out"] = True
                if not state["responding"]:
                    await send_error(send, RequestError(
                        408, f"the request body did not arrive within {self.timeout_s:g} s (serve.http.body_timeout_s)",
                        "body", {"Connection": "close"}))
                return {"type": "http.disconnect"}
            state["body_done"] = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_unless_timed_out(message) -> None:
            if state["timed_out"]:
                return
            state["responding"] = True
            await send(message)

        await self.app(scope, receive_in_time, send_unless_timed_out)
