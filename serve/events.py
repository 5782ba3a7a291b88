"""Events sent as JSON in branch space, checked and turned into the Arrow batch a model scores.

Clients send what they read from a ROOT file, under the file's branch names::

    {"events": [{"MET_pt": 41.2, "Muon_pt": [51.0, 33.2]}, ...]}

The batch holds exactly the branches the model declares, in its order: a flat
branch becomes a float64 column, a jagged one a list<double> column. Every
check runs per column over all events at once (a set of types, one numpy
conversion, one finiteness test); only when a column is bad do we walk it in
Python to name the first event at fault. Client mistakes raise :class:`RequestError`
(400 unreadable body, 413 too many events, 422 a branch missing or of the
wrong type); nothing a client sends reaches the model unchecked.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa

from hepstream.models.features import BranchSpec
from hepstream.serve.errors import RequestError

_NUMBERS = frozenset({int, float})  # bool is its own type, so True is not a number here
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
_FLAT = pa.float64()
_JAGGED = pa.list_(pa.float64())


def parse_events(body: bytes | str, inputs: Sequence[BranchSpec], max_events: int) -> pa.RecordBatch:
    """Turn a request body into a batch with one column per model input, one row per event."""
    events = _event_list(_load_json(body), max_events)
    names = [branch.name for branch in inputs]
    columns = [_jagged_column(events, branch.name, names) if branch.jagged else _flat_column(events, branch.name, names)
               for branch in inputs]
    schema = pa.schema([pa.field(branch.name, _JAGGED if branch.jagged else _FLAT) for branch in inputs])
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _load_json(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        raise RequestError(400, f"request body is not valid JSON: {error}") from None


def _event_list(document: Any, max_events: int) -> list[dict]:
    if not isinstance(document, dict) or "events" not in document:
        raise RequestError(400, 'expected a JSON object {"events": [{"branch": value, ...}, ...]}', "events")
    events = document["events"]
    if not isinstance(events, list):
        raise RequestError(400, f"events must be an array of objects, got {_json_type(events)}", "events")
    if len(events) > max_events:
        raise RequestError(413, f"{len(events)} events in one request, the limit is {max_events}; "
                                "split them over several requests", "events")
    if not set(map(type, events)) <= {dict}:
        index = next(i for i, event in enumerate(events) if type(event) is not dict)
        raise RequestError(422, f"each event must be an object of branches, got {_json_type(events[index])}",
                           f"events[{index}]")
    return events


def _flat_column(events: list[dict], name: str, expected: list[str]) -> pa.Array:
    values = _branch_values(events, name, expected)
    if not set(map(type, values)) <= _NUMBERS:
        index = next(i for i, value in enumerate(values) if type(value) not in _NUMBERS)
        raise RequestError(422, f"{name} must be a number, got {_json_type(values[index])}",
                           f"events[{index}].{name}")
    return pa.array(_finite_doubles(values, lambda i: f"events[{i}].{name}"), type=_FLAT)


def _jagged_column(events: list[dict], name: str, expected: list[str]) -> pa.Array:
    lists = _branch_values(events, name, expected)
    if not set(map(type, lists)) <= {list}:
        index = next(i for i, value in enumerate(lists) if type(value) is not list)
        raise RequestError(422, f"{name} is a jagged branch and must be an array of numbers, "
                                f"got {_json_type(lists[index])}", f"events[{index}].{name}")
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, lists), dtype=np.int64, count=len(lists)), out=offsets[1:])
    flat = list(chain.from_iterable(lists))

    def field(k: int) -> str:
        event = int(np.searchsorted(offsets, k, side="right")) - 1
        return f"events[{event}].{name}[{k - offsets[event]}]"

    if not set(map(type, flat)) <= _NUMBERS:
        k = next(k for k, value in enumerate(flat) if type(value) not in _NUMBERS)
        raise RequestError(422, f"{name} must hold numbers only, got {_json_type(flat[k])}", field(k))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(_finite_doubles(flat, field), type=_FLAT))


def _branch_values(events: list[dict], name: str, expected: list[str]) -> list:
    try:
        return list(map(itemgetter(name), events))
    except KeyError:
        index = next(i for i, event in enumerate(events) if name not in event)
        # Suggest a key of that event, ignoring case (met_pt for MET_pt) and keys the model reads anyway.
        others = {key.lower(): key for key in events[index] if key not in expected}
        near = difflib.get_close_matches(name.lower(), others, n=1)
        hint = f"; did you mean {others[near[0]]!r}?" if near else ""
        raise RequestError(422, f"missing branch {name!r} (the model reads {', '.join(expected)}){hint}",
                           f"events[{index}].{name}") from None


def _finite_doubles(numbers: list, field: Callable[[int], str]) -> np.ndarray:
    """Convert JSON numbers to float64, refusing NaN, infinities and integers beyond a double's range."""
    try:
        array = np.array(numbers, dtype=np.float64)
    except OverflowError:
        index = next(i for i, number in enumerate(numbers) if not _fits_double(number))
        raise RequestError(422, "number too large for a double", field(index)) from None
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise RequestError(422, f"{numbers[bad[0]]} is not accepted; values must be finite numbers", field(int(bad[0])))
    return array


def _fits_double(number: int | float) -> bool:
    try:
        float(number)
    except OverflowError:
        return False
    return True


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "a number")
