"""Derived branches: small arithmetic expressions over flat and jagged branches, evaluated column-wise.

An expression is parsed with :mod:`ast` and only a fixed set of node types and
functions is accepted, so a configuration file can never run code. Values are
whole columns: a flat branch is one array of events, a jagged branch is a
:class:`Jagged` (offsets and the flat values of every object), and arithmetic
between a jagged and a flat operand repeats the event's value for each of its
objects. Reductions (``sum``, ``max``, ``min``, ``mean``, ``count``) turn a
jagged value into one number per event; an event with no object gives 0.

>>> x = Jagged(np.array([0, 2, 2, 3]), np.array([1.0, 2.0, 5.0], np.float32))
>>> evaluate("sum(x * 2) + y", {"x": x, "y": np.array([1.0, 1.0, 1.0])}.__getitem__).tolist()
[7.0, 1.0, 11.0]
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class ExpressionError(ValueError):
    """An expression that cannot be evaluated; the message quotes the expression and what went wrong."""


@dataclass(frozen=True)
class Jagged:
    """One value per object of each event: ``values[offsets[i]:offsets[i+1]]`` belong to event ``i``."""

    offsets: np.ndarray
    values: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def same(self, values: np.ndarray) -> Jagged:
        return Jagged(self.offsets, values)


_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow, ast.Mod: operator.mod,
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
}
_ELEMENTWISE = {
    "abs": np.abs, "sqrt": np.sqrt, "log": np.log, "exp": np.exp, "sin": np.sin, "cos": np.cos,
    "tan": np.tan, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh, "arctan2": np.arctan2,
    "hypot": np.hypot, "minimum": np.minimum, "maximum": np.maximum, "where": np.where,
}


def _reduce(name: str, value: Jagged) -> np.ndarray:
    counts = value.counts
    n = len(counts)
    if name == "count":
        return counts.astype(np.float32)
    event = np.repeat(np.arange(n), counts)
    if name in ("sum", "mean"):
        total = np.bincount(event, weights=value.values, minlength=n)
        return (total if name == "sum" else total / np.maximum(counts, 1)).astype(np.float32)
    out = np.zeros(n, dtype=np.float32)
    nonempty = counts > 0
    reducer = np.maximum if name == "max" else np.minimum
    if value.values.size:
        out[nonempty] = reducer.reduceat(value.values, value.offsets[:-1][nonempty])
    return out


_REDUCTIONS = ("sum", "mean", "max", "min", "count")


def _align(operands: list) -> list:
    """Broadcast flat operands onto the objects of the jagged ones; jagged operands must share offsets."""
    jagged = [o for o in operands if isinstance(o, Jagged)]
    if not jagged:
        return operands
    shape = jagged[0]
    for other in jagged[1:]:
        if not np.array_equal(other.offsets, shape.offsets):
            raise ExpressionError("jagged operands have different numbers of objects per event")
    out = []
    for o in operands:
        if isinstance(o, Jagged):
            out.append(o.values)
        elif np.ndim(o) == 0:
            out.append(o)
        else:
            out.append(np.repeat(o, shape.counts))
    return out


def _apply(function: Callable, operands: list):
    aligned = _align(operands)
    with np.errstate(all="ignore"):  # NaN and inf are reported by the feature pipeline, naming the branch
        result = np.asarray(function(*aligned))
    if result.dtype == bool:
        result = result.astype(np.float32)
    template = next((o for o in operands if isinstance(o, Jagged)), None)
    return template.same(result) if template is not None else result


class _Evaluator:
    def __init__(self, lookup: Callable[[str], object]):
        self.lookup = lookup

    def __call__(self, node: ast.AST):
        if isinstance(node, ast.Expression):
            return self(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return np.float32(node.value)
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return _apply(operator.neg if isinstance(node.op, ast.USub) else operator.pos, [self(node.operand)])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _apply(_BINARY[type(node.op)], [self(node.left), self(node.right)])
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _BINARY:
            return _apply(_BINARY[type(node.ops[0])], [self(node.left), self(node.comparators[0])])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            return self._call(node.func.id, [self(arg) for arg in node.args])
        raise ExpressionError(f"{ast.unparse(node)!r} is not allowed (arithmetic, comparisons and "
                              f"the functions {sorted(_ELEMENTWISE) + list(_REDUCTIONS)} only)")

    def _call(self, name: str, args: list):
        if name in _REDUCTIONS:
            if len(args) != 1 or not isinstance(args[0], Jagged):
                raise ExpressionError(f"{name}() takes one jagged branch")
            return _reduce(name, args[0])
        if name in _ELEMENTWISE:
            return _apply(_ELEMENTWISE[name], args)
        raise ExpressionError(f"unknown function {name!r}; known: {sorted(_ELEMENTWISE) + list(_REDUCTIONS)}")


def evaluate(expr: str, lookup: Callable[[str], object]) -> np.ndarray | Jagged:
    """Value of ``expr`` with branch values from ``lookup(name)``: a flat array or a :class:`Jagged`."""
    try:
        return _Evaluator(lookup)(ast.parse(expr, mode="eval"))
    except ExpressionError as error:
        raise ExpressionError(f"expression {expr!r}: {error}") from None
    except TypeError as error:  # wrong number of arguments to a numpy function
        raise ExpressionError(f"expression {expr!r}: {error}") from None
