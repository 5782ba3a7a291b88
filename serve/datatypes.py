"""Whether a request's values fit the type they are declared as, checked in one place for every protocol.

Every protocol turns request values into float64 branch values for the
model. Two types can refuse a value on the way:

- the type the client declares: an Open Inference Protocol tensor's
  ``datatype`` (:data:`DATATYPES`). ``1000`` is no ``INT8`` and ``1.5`` no
  ``INT32``; numpy would wrap the one and truncate the other without a word.
- float32, the type models compute their features in
  (:mod:`hepstream.models.features`), for values from any protocol
  (:data:`FEATURES`). A finite ``1e308`` becomes an infinity there, and
  the model would refuse it as if the client had sent one.

Each refusal is a :class:`RequestError` with the caller's status (the
Open Inference Protocol answers 400, the native API 422) whose message starts
with the field, then says the value and the type:

>>> locate = lambda index: f"inputs.nMuon[{index}]"
>>> DATATYPES["INT8"].from_json([3, 1000], locate, 400)
Traceback (most recent call last):
...
hepstream.serve.errors.RequestError: inputs.nMuon[1]: 1000 is out of range for INT8, which holds integers from -128 to 127
>>> check_features(np.array([41.2, 1e308]), lambda index: f"events[{index}].MET_pt", 422)
Traceback (most recent call last):
...
hepstream.serve.errors.RequestError: events[1].MET_pt: 1e+308 is too large for float32, which holds numbers up to ±3.4028235e+38 (the type of the model's features)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hepstream.serve.errors import RequestError

FieldAt = Callable[[int], str]  # position among the values checked -> the field's path in the request
_SHOWN_CHARACTERS = 40  # a value longer than this (10**400) is shown cut, with its length


@dataclass(frozen=True)
class Datatype:
    """A value type by the name a request gives it, and what its values may be."""

    name: str
    dtype: np.dtype
    note: str = ""  # why this type applies, when the request did not name it

    @property
    def holds(self) -> str:
        """The values of this type, in words, for messages."""
        if self.dtype.kind == "b":
            return "true or false (in binary data, bytes 0 and 1)"
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            return f"integers from {info.min} to {info.max}"
        return f"numbers up to ±{float(np.finfo(self.dtype).max):.8g}"

    def from_json(self, values: Sequence[Any], locate: FieldAt, status: int) -> np.ndarray:
        """JSON values declared of this type, as float64; null (as NaN) and infinities pass for floating types."""
        # bool is no int here; JSON has no NaN, so a floating tensor's padding is null
        kinds = {"b": {bool}, "i": {int}, "u": {int}, "f": {int, float, type(None)}}[self.dtype.kind]
        if not set(map(type, values)) <= kinds:
            index = next(i for i, value in enumerate(values) if type(value) not in kinds)
            raise self._refused(values[index], "is not", locate(index), status)
        if self.dtype.kind in "iu" and values:
            info = np.iinfo(self.dtype)
            if min(values) < info.min or max(values) > info.max:
                index = next(i for i, value in enumerate(values) if not info.min <= value <= info.max)
                raise self._refused(values[index], "is out of range for", locate(index), status)
        try:
            doubles = np.array(values, dtype=np.float64)
        except OverflowError:  # an integer beyond float64, which Python's json reads exactly
            index = next(i for i, value in enumerate(values) if not _fits_double(value))
            raise self._refused(values[index], "is too large for", locate(index), status) from None
        self.check_range(doubles, locate, status)
        return doubles

    def from_bytes(self, raw: bytes, locate: FieldAt, status: int) -> np.ndarray:
        """Binary tensor data of this type, as float64; a BOOL is one byte, 0 or 1."""
        if self.dtype.kind == "b":
            codes = np.frombuffer(raw, dtype=np.uint8)
            if (codes > 1).any():
                index = int(np.flatnonzero(codes > 1)[0])
                raise self._refused(int(codes[index]), "is not", locate(index), status)
        return np.frombuffer(raw, dtype=self.dtype).astype(np.float64)

    def check_range(self, doubles: np.ndarray, locate: FieldAt, status: int) -> None:
        """Refuse finite values that this floating type rounds to an infinity; integer types are checked exactly."""
        if self.dtype.kind != "f" or self.dtype == np.float64 or not doubles.size:
            return
        largest = float(np.finfo(self.dtype).max)
        if np.fmax.reduce(doubles) <= largest and np.fmin.reduce(doubles) >= -largest:
            return  # the common case, without the copy below (fmax and fmin pass NaN over)
        with np.errstate(over="ignore"):
            overflows = np.isinf(doubles.astype(self.dtype)) & np.isfinite(doubles)
        if overflows.any():
            index = int(np.flatnonzero(overflows)[0])
            raise self._refused(doubles[index], "is too large for", locate(index), status)

    def _refused(self, value: Any, problem: str, field: str, status: int) -> RequestError:
        message = f"{field}: {_show(value)} {problem} {self.name}, which holds {self.holds}{self.note}"
        if self.dtype.kind != "f" and isinstance(value, float) and value != value:
            message += "; pad a jagged branch with NaN in a floating datatype (FP32, FP64)"
        return RequestError(status, message, field)


DATATYPES = {datatype.name: datatype for datatype in (
    Datatype(name, np.dtype(dtype)) for name, dtype in [
        ("BOOL", np.bool_), ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64),
        ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32), ("UINT64", np.uint64),
        ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64)])}
"""The Open Inference Protocol's datatypes a branch can be sent in (not BYTES: branches are numbers)."""

FEATURES = Datatype("float32", np.dtype(np.float32), " (the type of the model's features)")
FEATURE_NUMBER = {"type": "number", "minimum": -float(np.finfo(np.float32).max),
                  "maximum": float(np.finfo(np.float32).max)}
"""The OpenAPI schema of a branch value sent as a JSON number: what float32 holds."""


def check_features(doubles: np.ndarray, locate: FieldAt, status: int) -> None:
    """Refuse NaN and infinities, then finite values beyond float32, each with its own message."""
    check_finite(doubles, locate, status)
    FEATURES.check_range(doubles, locate, status)


def check_finite(doubles: np.ndarray, locate: FieldAt, status: int) -> None:
    finite = np.isfinite(doubles)
    if not finite.all():
        index = int(np.flatnonzero(~finite)[0])
        field = locate(index)
        raise RequestError(status, f"{field}: {_show(doubles[index])} is not accepted; values must be finite numbers",
                           field)


def _fits_double(number: int | float) -> bool:
    try:
        float(number)
    except OverflowError:
        return False
    return True


def _show(value: Any) -> str:
    """A value as the client wrote it (JSON), cut when long."""
    if isinstance(value, np.generic):
        value = value.item()
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > _SHOWN_CHARACTERS:
        text = f"{text[:_SHOWN_CHARACTERS - 10]}... ({len(text)} characters)"
    return text
