"""Arrow IPC request and answer bodies, for batches too large to send as JSON.

A client that already holds columns (uproot, awkward, pandas, Arrow in C++ or
Java) sends them as one Arrow IPC stream (``application/vnd.apache.arrow.stream``)
and gets the scores back the same way: a stream with one ``score`` column in the
order of the events, the model and version in its schema metadata. No JSON is
built or parsed on either side: reading and checking a stream costs a
fraction of the model's forward pass over the same events (figures in
``docs/http-api.md``).

The body comes from an untrusted client, so the stream is read with Arrow's
own reader (no pickle: extension types are not unpickled) and each column is
validated in full before numpy looks at its buffers; then the same rules as
for JSON apply, a column of the wrong type, with nulls, with NaN or an
infinity, or with a value beyond the float32 of the model's features
(:mod:`hepstream.serve.datatypes`) being a 422 that names the branch and event.

>>> from hepstream.models.features import BranchSpec
>>> body = write_stream(pa.record_batch({"MET_pt": pa.array([41, 7], pa.int32()), "Muon_pt": [[51.0], []]}))
>>> parse_arrow(body, [BranchSpec("MET_pt", False), BranchSpec("Muon_pt", True)], 10).to_pydict()
{'MET_pt': [41.0, 7.0], 'Muon_pt': [[51.0], []]}
>>> scores, model, version = read_scores(scores_body(np.array([0.25, 0.5], np.float32), "demo", 7))
>>> scores.tolist(), model, version
([0.25, 0.5], 'demo', 7)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from hepstream.models.features import BranchSpec
from hepstream.serve.datatypes import check_features
from hepstream.serve.errors import RequestError
from hepstream.serve.events import check_count, input_schema

ARROW_STREAM = "application/vnd.apache.arrow.stream"
_FLAT = pa.float64()
_JAGGED = pa.list_(pa.float64())


def parse_arrow(body: bytes, inputs: Sequence[BranchSpec], max_events: int) -> pa.RecordBatch:
    """The model's input columns from an Arrow IPC stream, checked and cast to float64."""
    try:
        table = pa.ipc.open_stream(body).read_all()
    except (pa.ArrowException, OSError, ValueError) as error:
        raise RequestError(400, f"request body is not an Arrow IPC stream: {error}") from None
    check_count(table.num_rows, max_events, "body")
    names = table.schema.names
    columns = []
    for branch in inputs:
        if names.count(branch.name) != 1:
            what = "missing" if branch.name not in names else "sent more than once"
            raise RequestError(422, f"branch {branch.name!r} is {what} (the model reads "
                                    f"{', '.join(b.name for b in inputs)})", branch.name)
        column = table.column(branch.name)
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()  # one batch: no copy
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as error:
            raise RequestError(400, f"column {branch.name} is not valid Arrow data: {error}", branch.name) from None
        columns.append(_jagged(column, branch.name) if branch.jagged else _flat(column, branch.name))
    return pa.RecordBatch.from_arrays(columns, schema=input_schema(inputs))


def _numeric(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)


def _flat(column: pa.Array, name: str) -> pa.Array:
    if not _numeric(column.type):
        raise RequestError(422, f"{name} must be a column of numbers, got Arrow type {column.type}", name)
    _no_nulls(column, name)
    doubles = column if column.type == _FLAT else column.cast(_FLAT, safe=False)
    check_features(doubles.to_numpy(zero_copy_only=False), lambda event: f"{name}[{event}]", 422)
    return doubles


def _jagged(column: pa.Array, name: str) -> pa.Array:
    type_ = column.type
    lists = pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_)
    if not (lists and (_numeric(type_.value_type) or pa.types.is_null(type_.value_type))):
        raise RequestError(422, f"{name} is a jagged branch and must be a list<number> column, "
                                f"got Arrow type {type_}", name)
    _no_nulls(column, name)
    lists = column if column.type == _JAGGED else column.cast(_JAGGED, safe=False)
    values = lists.flatten()
    offsets = lists.offsets.to_numpy()
    if values.null_count:
        first = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise RequestError(422, f"{name} holds a null value", _event(name, offsets, first))
    starts = offsets - offsets[0]
    check_features(values.to_numpy(zero_copy_only=False), lambda k: _event(name, starts, k), 422)
    return lists


def _no_nulls(column: pa.Array, name: str) -> None:
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise RequestError(422, f"{name} is null in {column.null_count} event(s)", f"{name}[{first}]")


def _event(name: str, offsets: np.ndarray, k: int) -> str:
    """The field of the ``k``-th value of a column whose events start at ``offsets``."""
    return f"{name}[{int(np.searchsorted(offsets, k, side='right')) - 1}]"


def write_stream(batch: pa.RecordBatch | pa.Table) -> bytes:
    """One Arrow IPC stream holding ``batch``: how requests and answers travel."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write(batch)
    return sink.getvalue().to_pybytes()


def scores_body(scores: np.ndarray, model: str, version: int) -> bytes:
    """The answer to an Arrow request: a ``score`` column, with the model and version in the metadata."""
    column = pa.array(scores.ravel(), pa.float32())
    if scores.ndim == 2:  # one probability per class: a fixed-size list per event
        column = pa.FixedSizeListArray.from_arrays(column, scores.shape[1])
    schema = pa.schema([pa.field("score", column.type)], metadata={"model": model, "version": str(version)})
    return write_stream(pa.record_batch([column], schema=schema))


def read_scores(body: bytes) -> tuple[np.ndarray, str, int]:
    """Scores, model and version from an Arrow answer; what a Python client does with one."""
    table = pa.ipc.open_stream(body).read_all()
    metadata = table.schema.metadata
    column = table.column("score").combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        scores = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
    else:
        scores = column.to_numpy()
    return scores, metadata[b"model"].decode(), int(metadata[b"version"])
