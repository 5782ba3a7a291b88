"""What the producer publishes from each event: selected branches, derived branches, and cuts.

Branch patterns follow uproot's conventions: an exact name, a glob
(``Muon_*``) or a regular expression between slashes (``/^Jet_(pt|eta)$/``,
matched anywhere in the name unless anchored). Exact names a file lacks fail
that file; a pattern must match at least one branch. A grouping branch (one
with sub-branches, such as a split object's ``evt``) matched by a glob or a
regular expression stands for its readable sub-branches: uproot cannot read
some groups as one column. Cuts and definitions may read branches that are
not published.

>>> sel = Selection.from_config(DatasetConfig(branches=["Muon_*", "MET_pt"], exclude=["/charge/"],
...     define={"ht": "sum(Jet_pt)"}, cuts=["any(Muon_pt > 20)"]), [])
>>> plan = sel.resolve(["MET_pt", "Muon_pt", "Muon_eta", "Muon_charge", "Jet_pt"])
>>> plan.published, plan.read
(('Muon_pt', 'Muon_eta', 'MET_pt', 'ht'), ('Muon_pt', 'Muon_eta', 'MET_pt', 'Jet_pt'))
>>> Selection.from_config(DatasetConfig(branches=["*"]), []).resolve(
...     ["evt", "evt/x", "evt/p", "evt/p/p.px", "run"], {"evt": ("evt/x", "evt/p/p.px"), "evt/p": ("evt/p/p.px",)}
... ).published
('evt/x', 'evt/p/p.px', 'run')
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import awkward as ak
import numpy as np

from hepstream.config import ConfigError, DatasetConfig
from hepstream.expressions import Expression
from hepstream.suggest import did_you_mean


class MissingBranches(LookupError):
    """Selected or referenced branches a file does not have; the message suggests the nearest names."""


class UnknownBranch(MissingBranches):
    """A definition or cut reads a name that is neither a branch nor defined before it."""


@dataclass(frozen=True)
class Pattern:
    text: str

    def __post_init__(self):
        if self.is_regex:
            try:
                re.compile(self.text[1:-1])
            except re.error as error:
                raise ConfigError(f"branch pattern {self.text!r}: not a regular expression: {error}") from None

    @property
    def is_regex(self) -> bool:
        return len(self.text) > 2 and self.text.startswith("/") and self.text.endswith("/")

    @property
    def is_exact(self) -> bool:
        return not self.is_regex and not set("*?[") & set(self.text)

    def matches(self, name: str) -> bool:
        if self.is_regex:
            return re.search(self.text[1:-1], name) is not None
        return fnmatch.fnmatchcase(name, self.text)


@dataclass(frozen=True)
class FilePlan:
    """The selection resolved against one tree: which branches to read, and which to publish."""

    read: tuple[str, ...]
    published: tuple[str, ...]


def _nearest(names: Sequence[str], available: Sequence[str]) -> str:
    return "".join(f"; {n!r}: {hint}" for n in names if (hint := did_you_mean(n, available, 2)))


@dataclass(frozen=True)
class Selection:
    include: tuple[Pattern, ...]
    exclude: tuple[Pattern, ...]
    define: tuple[tuple[str, Expression], ...]
    cuts: tuple[Expression, ...]

    @classmethod
    def from_config(cls, dataset: DatasetConfig, default_branches: Sequence[str]) -> Selection:
        """Check every pattern and expression now, so a typo fails before anything is published."""
        include = dataset.branches or [*default_branches, *([dataset.label_branch] if dataset.label_branch else [])]
        define = tuple((name, Expression.parse(text)) for name, text in dataset.define.items())
        return cls(
            tuple(Pattern(p) for p in dict.fromkeys(include)),
            tuple(Pattern(p) for p in dataset.exclude),
            define,
            tuple(Expression.parse(text) for text in dataset.cuts),
        )

    @property
    def filters(self) -> bool:
        return bool(self.define or self.cuts)

    def resolve(self, available: Sequence[str], groups: Mapping[str, Sequence[str]] | None = None) -> FilePlan:
        """Match the patterns against a tree's branch names; raise :class:`MissingBranches` naming what lacks.

        ``groups`` maps each grouping branch to its readable sub-branches, which
        a glob or regular expression matching the group publishes instead.
        """
        available = list(available)
        groups = groups or {}
        defined = [name for name, _ in self.define]
        missing, published = [], []
        for pattern in self.include:
            found = [name for name in (*available, *defined) if pattern.matches(name)]
            if not pattern.is_exact:
                found = [leaf for name in found for leaf in groups.get(name, (name,))]
            if not found:
                missing.append(pattern.text)
            published.extend(found)
        published = [n for n in dict.fromkeys(published) if not any(p.matches(n) for p in self.exclude)]
        published += [n for n in defined if n not in published and not any(p.matches(n) for p in self.exclude)]
        needed = dict.fromkeys([*(n for n in published if n not in defined), *self.expression_inputs(available)])
        if missing:
            raise MissingBranches(f"lacks branch(es) {missing}{_nearest(missing, available)}")
        if not published:
            raise MissingBranches("the selection publishes no branch (every match is excluded)")
        return FilePlan(tuple(needed), tuple(published))

    def expression_inputs(self, available: Sequence[str]) -> list[str]:
        """Branches the definitions and cuts read; raise :class:`UnknownBranch` for a name the tree lacks."""
        defined, needed = [], {}
        steps = [*((f"define {n!r} =", e, n) for n, e in self.define), *(("cut", c, None) for c in self.cuts)]
        for what, expression, defines in steps:
            unknown = sorted(expression.names - set(available) - set(defined))
            if unknown:
                raise UnknownBranch(f"{what} {expression.text!r} reads unknown branch(es) {unknown}"
                                    f"{_nearest(unknown, list(available))}")
            needed.update(dict.fromkeys(sorted(expression.names - set(defined))))
            if defines:
                defined.append(defines)
        return list(needed)

    def try_on(self, arrays: ak.Array) -> None:
        """Evaluate definitions and cuts on a few events, so a type error surfaces before publishing."""
        names = tuple(arrays.fields)
        self.apply(arrays, FilePlan(names, tuple(n for n, _ in self.define) or names[:1]))

    def apply(self, arrays: ak.Array, plan: FilePlan) -> tuple[ak.Array, np.ndarray | None]:
        """Published columns of the events passing every cut, and their row numbers (``None``: all rows)."""
        if not self.filters:
            # Projecting every field anyway costs a millisecond a chunk, a few percent of the producer's time.
            return (arrays if tuple(arrays.fields) == plan.published else arrays[list(plan.published)]), None
        values = {name: arrays[name] for name in plan.read}
        for name, expression in self.define:
            result = expression.evaluate(values)
            values[name] = result if isinstance(result, ak.Array) else ak.Array(np.full(len(arrays), result))
        kept = None
        for cut in self.cuts:
            mask = cut.cut(values)
            kept = mask if kept is None else kept & mask
        out = ak.zip({name: values[name] for name in plan.published}, depth_limit=1)
        if kept is None:
            return out, None
        return out[kept], np.flatnonzero(kept)
