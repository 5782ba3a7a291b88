"""Chunks of every class taken in turn, so that no partition receives a long run of one label or sample.

Real datasets arrive sample by sample (a signal production, then the
backgrounds); published file after file, the last chunks of every partition
would all be background, and an online learner's last window one class.
With ``producer.interleave`` the files are grouped into *classes* (their
label and sample), each class keeps its own files open, and the next chunk
sent is taken from the class that is furthest behind in its own entries:
every class is then spread over the whole run, in proportion to its size,
whatever the order of the inputs. Within a class the open files take turns.

A class's size is estimated as it goes: the entries of the files opened so
far, plus the files not opened yet at the mean of those. Each file's chunks
keep their entry order, their keys and their partitions; only the order
*between* files changes. At most ``open_per_class`` files of each class are
open at once, so the files open are bounded by the number of classes times
that (see :func:`open_per_class`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar

from hepstream.streaming.sources import Source

T = TypeVar("T")


class Paced(Protocol):
    """What the pacing reads from each item: how far into its file it reaches, and the file's entries."""

    entry_stop: int
    file_entries: int | None


P = TypeVar("P", bound=Paced)


def class_of(source: Source) -> Hashable:
    """The class a file belongs to for mixing: its label and its sample."""
    return source.label, source.sample


def classes(items: Iterable[tuple[int, Source]]) -> list[list[tuple[int, Source]]]:
    """The ``(index, source)`` items grouped by :func:`class_of`, classes in order of first appearance, files in order.

    >>> s = [Source("a", "t", 1), Source("b", "t", 0), Source("c", "t", 1)]
    >>> [[i for i, _ in c] for c in classes(enumerate(s))]
    [[0, 2], [1]]
    """
    grouped: dict[Hashable, list[tuple[int, Source]]] = {}
    for index, source in items:
        grouped.setdefault(class_of(source), []).append((index, source))
    return list(grouped.values())


def open_per_class(files_in_flight: int, n_classes: int) -> int:
    """Files each class keeps open: ``files_in_flight`` shared out, at least one, so every class is read at once.

    >>> open_per_class(2, 1), open_per_class(4, 2), open_per_class(1, 3)
    (2, 2, 1)
    """
    return max(1, files_in_flight // max(1, n_classes))


class _Class(Generic[T, P]):
    """One class's files: those waiting, those open (taking turns), and its entries done and known."""

    def __init__(self, files: list[T]):
        self.waiting = deque(files)
        self.open: deque[list] = deque()  # [iterator, entries done, file entries or None]
        self.finished_entries = 0
        self.totals: list[int] = []  # entries of each file whose size is known and finished

    def fraction(self) -> float:
        """The share of this class's estimated entries sent so far."""
        known = self.totals + [f[2] for f in self.open if f[2] is not None]
        unknown = len(self.waiting) + sum(1 for f in self.open if f[2] is None)
        estimate = sum(known) + (unknown * sum(known) / len(known) if known else 0)
        done = self.finished_entries + sum(f[1] for f in self.open)
        return done / estimate if estimate else 0.0


def interleave(groups: list[list[T]], per_class: int, start: Callable[[T], Iterator[P]]) -> Iterator[P]:
    """Every item of every file, files opened with ``start`` (``per_class`` at most per class at once), the next
    item always from the class with the smallest share of its entries sent, ties to the earlier class.

    >>> from types import SimpleNamespace as Item
    >>> def chunks(name, n):
    ...     return lambda f: iter(Item(name=f"{name}{k}", entry_stop=k + 1, file_entries=n) for k in range(n))
    >>> files = {"s": chunks("s", 2), "b": chunks("b", 4)}
    >>> [item.name for item in interleave([["s"], ["b"]], 1, lambda f: files[f](f))]
    ['s0', 'b0', 'b1', 's1', 'b2', 'b3']
    """
    lanes = [_Class(group) for group in groups if group]
    while lanes:
        lane = min(lanes, key=_Class.fraction)
        while len(lane.open) < per_class and lane.waiting:
            lane.open.append([start(lane.waiting.popleft()), 0, None])
        if not lane.open:
            lanes.remove(lane)
            continue
        current = lane.open[0]
        item = next(current[0], None)
        if item is None:
            lane.open.popleft()
            lane.finished_entries += current[1] if current[2] is None else current[2]
            if current[2] is not None:
                lane.totals.append(current[2])
            continue
        current[1], current[2] = item.entry_stop, item.file_entries
        lane.open.rotate(-1)
        yield item
