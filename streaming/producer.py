"""Publish a dataset's ROOT files to its Kafka topic, chunk by chunk, resumably.

Several files are read at once, one thread each (uproot's decompression,
Arrow's encoding and the socket release the GIL), and each file's chunks are
sent in entry order; :mod:`hepstream.streaming.distributed` spreads files over
Ray worker processes, each running a :class:`Producer`. Chunk ``k`` of file ``f`` goes to partition
``(f + k) % partitions``: every partition, and so every trainer, sees all
classes of a per-file labelled dataset interleaved, and a chunk sent again
after a restart lands where it went the first time, under the same key.

Every acknowledged chunk is recorded in the manifest; a restarted run skips
what it holds. Bytes sent but not yet acknowledged are bounded
(``producer.max_in_flight_bytes``), so memory stays bounded by the chunk size
and that budget whatever the size of the input. Nothing is published before
the selection has been checked against the first readable file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from kafka.errors import KafkaError

from hepstream import wire
from hepstream.backoff import Backoff
from hepstream.config import Config, ConfigError, FileSpec
from hepstream.expressions import ExpressionError
from hepstream.kafka import ensure_topic, new_producer, with_broker
from hepstream.malloc import tune_malloc
from hepstream.streaming.interleave import classes, interleave, open_per_class
from hepstream.streaming.manifest import Manifest, task_path
from hepstream.streaming.progress import Progress
from hepstream.streaming.reader import (FileReader, ReadChunk, ReadPlan, SourceError, check_selection,
                                        configure_remote_timeouts)
from hepstream.streaming.selection import Selection, UnknownBranch
from hepstream.streaming.sources import Source, resolve

log = logging.getLogger(__name__)

# Headers, key and the Kafka record batch framing around an IPC value.
_MESSAGE_OVERHEAD = 16_384
# Entries of the first readable file on which cuts and definitions are tried before publishing.
_PREFLIGHT_ENTRIES = 100


def tune_malloc_for_chunks(arenas: int = 2, mmap_threshold: int = 4 << 20) -> None:
    """Keep a producer process's memory flat however much it publishes; call it before the reader threads start.

    Chunk buffers are megabytes each. glibc raises its mmap threshold each
    time such a buffer is freed, after which they come from the heap and the
    holes they leave fragment it; and every reader thread gets an arena of
    its own that caches freed chunks. A fixed mmap threshold returns every
    large buffer to the system when freed, and a cap bounds the arenas: with
    both, publishing ten times as much raises the peak RSS least. The
    threshold is 4 MB, not lower: each mmap'd buffer is fresh pages the
    kernel must fault in and zero, and a lower threshold cost more system
    time and events/s than the little peak memory it saved (figures in
    ``docs/producing.md``). A process-wide setting, so the producer's entry
    points (``hepstream produce``, the benchmark) call it, not the library
    class.
    """
    tune_malloc(arenas=arenas, mmap_threshold=mmap_threshold)


@dataclass
class FileReport:
    """One file's outcome. A file with an error is *partial* when some of its entries are on the topic."""

    url: str
    sample: str | None = None
    chunks: int = 0
    events: int = 0
    bytes: int = 0
    skipped_chunks: int = 0  # acknowledged in an earlier run, per the manifest
    retries: int = 0
    error: str | None = None
    entries_published: int = 0  # entries whose chunks are on the topic, from this run or an earlier one
    file_entries: int | None = None  # entries in the file's tree, once it could be opened
    retaken: int = 0  # times a Ray actor publishing it was lost and another took the file over

    @property
    def partial(self) -> bool:
        return self.error is not None and self.entries_published > 0


@dataclass
class ProduceReport:
    topic: str
    files: list[FileReport] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def events(self) -> int:
        return sum(f.events for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def failed(self) -> list[FileReport]:
        """Every file with an error, partial ones included: the run did not publish it whole."""
        return [f for f in self.files if f.error]

    def as_dict(self) -> dict:
        """The run's summary; a partial file is listed under ``partial``, not ``failures``, with how far it got."""
        partial = [f for f in self.failed if f.partial]
        return {
            "topic": self.topic,
            "files_ok": len(self.files) - len(self.failed),
            "files_failed": len(self.failed) - len(partial),
            "files_partial": len(partial),
            "events": self.events,
            "bytes": self.bytes,
            "chunks": sum(f.chunks for f in self.files),
            "chunks_skipped": sum(f.skipped_chunks for f in self.files),
            "files_retaken": sum(1 for f in self.files if f.retaken),
            "retries": sum(f.retries for f in self.files),
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events / self.elapsed_s) if self.elapsed_s else 0,
            "failures": {f.url: f.error for f in self.failed if not f.partial},
            "partial": {f.url: {"entries_published": f.entries_published, "file_entries": f.file_entries,
                                "error": f.error} for f in partial},
        }


def read_plan(config: Config, selection: Selection | None = None) -> ReadPlan:
    producer = config.producer
    return ReadPlan(
        config.dataset.name,
        config.dataset.tree,
        selection or Selection.from_config(config.dataset, config.features.branches),
        producer.step_size,
        producer.max_chunk_events,
        Backoff(producer.retries, producer.retry_backoff_s),
        producer.timeout_s,
    )


def fingerprint(config: Config) -> str:
    """Hash of everything that decides chunk boundaries and contents: a manifest is valid only under the same."""
    dataset, producer, kafka = config.dataset, config.producer, config.kafka
    decisive = {
        "dataset": dataset.model_dump(mode="json", include={"tree", "branches", "exclude", "define", "cuts", "label_branch"}),
        "features": config.features.branches,
        "producer": producer.model_dump(mode="json", include={"step_size", "max_chunk_events"}),
        "kafka": kafka.model_dump(mode="json", include={"compression", "max_message_bytes", "partitions"}),
    }
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def split_to_fit(read: ReadChunk, limit: int, compression: str) -> Iterator[tuple[wire.Chunk, bytes, bytes, list]]:
    """Encode a chunk, halving it until every piece fits in one message of ``limit`` bytes.

    Each half keeps a contiguous entry range of its own (cut at the entry of
    its first row, when cuts dropped rows), so the halves have distinct keys
    and together cover the chunk's range.
    """
    chunk = read.chunk
    key, value, headers = wire.encode(chunk, compression)
    if len(value) + _MESSAGE_OVERHEAD <= limit:
        yield chunk, key, value, headers
        return
    if chunk.events <= 1:
        raise SourceError(chunk.source, f"one event at entry {chunk.id.entry_start} encodes to {len(value)} B, "
                                        f"over the {limit} B message limit")
    half = chunk.events // 2
    start, stop = chunk.id.entry_start, chunk.id.entry_stop
    middle = start + half if read.entries is None else int(read.entries[half])
    for lo, hi, offset, length, rows in ((start, middle, 0, half, slice(None, half)),
                                         (middle, stop, half, chunk.events - half, slice(half, None))):
        piece = replace(chunk, id=replace(chunk.id, entry_start=lo, entry_stop=hi),
                        batch=chunk.batch.slice(offset, length))
        yield from split_to_fit(ReadChunk(piece, read.index, None if read.entries is None else read.entries[rows]),
                                limit, compression)


def preflight(sources: list[Source], plan: ReadPlan) -> None:
    """Try cuts and definitions on the first entries of the first readable file; raise if they cannot work."""
    if not plan.selection.filters:
        return
    for source in sources:
        try:
            check_selection(source, plan, _PREFLIGHT_ENTRIES)
            return
        except (UnknownBranch, ExpressionError) as error:
            raise ConfigError(f"{source.url}: {error}") from None
        except (SourceError, OSError, ValueError) as error:
            log.warning("cannot check the selection on %s (%s); trying the next file", source.url, error)


def prepare(config: Config, bootstrap: str, plan: ReadPlan,
            files: list[FileSpec] | None = None) -> tuple[list[Source], ProduceReport]:
    """What every run does before reading: resolve the inputs, check the selection, create the topic.

    The report lists one entry per source, in order, then each input that
    names no file, already failed.
    """
    sources, unmatched = resolve(config.dataset, files)
    preflight(sources, plan)
    kafka = config.kafka
    ensure_topic(bootstrap, config.dataset.topic, kafka.partitions, kafka)
    report = ProduceReport(config.dataset.topic, [FileReport(s.url, s.sample) for s in sources])
    report.files += [FileReport(pattern, error=reason) for pattern, reason in unmatched]
    return sources, report


class Piece(NamedTuple):
    """One message ready to send: the chunk (a piece of one, when halved to fit), its encoding, its partition,
    its file's entries (for the interleaving's pacing) and the file's report."""

    chunk: wire.Chunk
    key: bytes
    value: bytes
    headers: list
    partition: int
    file_entries: int | None
    report: FileReport

    @property
    def entry_stop(self) -> int:
        return self.chunk.id.entry_stop


def _in_thread(pool: ThreadPoolExecutor, items: Iterator, stop: threading.Event) -> Iterator:
    """``items``, produced in a thread of ``pool`` at most one ahead of the caller; the thread gives up once
    ``stop`` is set. An error raised producing them is raised here, after the items before it."""
    handed: queue.Queue = queue.Queue(maxsize=1)
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handed.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for item in items:
                if not put(item):
                    items.close()
                    return
        finally:
            put(end)

    future = pool.submit(fill)

    def drain() -> Iterator:
        while (item := handed.get()) is not end:
            yield item
        future.result()

    return drain()


class _ByteBudget:
    """Bytes handed to Kafka but not acknowledged yet; senders wait beyond ``limit`` (one message always passes)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + nbytes <= self.limit)
            self.used += nbytes

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self._cond.notify_all()


class Producer:
    """Publishes sources to ``<dataset>.events``; :meth:`run` returns what was sent and which files failed."""

    def __init__(self, config: Config, bootstrap: str, files_in_flight: int | None = None,
                 progress: Progress | None = None):
        self.config = config
        self.bootstrap = bootstrap
        self.files_in_flight = files_in_flight or config.producer.files_in_flight
        self.plan = read_plan(config)  # parses every expression: a bad one fails here, before any connection
        self.topic = config.dataset.topic
        self.progress = progress or Progress()
        self._lock = threading.Lock()
        self._budget = _ByteBudget(config.producer.max_in_flight_bytes)
        # One pool for the producer's life: reused threads keep their malloc arenas, so repeated runs
        # do not each claim fresh ones and the process's memory stays flat.
        self._pool = ThreadPoolExecutor(self.files_in_flight, thread_name_prefix="hepstream-read")
        self._pool_size = self.files_in_flight
        configure_remote_timeouts(config.producer.timeout_s)
        kafka = config.kafka
        self._producer = with_broker(bootstrap, kafka, "connecting", lambda: new_producer(
            bootstrap,
            kafka,
            client_id="hepstream-producer",
            # Compression happens inside the Arrow IPC body; compressing it again only costs CPU.
            compression_type=None,
            linger_ms=kafka.linger_ms,
        ))

    def run(self, files: list[FileSpec] | None = None) -> ProduceReport:
        """Publish every input (``files``, else the dataset's own), skipping what the manifest holds."""
        started = time.monotonic()
        sources, report = prepare(self.config, self.bootstrap, self.plan, files)
        self.progress.start(len(report.files))
        with self.open_manifest() as manifest:
            if self.mixes(sources):
                self._publish_interleaved(list(enumerate(sources)), report.files, manifest)
            else:
                for _ in self._pool.map(self._publish_file, range(len(sources)), sources, report.files,
                                        [manifest] * len(sources)):
                    pass
            self._producer.flush()
        for failed in report.files[len(sources):]:
            self.progress.file_done(failed.url, failed.error)
        report.elapsed_s = time.monotonic() - started
        return report

    def open_manifest(self, task: int | None = None) -> Manifest:
        """The run's manifest, or Ray task ``task``'s own beside it; either skips what the other holds."""
        path = self.config.producer.manifest
        if task is not None and path is not None:
            return Manifest(task_path(path, task), self.topic, fingerprint(self.config), family_of=path)
        return Manifest(path, self.topic, fingerprint(self.config))

    def publish_file(self, index: int, source: Source, manifest: Manifest) -> FileReport:
        """Publish the run's ``index``-th source and wait until it is acknowledged: for callers that hand out files."""
        report = FileReport(source.url, source.sample)
        self._publish_file(index, source, report, manifest)
        self._producer.flush()
        return report

    def publish_files(self, items: list[tuple[int, Source]], manifest: Manifest) -> list[FileReport]:
        """Publish these ``(index, source)`` files, interleaved, and wait until acknowledged: for callers that hand
        out shares of a run (:mod:`~hepstream.streaming.distributed`); one report per file, in order."""
        reports = {index: FileReport(source.url, source.sample) for index, source in items}
        self._publish_interleaved(items, reports, manifest)
        self._producer.flush()
        return list(reports.values())

    def mixes(self, sources: list[Source]) -> bool:
        """Whether chunks of these files are interleaved: ``producer.interleave`` and more than one class."""
        return self.config.producer.interleave and len(classes(enumerate(sources))) > 1

    def _publish_interleaved(self, items: list[tuple[int, Source]], reports, manifest: Manifest) -> None:
        """Send the files' chunks in the order of :func:`~hepstream.streaming.interleave.interleave`, each open file
        read ahead by a thread of its own, at most one piece ahead."""
        groups = classes(items)
        per_class = open_per_class(self.files_in_flight, len(groups))
        pool = self._reading_pool(per_class * len(groups))
        stop = threading.Event()

        def start(item: tuple[int, Source]) -> Iterator[Piece]:
            index, source = item
            return _in_thread(pool, self._pieces(index, source, reports[index], manifest), stop)

        try:
            for piece in interleave(groups, per_class, start):
                self._send(piece, manifest)
        finally:
            stop.set()

    def _reading_pool(self, threads: int) -> ThreadPoolExecutor:
        """The reading threads' pool, made larger when a run keeps more files open than ``files_in_flight``."""
        if threads > self._pool_size:
            self._pool.shutdown()
            self._pool, self._pool_size = ThreadPoolExecutor(threads, thread_name_prefix="hepstream-read"), threads
        return self._pool

    def _publish_file(self, index: int, source: Source, report: FileReport, manifest: Manifest) -> None:
        for piece in self._pieces(index, source, report, manifest):
            self._send(piece, manifest)

    def _pieces(self, index: int, source: Source, report: FileReport, manifest: Manifest) -> Iterator[Piece]:
        """The run's ``index``-th file as encoded pieces to send, in entry order, skipping what the manifest holds;
        ends early once sending one of them failed."""
        kafka = self.config.kafka
        partitions = kafka.partitions

        def finished(chunk_id: wire.ChunkId) -> bool:
            done = manifest.covers(chunk_id)
            if done:
                self._skipped(report, chunk_id)
            return done

        reader = FileReader(source, self.plan, finished)
        try:
            for read in reader:
                for piece, key, value, headers in split_to_fit(read, kafka.max_message_bytes, kafka.compression):
                    if report.error:
                        return
                    if manifest.has(piece.id):
                        self._skipped(report, piece.id)
                        continue
                    if source.sample:
                        headers.append(("sample", source.sample.encode()))
                    yield Piece(piece, key, value, headers, (index + read.index) % partitions, reader.file_entries,
                                report)
        except SourceError as error:
            report.error = error.reason
            log.error("skipping %s", error)
        finally:
            report.retries = reader.retries
            report.file_entries = reader.file_entries
            self.progress.file_done(source.url, report.error)

    def _skipped(self, report: FileReport, chunk_id: wire.ChunkId) -> None:
        """A chunk acknowledged in an earlier run, per the manifest: its entries are on the topic already."""
        with self._lock:
            report.skipped_chunks += 1
            report.entries_published += chunk_id.entry_stop - chunk_id.entry_start

    def _send(self, sent: Piece, manifest: Manifest) -> None:
        piece, key, value, report = sent.chunk, sent.key, sent.value, sent.report
        size = len(value)
        self._budget.acquire(size)

        def acked(metadata):
            manifest.record(piece.id, metadata.partition, metadata.offset, piece.events)
            with self._lock:
                report.chunks += 1
                report.events += piece.events
                report.entries_published += piece.id.entry_stop - piece.id.entry_start
                report.bytes += size
            self._budget.release(size)
            self.progress.advance(piece.events, size)

        def failed(error):
            with self._lock:
                report.error = report.error or f"publishing chunk {key.decode()} to {self.topic!r} on {self.bootstrap} failed: {error}"
            self._budget.release(size)

        try:
            future = self._producer.send(self.topic, key=key, value=value, headers=sent.headers,
                                         partition=sent.partition)
        except KafkaError as error:
            failed(error)
            return
        future.add_callback(acked)
        future.add_errback(failed)

    def close(self) -> None:
        self._pool.shutdown()
        self._producer.close()
