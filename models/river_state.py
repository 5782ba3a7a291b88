"""River models to JSON and back, without pickle.

A checkpoint is read by the server and by restarted trainers, possibly from
shared storage: loading it must never run code chosen by whoever wrote the
file. Pickle would; this codec cannot. It walks the model's attributes and
writes plain JSON with a few tagged forms. Loading builds objects only of
classes under ``river.`` (by ``cls.__new__`` and attribute assignment, never
``__init__`` or ``__reduce__`` callables), a handful of containers, and
``random.Random``; anything else in a file is refused with the path to it.
River's Rust-backed helpers (``VectorDict``, ADWIN's window) are rebuilt
from their class and their own byte state.

>>> from river import linear_model
>>> model = linear_model.LogisticRegression()
>>> model.learn_one({"x": 1.0}, True)
>>> copy = loads(dumps(model))
>>> copy.predict_proba_one({"x": 1.0}) == model.predict_proba_one({"x": 1.0})
True
"""

from __future__ import annotations

import base64
import collections
import copyreg
import functools
import importlib
import random
from typing import Any

import numpy as np

_BUILTIN_TYPES = {"float": float, "int": int, "bool": bool, "str": str, "dict": dict, "list": list,
                  "collections.defaultdict": collections.defaultdict}


class StateError(ValueError):
    """A model that cannot be written as JSON, or a file asking for something this codec refuses."""


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _allowed_class(name: str) -> type:
    if name in _BUILTIN_TYPES:
        return _BUILTIN_TYPES[name]
    module_name, _, qualname = name.partition(":")
    if not (module_name == "river" or module_name.startswith("river.")) or not qualname:
        raise StateError(f"class {name!r} is not allowed in a river checkpoint (only river.* classes)")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not isinstance(target, type):
        raise StateError(f"{name!r} is not a class")
    return target


def _type_name(cls: type) -> str:
    for name, known in _BUILTIN_TYPES.items():
        if cls is known:
            return name
    name = _class_name(cls)
    _allowed_class(name)
    return name


class _Encoder:
    """Walks a model; an object met twice (a random generator shared by a forest's trees) is written once
    and referred to by ``{"$ref": n}`` after, so sharing survives the round trip."""

    def __init__(self):
        self.seen: dict[int, int] = {}
        self.keep: list = []  # holds encoded objects alive, so their ids stay unique

    def __call__(self, value: Any, path: str) -> Any:
        shareable = not isinstance(value, (bool, int, float, str, bytes, type, np.generic, tuple, frozenset)) \
            and value is not None
        if shareable and id(value) in self.seen:
            return {"$ref": self.seen[id(value)]}
        if shareable:
            self.seen[id(value)] = len(self.seen)
            self.keep.append(value)
        encoded = _encode(value, path, self)
        if shareable and isinstance(encoded, dict):
            encoded["$id"] = self.seen[id(value)]
        return encoded


def _encode(value: Any, path: str, encode: _Encoder) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and type(value) in (int, float):
        return value if not isinstance(value, float) or np.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, np.generic):
        return {"$np": value.dtype.str, "v": encode(value.item(), path)}
    if isinstance(value, np.ndarray):
        return {"$ndarray": value.dtype.str, "shape": list(value.shape), "v": value.ravel().tolist()}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, collections.defaultdict):
        return {"$defaultdict": encode(value.default_factory, path + ".default_factory"),
                "items": _items(value, path, encode)}
    if type(value) is dict:
        return {"$dict": _items(value, path, encode)}
    if type(value) in (list, tuple, set, frozenset, collections.deque):
        tag = {list: "$list", tuple: "$tuple", set: "$set", frozenset: "$frozenset", collections.deque: "$deque"}
        return {tag[type(value)]: [encode(v, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, type):
        return {"$type": _type_name(value)}
    if isinstance(value, functools.partial):
        return {"$partial": encode(value.func, path + ".func"), "args": encode(value.args, path + ".args"),
                "kwargs": encode(value.keywords, path + ".kwargs")}
    if type(value) is random.Random:
        return {"$random": encode(value.getstate(), path)}
    cls = type(value)
    name = _class_name(cls)
    try:
        _allowed_class(name)
    except (StateError, ImportError, AttributeError):
        raise StateError(f"{path}: {type(value).__name__} cannot be written to a JSON checkpoint") from None
    if hasattr(value, "__dict__"):
        return {"$object": name, "state": encode(vars(value), path)}
    reduced = value.__reduce_ex__(4)  # Rust-backed river classes: (constructor, args, byte state)
    constructor, args, state = reduced[0], reduced[1], reduced[2] if len(reduced) > 2 else None
    if constructor is copyreg.__newobj__:
        args = args[1:]
    elif constructor is not cls:
        raise StateError(f"{path}: {name} reduces to {constructor!r}, which this codec does not rebuild")
    return {"$native": name, "args": encode(tuple(args), path), "state": encode(state, path + ".state")}


def _items(mapping: dict, path: str, encode) -> list:
    return [[encode(k, path), encode(v, f"{path}[{k!r}]")] for k, v in mapping.items()]


class _Decoder:
    def __init__(self):
        self.made: dict[int, Any] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "$ref" in value:
            return self.made[value["$ref"]]
        tag = next(iter(value))
        made = self._make(tag, value[tag], value)
        if "$id" in value:
            self.made[value["$id"]] = made
        return made

    def _make(self, tag: str, payload: Any, value: dict) -> Any:
        simple = {"$float": float, "$bytes": base64.b64decode, "$type": _allowed_class}
        if tag in simple:
            return simple[tag](payload)
        if tag == "$np":
            return np.dtype(payload).type(self(value["v"]))
        if tag == "$ndarray":
            return np.asarray(value["v"], dtype=np.dtype(payload)).reshape(value["shape"])
        if tag in ("$dict", "$defaultdict"):
            made = {} if tag == "$dict" else collections.defaultdict(self(payload))
            self._register(value, made)
            made.update((self(k), self(v)) for k, v in (payload if tag == "$dict" else value["items"]))
            return made
        if tag in _SEQUENCES:
            return _SEQUENCES[tag](self(v) for v in payload)
        if tag == "$partial":
            func = self(payload)
            if not isinstance(func, type):
                raise StateError("a partial in a river checkpoint must wrap an allowed class")
            return functools.partial(func, *self(value["args"]), **self(value["kwargs"]))
        if tag == "$random":
            generator = random.Random()
            generator.setstate(self(payload))
            return generator
        if tag == "$object":
            cls = _allowed_class(payload)
            obj = cls.__new__(cls)
            self._register(value, obj)
            obj.__dict__.update(self(value["state"]))
            return obj
        if tag == "$native":
            cls = _allowed_class(payload)
            obj = cls.__new__(cls, *self(value["args"]))
            state = self(value["state"])
            if state is not None:
                obj.__setstate__(state)
            return obj
        raise StateError(f"unknown tag {tag!r} in a river checkpoint")

    def _register(self, value: dict, made: Any) -> None:
        """Record a container before its contents are decoded, so a reference back into it resolves."""
        if "$id" in value:
            self.made[value["$id"]] = made


_SEQUENCES = {"$list": list, "$tuple": tuple, "$set": set, "$frozenset": frozenset, "$deque": collections.deque}


def dumps(model: Any) -> dict:
    """The model as a JSON-serialisable dict; raises :class:`StateError` naming an attribute it cannot write."""
    return {"format": "hepstream.river-state/1", "model": _Encoder()(model, type(model).__name__)}


def loads(state: dict) -> Any:
    """Rebuild a model written by :func:`dumps`; refuses any class outside ``river.*``."""
    if state.get("format") != "hepstream.river-state/1":
        raise StateError(f"not a river checkpoint (format {state.get('format')!r})")
    return _Decoder()(state["model"])
