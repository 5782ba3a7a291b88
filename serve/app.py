"""The HTTP API, as a plain FastAPI app: served by Ray Serve in production, by bare uvicorn as a baseline.

One app serves one model, kept current by a :class:`ModelWatcher` that the
app's lifespan starts and stops, so every server that runs ASGI lifespan
(uvicorn, Ray Serve) gets hot swap the same way. This module does not import
Ray: the baseline and its tests start in one second, not three.

Routes (native JSON API, ``/v1``)::

    POST /v1/models/{name}/predict  {"events": [...]} -> {"model", "version", "scores"}
    GET  /v1/models                 the models served and their versions
    GET  /v1/models/{name}          version, versions on disk, events trained, metrics, inputs
    GET  /v1/health/live            200 while the process answers
    GET  /v1/health/ready           200 once a version is loaded, 503 before

Every error is JSON ``{"error": message, "field": field}``. Client mistakes get
a 4xx naming the field; a 5xx means a bug or a broken model, and the server
logs its traceback. Predictions and model descriptions, and the 4xx answers
to predictions, name the version that answered in ``X-Model-Version``.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from hepstream.models.features import FeatureError
from hepstream.serve.errors import RequestError
from hepstream.serve.events import parse_events
from hepstream.serve.watcher import ModelWatcher

VERSION_HEADER = "X-Model-Version"

logger = logging.getLogger(__name__)


def create_app(store: Any, *, model_name: str, poll_interval_s: float = 0.5,
               max_events_per_request: int = 100_000) -> FastAPI:
    """Build the app for one model.

    ``store`` is a ``hepstream.models.store.ModelStore`` or anything with its
    ``versions()``, ``latest()`` and ``load(version)``. The watcher runs while
    the app's lifespan does, and is at ``app.state.watcher``.
    """
    watcher = ModelWatcher(store, poll_interval_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        watcher.start()
        try:
            yield
        finally:
            watcher.stop()

    app = FastAPI(title="hepstream", summary="Models trained on streamed HEP events, served by branch name",
                  lifespan=lifespan)
    app.state.watcher = watcher
    app.add_exception_handler(RequestError, _request_error_answer)
    app.add_exception_handler(HTTPException, _http_error_answer)  # unknown route, wrong method
    app.add_exception_handler(Exception, _internal_error_answer)

    def serving(name: str) -> Any:
        """The model that answers this request: read once, so one request sees one version."""
        if name != model_name:
            raise RequestError(404, f"no model named {name!r}; this server serves {model_name!r}", "name")
        model = watcher.current
        if model is None:
            raise RequestError(503, f"model {name!r} has no version loaded yet: "
                                    f"{watcher.last_error or 'none published so far'}", headers={"Retry-After": "1"})
        return model

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, request: Request) -> Response:
        model = serving(name)
        body = await request.body()
        # Parsing and scoring are CPU-bound: off the event loop, so health checks and other requests still answer.
        try:
            content = await run_in_threadpool(_score, model, name, body, max_events_per_request)
        except RequestError as error:
            error.headers[VERSION_HEADER] = str(model.version)  # the inputs a 422 is about belong to this version
            raise
        return Response(content, media_type="application/json", headers={VERSION_HEADER: str(model.version)})

    # Endpoints that only read the watcher are async: they answer on the event loop even while every
    # threadpool worker is busy scoring, so health checks never queue behind predictions.
    @app.get("/v1/models")
    async def list_models() -> dict:
        model = watcher.current
        return {"models": [{"name": model_name, "version": model.version if model is not None else None,
                            "ready": model is not None}]}

    @app.get("/v1/models/{name}")
    def describe_model(name: str) -> JSONResponse:  # lists the store's folder: blocking, so a threadpool def
        model = serving(name)
        meta = model.meta
        return JSONResponse({
            "name": name,
            "version": model.version,
            "versions": list(store.versions()),
            "events_trained": meta.get("events_seen"),
            "metrics": _finite_or_null(meta.get("metrics")),
            "inputs": [{"name": branch.name, "jagged": branch.jagged} for branch in model.inputs],
        }, headers={VERSION_HEADER: str(model.version)})

    @app.get("/v1/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v1/health/ready")
    async def ready() -> JSONResponse:
        model = watcher.current
        if model is None:
            return JSONResponse({"ready": False, "model": model_name, "error": watcher.last_error}, status_code=503,
                                headers={"Retry-After": "1"})
        return JSONResponse({"ready": True, "model": model_name, "version": model.version})

    return app


def _score(model: Any, name: str, body: bytes, max_events: int) -> bytes:
    """Parse, predict and encode one request; the JSON answer as bytes."""
    batch = parse_events(body, model.inputs, max_events)
    if batch.num_rows == 0:
        scores = np.empty(0, dtype=np.float32)  # no events, no question for the model
    else:
        try:
            scores = np.asarray(model.predict(batch))
        except FeatureError as error:  # values the feature pipeline refuses, e.g. 1e300 GeV overflowing float32
            raise RequestError(422, str(error), error.branch) from None
    if scores.shape != (batch.num_rows,):
        raise RuntimeError(f"model {name!r} version {model.version} returned scores of shape {scores.shape} "
                           f"for {batch.num_rows} events")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        # Finite inputs the model cannot score (say 1e300 GeV overflowing a normalisation): the event is at
        # fault, but the operator should hear of it, since a model that scores no event gives this too.
        logger.warning("model %s version %s: non-finite score for %d of %d events", name, model.version,
                       bad.size, batch.num_rows)
        raise RequestError(422, f"model {name!r} version {model.version} gives no finite score for this event; "
                                "are its values physical?", f"events[{bad[0]}]")
    return json.dumps({"model": name, "version": model.version, "scores": scores.tolist()}).encode()


def _finite_or_null(value: Any) -> Any:
    """Metrics can be NaN early in training (an AUC before both classes were seen); JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(item) for item in value]
    return value


async def _request_error_answer(_request: Request, error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _http_error_answer(_request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse({"error": error.detail, "field": None}, status_code=error.status_code, headers=error.headers)


async def _internal_error_answer(_request: Request, error: Exception) -> JSONResponse:
    # Starlette re-raises after this answer, so the server logs the traceback once.
    return JSONResponse({"error": f"internal error ({type(error).__name__}); the server log has the details",
                         "field": None}, status_code=500)
