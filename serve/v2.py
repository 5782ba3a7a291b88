"""The Open Inference Protocol (KServe v2 REST), so Triton and KServe clients work unchanged.

Each branch the model reads is one named input tensor, its first dimension
the events:

- a flat branch (``MET_pt``) is a tensor of shape ``[N]`` or ``[N, 1]``;
- a jagged branch (``Muon_pt``) is a dense ``[N, K]`` tensor, each row padded
  on the right with NaN after the event's last object (``K`` is up to the
  client: the longest collection it sends). NaN anywhere else is refused.

``BOOL`` and every integer and floating datatype are accepted (not
``BYTES``: branches are numbers), and each value must be one of its
datatype's (``1000`` is no ``INT8``, ``1.5`` no ``INT32``) and fit the
float32 the model's features are computed in (:mod:`hepstream.serve.datatypes`);
the output is one ``FP32`` tensor ``score`` of shape ``[N]``. Tensor data may come as JSON (``data``) or
in the binary tensor extension that ``tritonclient`` uses by default (the JSON
header's length in ``Inference-Header-Content-Length``, the raw tensors after
it), and the answer is binary when the request asks for it.

A tensor that cannot be read (unknown or missing input, wrong datatype or
shape, data that does not fill the shape, a value its datatype or float32
cannot hold, NaN where none is allowed) is a 400 whose ``field`` names the
input, as ``inputs.MET_pt``, or the value, as ``inputs.Muon_pt[3][1]``.
"""

from __future__ import annotations

import json
import math
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from hepstream import __version__
from hepstream.serve.datatypes import DATATYPES, FieldAt, check_features
from hepstream.models.features import BranchSpec
from hepstream.serve.errors import RequestError
from hepstream.serve.events import check_count, input_schema
from hepstream.serve.scoring import Serving
from hepstream.serve.v1 import version_headers

if TYPE_CHECKING:
    from hepstream.models.store import LoadedModel

HEADER_LENGTH = "Inference-Header-Content-Length"
OUTPUT = "score"


def request_schemas(inputs: list[BranchSpec] | None) -> dict[str, dict]:
    """OpenAPI schema of an inference request; with the model's inputs, its tensor names are theirs."""
    name = {"type": "string"} if inputs is None else {"type": "string", "enum": [b.name for b in inputs]}
    tensor = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
        "name": name,
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 2},
        "datatype": {"type": "string", "enum": list(DATATYPES)},
        "data": {"type": "array", "items": {"anyOf": [{"type": ["number", "boolean"]},
                                                      {"type": "array", "items": {"type": ["number", "boolean"]}}]}},
    }}
    return {"InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": tensor},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string"}}}},
    }}}


_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}


def v2_router(serving: Serving, max_events: int) -> APIRouter:
    router = APIRouter(prefix="/v2")

    def metadata(model: LoadedModel, name: str) -> dict:
        return {"name": name, "versions": [str(model.version)], "platform": "hepstream",
                "inputs": [{"name": b.name, "datatype": "FP64", "shape": [-1, -1] if b.jagged else [-1]}
                           for b in model.inputs],
                "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1]}]}

    @router.get("")
    async def server_metadata() -> dict:
        return {"name": "hepstream", "version": __version__, "extensions": ["binary_tensor_data"]}

    @router.get("/health/live")
    async def live() -> dict:
        return {"live": True}

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        is_ready = serving.watcher.current is not None
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    async def model_ready(name: str, version: int | None = None) -> JSONResponse:
        model = await serving.model(name, version)
        return JSONResponse({"name": name, "ready": True}, headers=version_headers(model))

    async def model_metadata(name: str, version: int | None = None) -> JSONResponse:
        model = await serving.model(name, version)
        return JSONResponse(metadata(model, name), headers=version_headers(model))

    async def infer(name: str, request: Request, version: int | None = None) -> Response:
        model = await serving.model(name, version)
        try:
            document, binary = _split_body(await request.body(), request.headers.get(HEADER_LENGTH))
            binary_out = _binary_output(document)
            batch = _tensors_to_batch(document, binary, model.inputs, max_events)
            scores = (await serving.score(model, batch)).astype(np.float32, copy=False)
        except RequestError as error:
            error.headers.update(version_headers(model))
            raise
        answer = {"model_name": name, "model_version": str(model.version),
                  "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": list(scores.shape)}]}
        if isinstance(document.get("id"), str):
            answer["id"] = document["id"]
        if not binary_out:
            answer["outputs"][0]["data"] = scores.ravel().tolist()  # row-major, as the protocol flattens tensors
            return JSONResponse(answer, headers=version_headers(model))
        answer["outputs"][0]["parameters"] = {"binary_data_size": scores.nbytes}
        header = json.dumps(answer).encode()
        return Response(header + scores.tobytes(), media_type="application/octet-stream",
                        headers={**version_headers(model), HEADER_LENGTH: str(len(header))})

    # The same handlers for the newest version and, under /versions/{version}, for a pinned one.
    for prefix in ("/models/{name}", "/models/{name}/versions/{version}"):
        router.add_api_route(prefix, model_metadata, methods=["GET"])
        router.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        router.add_api_route(prefix + "/infer", infer, methods=["POST"], openapi_extra=_INFER_BODY)
    return router


def _split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON inference request and the binary tensor data after it, if any."""
    size = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(400, f"{HEADER_LENGTH} must be a byte count within the body ({len(body)} bytes), "
                                    f"got {header_length!r}", HEADER_LENGTH)
        size = int(header_length)
    try:
        document = json.loads(body[:size])
    except (ValueError, RecursionError) as error:
        raise RequestError(400, f"inference request is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise RequestError(400, 'expected an inference request {"inputs": [{"name", "shape", "datatype", "data"}]}',
                           "inputs")
    return document, body[size:]


def _binary_output(document: dict) -> bool:
    outputs = document.get("outputs") or []
    if not isinstance(outputs, list):
        raise RequestError(400, "outputs must be an array of {\"name\": ...}", "outputs")
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or output.get("name") != OUTPUT:
            raise RequestError(400, f"unknown output; this model has one output, {OUTPUT!r}", f"outputs[{index}]")
    parameters = document.get("parameters")
    wanted = [isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True for o in outputs]
    return any(wanted) or (isinstance(parameters, dict) and parameters.get("binary_data_output") is True)


def _tensors_to_batch(document: dict, binary: bytes, inputs: list[BranchSpec], max_events: int) -> pa.RecordBatch:
    tensors = {}
    offset = 0
    for index, tensor in enumerate(document["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestError(400, "each input must be an object with a name", f"inputs[{index}]")
        name = tensor["name"]
        if name in tensors:
            raise RequestError(400, f"input {name!r} is given twice", f"inputs.{name}")
        tensors[name], offset = _read_tensor(tensor, binary, offset, f"inputs.{name}")
    if offset != len(binary):
        raise RequestError(400, f"{len(binary) - offset} bytes of binary data belong to no input", "body")
    names = [b.name for b in inputs]
    unknown = sorted(set(tensors) - set(names))
    if unknown:
        raise RequestError(400, f"unknown input {unknown[0]!r}; the model reads {', '.join(names)}",
                           f"inputs.{unknown[0]}")
    missing = [name for name in names if name not in tensors]
    if missing:
        raise RequestError(400, f"missing input {missing[0]!r}; the model reads {', '.join(names)}",
                           f"inputs.{missing[0]}")
    counts = {name: tensors[name].shape[0] for name in names}
    if len(set(counts.values())) > 1:
        raise RequestError(400, f"inputs disagree on the number of events: {counts}", f"inputs.{names[-1]}")
    check_count(counts[names[0]] if names else 0, max_events, "inputs")
    columns = [_jagged(tensors[b.name], f"inputs.{b.name}") if b.jagged else _flat(tensors[b.name], f"inputs.{b.name}")
               for b in inputs]
    return pa.RecordBatch.from_arrays(columns, schema=input_schema(inputs))


def _read_tensor(tensor: dict, binary: bytes, offset: int, field: str) -> tuple[np.ndarray, int]:
    """The tensor as a float64 array of its declared shape, and the binary offset after its data."""
    name = tensor.get("datatype")
    datatype = DATATYPES.get(name) if isinstance(name, str) else None
    if datatype is None:
        raise _bad(field, f"datatype must be one of {', '.join(DATATYPES)}, got {name!r}")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and 1 <= len(shape) <= 2 and all(type(d) is int and d >= 0 for d in shape)):
        raise _bad(field, f"shape must be [events] or [events, values] of non-negative integers, got {shape!r}")
    size = math.prod(shape)
    locate = _locate(field, shape)
    parameters = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
    binary_size = parameters.get("binary_data_size")
    if binary_size is not None:
        if type(binary_size) is not int or binary_size < 0 or offset + binary_size > len(binary):
            raise _bad(field, f"binary_data_size {binary_size!r} runs past the body")
        raw = binary[offset:offset + binary_size]
        offset += binary_size
        if len(raw) != size * datatype.dtype.itemsize:
            raise _bad(field, f"{len(raw)} bytes of data do not fill shape {shape} of {name}")
        values = datatype.from_bytes(raw, locate, 400)
    else:
        values = datatype.from_json(_json_values(tensor.get("data"), shape, field), locate, 400)
    return values.reshape(shape), offset


def _json_values(data: Any, shape: list[int], field: str) -> list:
    """A tensor's JSON data in row-major order, from flat data or data nested by row."""
    if not isinstance(data, list):
        raise _bad(field, "data must be an array of numbers (flat or nested by row)")
    if data and all(type(row) is list for row in data):
        if len(shape) != 2 or any(len(row) != shape[1] for row in data):
            raise _bad(field, f"data nested by row must have shape [events, values], one row of values "
                              f"per event; got shape {shape} and rows of {sorted({len(row) for row in data})} values")
        data = list(chain.from_iterable(data))
    if len(data) != math.prod(shape):
        raise _bad(field, f"{len(data)} values do not fill shape {shape}")
    return data


def _locate(field: str, shape: list[int]) -> FieldAt:
    """The field of a tensor's value by its row-major position: inputs.Muon_pt[event][object]."""
    if len(shape) == 1:
        return lambda position: f"{field}[{position}]"
    return lambda position: f"{field}[{position // shape[1]}][{position % shape[1]}]"


def _flat(tensor: np.ndarray, field: str) -> pa.Array:
    if tensor.ndim == 2 and tensor.shape[1] != 1:
        raise _bad(field, f"a flat branch takes shape [events] or [events, 1], got {list(tensor.shape)}")
    values = tensor.reshape(-1)
    check_features(values, lambda event: f"{field}[{event}]", 400)
    return pa.array(values, type=pa.float64())


def _jagged(tensor: np.ndarray, field: str) -> pa.Array:
    if tensor.ndim != 2:
        raise _bad(field, f"a jagged branch takes shape [events, objects] padded with NaN, "
                                f"got {list(tensor.shape)}")
    present = ~np.isnan(tensor)
    counts = present.sum(axis=1)
    if not np.array_equal(present, np.arange(tensor.shape[1]) < counts[:, None]):
        row = int(np.flatnonzero((present != (np.arange(tensor.shape[1]) < counts[:, None])).any(axis=1))[0])
        raise _bad(field, f"NaN is only allowed as padding after an event's last object (event {row})")
    values = tensor[present]
    locate = _locate(field, list(tensor.shape))
    check_features(values, lambda k: locate(int(np.flatnonzero(present.ravel())[k])), 400)
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.float64()))


def _bad(field: str, message: str) -> RequestError:
    """A 400 about one tensor; the message starts with it too, since OIP clients show only the message."""
    return RequestError(400, f"{field}: {message}", field)
