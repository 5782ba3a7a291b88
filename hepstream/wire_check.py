"""Checks a decoded record batch before anything reads its buffers.

An IPC reader trusts the lengths and offsets a message declares; numpy and
torch then index memory with them. A message whose offsets run backwards or
past their child can crash a consumer or read other memory, and would do so
again on every restart from the same offset. So :func:`wire.decode` checks
every column with Arrow's full validation (offsets monotone and inside their
child, child and validity buffers as long as the lengths say, UTF-8 valid)
and allows only the Arrow types the producer emits. Full validation costs
little beside decoding (figures in ``docs/wire-format.md``), so nothing less
is checked.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.types as pat


class InvalidColumn(ValueError):
    """A column whose type or buffers the wire format does not allow; names the column and what is wrong."""


def _is_leaf(kind: pa.DataType) -> bool:
    return (pat.is_boolean(kind) or pat.is_integer(kind) or pat.is_float32(kind) or pat.is_float64(kind)
            or pat.is_string(kind) or pat.is_binary(kind))


def unsupported_type(kind: pa.DataType, path: str = "") -> str | None:
    """The first type inside ``kind`` the producer never emits, with where it sits (``item.px: float16``)."""
    if _is_leaf(kind):
        return None
    if pat.is_list(kind) or pat.is_fixed_size_list(kind):
        return unsupported_type(kind.value_type, f"{path}.item")
    if pat.is_struct(kind):
        found = (unsupported_type(field.type, f"{path}.{field.name}") for field in kind)
        return next(filter(None, found), None)
    return f"{kind} at {path[1:]}" if path else str(kind)


def check_batch(batch: pa.RecordBatch) -> None:
    """Raise :class:`InvalidColumn` for the first column of ``batch`` with a disallowed type or broken buffers."""
    for field, column in zip(batch.schema, batch.columns):
        found = unsupported_type(field.type)
        if found:
            raise InvalidColumn(f"column {field.name!r}: type {found} is not one the wire format allows")
        try:
            column.validate(full=True)
        except (pa.ArrowInvalid, pa.ArrowException) as error:
            raise InvalidColumn(f"column {field.name!r} ({field.type}): {error}") from None
        if len(column) != batch.num_rows:
            raise InvalidColumn(f"column {field.name!r} has {len(column)} rows, the batch {batch.num_rows}")
