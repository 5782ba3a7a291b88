"""The HTTP server as a plain FastAPI app: served by Ray Serve in production, by bare uvicorn as a baseline.

One app serves one model, kept current by a :class:`ModelWatcher` that the
app's lifespan starts and stops, so every server that runs ASGI lifespan
(uvicorn, Ray Serve) gets hot swap the same way. The lifespan loads the
newest version before the server takes requests. This module does not import
Ray: the baseline and its tests start in one second, not three.

The app speaks three protocols over one scoring core (``scoring.py``): the
native API (``v1.py``), the Open Inference Protocol (``v2.py``) and TFaaS
(``tfaas.py``); plus Prometheus ``/metrics`` and the ``/ui`` page
(``ui.py``). Around them, from the outside in: metrics count every answer,
bearer tokens are checked, body sizes are limited.

Every error is JSON ``{"error": message, "field": field}``. Client mistakes get
a 4xx naming the field; a 5xx means a bug or a broken model, and the server
logs its traceback. Answers computed by a model, and the 4xx answers about a
request's events, name the version in ``X-Model-Version``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from hepstream import __version__
from hepstream.config import ServeConfig
from hepstream.serve import tfaas, v1, v2
from hepstream.serve.auth import BearerAuth, read_tokens
from hepstream.serve.errors import RequestError
from hepstream.serve.limits import BodyLimit
from hepstream.serve.metrics import Metrics, MetricsMiddleware
from hepstream.serve.scoring import Serving
from hepstream.serve.ui import ui_router
from hepstream.serve.watcher import ModelWatcher, pin_path

if TYPE_CHECKING:
    from hepstream.models.store import ModelStore

VERSION_HEADER = v1.VERSION_HEADER

logger = logging.getLogger(__name__)


def create_app(store: ModelStore, *, model_name: str, settings: ServeConfig = ServeConfig(), replica: str | None = None
               ) -> FastAPI:
    """Build the app for one model.

    ``store`` is a ``hepstream.models.store.ModelStore`` or anything with its
    ``versions()``, ``latest()``, ``load(version)``, ``read_meta(version)``
    (for ``/ui``) and ``model``. ``settings`` is the
    configuration's ``serve`` section. ``replica`` labels this app's
    metrics. The watcher runs while the app's lifespan does; the watcher,
    the scoring core and the metrics are at ``app.state``.
    """
    watcher = ModelWatcher(store, settings.versions.poll_interval_s, pin_file=pin_path(store),
                           swap_delay_s=settings.versions.swap_delay_s)
    metrics = Metrics(watcher, model_name, replica or f"{socket.gethostname()}-{os.getpid()}")
    serving = Serving(store, model_name, watcher, settings.versions.pinned_cached, metrics.observe_batch)
    tokens = read_tokens(settings.auth.tokens_file, settings.auth.tokens_env)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Servers route to an app once its lifespan has started (Ray Serve counts the replica running then): the
        # newest version is loaded first, so a replica started beside serving ones (the replacement of one lost
        # with its node, a scale-up) does not answer 503 "no version loaded" while they answer with scores.
        await asyncio.to_thread(watcher.poll)
        watcher.start()
        try:
            yield
        finally:
            watcher.stop()
            serving.close()

    app = FastAPI(title="hepstream", version=__version__, lifespan=lifespan,
                  summary="Models trained on streamed HEP events, served by branch name")
    app.state.watcher = watcher
    app.state.serving = serving
    app.state.metrics = metrics
    app.include_router(v1.v1_router(serving, settings.http.max_events_per_request))
    app.include_router(v2.v2_router(serving, settings.http.max_events_per_request))
    app.include_router(tfaas.tfaas_router(serving))
    app.include_router(ui_router(store))

    @app.get("/metrics", summary="Prometheus metrics of this replica")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_exception_handler(RequestError, _request_error_answer)
    app.add_exception_handler(RequestValidationError, _validation_error_answer)
    app.add_exception_handler(HTTPException, _http_error_answer)  # unknown route, wrong method
    app.add_exception_handler(Exception, _internal_error_answer)
    app.add_middleware(BodyLimit, max_bytes=settings.http.max_request_bytes)
    app.add_middleware(BearerAuth, tokens=tokens)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # added last: outermost, so it counts 401s and 413s
    if not tokens and settings.http.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving %s on %s without bearer tokens: anybody who reaches it may call it",
                       model_name, settings.http.host)

    def openapi() -> dict:
        """The schema, with request bodies that name the branches of the version being served."""
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        model = watcher.current
        inputs = list(model.inputs) if model is not None else None
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for protocol in (v1, v2, tfaas):
            components.update(protocol.request_schemas(inputs))
        for operation in (op for path in schema["paths"].values() for op in path.values()):
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "name" and parameter["in"] == "path":
                    parameter["schema"] = {"type": "string", "enum": [model_name]}  # the one model served
        return schema

    app.openapi = openapi
    return app


async def _request_error_answer(_request: Request, error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _validation_error_answer(_request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's own checks (a version that is not an integer): our error format, naming the parameter."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"][1:]) or None
    return JSONResponse({"error": first["msg"], "field": field}, status_code=422)


async def _http_error_answer(_request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse({"error": error.detail, "field": None}, status_code=error.status_code, headers=error.headers)


async def _internal_error_answer(_request: Request, error: Exception) -> JSONResponse:
    # Starlette re-raises after this answer, so the server logs the traceback once.
    return JSONResponse({"error": f"internal error ({type(error).__name__}); the server log has the details",
                         "field": None}, status_code=500)
