"""Events sent as JSON in branch space, checked and turned into the Arrow batch a model scores.

Clients send what they read from a ROOT file, under the file's branch names,
as rows (one object per event) or as columns (one array per branch, as
uproot's ``arrays(library="np")`` or ``ak.to_list`` of a field gives them)::

    {"events": [{"MET_pt": 41.2, "Muon_pt": [51.0, 33.2]}, ...]}
    {"columns": {"MET_pt": [41.2, ...], "Muon_pt": [[51.0, 33.2], ...]}}

The batch holds exactly the branches the model declares, in its order: a flat
branch becomes a float64 column, a jagged one a list<double> column. Every
check runs per column over all events at once (a set of types, one numpy
conversion, one finiteness and float32 range test); only when a column is bad
do we walk it in Python to name the first event at fault. Client mistakes raise :class:`RequestError`
(400 unreadable body, 413 too many events, 422 a branch missing or of the
wrong type); nothing a client sends reaches the model unchecked.

>>> from hepstream.models.features import BranchSpec
>>> inputs = [BranchSpec("MET_pt", False), BranchSpec("Muon_pt", True)]
>>> parse_events('{"columns": {"MET_pt": [41.2, 7], "Muon_pt": [[51.0], []]}}', inputs, 10).to_pydict()
{'MET_pt': [41.2, 7.0], 'Muon_pt': [[51.0], []]}
>>> parse_events('{"events": [{"MET_pt": "high", "Muon_pt": []}]}', inputs, 10)
Traceback (most recent call last):
...
hepstream.serve.errors.RequestError: MET_pt must be a number, got a string
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from bisect import bisect_right
from itertools import accumulate, chain
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa

from hepstream.models.features import BranchSpec
from hepstream.serve.datatypes import FEATURES, FieldAt, check_finite
from hepstream.serve.errors import RequestError
from hepstream.suggest import did_you_mean

_NUMBERS = frozenset({int, float})  # bool is its own type, so True is not a number here
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
_FLAT = pa.float64()
_JAGGED = pa.list_(pa.float64())


Locate = Callable[[str, int], str]  # (branch, event index) -> the field's path in the request


def parse_events(body: bytes | str, inputs: Sequence[BranchSpec], max_events: int) -> pa.RecordBatch:
    """Turn a request body, rows or columns, into a batch with one column per model input, one row per event."""
    document = _load_json(body)
    names = [branch.name for branch in inputs]
    if isinstance(document, dict) and "columns" in document and "events" not in document:
        values_of, locate = _columns_of(document["columns"], names, max_events)
    else:
        events = _event_list(document, max_events)
        values_of, locate = (lambda name: _branch_values(events, name, names)), _event_field
    return batch_of(inputs, [values_of(branch.name) for branch in inputs], locate)


def batch_of(inputs: Sequence[BranchSpec], values: Sequence[list], locate: Locate) -> pa.RecordBatch:
    """Check each branch's per-event JSON values and build the batch; ``locate`` names fields in errors."""
    columns = [(_jagged_column if branch.jagged else _flat_column)(column, branch.name, locate)
               for branch, column in zip(inputs, values)]
    return pa.RecordBatch.from_arrays(columns, schema=input_schema(inputs))


def input_schema(inputs: Sequence[BranchSpec]) -> pa.Schema:
    """The Arrow schema of a model's inputs as every protocol hands them to it."""
    return pa.schema([pa.field(branch.name, _JAGGED if branch.jagged else _FLAT) for branch in inputs])


def _event_field(name: str, index: int) -> str:
    return f"events[{index}].{name}"


def _column_field(name: str, index: int) -> str:
    return f"columns.{name}[{index}]"


def _columns_of(columns: Any, names: list[str], max_events: int) -> tuple[Callable[[str], list], Locate]:
    if not isinstance(columns, dict):
        raise RequestError(400, f"columns must be an object of branch arrays, got {_json_type(columns)}", "columns")
    counts = {}
    for name in names:
        if name not in columns:
            raise _missing(name, columns, names, f"columns.{name}")
        if not isinstance(columns[name], list):
            raise RequestError(422, f"columns.{name} must be an array with one entry per event, "
                                    f"got {_json_type(columns[name])}", f"columns.{name}")
        counts[name] = len(columns[name])
    if len(set(counts.values())) > 1:
        first, *_ = names
        other = next(name for name in names if counts[name] != counts[first])
        raise RequestError(422, f"columns.{other} has {counts[other]} events but columns.{first} has {counts[first]}",
                           f"columns.{other}")
    check_count(max(counts.values(), default=0), max_events, "columns")
    return columns.__getitem__, _column_field


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
    check_count(len(events), max_events, "events")
    if not set(map(type, events)) <= {dict}:
        index = next(i for i, event in enumerate(events) if type(event) is not dict)
        raise RequestError(422, f"each event must be an object of branches, got {_json_type(events[index])}",
                           f"events[{index}]")
    return events


def check_count(count: int, max_events: int, field: str) -> None:
    """413 for a request of more events than the server takes at once."""
    if count > max_events:
        raise RequestError(413, f"{count} events in one request, the limit is {max_events}; "
                                "split them over several requests", field)



def _flat_column(values: list, name: str, locate: Locate) -> pa.Array:
    if not set(map(type, values)) <= _NUMBERS:
        index = next(i for i, value in enumerate(values) if type(value) not in _NUMBERS)
        raise RequestError(422, f"{name} must be a number, got {_json_type(values[index])}", locate(name, index))
    return pa.array(_finite_doubles(values, lambda i: locate(name, i)), type=_FLAT)


def _jagged_column(lists: list, name: str, locate: Locate) -> pa.Array:
    if not set(map(type, lists)) <= {list}:
        index = next(i for i, value in enumerate(lists) if type(value) is not list)
        raise RequestError(422, f"{name} is a jagged branch and must be an array of numbers, "
                                f"got {_json_type(lists[index])}", locate(name, index))
    flat = list(chain.from_iterable(lists))

    def field(k: int) -> str:
        ends = list(accumulate(map(len, lists)))
        event = bisect_right(ends, k)
        return f"{locate(name, event)}[{k - (ends[event - 1] if event else 0)}]"

    if not set(map(type, flat)) <= _NUMBERS:
        k = next(k for k, value in enumerate(flat) if type(value) not in _NUMBERS)
        raise RequestError(422, f"{name} must hold numbers only, got {_json_type(flat[k])}", field(k))
    values = _finite_doubles(flat, field)
    try:
        # Checked above, converted again: pyarrow builds offsets and values in one call, which for the
        # few events of a typical request costs half of building them from numpy arrays.
        return pa.array(lists, type=_JAGGED)
    except pa.ArrowInvalid:  # an integer beyond int64 that a double holds: pyarrow refuses it, numpy did not
        return pa.ListArray.from_arrays(pa.array([0, *accumulate(map(len, lists))], type=pa.int32()), values)


def _branch_values(events: list[dict], name: str, expected: list[str]) -> list:
    try:
        return list(map(itemgetter(name), events))
    except KeyError:
        index = next(i for i, event in enumerate(events) if name not in event)
        raise _missing(name, events[index], expected, _event_field(name, index)) from None


def _missing(name: str, keys: Iterable[str], expected: list[str], field: str) -> RequestError:
    """A 422 for a missing branch that suggests a key sent instead, ignoring case (met_pt for MET_pt)."""
    others = [key for key in keys if key not in expected]  # keys the model reads anyway are no hint
    hint = did_you_mean(name, others, 1, ignore_case=True)
    hint = f"; {hint}" if hint else ""
    return RequestError(422, f"missing branch {name!r} (the model reads {', '.join(expected)}){hint}", field)


def _finite_doubles(numbers: list, field: FieldAt) -> np.ndarray:
    """JSON numbers as float64, refusing NaN, infinities and numbers beyond the float32 of the model's features."""
    doubles = FEATURES.from_json(numbers, field, 422)
    check_finite(doubles, field, 422)
    return doubles


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "a number")
