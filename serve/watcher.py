"""Hot swap: the newest promoted model version, loaded beside the one in use.

A trainer publishes versions every few seconds. Reloading in the request path,
or Ray Serve's ``reconfigure``, makes requests wait for the load (tens to
hundreds of ms). Here a daemon thread polls the store, loads a newer version
while requests keep using the current one, then replaces a single reference.
A request reads that reference once and uses the model it got to the end, so
it never waits on a load and never mixes two versions; the old model is freed
when the last request holding it finishes.

Replicas poll on their own clocks, so left alone they would swap at
different moments, and a client whose requests Serve spreads over two
replicas could get version 2 and then version 1. With ``swap_delay_s`` a
loaded version is held until that long after its publication (the
``created`` time in its metadata), so every replica that has loaded it by
then swaps at the same instant; one that loads later swaps at once.

Only promoted versions are followed (:mod:`hepstream.models.gate`): a version
the quality gate rejected stays in the store and is never swapped in, unless
an operator forces it through (``hepstream models promote``) or pins it.

An operator rolls back by pinning a version in a small file beside the store
(:func:`write_pin`): every replica reads it on its next poll, so all of them
serve the pinned version within one poll interval plus its load, and go back
to following the newest version when the pin is removed.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hepstream.models.store import LoadedModel

logger = logging.getLogger(__name__)


@functools.cache  # once per process: later calls would only pin what is garbage by then
def _freeze_long_lived_objects() -> None:
    """Leave the objects that exist once a first model is loaded out of every later garbage collection.

    A server's modules, app and model live as long as it does, but Python's
    full collections walk them all each time: a pause that every request in
    flight waits out, once every few seconds under load, and the slowest
    request of a load whether versions swap or not (figures in
    ``docs/http-api.md``). Ray Serve freezes what exists
    after a replica's constructor; the first load imports the model's code
    and builds the app's remaining state, so freezing again here covers them.
    """
    gc.collect()
    gc.freeze()


class Store(Protocol):
    """What the watcher needs of ``hepstream.models.store.ModelStore``."""

    def latest_servable(self) -> int | None: ...

    def load(self, version: int) -> LoadedModel: ...

    def versions(self) -> list[int]: ...

    def read_meta(self, version: int): ...


def pin_path(store: Store) -> Path | None:
    """Where the operator's pin of a store's model lives: ``<root>/<model>.pinned.json``, beside its folder.

    Beside, not inside: the model's folder belongs to the store, which owns
    every name in it. ``None`` for a store without a folder (no rollback).
    """
    folder = getattr(store, "folder", None)
    return None if folder is None else Path(folder).with_name(f"{Path(folder).name}.pinned.json")


def read_pin(path: Path | None) -> int | None:
    """The pinned version, or ``None`` when nothing is pinned; raises ``ValueError`` on a malformed pin."""
    if path is None:
        return None
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        version = json.loads(text)["version"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: expected {{\"version\": N}}, got {text[:80]!r}") from None
    if type(version) is not int or version < 1:
        raise ValueError(f"{path}: version must be a positive integer, got {version!r}")
    return version


def write_pin(path: Path, version: int | None) -> None:
    """Pin every replica to ``version`` (an atomic rename, so no replica reads half a pin); ``None`` unpins."""
    if version is None:
        path.unlink(missing_ok=True)
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(json.dumps({"version": version, "pinned_at": time.time()}))
    partial.rename(path)


def not_served(store, served: int, pinned: int | None, most: int = 10) -> list[dict]:
    """The versions newer than ``served`` (at most the ``most`` newest), each with why it does not answer:
    rejected by the quality gate (its reason), the operator's pin, or not yet loaded and swapped in."""
    rows = []
    for version in [v for v in store.versions() if v > served][-most:]:
        try:
            meta = store.read_meta(version)
        except Exception as error:  # a version half written or pruned meanwhile says so, instead of failing
            rows.append({"version": version, "promoted": None, "why": f"unreadable: {error}"})
            continue
        why = meta.promotion_reason if not meta.promoted else (
            f"pinned to version {pinned}" if pinned is not None else "promoted, not swapped in yet")
        rows.append({"version": version, "promoted": meta.promoted, "why": why})
    return rows


@dataclass(frozen=True)
class _Failure:
    version: int | None  # None: the store itself could not be read
    attempts: int
    retry_at: float  # time.monotonic()


class ModelWatcher:
    """Keeps ``current`` at the newest promoted version of one model that loads, or at the operator's pin.

    A version that fails to load (half written, corrupt) is logged and retried
    with a growing delay, up to ``max_retry_interval_s``; the current model keeps
    serving meanwhile, and a newer version is tried at once. Counters
    (``swaps``, ``failures``, ``last_error``) are written by the watcher thread
    only, for health and metrics endpoints to read.
    """

    def __init__(self, store: Store, poll_interval_s: float = 0.5, max_retry_interval_s: float = 30.0,
                 pin_file: Path | None = None, swap_delay_s: float = 0.0):
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be positive, got {poll_interval_s}")
        self.store = store
        self.pin_file = pin_file
        self.pinned: int | None = None  # the operator's pin as last read
        self.poll_interval_s = poll_interval_s
        self.max_retry_interval_s = max_retry_interval_s
        self.swap_delay_s = swap_delay_s
        self.swaps = 0
        self.failures = 0
        self.last_error: str | None = None
        self._current: LoadedModel | None = None
        self._failure: _Failure | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def why_none(self) -> str:
        """Why no version answers yet, for a 503: the last load error, else the newest version's reason for not
        being promoted (a warm-up, the gate), else that none is published."""
        if self.last_error:
            return self.last_error
        for row in not_served(self.store, 0, None, most=1):
            return f"version {row['version']} is not served: {row['why']}"
        return "none published so far"

    @property
    def current(self) -> LoadedModel | None:
        """The model to answer with, or ``None`` before the first version has loaded.

        Read it once per request and keep the reference: a later read may
        return a newer version.
        """
        return self._current

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this ModelWatcher was already started")
        self._thread = threading.Thread(target=self._run, name="hepstream-model-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling; waits for a load in progress up to ``timeout_s``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def poll(self) -> bool:
        """Check the store once and swap in a newer version; True if one was swapped in.

        The watcher thread calls this every ``poll_interval_s``; call it
        directly only on a watcher that was not started.
        """
        if self._backing_off(None):
            return False
        try:
            self.pinned = read_pin(self.pin_file)
            wanted = self.pinned if self.pinned is not None else self.store.latest_servable()
        except Exception as error:
            self._failed(None, error)
            return False
        if self._failure is not None and self._failure.version is None:
            self._recovered()
        current = self._current
        if wanted is None or self._backing_off(wanted) or (current is not None and (
                wanted == current.version or (self.pinned is None and wanted < current.version))):
            return False  # never back to an older version unless an operator pinned it
        started = time.perf_counter()
        try:
            model = self.store.load(wanted)
        except Exception as error:
            self._failed(wanted, error)
            return False
        if self.pinned is None:
            self._hold_until_due(model)
        self._current = model  # the swap: one reference, atomic for every reader
        self.swaps += 1
        if self.swaps == 1:
            _freeze_long_lived_objects()
        self._recovered()
        logger.info("model %s: serving version %d%s (was %s), loaded in %.0f ms", model.name, wanted,
                    " (pinned)" if self.pinned is not None else "", current.version if current is not None else "none", (time.perf_counter() - started) * 1e3)
        return True

    def _hold_until_due(self, model: LoadedModel) -> None:
        """Wait until ``swap_delay_s`` after the version's publication, when every replica swaps to it."""
        created = model.meta.created
        if created is None or not self.swap_delay_s:
            return
        wait = min(float(created) + self.swap_delay_s - time.time(), self.swap_delay_s)
        if wait > 0:
            self._stop.wait(wait)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a bug here must not end hot swap for the life of the replica
                logger.exception("model watcher: unexpected error; polling again in %.1f s", self.poll_interval_s)
            self._stop.wait(self.poll_interval_s)

    def _backing_off(self, version: int | None) -> bool:
        failure = self._failure
        return failure is not None and failure.version == version and time.monotonic() < failure.retry_at

    def _recovered(self) -> None:
        self._failure = None
        self.last_error = None

    def _failed(self, version: int | None, error: Exception) -> None:
        previous = self._failure
        attempts = previous.attempts + 1 if previous is not None and previous.version == version else 1
        delay = min(self.poll_interval_s * 2**attempts, self.max_retry_interval_s)
        self._failure = _Failure(version, attempts, time.monotonic() + delay)
        self.failures += 1
        what = "reading the model store" if version is None else f"loading version {version}"
        self.last_error = f"{what} failed: {type(error).__name__}: {error}"
        # The traceback once per failing version; repeats would only flood the log.
        logger.warning("model watcher: %s (attempt %d); retrying in %.3g s", self.last_error, attempts, delay,
                       exc_info=attempts == 1)
