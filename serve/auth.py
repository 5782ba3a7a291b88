"""Bearer tokens: who may call the server.

Ray Serve has no request authentication and TFaaS shipped with it commented
out, so a model exposed beyond one machine would answer anybody. Tokens come
from a file (one per line, ``#`` comments) and from an environment variable
(comma-separated), so an operator can rotate one while the other still
works; with no token configured the server is open, as on a laptop.

Every endpoint but health needs ``Authorization: Bearer <token>``: health
stays open for load balancers and Kubernetes probes, which carry no secrets.
No header is a 401 (with ``WWW-Authenticate``), a token that matches none is a
403. Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`,
against every configured token without stopping at a match, so neither the
time taken nor a token's length tells an attacker anything.

>>> tokens = read_tokens(None, "TOKENS", {"TOKENS": "alpha, beta"})
>>> len(tokens), token_allowed(b"Bearer beta", tokens), token_allowed(b"Bearer gamma", tokens)
(2, True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from hepstream.serve.errors import RequestError, send_error

OPEN_PATHS = frozenset({"/v1/health/live", "/v1/health/ready", "/v2/health/live", "/v2/health/ready"})


def read_tokens(path: Path | None, env_var: str | None, environ: Mapping[str, str] = os.environ) -> list[bytes]:
    """Digests of the tokens configured in ``path`` and in ``environ[env_var]``; empty: no authentication."""
    tokens = []
    if path is not None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as error:  # a configured but unreadable file must not silently open the server
            raise RuntimeError(f"serve.auth.tokens_file {path}: {error.strerror or error}") from None
        tokens += [line.split("#", 1)[0].strip() for line in lines]
    if env_var:
        tokens += [token.strip() for token in environ.get(env_var, "").split(",")]
    return [_digest(token.encode()) for token in tokens if token]


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def token_allowed(authorization: bytes, tokens: list[bytes]) -> bool:
    """Whether an ``Authorization`` header value carries one of the tokens (all of them are compared)."""
    scheme, _, token = authorization.partition(b" ")
    digest = _digest(token.strip())
    matches = [hmac.compare_digest(digest, allowed) for allowed in tokens]
    return scheme.lower() == b"bearer" and any(matches)


class BearerAuth:
    """ASGI middleware refusing requests without a configured token, except to the health endpoints."""

    def __init__(self, app, tokens: list[bytes]):
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.tokens or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        authorization = dict(scope["headers"]).get(b"authorization")
        if authorization is None:
            return await send_error(send, RequestError(
                401, "this server needs a bearer token: send 'Authorization: Bearer <token>'", "Authorization",
                {"WWW-Authenticate": 'Bearer realm="hepstream"'}))
        if not token_allowed(authorization, self.tokens):
            return await send_error(send, RequestError(403, "the bearer token is not one this server accepts",
                                                       "Authorization"))
        return await self.app(scope, receive, send)
