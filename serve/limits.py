"""Request size limit: a body larger than ``serve.http.max_request_bytes`` is a 413, before it fills memory.

A declared ``Content-Length`` over the limit is refused before a byte of the
body is read. A chunked body has no declared length, so its bytes are counted
as they arrive and the request is refused as soon as they pass the limit.
"""

from __future__ import annotations

from hepstream.serve.errors import RequestError, send_error


def _too_large(limit: int) -> RequestError:
    return RequestError(413, f"request body larger than {limit} bytes (serve.http.max_request_bytes); "
                             "split the events over several requests", "body")


class BodyLimit:
    """ASGI middleware enforcing the size limit on every request body."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await send_error(send, _too_large(self.max_bytes))
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _too_large(self.max_bytes)  # answered by the app's RequestError handler
            return message

        return await self.app(scope, counting_receive, send)
