"""Messages that decode as Arrow IPC but carry broken buffers or foreign types, built by hand.

Arrow's own writer refuses most broken arrays, so each poison is either an
array whose buffer is changed after Arrow checked it, or a valid message
whose IPC bytes are patched where the broken value sits (lengths in the
metadata, offsets in the body). Each builder returns ``(column, key, value,
headers)`` as ``wire.encode`` gives them, ``column`` being the one at fault.
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa

from hepstream import wire

ROWS = 64
_ITEM = pa.field("item", pa.float32(), nullable=False)


def _message(columns: dict[str, pa.Array], chunk_id: wire.ChunkId, label: int | None, compression=None):
    batch = pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))
    return wire.encode(wire.Chunk(chunk_id, "poison", "hand-made", batch, label), compression)


def _patched(value, old: bytes, new: bytes) -> bytes:
    data = bytes(value)
    assert data.count(old) == 1, f"the bytes to patch occur {data.count(old)} times"
    return data.replace(old, new)


def _offsets() -> np.ndarray:
    return np.arange(0, 3 * ROWS + 1, 3, dtype=np.int32)  # three items per row


def _jagged(offsets: np.ndarray) -> pa.Array:
    values = pa.array(np.linspace(1.0, 2.0, 3 * ROWS, dtype=np.float32))
    return pa.Array.from_buffers(pa.list_(_ITEM), ROWS, [None, pa.py_buffer(offsets)], children=[values])


def offsets_backwards(column, chunk_id, label):
    offsets = _offsets()
    array = _jagged(offsets)
    offsets[5], offsets[6] = offsets[6], offsets[5]  # after Arrow checked them: row 5 now ends before it starts
    return _message({column: array}, chunk_id, label, "zstd")


def _offsets_patched(column, chunk_id, label, change):
    offsets = _offsets()
    key, value, headers = _message({column: _jagged(offsets)}, chunk_id, label)
    bad = offsets.copy()
    change(bad)
    return key, _patched(value, offsets.tobytes(), bad.tobytes()), headers


def offsets_past_child(column, chunk_id, label):
    return _offsets_patched(column, chunk_id, label, lambda o: o.__setitem__(-1, o[-1] + 1000))


def negative_first_offset(column, chunk_id, label):
    return _offsets_patched(column, chunk_id, label, lambda o: o.__setitem__(0, -7))


def _length_patched(columns, chunk_id, label, length: int, new_length: int, node: int):
    """Patch the length of IPC field node ``node`` (depth first; all ``length`` rows, no nulls) to ``new_length``.

    The nodes are the only runs of ``(length, 0)`` as two little-endian int64
    in the message, the batch's own length being followed by other fields.
    """
    key, value, headers = _message(columns, chunk_id, label)
    run = struct.pack("<qq", length, 0)
    data = bytearray(value)
    starts = [at for at in range(len(data)) if data.startswith(run, at)]
    assert len(starts) == sum(1 for _ in _nodes(columns)), starts
    data[starts[node]:starts[node] + 8] = struct.pack("<q", new_length)
    return key, bytes(data), headers


def _nodes(columns):
    for array in columns.values():
        yield array
        if pa.types.is_struct(array.type):
            yield from (array.field(i) for i in range(array.type.num_fields))


def struct_child_short(column, chunk_id, label):
    # An unusual row count, so the field nodes are the only 16-byte runs of (length, 0).
    rows = 7919
    array = pa.StructArray.from_arrays([pa.array(np.zeros(rows, np.int32))], ["Px"])
    return _length_patched({column: array}, chunk_id, label, rows, rows - 5, 1)


def truncated_buffer(column, chunk_id, label):
    rows = 7919
    array = pa.StructArray.from_arrays([pa.array(np.arange(rows, dtype=np.float64))], ["E"])
    # The child now says 11919 rows, but its buffer holds 7919 numbers.
    return _length_patched({column: array}, chunk_id, label, rows, rows + 4000, 1)


def unsupported_type(column, chunk_id, label):
    array = pa.array([f"tag{i % 3}" for i in range(ROWS)]).dictionary_encode()
    return _message({column: array}, chunk_id, label, "zstd")


POISONS = {
    "offsets running backwards": offsets_backwards,
    "offsets past the child's end": offsets_past_child,
    "negative first offset": negative_first_offset,
    "child shorter than its parent": struct_child_short,
    "truncated buffer": truncated_buffer,
    "unsupported type": unsupported_type,
}
