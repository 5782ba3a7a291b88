"""One ROOT file to a stream of chunks, each bounded in memory and carrying its identity.

uproot reads local paths, ``root://`` URLs (through fsspec-xrootd, which
stayed reliable on our XRootD tests where uproot's own XRootD source did not)
and ``https://`` URLs alike. Errors are turned into :class:`SourceError`
naming the URL and, where it applies, the tree or branch, so one bad file is
reported and skipped while the others go on.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass

import uproot

from hepstream.wire import Chunk, ChunkId, awkward_to_batch


class SourceError(RuntimeError):
    """A file that cannot be read as asked: names the URL and what is wrong with it."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


def _nearest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


@dataclass(frozen=True)
class ReadPlan:
    """What to read from every file of a dataset; normalised once, so nothing deeper re-parses it."""

    dataset: str
    tree: str
    branches: tuple[str, ...]
    step_bytes: int
    max_chunk_events: int


def _open_tree(url: str, tree: str):
    try:
        file = uproot.open(url)
    except FileNotFoundError:
        raise SourceError(url, "no such file") from None
    except Exception as error:  # uproot raises many kinds for bad bytes or remote failures
        raise SourceError(url, f"cannot open as a ROOT file: {error}") from None
    try:
        return file, file[tree]
    except KeyError:
        keys = file.keys(cycle=False)
        file.close()
        raise SourceError(url, f"has no tree {tree!r}{_nearest(tree, keys)}; it holds {keys}") from None
    except Exception as error:
        file.close()
        raise SourceError(url, f"cannot read tree {tree!r}: {type(error).__name__}: {error}") from None


def entries_per_step(tree, branches, step_bytes: int) -> int:
    """Entries whose uncompressed branch data fill about ``step_bytes``, from the tree's metadata alone.

    uproot's ``num_entries_for`` reads every basket key, which costs a round
    trip each on remote files (and breaks on fsspec-xrootd with numpy offsets).
    """
    entries = max(1, tree.num_entries)
    per_entry = sum(tree[name].member("fTotBytes") for name in branches) / entries
    return max(1, int(step_bytes / max(per_entry, 1e-9)))


def iterate_chunks(url: str, plan: ReadPlan, label: int | None = None) -> Iterator[Chunk]:
    """Yield the file's events in chunks of at most ``plan.step_bytes`` (in memory) and ``max_chunk_events``."""
    file, tree = _open_tree(url, plan.tree)
    with file:
        missing = [b for b in plan.branches if b not in tree]
        if missing:
            hints = "".join(_nearest(b, tree.keys()) for b in missing)
            raise SourceError(url, f"tree {plan.tree!r} lacks branch(es) {missing}{hints}")
        file_uuid = str(file.file.uuid)
        try:
            step = min(entries_per_step(tree, plan.branches, plan.step_bytes), plan.max_chunk_events)
            for arrays, report in tree.iterate(list(plan.branches), step_size=step, report=True):
                chunk_id = ChunkId(file_uuid, plan.tree, int(report.tree_entry_start), int(report.tree_entry_stop))
                yield Chunk(chunk_id, plan.dataset, url, awkward_to_batch(arrays), label)
        except Exception as error:
            raise SourceError(url, f"reading tree {plan.tree!r} failed: {type(error).__name__}: {error}") from None
