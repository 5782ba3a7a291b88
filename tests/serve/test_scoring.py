"""Batched scoring: one model call per version, and a bad request never fails its neighbours."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pyarrow as pa
import pytest

from hepstream.serve.errors import RequestError
from hepstream.serve.events import parse_events
from hepstream.serve.scoring import FULL_BATCH_EVENTS, SCORE_ON_LOOP_EVENTS, Serving
from hepstream.serve.watcher import ModelWatcher


def batch(standins, *met):
    return parse_events(json.dumps({"events": [{"MET_pt": m, "Muon_pt": []} for m in met]}), standins.INPUTS, 10_000)


def test_one_call_per_version_and_scores_in_order(store, standins):
    calls = []
    serving = Serving(store, "demo", ModelWatcher(store), observe_batch=lambda r, e: calls.append((r, e)))
    old, new = standins.StandinModel("demo", 1, {}), standins.StandinModel("demo", 2, {"weight": 1.0})
    jobs = [(old, batch(standins, 1.0, 2.0)), (new, batch(standins, 3.0)), (old, batch(standins, 4.0))]
    results = serving.score_many(jobs)
    assert sorted(calls) == [(1, 1), (2, 3)]
    for (model, events), scores in zip(jobs, results):
        assert scores.tolist() == model.predict(events).tolist()


def test_a_batch_the_features_refuse_is_retried_request_by_request(store, standins):
    serving = Serving(store, "demo", ModelWatcher(store))

    class Picky(standins.StandinModel):
        def predict(self, events: pa.RecordBatch) -> np.ndarray:
            if 666.0 in events.column("MET_pt").to_pylist():
                from hepstream.models.features import FeatureError
                raise FeatureError("MET_pt", "the number of the beast")
            return super().predict(events)

    model = Picky("demo", 1, {})
    good, bad = serving.score_many([(model, batch(standins, 1.0)), (model, batch(standins, 666.0))])
    assert good.tolist() == model.predict(batch(standins, 1.0)).tolist()
    assert isinstance(bad, RequestError) and (bad.status, bad.field) == (422, "MET_pt")


@pytest.mark.parametrize("events, on_loop", [(2, True), (SCORE_ON_LOOP_EVENTS + 1, False)])
def test_big_batches_are_scored_off_the_event_loop_thread_and_small_ones_on_it(store, standins, events, on_loop):
    """A 10k-event batch scored on the loop would stall every other request for tens of milliseconds; a few
    events score faster than a hand-off to a thread and back."""
    threads = []

    class Recording(standins.StandinModel):
        def predict(self, events: pa.RecordBatch) -> np.ndarray:
            threads.append(threading.get_ident())
            return super().predict(events)

    serving = Serving(store, "demo", ModelWatcher(store))
    model = Recording("demo", 1, {})
    met = [float(i) for i in range(events)]

    async def score() -> tuple[int, np.ndarray]:
        return threading.get_ident(), await serving.score(model, batch(standins, *met))

    loop_thread, scores = asyncio.run(score())
    assert scores.tolist() == model.predict(batch(standins, *met)).tolist()
    assert (threads[0] == loop_thread) is on_loop


def test_worker_threads_are_reused_across_requests(store, standins):
    """Each request in its own asyncio task, as a server runs them: the calls share a few long-lived threads
    (a new thread per call set torch and glibc up again each time: +30 % per 10k-event forward pass)."""
    serving = Serving(store, "demo", ModelWatcher(store))

    async def requests() -> list[int]:
        return await asyncio.gather(*(asyncio.create_task(serving.in_worker(threading.get_ident)) for _ in range(40)))

    try:
        first, second = asyncio.run(requests()), asyncio.run(requests())
    finally:
        serving.close()
    assert threading.get_ident() not in first
    assert len(set(first) | set(second)) <= serving._workers._max_workers


@pytest.mark.parametrize("events, through_scorer", [(10, True), (FULL_BATCH_EVENTS, False)])
def test_a_full_batch_skips_the_batcher(store, standins, events, through_scorer):
    """Two 10k-event requests batched together score on one thread, one after the other; alone, on two."""
    serving = Serving(store, "demo", ModelWatcher(store))
    batched = []

    async def scorer(model, events_batch):
        batched.append(events_batch.num_rows)
        return (await serving.score_many_soon([(model, events_batch)]))[0]

    serving.scorer = scorer
    model = standins.StandinModel("demo", 1, {"weight": 1.0})
    events_batch = batch(standins, *(float(i) for i in range(events)))
    try:
        scores = asyncio.run(serving.score(model, events_batch))
    finally:
        serving.close()
    assert scores.tolist() == model.predict(events_batch).tolist()
    assert batched == ([events] if through_scorer else [])
