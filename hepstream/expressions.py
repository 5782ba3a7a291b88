"""Expressions over branches: derived branches and cuts in the producer, derived features in training.

One language for the whole project, so a physicist writes ``sum(Jet_pt)`` the
same way in a cut and in a feature. A configuration file may come from
anyone, so expressions are never handed to
``eval``: they are parsed with :mod:`ast`, every node is checked against a
whitelist (arithmetic, comparisons, boolean logic, branch names, numbers and
the functions below), and the tree is then walked with awkward arrays, one
chunk at a time. Jagged branches broadcast against flat ones as in awkward
(``Muon_pt / MET_pt``); reductions take one value per event from a jagged one.

>>> import awkward as ak
>>> events = {"Muon_pt": ak.Array([[30.0, 10.0], [], [50.0]]), "MET_pt": ak.Array([20.0, 5.0, 40.0])}
>>> Expression.parse("sum(Muon_pt) + MET_pt").evaluate(events).tolist()
[60.0, 5.0, 90.0]
>>> Expression.parse("any(Muon_pt > 25) and MET_pt > 10").cut(events).tolist()
[True, False, True]
>>> try:
...     Expression.parse("__import__('os')")
... except ExpressionError as error:
...     print(error)  # doctest: +ELLIPSIS
expression "__import__('os')": unknown function '__import__'; known: abs, all, any, arccos, ...
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Mapping
from dataclasses import dataclass

import awkward as ak
import numpy as np



class ExpressionError(ValueError):
    """An expression that cannot be parsed or evaluated; the message quotes it."""

    def __init__(self, text: str, problem: str):
        super().__init__(f'expression "{text}": {problem}')
        self.text = text
        self.problem = problem


def _per_event(reduce):
    """A reduction over each event's objects."""

    def apply(values):
        if values.ndim < 2:
            raise TypeError("needs a jagged (per-object) argument such as Muon_pt")
        return reduce(values, axis=-1)

    return apply


ELEMENTWISE = {
    name: getattr(np, name)
    for name in (
        "abs", "sqrt", "exp", "log", "log10", "log2", "log1p", "sin", "cos", "tan", "arcsin", "arccos",
        "arctan", "arctan2", "sinh", "cosh", "tanh", "arcsinh", "arccosh", "arctanh", "hypot",
        "minimum", "maximum", "floor", "ceil", "rint", "sign", "isnan", "isfinite",
    )
}
REDUCTIONS = {
    "sum": _per_event(ak.sum),
    "count": _per_event(ak.count_nonzero),
    "any": _per_event(ak.any),
    "all": _per_event(ak.all),
    "min": _per_event(ak.min),
    "max": _per_event(ak.max),
    "mean": _per_event(ak.mean),
    "num": lambda values: ak.num(values, axis=-1),
}
_UNDEFINED_WHEN_EMPTY = {"min", "max", "mean"}  # these give the caller's ``empty`` for an event with no object
FUNCTIONS = {**ELEMENTWISE, **REDUCTIONS, "where": ak.where}
CONSTANTS = {"pi": np.pi, "e": np.e, "inf": np.inf, "nan": np.nan, "True": True, "False": False}

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert, ast.Not: operator.invert}
_COMPARE = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_BOOLEAN = {ast.And: operator.and_, ast.Or: operator.or_}
_OPERATORS = {**_BINARY, **_UNARY, **_COMPARE, **_BOOLEAN}


@dataclass(frozen=True)
class Expression:
    """One checked expression and the branch names it reads."""

    text: str
    body: ast.expr
    names: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Expression:
        """Parse and check ``text``; anything outside the whitelist raises :class:`ExpressionError`."""
        try:
            body = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as error:
            raise ExpressionError(text, f"not valid syntax at column {error.offset}: {error.msg}") from None
        names = set()
        for node in ast.walk(body):
            cls._check(text, node, names)
        return cls(text, body, frozenset(names))

    @staticmethod
    def _check(text: str, node: ast.AST, names: set[str]) -> None:
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                called = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                raise ExpressionError(text, f"unknown function {called!r}; known: {', '.join(sorted(FUNCTIONS))}")
            if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
                raise ExpressionError(text, f"{node.func.id}() takes plain positional arguments only")
        elif isinstance(node, ast.Name):
            if node.id not in FUNCTIONS and node.id not in CONSTANTS:
                names.add(node.id)
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float)):
                raise ExpressionError(text, f"only numbers are allowed as constants, not {node.value!r}")
        elif isinstance(node, ast.IfExp):
            raise ExpressionError(text, "use where(condition, a, b) instead of 'a if condition else b'")
        elif isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare)):
            ops = node.ops if isinstance(node, ast.Compare) else [node.op]
            bad = [type(op).__name__ for op in ops if type(op) not in _OPERATORS]
            if bad:
                raise ExpressionError(text, f"operator {bad[0]} is not allowed")
        elif not isinstance(node, (ast.Load, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)):
            raise ExpressionError(text, f"{type(node).__name__} ({ast.unparse(node)!r}) is not allowed")

    def evaluate(self, values: Mapping[str, ak.Array], empty: float = np.nan):
        """The expression's value per event (or per object), computed on whole arrays.

        ``min``, ``max`` and ``mean`` of an event with no object give
        ``empty``: NaN by default (a new branch says "undefined"), 0 for model
        features, which must be finite.
        """
        missing = sorted(self.names - set(values))
        if missing:
            raise ExpressionError(self.text, f"unknown branch(es) {missing}")
        try:
            return self._eval(self.body, values, empty)
        except ExpressionError:
            raise
        except Exception as error:  # numpy and awkward raise many kinds on mismatched types or shapes
            raise ExpressionError(self.text, f"{type(error).__name__}: {error}") from None

    def cut(self, values: Mapping[str, ak.Array]) -> np.ndarray:
        """Evaluate as an event selection: one boolean per event, or an error saying what it gave instead."""
        result = self.evaluate(values)
        layout = ak.to_layout(result) if isinstance(result, ak.Array) else None
        if layout is None:
            raise ExpressionError(self.text, "is a constant, not a selection of events")
        if result.ndim > 1:
            raise ExpressionError(self.text, "is true or false per object, not per event: wrap it in any(...) or all(...)")
        mask = ak.to_numpy(ak.fill_none(result, False))
        if mask.dtype != np.bool_:
            raise ExpressionError(self.text, f"gives {mask.dtype} values, not true/false; compare it with something")
        return mask

    def _eval(self, node: ast.expr, values, empty):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return CONSTANTS[node.id] if node.id in CONSTANTS else values[node.id]
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._eval(node.left, values, empty), self._eval(node.right, values, empty))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, values, empty))
        if isinstance(node, ast.BoolOp):
            combine = _BOOLEAN[type(node.op)]
            result = self._eval(node.values[0], values, empty)
            for operand in node.values[1:]:
                result = combine(result, self._eval(operand, values, empty))
            return result
        if isinstance(node, ast.Compare):  # a < b <= c is (a < b) & (b <= c), elementwise
            left, result = self._eval(node.left, values, empty), True
            for op, right_node in zip(node.ops, node.comparators):
                right = self._eval(right_node, values, empty)
                result = result & _COMPARE[type(op)](left, right)
                left = right
            return result
        if isinstance(node, ast.Call):
            name = node.func.id
            try:
                result = FUNCTIONS[name](*(self._eval(arg, values, empty) for arg in node.args))
            except TypeError as error:
                raise ExpressionError(self.text, f"{name}(): {error}") from None
            return ak.fill_none(result, empty) if name in _UNDEFINED_WHEN_EMPTY else result
        raise ExpressionError(self.text, f"cannot evaluate {ast.unparse(node)!r}")  # unreachable after _check
