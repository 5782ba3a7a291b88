"""Wire format v1: one chunk of events per Kafka message.

Topics are shared and their bytes are untrusted, so a message is an Arrow IPC
stream (one record batch, compressed inside IPC) that any language can read,
never a pickle. The key is the chunk's identity, so a chunk published twice is
recognised downstream; the headers repeat what a consumer needs to route or
skip a message without decoding it. ``docs/wire-format.md`` is the spec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import awkward as ak
import numpy as np
import pyarrow as pa

from hepstream.wire_check import InvalidColumn, check_batch

FORMAT_VERSION = 1
CONTENT_TYPE = "application/vnd.apache.arrow.stream"


class WireError(ValueError):
    """A message that is not a valid v1 chunk; says which header or byte range is at fault."""


@dataclass(frozen=True, order=True)
class ChunkId:
    """Where a chunk came from: the entries ``[entry_start, entry_stop)`` of one tree of one file.

    The file is named by its ROOT UUID, not its URL, so the same file reached
    through another redirector or mirror gives the same identity.

    >>> ChunkId.from_key(ChunkId("6f1c", "Events", 0, 100).key())
    ChunkId(file_uuid='6f1c', tree='Events', entry_start=0, entry_stop=100)
    """

    file_uuid: str
    tree: str
    entry_start: int
    entry_stop: int

    def key(self) -> bytes:
        return f"{self.file_uuid}/{self.tree}/{self.entry_start}-{self.entry_stop}".encode()

    @classmethod
    def from_key(cls, key: bytes | None) -> ChunkId:
        try:
            text = key.decode()
            rest, entries = text.rsplit("/", 1)
            file_uuid, tree = rest.split("/", 1)
            start, stop = (int(part) for part in entries.split("-"))
        except (AttributeError, UnicodeDecodeError, ValueError):
            raise WireError(f"message key {key!r} is not '<file_uuid>/<tree>/<entry_start>-<entry_stop>'") from None
        return cls(file_uuid, tree, start, stop)


@dataclass(frozen=True)
class Chunk:
    """A decoded message: the events as an Arrow record batch, plus where they came from.

    ``file_entries`` is the number of entries in the chunk's tree, so a
    consumer can tell a file seen whole from a prefix; messages of producers
    older than this field decode with ``None``.
    """

    id: ChunkId
    dataset: str
    source: str
    batch: pa.RecordBatch
    label: int | None = None
    file_entries: int | None = None

    @property
    def events(self) -> int:
        return self.batch.num_rows


def awkward_to_batch(array: ak.Array) -> pa.RecordBatch:
    """Awkward record array (as uproot reads it) to one Arrow batch with plain, 32-bit-offset lists.

    The columns uproot gives for numeric branches, flat or jagged, are handed
    to Arrow directly, sharing awkward's buffers (only jagged offsets are
    narrowed to 32 bits); ``ak.to_arrow_table`` takes anything else. Both give
    the same batch, schema and metadata included, so the same message bytes:
    the direct route only skips per-column Python work, which on NanoAOD-like
    chunks is a share of reading worth saving (figures in ``docs/producing.md``).
    """
    direct = _numeric_record_batch(array.layout)
    if direct is not None:
        return direct
    table = ak.to_arrow_table(array, extensionarray=False, list_to32=True, string_to32=True)
    batches = table.combine_chunks().to_batches()
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return batches[0]


def _record_metadata(record) -> dict:
    """The schema metadata ``ak.to_arrow_table`` writes for a record array without options or parameters.

    awkward serialises the record's raw parameters, ``None`` or ``{}`` as the
    layout happens to hold them, and its ``parameters`` property turns a
    ``None`` into ``{}``: so this module reads ``_parameters`` only.
    """
    parameters = [{"optiontype_fields": []}, {"record_is_scalar": False}, {"RecordArray": record._parameters}]
    return {"ak:parameters": json.dumps(parameters)}


def _numbers(layout, start: int = 0, stop: int | None = None) -> pa.Array | None:
    """Entries ``[start, stop)`` of a one-dimensional numeric NumpyArray, over the same memory; else ``None``."""
    if not isinstance(layout, ak.contents.NumpyArray) or layout._parameters:
        return None
    data = layout.data[start:stop]
    if data.ndim != 1 or data.dtype.kind not in "iuf" or not data.dtype.isnative or not data.flags.c_contiguous:
        return None
    return pa.Array.from_buffers(pa.from_numpy_dtype(data.dtype), len(data), [None, pa.py_buffer(data)])


def _column(layout) -> pa.Array | None:
    """A flat or singly-jagged numeric column exactly as ``ak.to_arrow`` gives it (offsets from 0); else ``None``."""
    if not isinstance(layout, ak.contents.ListOffsetArray):
        return _numbers(layout)
    offsets = layout.offsets.data
    start, stop = int(offsets[0]), int(offsets[-1])
    values = None if layout._parameters else _numbers(layout.content, start, stop)
    if values is None or stop - start >= 2**31:
        return None
    offsets32 = (offsets - start if start else offsets).astype(np.int32)
    item = pa.list_(pa.field("item", values.type, nullable=False))
    return pa.Array.from_buffers(item, layout.length, [None, pa.py_buffer(offsets32)], children=[values])


def _numeric_record_batch(layout) -> pa.RecordBatch | None:
    if not isinstance(layout, ak.contents.RecordArray) or layout._parameters or layout.is_tuple:
        return None
    columns = [_column(content) for content in layout.contents]
    if not columns or any(c is None or len(c) != layout.length for c in columns):
        return None
    fields = [pa.field(name, c.type, nullable=False) for name, c in zip(layout.fields, columns)]
    return pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields, metadata=_record_metadata(layout)))


# lz4 at level -1, its first acceleration step: on NanoAOD-like chunks the same size as the default level for
# less CPU. Without Arrow's thread pool: a producer's reader threads already keep the cores busy, and handing
# each column to the pool costs more CPU for the same bytes (figures in docs/producing.md).
_IPC_OPTIONS = {
    "none": pa.ipc.IpcWriteOptions(compression=None, use_threads=False),
    "lz4": pa.ipc.IpcWriteOptions(compression=pa.Codec("lz4", compression_level=-1), use_threads=False),
    "zstd": pa.ipc.IpcWriteOptions(compression="zstd", use_threads=False),
}


def encode(chunk: Chunk, compression: str | None = "zstd") -> tuple[bytes, memoryview, list[tuple[str, bytes]]]:
    """Return ``(key, value, headers)`` ready for ``KafkaProducer.send``.

    The value is a read-only byte view of the Arrow buffer the IPC stream was
    written to (it compares equal to the same ``bytes``): copying megabytes
    into a ``bytes`` object would hold the GIL the reader threads need.
    """
    # Written by Arrow without the GIL and handed on without a copy. From the system allocator, not Arrow's
    # pool: a producer's message buffers then go back to the system once Kafka has copied them (a lower peak
    # memory for a little more CPU; figures in docs/producing.md).
    sink = pa.BufferOutputStream(memory_pool=pa.system_memory_pool())
    try:
        options = _IPC_OPTIONS[compression or "none"]
    except KeyError:
        raise ValueError(f"IPC compression {compression!r} is not one of {sorted(_IPC_OPTIONS)}") from None
    with pa.ipc.new_stream(sink, chunk.batch.schema, options=options) as writer:
        writer.write_batch(chunk.batch)
    headers = {
        "format_version": str(FORMAT_VERSION),
        "content_type": CONTENT_TYPE,
        "dataset": chunk.dataset,
        "source": chunk.source,
        "tree": chunk.id.tree,
        "entry_start": str(chunk.id.entry_start),
        "entry_stop": str(chunk.id.entry_stop),
        "events": str(chunk.events),
    }
    if chunk.label is not None:
        headers["label"] = str(chunk.label)
    if chunk.file_entries is not None:
        headers["file_entries"] = str(chunk.file_entries)
    value = memoryview(sink.getvalue()).cast("B").toreadonly()
    return chunk.id.key(), value, [(name, text.encode()) for name, text in headers.items()]


def _header_map(headers) -> dict[str, str]:
    try:
        return {name: bytes(value).decode() for name, value in (headers or [])}
    except (TypeError, ValueError, UnicodeDecodeError) as error:
        raise WireError(f"headers are not UTF-8 name/value pairs: {error}") from None


def _int_header(headers: dict[str, str], name: str) -> int:
    try:
        return int(headers[name])
    except KeyError:
        raise WireError(f"header {name!r} is missing") from None
    except ValueError:
        raise WireError(f"header {name!r} is {headers[name]!r}, not an integer") from None


def decode(key: bytes | None, value: bytes | None, headers) -> Chunk:
    """Parse and check one message; any defect raises :class:`WireError` naming the header, byte offset or column.

    The batch's buffers are validated in full (:mod:`hepstream.wire_check`),
    so what this returns is safe to hand to numpy and torch.
    """
    meta = _header_map(headers)
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise WireError(f"header 'format_version' is {version!r}; this reader understands {FORMAT_VERSION!r}")
    if meta.get("content_type") != CONTENT_TYPE:
        raise WireError(f"header 'content_type' is {meta.get('content_type')!r}, expected {CONTENT_TYPE!r}")
    chunk_id = ChunkId.from_key(key)
    if not value:
        raise WireError("message value is empty")
    reader = None
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(value))
        batches = list(reader)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as error:
        raise WireError(f"value ({len(value)} bytes) is not an Arrow IPC stream: {error}") from None
    if len(batches) != 1:
        raise WireError(f"value holds {len(batches)} record batches; v1 carries exactly one")
    batch = batches[0]
    declared = _int_header(meta, "events")
    if declared != batch.num_rows:
        raise WireError(f"header 'events' says {declared} but the record batch has {batch.num_rows} rows")
    try:
        check_batch(batch)
    except InvalidColumn as error:
        raise WireError(f"record batch of {chunk_id.key().decode()!r}: {error}") from None
    label = _int_header(meta, "label") if "label" in meta else None
    file_entries = _int_header(meta, "file_entries") if "file_entries" in meta else None
    return Chunk(chunk_id, meta.get("dataset", ""), meta.get("source", ""), batch, label, file_entries)
