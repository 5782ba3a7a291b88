"""The native API, ``/v1``: events in branch space as JSON rows, JSON columns or Arrow IPC.

Routes::

    POST   /v1/models/{name}/predict[?version=N]   events -> {"model", "version", "scores"} (Arrow in, Arrow out)
    GET    /v1/models                              the models served and their versions
    GET    /v1/models/{name}                       versions on disk, which answers and why newer ones do not,
                                                   metrics, expected branches with types
    PUT    /v1/models/{name}/pin  {"version": N}    operator rollback: every replica serves version N
    DELETE /v1/models/{name}/pin                   back to the newest version
    GET    /v1/health/live, /v1/health/ready       liveness and readiness, open to probes without a token
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from hepstream.models.features import BranchSpec
from hepstream.serve.arrow_io import ARROW_STREAM, parse_arrow, scores_body
from hepstream.serve.datatypes import FEATURE_NUMBER
from hepstream.serve.errors import RequestError
from hepstream.serve.events import parse_events
from hepstream.serve.scoring import Serving
from hepstream.serve.watcher import not_served, pin_path, write_pin

if TYPE_CHECKING:
    from hepstream.models.store import LoadedModel

VERSION_HEADER = "X-Model-Version"
# Bodies up to this size are parsed on the event loop: a hop to a worker thread costs more than parsing a
# few events, and the GIL parses one request at a time anyway (figures in docs/http-api.md).
PARSE_ON_LOOP_BYTES = 16 * 1024
_NUMBER = FEATURE_NUMBER
_NUMBERS = {"type": "array", "items": _NUMBER}


def request_schemas(inputs: list[BranchSpec] | None) -> dict[str, dict]:
    """OpenAPI schemas of the request bodies; with the model's inputs, they name every branch it reads."""
    if inputs is None:
        event: dict = {"type": "object", "additionalProperties": {"anyOf": [_NUMBER, _NUMBERS]}}
        columns: dict = {"type": "object", "additionalProperties": {"type": "array"}}
    else:
        event = {"type": "object", "required": [b.name for b in inputs],
                 "properties": {b.name: _NUMBERS if b.jagged else _NUMBER for b in inputs}}
        columns = {"type": "object", "required": [b.name for b in inputs],
                   "properties": {b.name: {"type": "array", "items": _NUMBERS if b.jagged else _NUMBER} for b in inputs}}
    return {
        "Event": {**event, "description": "One event: each branch the model reads, a number or (jagged) an array"},
        "Rows": {"type": "object", "required": ["events"],
                 "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}}},
        "Columns": {"type": "object", "required": ["columns"], "properties": {"columns": columns}},
        "Pin": {"type": "object", "required": ["version"], "properties": {"version": {"type": "integer", "minimum": 1}}},
    }


_PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/Rows"},
                                              {"$ref": "#/components/schemas/Columns"}]}},
    ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}},
}}}
_PIN_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/Pin"}}}}}


def version_headers(model: LoadedModel) -> dict[str, str]:
    return {VERSION_HEADER: str(model.version)}


def v1_router(serving: Serving, max_events: int) -> APIRouter:
    router = APIRouter(prefix="/v1")
    store = serving.store
    pin_file = pin_path(store)

    @router.post("/models/{name}/predict", openapi_extra=_PREDICT_BODY,
                 summary="Scores for events in branch space; Arrow bodies are answered in Arrow")
    async def predict(name: str, request: Request, version: int | None = Query(None, ge=1)) -> Response:
        model = await serving.model(name, version)
        arrow_in = request.headers.get("content-type", "").startswith(ARROW_STREAM)
        try:
            body = await request.body()
            parse = parse_arrow if arrow_in else parse_events
            if len(body) <= PARSE_ON_LOOP_BYTES:
                batch = parse(body, model.inputs, max_events)
            else:  # long and CPU-bound: off the event loop, so health checks and other requests still answer
                batch = await serving.in_worker(parse, body, model.inputs, max_events)
            scores = await serving.score(model, batch)
        except RequestError as error:
            error.headers.update(version_headers(model))  # the inputs a 422 is about belong to this version
            raise
        if arrow_in or ARROW_STREAM in request.headers.get("accept", ""):
            return Response(scores_body(scores, name, model.version), media_type=ARROW_STREAM,
                            headers=version_headers(model))
        content = json.dumps({"model": name, "version": model.version, "scores": scores.tolist()}).encode()
        return Response(content, media_type="application/json", headers=version_headers(model))

    # Endpoints that only read the watcher are async: they answer on the event loop even while every
    # threadpool worker is busy, so health checks never queue behind predictions.
    @router.get("/models")
    async def list_models() -> dict:
        model = serving.watcher.current
        return {"models": [{"name": serving.model_name, "version": model.version if model is not None else None,
                            "ready": model is not None}]}

    @router.get("/models/{name}")
    def describe_model(name: str) -> JSONResponse:  # lists the store's folder: blocking, so a threadpool def
        model = serving.current(name)
        return JSONResponse({
            "name": name,
            "version": model.version,
            "versions": list(store.versions()),
            "pinned": serving.watcher.pinned,
            "promoted": model.meta.promoted,
            "promotion_reason": model.meta.promotion_reason,
            "validation": _finite_or_null(model.meta.validation),
            "not_served": not_served(store, model.version, serving.watcher.pinned),
            "events_trained": model.meta.events_seen,
            "metrics": _finite_or_null(model.meta.metrics),
            "inputs": [{"name": branch.name, "jagged": branch.jagged,
                        "type": "list<float64>" if branch.jagged else "float64"} for branch in model.inputs],
        }, headers=version_headers(model))

    @router.put("/models/{name}/pin", openapi_extra=_PIN_BODY, status_code=202,
                summary="Roll back: every replica serves this version within one poll interval")
    async def pin_version(name: str, request: Request) -> dict:
        serving.check_name(name)
        version = _pin_request(await request.body())
        versions = await serving.in_worker(store.versions)
        if version not in versions:
            raise RequestError(404, f"model {name!r} has no version {version}; versions on disk: {versions}",
                               "version")
        await serving.in_worker(write_pin, _writable(pin_file), version)
        return {"model": name, "pinned": version}

    @router.delete("/models/{name}/pin", status_code=202, summary="Follow the newest version again")
    async def unpin(name: str) -> dict:
        serving.check_name(name)
        await serving.in_worker(write_pin, _writable(pin_file), None)
        return {"model": name, "pinned": None}

    @router.get("/health/live")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        model = serving.watcher.current
        if model is None:
            return JSONResponse({"ready": False, "model": serving.model_name, "error": serving.watcher.why_none()},
                                status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"ready": True, "model": serving.model_name, "version": model.version})

    return router


def _pin_request(body: bytes) -> int:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise RequestError(400, 'expected a JSON object {"version": N}') from None
    version = document.get("version") if isinstance(document, dict) else None
    if type(version) is not int or version < 1:
        raise RequestError(422, f"version must be a positive integer, got {json.dumps(version)}", "version")
    return version


def _writable(pin_file: Path | None) -> Path:
    if pin_file is None:
        raise RequestError(501, "this model store has no folder to keep a pin in")
    return pin_file


def _finite_or_null(value: Any) -> Any:
    """Metrics can be NaN early in training (an AUC before both classes were seen); JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(item) for item in value]
    return value
