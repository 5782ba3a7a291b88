"""One ROOT file to a stream of chunks, each bounded in memory and carrying its identity.

uproot reads local paths, ``root://`` URLs (through fsspec-xrootd, which
stayed reliable on our XRootD tests where uproot's own XRootD source did not)
and ``https://`` URLs alike. Chunk boundaries depend only on the tree's
metadata and the configuration, so a resumed or retried run cuts the same
chunks with the same keys. A transient remote error reopens the file and goes
on from the chunk that failed, within the retry budget; anything else becomes
a :class:`SourceError` naming the URL and, where it applies, the tree or
branch, so one bad file is reported and skipped while the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import awkward as ak
import numpy as np
import uproot

from hepstream.backoff import Backoff
from hepstream.expressions import ExpressionError
from hepstream.streaming.retry import is_remote, is_transient
from hepstream.streaming.selection import FilePlan, MissingBranches, Selection
from hepstream.streaming.sources import Source
from hepstream.suggest import did_you_mean
from hepstream.wire import Chunk, ChunkId, awkward_to_batch

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A file that cannot be read as asked: names the URL and what is wrong with it."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class ReadPlan:
    """What to read from every file of a dataset; normalised once, so nothing deeper re-parses it."""

    dataset: str
    tree: str  # the dataset's tree; a sample may name another in its sources
    selection: Selection
    step_bytes: int
    max_chunk_events: int
    backoff: Backoff
    timeout_s: float


@dataclass(frozen=True)
class ReadChunk:
    """A chunk and where its rows came from: ``entries`` holds each row's entry number when cuts dropped some."""

    chunk: Chunk
    index: int
    entries: np.ndarray | None


def configure_remote_timeouts(timeout_s: float) -> None:
    """Bound how long the XRootD client waits, so a dead server is an error in seconds, not minutes.

    The client's defaults keep reconnecting for two minutes before a request
    fails; our own retries, with backoff, take that job.
    """
    try:
        from XRootD import client
    except ImportError:
        return
    seconds = max(1, int(timeout_s))
    for name, value in (("RequestTimeout", seconds), ("StreamTimeout", seconds),
                        ("ConnectionWindow", min(seconds, 10)), ("ConnectionRetry", 1)):
        client.EnvPutInt(name, value)


def _forget_remote_handles(url: str) -> None:
    """fsspec caches the filesystem of a dropped XRootD connection; a retry must open a fresh one."""
    if url.startswith("root://"):
        import fsspec_xrootd

        fsspec_xrootd.XRootDFileSystem.clear_instance_cache()


def _client_timeout(timeout_s: float) -> int:
    """The ``timeout`` uproot passes on to the file's fsspec filesystem: whole seconds, at least one."""
    return max(1, round(timeout_s))


def _release_remote_handle(url: str, timeout_s: float) -> None:
    """Close the XRootD handle fsspec-xrootd keeps open after uproot closed the file, for reuse.

    A timer task of fsspec-xrootd closes such handles up to a minute later; by
    then the server may be gone (the demo stops its own before exiting), the
    close fails inside the task, and Python prints its traceback at exit
    ("Task exception was never retrieved ... Failed to submit File.close
    request"). Closed here, while the server answers, nothing is left for it.
    """
    if url.startswith("root://"):
        from fsspec.core import url_to_fs

        # The instance uproot read through: fsspec keeps one per server and options, so the same timeout.
        filesystem, path = url_to_fs(url, timeout=_client_timeout(timeout_s))
        with contextlib.suppress(OSError):  # a server already gone took the handle with it
            filesystem.invalidate_cache(path)


def _nearest(name: str, names) -> str:
    hint = did_you_mean(name, names)
    return f" ({hint})" if hint else ""


def _open_tree(source: Source, timeout_s: float):
    # Local files through plain reads, not fsspec's default route through an event loop thread: a raw uproot
    # loop over the benchmark's files ran faster (docs/producing.md); and not a memory map, whose resident
    # pages would grow with the file.
    local = {} if is_remote(source.url) else {"handler": uproot.source.file.MultithreadedFileSource}
    try:
        # Each basket is read once, so uproot's caches would only hold memory. XRootD takes whole seconds.
        file = uproot.open(source.url, timeout=_client_timeout(timeout_s), object_cache=None, array_cache=None, **local)
    except FileNotFoundError:
        raise SourceError(source.url, "no such file") from None
    except Exception as error:  # uproot raises many kinds for bad bytes or remote failures
        if is_transient(error, source.url):
            raise
        raise SourceError(source.url, f"cannot open as a ROOT file: {error}") from None
    try:
        tree = file[source.tree]
    except KeyError:
        keys = file.keys(cycle=False)
        file.close()
        raise SourceError(source.url, f"has no tree {source.tree!r}{_nearest(source.tree, keys)}; it holds {keys}") from None
    except Exception as error:
        file.close()
        if is_transient(error, source.url):
            raise
        raise SourceError(source.url, f"cannot read tree {source.tree!r}: {type(error).__name__}: {error}") from None
    if not isinstance(tree, uproot.TTree):
        file.close()
        rntuple = isinstance(tree, uproot.behaviors.RNTuple.RNTuple)
        kind = "an RNTuple" if rntuple else f"a {getattr(tree, 'classname', type(tree).__name__)}"
        raise SourceError(source.url, f"not supported: {source.url} {source.tree} is {kind}, hepstream reads TTrees")
    return file, tree


@contextlib.contextmanager
def _opened(source: Source, timeout_s: float):
    """The file and its tree while the block runs; then the file closed, and its XRootD handle too."""
    try:
        file, tree = _open_tree(source, timeout_s)
        with file:
            yield file, tree
    finally:  # also when the tree was not there: the file was opened
        _release_remote_handle(source.url, timeout_s)


def _groups(tree) -> dict[str, tuple[str, ...]]:
    """Each grouping branch of ``tree`` and the sub-branches under it that hold data of their own (no sub-branches)."""
    branches = dict(tree.iteritems())
    leaves = [name for name, branch in branches.items() if not branch.branches]
    return {name: tuple(leaf for leaf in leaves if leaf.startswith(f"{name}/"))
            for name, branch in branches.items() if branch.branches}


def entries_per_step(tree, branches, step_bytes: int) -> int:
    """Entries whose uncompressed branch data fill about ``step_bytes``, from the tree's metadata alone.

    uproot's ``num_entries_for`` reads every basket key, which costs a round
    trip each on remote files (and breaks on fsspec-xrootd with numpy offsets).
    """
    entries = max(1, tree.num_entries)
    per_entry = sum(tree[name].member("fTotBytes") for name in branches) / entries
    return max(1, int(step_bytes / max(per_entry, 1e-9)))


class FileReader:
    """Reads one source chunk by chunk, reopening it after transient errors, skipping finished chunks."""

    def __init__(self, source: Source, plan: ReadPlan, finished: Callable[[ChunkId], bool] = lambda _: False):
        self.source = source
        self.plan = plan
        self.finished = finished
        self.next_entry = 0
        self.retries = 0
        self.file_entries: int | None = None  # the tree's entries, once the file has been opened

    def __iter__(self) -> Iterator[ReadChunk]:
        waits = self.plan.backoff.waits()
        while True:
            try:
                yield from self._read_from(self.next_entry)
                return
            except SourceError:
                raise
            except Exception as error:
                wait = next(waits, None) if is_transient(error, self.source.url) else None
                if wait is None:
                    retried = f" after {self.retries} retries" if self.retries else ""
                    raise SourceError(self.source.url, f"reading failed{retried} at entry {self.next_entry}: "
                                                       f"{type(error).__name__}: {error}") from None
                self.retries += 1
                log.warning("%s: %s; retry %d in %.1f s", self.source.url, error, self.retries, wait)
                _forget_remote_handles(self.source.url)
                time.sleep(wait)

    def _read_from(self, entry_start: int) -> Iterator[ReadChunk]:
        with _opened(self.source, self.plan.timeout_s) as (file, tree):
            try:
                file_plan = self.plan.selection.resolve(tree.keys(), _groups(tree))
            except MissingBranches as error:
                raise SourceError(self.source.url, f"tree {self.source.tree!r} {error}") from None
            file_uuid = str(file.file.uuid)
            step = min(entries_per_step(tree, file_plan.read, self.plan.step_bytes), self.plan.max_chunk_events)
            total = self.file_entries = tree.num_entries
            start = entry_start
            while start < total and self.finished(ChunkId(file_uuid, self.source.tree, start, min(start + step, total))):
                start += step
            self.next_entry = min(start, total)
            if start >= total:
                return
            arrays_iter = tree.iterate(list(file_plan.read), step_size=step, entry_start=start, report=True, how=dict)
            for columns, report in arrays_iter:
                chunk_id = ChunkId(file_uuid, self.source.tree, int(report.tree_entry_start), int(report.tree_entry_stop))
                if not self.finished(chunk_id):
                    yield self._chunk(chunk_id, _record(columns), file_plan, chunk_id.entry_start // step)
                self.next_entry = chunk_id.entry_stop

    def _chunk(self, chunk_id: ChunkId, arrays, file_plan: FilePlan, index: int) -> ReadChunk:
        try:
            selected, rows = self.plan.selection.apply(arrays, file_plan)
        except ExpressionError as error:
            raise SourceError(self.source.url, str(error)) from None
        chunk = Chunk(chunk_id, self.plan.dataset, self.source.url, awkward_to_batch(selected), self.source.label,
                      self.file_entries)
        entries = None if rows is None else rows + chunk_id.entry_start
        return ReadChunk(chunk, index, entries)



def _record(columns: dict[str, ak.Array]) -> ak.Array:
    """uproot's branches of one step as a record array, the same ``uproot.iterate`` would give.

    Built from the layouts directly: ``ak.Array`` of the dict re-checks each
    column, a few percent of the producer's time on NanoAOD-like files.
    """
    return ak.Array(ak.contents.RecordArray([column.layout for column in columns.values()], list(columns)))


def check_selection(source: Source, plan: ReadPlan, entries: int) -> None:
    """Evaluate the definitions and cuts on the first ``entries`` of ``source``.

    Raises :class:`UnknownBranch` or :class:`ExpressionError` for a selection
    that cannot work, :class:`SourceError` (or a transient error) when the
    file cannot tell.
    """
    with _opened(source, plan.timeout_s) as (_, tree):
        names = plan.selection.expression_inputs(tree.keys())
        plan.selection.try_on(tree.arrays(names, entry_stop=min(entries, tree.num_entries)))


def written_end(source: Source, timeout_s: float) -> int:
    """Where the file's last record ends, per its header (ROOT's ``fEND``), once its tree opens.

    A file still being copied or written opens, tree included, long before its
    baskets are all there; a file shorter than this end is not whole yet.
    """
    with _opened(source, timeout_s) as (file, _):
        return file.file.fEND


def iterate_chunks(url: str, plan: ReadPlan, label: int | None = None) -> Iterator[Chunk]:
    """The chunks of one file's ``plan.tree`` as the wire carries them, for tools and tests."""
    for read in FileReader(Source(url, plan.tree, label), plan):
        yield read.chunk
