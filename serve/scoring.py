"""What every protocol asks of the server: which model version answers, and its scores for checked events.

The native API, the Open Inference Protocol and the TFaaS endpoint each parse
their own request into the same Arrow batch of model inputs; from there on
they share this module, so a version is chosen, scored and checked the same
way whichever protocol a client speaks.

Scoring goes through a *scorer*, an ``async (model, batch) -> scores``
function. On bare uvicorn it scores each request at once; on Ray Serve it is a
``@serve.batch`` method that gathers concurrent requests and calls
:meth:`Serving.score_many` once for all of them (see ``deployment.py``). Both
score a few events on the event loop and more in a worker thread. A request
of ``FULL_BATCH_EVENTS`` or more is a batch on its own: it skips the scorer, so
that two such requests score on two threads at once rather than one after the
other in one call.

The worker threads are the server's own, started once (:meth:`Serving.in_worker`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from hepstream.malloc import tune_malloc
from hepstream.models.features import FeatureError
from hepstream.serve.errors import RequestError
from hepstream.serve.watcher import ModelWatcher

if TYPE_CHECKING:
    from hepstream.models.store import LoadedModel, ModelStore

logger = logging.getLogger(__name__)

SCORE_ON_LOOP_EVENTS = 256  # a batch of at most this many events is scored on the event loop
FULL_BATCH_EVENTS = 4096  # a request this big is scored on its own: a few ms of work, nothing left to amortise
Scorer = Callable[["LoadedModel", pa.RecordBatch], Awaitable[np.ndarray]]
Result = np.ndarray | Exception  # the scores of one request, or why it has none


def tune_malloc_for_batches() -> None:
    """Keep a server's batch buffers in glibc's arenas; call it once per server process, before it serves.

    Scoring 10k events allocates buffers of 1-3 MB (the feature matrix, each
    layer's activations) from worker threads. With glibc's defaults each
    such buffer was fresh pages for the kernel, thousands of page faults per
    request in a Serve replica; with these settings a few (figures in
    ``docs/http-api.md``). The arena cap bounds what the 32 MB threshold and
    64 MB trim let the worker threads keep. See :mod:`hepstream.malloc`.
    """
    tune_malloc(arenas=4, mmap_threshold=32 << 20, trim_threshold=64 << 20)


class Serving:
    """One served model: its watcher (current version), pinned versions on demand, and scoring.

    ``observe_batch(requests, events)`` is told the size of every model call,
    for the batch-size metrics.
    """

    def __init__(self, store: ModelStore, model_name: str, watcher: ModelWatcher, pinned_cache_size: int = 4,
                 observe_batch: Callable[[int, int], None] = lambda requests, events: None):
        self.store = store
        self.model_name = model_name
        self.watcher = watcher
        self.observe_batch = observe_batch
        self.scorer: Scorer = self._score_alone
        self._pinned: OrderedDict[int, LoadedModel] = OrderedDict()
        self._pinned_size = pinned_cache_size
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}
        self._workers = ThreadPoolExecutor(max(2, os.cpu_count() or 1), thread_name_prefix="hepstream-worker")

    async def in_worker(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on one of this server's worker threads, which live as long as it does.

        Starlette's threadpool goes through anyio, whose idle threads are kept
        per asyncio task context; inside Ray Serve every request had a new
        thread, and each new thread sets up torch's and glibc's per-thread
        state again, which made every forward pass slower than on a pooled
        thread (figures in ``docs/http-api.md``).
        """
        return await asyncio.get_running_loop().run_in_executor(self._workers, functools.partial(function, *args))

    def close(self) -> None:
        """Let the worker threads end once their current calls return."""
        self._workers.shutdown(wait=False)

    def check_name(self, name: str, field: str = "name") -> None:
        if name != self.model_name:
            raise RequestError(404, f"no model named {name!r}; this server serves {self.model_name!r}", field)

    def current(self, name: str, field: str = "name") -> LoadedModel:
        """The version answering requests that pin none: read once, so one request sees one version."""
        self.check_name(name, field)
        model = self.watcher.current
        if model is None:
            raise RequestError(503, f"model {name!r} has no version loaded yet: {self.watcher.why_none()}",
                               headers={"Retry-After": "1"})
        return model

    async def model(self, name: str, version: int | None = None, field: str = "name") -> LoadedModel:
        """The version a request asked for: the current one, or the one it pins (loaded on first use)."""
        if version is None:
            return self.current(name, field)
        self.check_name(name, field)
        current = self.watcher.current
        if current is not None and current.version == version:
            return current
        with self._lock:
            if version in self._pinned:
                self._pinned.move_to_end(version)
                return self._pinned[version]
        return await self.in_worker(self._load_pinned, version)

    def _load_pinned(self, version: int) -> LoadedModel:
        versions = self.store.versions()
        if version not in versions:
            raise RequestError(404, f"model {self.model_name!r} has no version {version}; "
                                    f"versions on disk: {versions}", "version")
        with self._lock:
            loading = self._loading.setdefault(version, threading.Lock())
        with loading:  # concurrent requests for one version load it once
            with self._lock:
                if version in self._pinned:
                    return self._pinned[version]
            try:
                model = self.store.load(version)
            except Exception as error:
                logger.warning("pinned version %d of %s failed to load", version, self.model_name, exc_info=True)
                raise RequestError(503, f"version {version} of model {self.model_name!r} cannot be loaded: "
                                        f"{type(error).__name__}: {error}", "version") from None
            with self._lock:
                self._pinned[version] = model
                while len(self._pinned) > self._pinned_size:
                    self._pinned.popitem(last=False)
            return model

    async def score(self, model: LoadedModel, batch: pa.RecordBatch) -> np.ndarray:
        """Scores of a checked batch, one per event; a 422 naming the field when the model refuses an event."""
        if batch.num_rows == 0:
            return np.empty(0, dtype=np.float32)  # no events, no question for the model
        if batch.num_rows >= FULL_BATCH_EVENTS:
            result = await self._score_alone(model, batch)
        else:
            result = await self.scorer(model, batch)
        if isinstance(result, Exception):
            raise result
        return result

    async def _score_alone(self, model: LoadedModel, batch: pa.RecordBatch) -> Result:
        return (await self.score_many_soon([(model, batch)]))[0]

    async def score_many_soon(self, jobs: Sequence[tuple[LoadedModel, pa.RecordBatch]]) -> list[Result]:
        """:meth:`score_many`: at once for at most ``SCORE_ON_LOOP_EVENTS`` events, else in a worker thread.

        A few events score faster than handing them to a thread and back
        costs. Big batches go to a thread, so the event loop goes on parsing
        the next requests meanwhile: torch and Arrow release the GIL, and a
        big batch and the parsing of the next one share the cores instead of
        taking turns. Figures in ``docs/http-api.md``.
        """
        if sum(batch.num_rows for _model, batch in jobs) <= SCORE_ON_LOOP_EVENTS:
            return self.score_many(jobs)
        return await self.in_worker(self.score_many, jobs)

    def score_many(self, jobs: Sequence[tuple[LoadedModel, pa.RecordBatch]]) -> list[Result]:
        """Score several requests with one model call per version; one result per job, in order.

        A combined batch that the features refuse is scored again request by
        request, so that only the request at fault gets the 422.
        """
        results: list[Result] = [np.empty(0)] * len(jobs)
        by_model: dict[int, list[int]] = {}
        for index, (model, _batch) in enumerate(jobs):
            by_model.setdefault(id(model), []).append(index)
        for indices in by_model.values():
            model = jobs[indices[0]][0]
            batches = [jobs[i][1] for i in indices]
            if len(batches) == 1:
                results[indices[0]] = self._score_one(model, batches[0])
                continue
            try:
                scores = self._predict(model, pa.concat_batches(batches), len(batches))
            except FeatureError:
                for i in indices:
                    results[i] = self._score_one(model, jobs[i][1])
                continue
            for i, part in zip(indices, np.split(scores, np.cumsum([b.num_rows for b in batches])[:-1])):
                results[i] = _checked(model, part)
        return results

    def _score_one(self, model: LoadedModel, batch: pa.RecordBatch) -> Result:
        try:
            return _checked(model, self._predict(model, batch, 1))
        except FeatureError as error:  # values the features refuse, e.g. 1e300 GeV overflowing float32
            return RequestError(422, str(error), error.branch)

    def _predict(self, model: LoadedModel, batch: pa.RecordBatch, requests: int) -> np.ndarray:
        self.observe_batch(requests, batch.num_rows)
        scores = np.asarray(model.predict(batch))
        # (events,) for a binary model; (events, classes) of probabilities for a multi-class one.
        if scores.ndim not in (1, 2) or len(scores) != batch.num_rows:
            raise RuntimeError(f"model {model.name!r} version {model.version} returned scores of shape "
                               f"{scores.shape} for {batch.num_rows} events")
        return scores


def _checked(model: LoadedModel, scores: np.ndarray) -> Result:
    """The scores, or a 422 naming the first event the model gives no finite score for."""
    bad = np.flatnonzero(~np.isfinite(scores.reshape(len(scores), -1)).all(axis=1))
    if not bad.size:
        return scores
    # Finite inputs the model cannot score (say 1e300 GeV overflowing a normalisation): the event is at
    # fault, but the operator should hear of it, since a model that scores no event gives this too.
    logger.warning("model %s version %s: non-finite score for %d of %d events", model.name, model.version,
                   bad.size, scores.size)
    return RequestError(422, f"model {model.name!r} version {model.version} gives no finite score for this event; "
                             "are its values physical?", f"events[{bad[0]}]")
