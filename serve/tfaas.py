"""TFaaS compatibility: ``POST /json`` as the TFaaS Go server and its clients speak it.

A TFaaS client sends one event as parallel arrays of feature names and values,
and gets back the model's probabilities as a bare JSON array::

    {"keys": ["MET_pt", "nMuon", "Muon_pt"], "values": [41.2, 2, [51.0, 33.2]], "model": "demo"}
    -> [0.9132]

so a TFaaS user switches to hepstream by changing the URL. ``model`` may be
left out (TFaaS then uses its current model); a jagged branch's value is an
array. The answer stays a bare array for those clients, so the version is in
the ``X-Model-Version`` header only. Errors name the field: ``values[2]`` for
the value of the third key, ``keys`` for a branch the model reads that is not
among them.
"""

from __future__ import annotations

import json

import pyarrow as pa
from fastapi import APIRouter, Request
from fastapi.responses import Response

from hepstream.serve.datatypes import FEATURE_NUMBER
from hepstream.models.features import BranchSpec
from hepstream.serve.errors import RequestError
from hepstream.serve.events import batch_of
from hepstream.serve.scoring import Serving
from hepstream.serve.v1 import version_headers


def request_schemas(inputs: list[BranchSpec] | None) -> dict[str, dict]:
    """OpenAPI schema of a TFaaS row; with the model's inputs, its keys are exactly the branches it reads."""
    keys: dict = {"type": "array", "items": {"type": "string"}}
    values: dict = {"type": "array", "items": {"anyOf": [FEATURE_NUMBER, {"type": "array", "items": FEATURE_NUMBER}]}}
    if inputs is not None:
        count = {"minItems": len(inputs), "maxItems": len(inputs)}
        keys = {**keys, **count, "uniqueItems": True, "items": {"type": "string", "enum": [b.name for b in inputs]}}
        values = {**values, **count}
    return {"TfaasRow": {"type": "object", "required": ["keys", "values"], "properties": {
        "keys": keys, "values": values, "model": {"type": "string"}}}}


_JSON_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/TfaasRow"}}}}}


def tfaas_router(serving: Serving) -> APIRouter:
    router = APIRouter()

    @router.post("/json", openapi_extra=_JSON_BODY, summary="TFaaS-compatible prediction of one event")
    async def predict(request: Request) -> Response:
        document = _row(await request.body())
        model = await serving.model(document.get("model", serving.model_name), field="model")
        try:
            batch = await serving.in_worker(_batch, document, model.inputs)
            scores = await serving.score(model, batch)
        except RequestError as error:
            error.headers.update(version_headers(model))
            raise
        return Response(json.dumps(scores.tolist()).encode(), media_type="application/json",
                        headers=version_headers(model))

    return router


def _row(body: bytes) -> dict:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise RequestError(400, f"request body is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list) \
            or not isinstance(document.get("values"), list):
        raise RequestError(400, 'expected {"keys": [names], "values": [values], "model": name}', "keys")
    if not isinstance(document.get("model", ""), str):
        raise RequestError(400, "model must be a string", "model")
    return document


def _batch(document: dict, inputs: list[BranchSpec]) -> pa.RecordBatch:
    keys, values = document["keys"], document["values"]
    if len(keys) != len(values):
        raise RequestError(422, f"{len(keys)} keys but {len(values)} values", "values")
    position = {key: index for index, key in enumerate(keys) if isinstance(key, str)}
    names = [b.name for b in inputs]
    missing = [name for name in names if name not in position]
    if missing:
        raise RequestError(422, f"missing key {missing[0]!r}; the model reads {', '.join(names)}", "keys")
    return batch_of(inputs, [[values[position[name]]] for name in names],
                    lambda name, _event: f"values[{position[name]}]")
