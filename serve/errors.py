"""The one exception a request handler raises to answer with an error.

Parsers (native JSON and Arrow, Open Inference Protocol, TFaaS), middleware
and route handlers raise it wherever they find the problem; the app turns it into
the HTTP answer in one place, so every protocol reports errors the same way:
a status, a message a physicist can act on, and the field at fault.
"""

from __future__ import annotations

import json


class RequestError(Exception):
    """Why a request cannot be answered, as the status and JSON body the client gets.

    ``field`` names the part of the request at fault in the request's own
    terms (``events[3].Muon_pt``), or is ``None`` when no single field is.
    ``headers`` go out with the answer (``Retry-After`` on a 503).
    """

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": self.message, "field": self.field}


async def send_error(send, error: RequestError) -> None:
    """Answer with ``error`` from ASGI middleware, which runs outside FastAPI's exception handlers."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(key.lower().encode(), value.encode()) for key, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
