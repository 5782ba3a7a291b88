"""Follow storage: list a dataset's inputs again and again, and publish each file once it has landed whole.

A production or a data-taking run writes its files over hours; a producer that
publishes what it finds and exits never sees the later ones. The follower
resolves the inputs (local globs and folders, file lists, ``root://`` globs
through the XRootD server's listing) every ``producer.poll_s`` and hands each
new file to :meth:`Producer.publish_file
<hepstream.streaming.producer.Producer.publish_file>` once it is complete:

- its size and modification time have not changed for ``producer.settle_s``
  (a local file last modified longer ago than that is settled when first
  seen, so a backlog or a restart does not wait);
- its tree opens and the file reaches the end its header records, which a
  file still being copied does not, though it opens long before.

A file that fails (cannot be opened whole, or publishing it fails) is tried
again after ``producer.retry_backoff_s``, doubling, ``producer.retries``
times; then it is reported failed and left alone until it changes. A file
once published is not watched again: new contents land under a new name.

Exactly once across restarts: the manifest (``producer.manifest``) is the
truth. A restarted follower opens every listed file again, finds its chunks
in the manifest and sends nothing (the file counts as *already published*);
a file cut short by a stop resumes where its acknowledged chunks end.
Without a manifest a restart publishes everything again.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from itertools import islice

from hepstream.backoff import Backoff
from hepstream.config import Config, ConfigError
from hepstream.kafka import ensure_topic
from hepstream.streaming.manifest import Manifest
from hepstream.streaming.producer import FileReport, ProduceReport, Producer
from hepstream.streaming.progress import Progress
from hepstream.streaming.reader import SourceError, written_end
from hepstream.streaming.retry import is_remote
from hepstream.streaming.sources import Source, resolve
from hepstream.streaming.stamps import Stamp, stamp

log = logging.getLogger(__name__)

PENDING, PUBLISHING, PUBLISHED, FAILED = "pending", "publishing", "published", "failed"


@dataclass(frozen=True)
class FileStatus:
    """One followed file. ``reason``: why the last attempt failed (a pending file may be retried)."""

    url: str
    state: str  # pending | publishing | published | failed
    size: int
    events: int  # published by this follower; 0 for a file the manifest already held
    attempts: int
    reason: str | None
    first_seen: float  # wall-clock seconds since the epoch when it was first listed
    published_at: float | None  # wall-clock seconds when its last chunk was acknowledged
    already_published: bool  # the manifest held every chunk: an earlier run published it


@dataclass(frozen=True)
class FollowStatus:
    """What the follower has seen and done so far, for ``hepstream status`` and the final report."""

    files: tuple[FileStatus, ...]
    polls: int
    listing_error: str | None  # why the last listing failed, None when it worked

    def _in(self, state: str) -> list[FileStatus]:
        return [f for f in self.files if f.state == state]

    @property
    def published(self) -> list[FileStatus]:
        return self._in(PUBLISHED)

    @property
    def pending(self) -> list[FileStatus]:
        return self._in(PENDING) + self._in(PUBLISHING)

    @property
    def failed(self) -> dict[str, str]:
        return {f.url: f.reason for f in self._in(FAILED)}

    @property
    def events(self) -> int:
        return sum(f.events for f in self.files)

    def as_dict(self) -> dict:
        return {
            "files_seen": len(self.files),
            "files_published": sum(not f.already_published for f in self.published),
            "files_already_published": sum(f.already_published for f in self.published),
            "files_pending": [f.url for f in self.pending],
            "files_failed": self.failed,
            "events_published": self.events,
            "polls": self.polls,
            "listing_error": self.listing_error,
            "files": [asdict(f) for f in self.files],
        }


@dataclass
class _Tracked:
    """The follower's own bookkeeping of one file; only the follower touches it, under its lock."""

    source: Source
    stamp: Stamp
    changed_at: float  # monotonic time the stamp last changed (backdated for an old local file)
    first_seen: float
    state: str = PENDING
    attempts: int = 0
    next_try: float = 0.0
    reason: str | None = None
    published_at: float | None = None
    report: FileReport = field(init=False)

    def __post_init__(self) -> None:
        self.report = FileReport(self.source.url, self.source.sample)

    def changed(self, now_stamp: Stamp, now: float) -> None:
        """New bytes: whatever failed before may work now, so the attempts start again."""
        self.stamp, self.changed_at = now_stamp, now
        self.state, self.attempts, self.next_try, self.reason = PENDING, 0, 0.0, None

    def add(self, attempt: FileReport) -> None:
        total = self.report
        total.chunks += attempt.chunks
        total.events += attempt.events
        total.bytes += attempt.bytes
        total.skipped_chunks += attempt.skipped_chunks
        total.retries += attempt.retries
        total.entries_published = attempt.entries_published  # counts the manifest's too: the latest is the truth
        total.file_entries = attempt.file_entries

    def status(self) -> FileStatus:
        report = self.report
        return FileStatus(self.source.url, self.state, self.stamp.size, report.events, self.attempts, self.reason,
                          self.first_seen, self.published_at,
                          self.state == PUBLISHED and report.chunks == 0 and report.skipped_chunks > 0)


class Follower:
    """Publishes a dataset's files as they land, until :meth:`run`'s stop event is set; :meth:`status` any time."""

    def __init__(self, config: Config, bootstrap: str, progress: Progress | None = None):
        if config.producer.ray_tasks:
            raise ConfigError("producer.ray_tasks: following storage publishes from this process; set it to 0")
        self.config = config
        self.bootstrap = bootstrap
        self.progress = progress or Progress()
        self.producer = Producer(config, bootstrap, progress=self.progress)
        producer = config.producer
        self._backoff = Backoff(producer.retries, producer.retry_backoff_s)
        self._pool = ThreadPoolExecutor(producer.files_in_flight, thread_name_prefix="hepstream-follow")
        self._lock = threading.Lock()
        self._files: dict[str, _Tracked] = {}
        self._polls = 0
        self._listing_error: str | None = None
        self._manifest: Manifest | None = None

    def run(self, stop: threading.Event) -> ProduceReport:
        """Follow until ``stop`` is set; files being published then are finished, the others wait for next time."""
        started = time.monotonic()
        if self.config.producer.manifest is None:
            log.warning("producer.manifest is not set: a restarted follower publishes every file again")
        kafka = self.config.kafka
        ensure_topic(self.bootstrap, self.config.dataset.topic, kafka.partitions, kafka)
        self.progress.start(0)
        running: dict[Future, _Tracked] = {}
        with self.producer.open_manifest() as manifest:
            self._manifest = manifest
            while True:
                for done in [f for f in running if f.done()]:
                    del running[done]
                    done.result()  # an attempt records its own failures: this raises only on a bug
                running |= {self._pool.submit(self._attempt, t): t for t in self._poll()}
                if stop.wait(self.config.producer.poll_s):
                    break
            for future, tracked in running.items():
                if future.cancel():
                    with self._lock:
                        tracked.state = PENDING
            wait(running)
        report = ProduceReport(self.config.dataset.topic, elapsed_s=time.monotonic() - started)
        with self._lock:
            report.files = [t.report for t in self._files.values() if t.state in (PUBLISHED, FAILED)]
        return report

    def status(self) -> FollowStatus:
        with self._lock:
            return FollowStatus(tuple(t.status() for t in self._files.values()), self._polls, self._listing_error)

    def _poll(self) -> list[_Tracked]:
        """List the inputs once; the files now due for an attempt (settled, and past their retry wait)."""
        listed, listing_error = self._list()
        with self._lock:
            self._polls += 1
            self._listing_error = listing_error
            if listing_error:
                return []
            for url in [u for u, t in self._files.items() if t.state in (PENDING, FAILED) and u not in listed]:
                del self._files[url]  # gone before it was published (deleted, renamed): nothing to publish
                self.progress.found(-1)
            waiting = [(source, self._files.get(url)) for url, source in listed.items()
                       if url not in self._files or self._files[url].state in (PENDING, FAILED)]
        due = []
        for source, tracked in waiting:
            try:
                current = stamp(source.url)
            except OSError as error:  # gone between the listing and now, or the server is away: next time
                log.debug("%s: %s", source.url, error)
                continue
            now = time.monotonic()
            with self._lock:
                if tracked is None:
                    tracked = self._files[source.url] = _Tracked(source, current, self._changed_at(source, current, now),
                                                                 time.time())
                    self.progress.found(1)
                elif current != tracked.stamp:
                    tracked.changed(current, now)
                if (tracked.state == PENDING and now - tracked.changed_at >= self.config.producer.settle_s
                        and now >= tracked.next_try):
                    tracked.state = PUBLISHING
                    due.append(tracked)
        return due

    def _list(self) -> tuple[dict[str, Source], str | None]:
        """The inputs now, by URL, or why they could not be listed (a glob matching nothing yet is no error here)."""
        try:
            sources, _ = resolve(self.config.dataset)
        except (OSError, ConfigError) as error:
            reason = f"listing the inputs failed: {type(error).__name__}: {error}"
            log.warning("%s; trying again in %g s", reason, self.config.producer.poll_s)
            return {}, reason
        listed = {}
        for source in sources:
            listed.setdefault(source.url, source)  # the first input naming a file decides its label
        return listed, None

    def _changed_at(self, source: Source, current: Stamp, now: float) -> float:
        """When a newly listed file last changed: a local file's modification time says; a remote clock may lie."""
        if is_remote(source.url) or current.mtime is None:
            return now
        return now - max(0.0, time.time() - current.mtime)

    def _attempt(self, tracked: _Tracked) -> None:
        source, size = tracked.source, tracked.stamp.size
        report, error = None, None
        try:
            end = written_end(source, self.config.producer.timeout_s)
            if end > size:
                raise SourceError(source.url, f"not whole yet: {size} of the {end} B its header records")
            report = self.producer.publish_file(zlib.crc32(source.url.encode()), source, self._manifest)
            error = report.error
        except SourceError as failure:
            error = failure.reason
        except Exception as failure:  # a transient remote error opening it: an attempt like any other
            error = f"{type(failure).__name__}: {failure}"
        with self._lock:
            self._settle(tracked, report, error)

    def _settle(self, tracked: _Tracked, report: FileReport | None, error: str | None) -> None:
        tracked.attempts += 1
        if report is not None:
            tracked.add(report)
        tracked.reason = tracked.report.error = error
        if error is None:
            tracked.state, tracked.published_at = PUBLISHED, time.time()
            log.info("published %s: %d events", tracked.source.url, tracked.report.events)
            return
        wait_s = next(islice(self._backoff.waits(), tracked.attempts - 1, None), None)
        if wait_s is None:
            tracked.state = FAILED
            log.error("%s failed after %d attempts: %s; trying again when it changes",
                      tracked.source.url, tracked.attempts, error)
            return
        tracked.state, tracked.next_try = PENDING, time.monotonic() + wait_s
        log.warning("%s: %s; attempt %d in %.1f s", tracked.source.url, error, tracked.attempts + 1, wait_s)

    def close(self) -> None:
        self._pool.shutdown()
        self.producer.close()
