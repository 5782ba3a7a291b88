"""The producer's record of acknowledged chunks, so that a restarted run sends only what is missing.

A JSON-lines file: a header naming the topic and a fingerprint of everything
that decides chunk boundaries, then one line per chunk the broker
acknowledged, appended and flushed from the acknowledgement callback. A
process killed mid-write leaves at most one partial last line, which is
dropped on the next start. Chunks sent but not acknowledged are not recorded:
a restart sends them again, under the same key, and consumers that count each
event once skip the duplicate by key (docs/wire-format.md).

With no path, the manifest lives in memory: the same bookkeeping serves
retries within one run.

A run spread over Ray tasks gives each task a file of its own beside the
run's (``<manifest>.task-<k>``, :func:`task_path`), so no two processes
append to one file. Every manifest of the family is read at start, whoever
wrote it: a restart skips what any of them holds, whether it runs with as
many tasks as before, with other counts, or in one process.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "m.jsonl"
>>> with Manifest(path, "t.events", "fp") as m:
...     m.record(ChunkId("u", "Events", 0, 50), partition=0, offset=7, events=50)
...     m.record(ChunkId("u", "Events", 50, 100), partition=1, offset=3, events=50)
>>> again = Manifest(path, "t.events", "fp")
>>> again.covers(ChunkId("u", "Events", 0, 100)), again.covers(ChunkId("u", "Events", 0, 150))
(True, False)
"""

from __future__ import annotations

import glob
import json
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hepstream.config import ConfigError
from hepstream.wire import ChunkId

VERSION = 1


class ManifestError(ConfigError):
    """A manifest that belongs to another topic or another selection, or that cannot be read."""


def task_path(path: Path, task: int) -> Path:
    """The manifest that Ray task ``task`` of a distributed run appends to, beside the run's own."""
    path = Path(path)
    return path.with_name(f"{path.name}.task-{task}")


def family(path: Path) -> list[Path]:
    """The run's manifest and every task manifest beside it, those that exist."""
    path = Path(path)
    tasks = sorted(Path(p) for p in glob.glob(f"{glob.escape(str(path))}.task-*"))
    return [p for p in (path, *tasks) if p.exists()]


class Manifest:
    """Appends to ``path`` and skips what it or any other manifest of its family (:func:`family`) holds.

    ``family_of`` names the run's own manifest when ``path`` is a task's.
    """

    def __init__(self, path: Path | None, topic: str, fingerprint: str, family_of: Path | None = None):
        self.path = None if path is None else Path(path)
        self._family_of = family_of
        self._lock = threading.Lock()
        self._ranges: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
        self._keys: set[bytes] = set()
        self._file = None
        header = self._header = {"manifest": VERSION, "topic": topic, "fingerprint": fingerprint}
        if self.path is None:
            return
        self.refresh()
        if self.path.exists() and self.path.stat().st_size:
            self._load(self.path, header, owned=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(header) + "\n")
        self._file = self.path.open("a")

    def refresh(self) -> None:
        """Read again what the family's other manifests hold: before retaking a file from a Ray actor that was
        lost, whose chunks acknowledged up to its end are in its own manifest (on storage every node shares)."""
        if self.path is None:
            return
        for other in family(self._family_of or self.path):
            if other != self.path and other.stat().st_size:
                self._load(other, self._header, owned=False)

    def _load(self, path: Path, header: dict, owned: bool) -> None:
        """Remember every chunk ``path`` records; a last line cut short by a killed process is dropped (cut, if ours)."""
        text = path.read_text()
        if not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            if owned:
                path.write_text(text)
        lines = text.splitlines()
        try:
            found = json.loads(lines[0])
            records = [json.loads(line) for line in lines[1:]]
        except (IndexError, ValueError) as error:
            raise ManifestError(f"manifest {path}: not a hepstream manifest ({error})") from None
        for name in ("manifest", "topic", "fingerprint"):
            if found.get(name) != header[name]:
                raise ManifestError(
                    f"manifest {path} was written with {name} {found.get(name)!r}, this run has {header[name]!r}: "
                    "resuming would publish chunks with other boundaries or to another topic; "
                    "delete the manifest (and its .task-* siblings) or set producer.manifest to another path"
                )
        for record in records:
            self._remember(ChunkId.from_key(record["key"].encode()))

    def _remember(self, chunk: ChunkId) -> None:
        with self._lock:
            if chunk.key() in self._keys:  # read again by refresh()
                return
            self._keys.add(chunk.key())
            self._ranges[(chunk.file_uuid, chunk.tree)].append((chunk.entry_start, chunk.entry_stop))

    @property
    def acknowledged(self) -> int:
        return len(self._keys)

    def has(self, chunk: ChunkId) -> bool:
        return chunk.key() in self._keys

    def covers(self, chunk: ChunkId) -> bool:
        """Whether acknowledged chunks cover every entry of ``chunk`` (it may have been sent in pieces)."""
        with self._lock:
            ranges = sorted(self._ranges.get((chunk.file_uuid, chunk.tree), ()))
        reached = chunk.entry_start
        for start, stop in ranges:
            if start > reached:
                break
            reached = max(reached, stop)
        return reached >= chunk.entry_stop

    def record(self, chunk: ChunkId, partition: int, offset: int, events: int) -> None:
        """Note an acknowledged chunk; flushed at once, so a killed process loses none it was told of."""
        line = json.dumps({"key": chunk.key().decode(), "partition": partition, "offset": offset, "events": events})
        self._remember(chunk)
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@dataclass(frozen=True)
class Acknowledged:
    """What a manifest family says the broker acknowledged, over every run that wrote it."""

    files: int  # files with at least one acknowledged chunk
    chunks: int
    events: int


def acknowledged(path: Path | str) -> Acknowledged:
    """Totals of the manifest at ``path`` and its task manifests, read without opening them for writing.

    A line cut short by a process killed mid-write is left out, as a restart would drop it.
    """
    files, chunks, events = set(), 0, 0
    for member in family(Path(path)):
        for line in member.read_text().splitlines(keepends=True)[1:]:
            if not line.endswith("\n"):
                continue
            record = json.loads(line)
            files.add(ChunkId.from_key(record["key"].encode()).file_uuid)
            chunks += 1
            events += record["events"]
    return Acknowledged(len(files), chunks, events)
