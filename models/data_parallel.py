"""Several trainer workers on one topic, one model lineage: synchronous parameter averaging between rounds.

Each worker is a :class:`~hepstream.models.trainer.StreamTrainer` on its own
partitions. In a round every worker learns up to ``training.round_groups``
groups of ``chunks_per_step`` chunks (a worker with nothing to read learns
nothing and waits for the next round); then the coordinator averages the
model and Adam state of the workers that learned, weighted by the events each
learned, pools their feature statistics exactly (Chan's merge, never an average
of variances), and sends the result back to every worker. Between two rounds
all workers hold the same model and have learned exactly the messages before
their offsets, so that is where a version is published: one version with every
worker's offsets, chunk keys and summed counters. A restarted coordinator
splits the partitions again and every worker seeks its partitions to that
version's offsets: the exactly-once argument of the single trainer carries over.

Why not DDP (Ray Train's TorchTrainer): it all-reduces gradients at every
optimiser step, so the slowest partition paces every step and a worker with no
data stalls the others; checkpoints would need a barrier across a process group
anyway. Partitions fill at different rates, and averaging once per round
tolerates that, needs no process group, and runs unchanged on CPU and GPU.

A worker lost mid-run (its node gone, its process killed) surfaces as
:class:`WorkerLost` from the pool. Every worker then goes back to the newest
version, the survivors included, and the partitions are split again over the
workers left: since the last version the survivors have loaded averages that
hold the lost worker's unsaved learning, and its partitions' offsets past that
version died with it, so the only state in which every chunk counts once is
the version's own (model, features, every partition's offset, counters). What
was learned since is learned again, as after a restart. The pool asks for a
replacement at once; Ray starts it when the cluster has room, and it joins
right after a checkpoint, when no learning is lost by splitting again.

This module imports no Ray: the coordinator drives its workers through a
*pool* (``start(count)``, ``len(pool)``, ``nodes``, ``call(method, *args)``
on every worker, ``call_each(method, args_per_worker)``,
``call_one(index, method, *args)``, ``drop(index)``, ``arrived(timeout_s)``,
``close()``; a call raises :class:`WorkerLost` when a worker is gone);
:mod:`hepstream.models.actor` provides one made of Ray actors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import replace

import numpy as np
from kafka import KafkaConsumer

from hepstream.config import Config
from hepstream.kafka import topic_partitions
from hepstream.models.checkpoint_health import CheckpointHealth
from hepstream.models.gate import Gate
from hepstream.models.grouping import GroupPoller
from hepstream.models.metrics import PrequentialMetrics
from hepstream.models.position import COUNTERS, Position
from hepstream.models.store import ModelStore
from hepstream.models.store_errors import StoreWriteError
from hepstream.models.trainer import StreamTrainer
from hepstream.models.trainer_status import TrainerStatus
from hepstream.models.validation import Reservoir, stored_reservoir
from hepstream.models.version_meta import VersionMeta

log = logging.getLogger(__name__)


def _zip_walk(parts: Sequence, leaf: Callable[[Sequence], object], path: str = "state"):
    """Walk equally shaped nested dicts/lists/tuples together, combining their leaves with ``leaf``."""
    first = parts[0]
    if isinstance(first, dict):
        for other in parts[1:]:
            if other.keys() != first.keys():
                raise ValueError(f"workers' states differ at {path}: keys {sorted(first)} vs {sorted(other)}")
        return {key: _zip_walk([p[key] for p in parts], leaf, f"{path}.{key}") for key in first}
    if isinstance(first, (list, tuple)):
        if any(len(other) != len(first) for other in parts[1:]):
            raise ValueError(f"workers' states differ in length at {path}")
        return type(first)(_zip_walk([p[i] for p in parts], leaf, f"{path}[{i}]") for i in range(len(first)))
    return leaf(parts)


def on_cpu(state):
    """A state dict with its tensors moved to the CPU, so that it travels to a coordinator without a GPU."""
    import torch

    return _zip_walk([state], lambda leaf: leaf[0].cpu() if isinstance(leaf[0], torch.Tensor) else leaf[0])


def average_states(states: Sequence, weights: Sequence[float]):
    """The weighted mean of every floating-point tensor of equally shaped state dicts.

    Applied to a torch estimator's state, this averages the parameters and
    Adam's moments and step counts alike, so the optimiser goes on from the
    state the averaged model would have had. Other leaves (integers,
    hyper-parameters, the gradient scaler's scale) are taken from the state
    with the largest weight.
    """
    import torch

    weights = [float(w) for w in weights]
    total = sum(weights)
    if len(states) != len(weights) or not states or total <= 0:
        raise ValueError(f"need one positive-sum weight per state, got {len(states)} states and weights {weights}")
    heaviest = int(np.argmax(weights))

    def leaf(values):
        first = values[0]
        if isinstance(first, torch.Tensor) and first.is_floating_point():
            mean = sum(w * v.double() for w, v in zip(weights, values) if w) / total
            return mean.to(first.dtype)
        return values[heaviest]

    return _zip_walk(states, leaf)


def pool_features(base: dict, totals: Sequence[dict]) -> dict:
    """Pool workers' normalisation statistics that all started from ``base`` (a ``FeaturePipeline.state_dict``).

    Each worker's count, mean and sum of squared deviations cover ``base``
    plus what it learned. Around the pooled mean, the pooled sum of squares
    is the sum of the workers' minus the base's counted once per extra
    worker (inclusion-exclusion), which is exact and keeps the sums centred.
    """
    extra = len(totals) - 1
    c0, m0, s0 = (np.asarray(base[k], dtype=np.float64) for k in ("count", "mean", "m2"))
    counts = np.array([t["count"] for t in totals], dtype=np.float64)
    means = np.array([t["mean"] for t in totals], dtype=np.float64)
    squares = np.array([t["m2"] for t in totals], dtype=np.float64)
    count = counts.sum(axis=0) - extra * c0
    weighted = (counts * means).sum(axis=0) - extra * c0 * m0
    mean = np.divide(weighted, count, out=np.zeros_like(count), where=count > 0)
    m2 = (squares + counts * (means - mean) ** 2).sum(axis=0) - extra * (s0 + c0 * (m0 - mean) ** 2)
    sources = set(base.get("jagged_sources", ())).union(*(t.get("jagged_sources", ()) for t in totals))
    return {"count": count.tolist(), "mean": mean.tolist(), "m2": np.maximum(m2, 0.0).tolist(),
            "jagged_sources": sorted(sources)}


def merged_drift(summaries: Sequence[dict]) -> dict:
    """Every worker's drift detections (``LossDrift.summary``): each watches the loss of its own partitions."""
    latest = sorted((event for s in summaries for event in s["latest"]), key=lambda event: event["time"])
    return {"detections": sum(s["detections"] for s in summaries), "latest": latest[-5:]}


def split_partitions(partitions: Sequence[int], workers: int) -> list[list[int]]:
    """Partitions dealt round-robin to at most ``workers`` workers; none gets an empty share.

    >>> split_partitions([0, 1, 2], 2), split_partitions([0], 2)
    ([[0, 2], [1]], [[0]])
    """
    ordered = sorted(partitions)
    if len(ordered) < workers:
        log.warning("training.workers is %d but the topic has %d partition(s): running %d worker(s)",
                    workers, len(ordered), len(ordered))
    return [ordered[i::workers] for i in range(min(workers, len(ordered)))]


class WorkerLost(Exception):
    """A pool's worker is gone (its node lost, its process killed), raised by the pool's calls."""

    def __init__(self, index: int, node: str | None, reason: str):
        super().__init__(f"trainer worker {index + 1} on node {node}: {reason}")
        self.index, self.node, self.reason = index, node, reason


class WorkersLost(RuntimeError):
    """Every worker was lost and no replacement started in time: the run cannot go on."""


class RoundWorker:
    """A stream trainer on the partitions its coordinator gives it, learning one round at a time when told."""

    def __init__(self, config: Config, bootstrap: str):
        self.config = config
        self.bootstrap = bootstrap
        self.trainer: StreamTrainer | None = None
        self.position: Position | None = None
        self.consumer: KafkaConsumer | None = None
        self.groups: GroupPoller | None = None

    def open(self, partitions: list[int], topic_wait_s: float) -> dict:
        """Take ``partitions`` from the newest version; returns the starting point, which every worker shares.

        Called again when a worker was lost: whatever this worker learned since that version is dropped, with
        the consumer that read it (see the module's docstring).
        """
        self.close()
        trainer = self.trainer = StreamTrainer(self.config, self.bootstrap, partitions)
        training = self.config.training
        self.position = trainer.position
        # Counted from this opening; the coordinator adds the resumed version's totals once.
        self.position.reset_counters()
        trainer.take_validation()  # the coordinator keeps the lineage's reservoir; a worker sends what it holds
        # The resumed version holds every worker's offsets; this worker owns, seeks and commits only its own.
        self.position.own(partitions)
        self.consumer = trainer.consumer()
        self.groups = GroupPoller(self.consumer, training.chunks_per_step, training.group_wait_s)
        trainer.assign(self.consumer, threading.Event(), topic_wait_s)
        learner = trainer.learner
        return {"checkpoint": learner.estimator.checkpoint, "features": learner.features.state_dict(),
                "events_seen": learner.events_seen, "offsets": dict(self.position.offsets)}

    def learn_round(self, groups: int, drain: bool = False) -> dict:
        """Learn up to ``groups`` groups (with ``drain``, then all the shuffle buffer holds); the report carries
        the model state only when events were learned. With nothing to read, a group waiting in the shuffle
        buffer is learned instead."""
        trainer, position = self.trainer, self.position
        before = position.counters["events_trained"]
        for _ in range(groups):
            group = self.groups.group()
            if group:
                trainer.learn_messages(group)
            elif not trainer.learn_buffered(1):
                break
        if drain:
            trainer.learn_buffered()
        learned = position.counters["events_trained"] - before
        report = {"events": learned, "counters": dict(position.counters), "offsets": dict(position.offsets),
                  "last_error": trainer.last_error}
        if trainer.validation:
            report["validation"] = trainer.take_validation()
        if learned:
            report["state"] = on_cpu(trainer.learner.estimator.state_dict())
            report["features"] = trainer.learner.features.state_dict()
        return report

    def load(self, state, features: dict, events_seen: int) -> None:
        """Take the round's averaged model and pooled statistics, so that every worker starts the next round alike."""
        learner = self.trainer.learner
        learner.estimator.load_state_dict(state)
        learner.features.load_state_dict(features)
        learner.events_seen = events_seen

    def share(self) -> dict:
        """What this worker adds to a version; its dead letters are stored before its offsets are recorded."""
        trainer, position = self.trainer, self.position
        trainer.flush_dead_letters()
        return {**position.snapshot(), "metrics": trainer.learner.metrics,
                "since_checkpoint": trainer.learner.since_checkpoint, "drift": trainer.learner.drift.summary()}

    def checkpoint_parts(self) -> tuple[dict, VersionMeta, dict, str]:
        model_state, meta, state, checkpoint = self.trainer.checkpoint_parts()
        return on_cpu(model_state), meta, state, checkpoint

    def checkpointed(self, version: int) -> None:
        """The coordinator published ``version``: this worker's offsets are in it, so now they may go to Kafka."""
        self.trainer.published(version, self.consumer)  # the commit is for monitoring only, as for a single trainer

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self.trainer is not None and self.trainer.dead_letters is not None:
            self.trainer.dead_letters.close()


class DataParallelTrainer:
    """The coordinator: runs rounds over its pool of :class:`RoundWorker` and publishes the lineage's versions.

    It has the single trainer's ``run(stop)`` and ``status()``, so the actor,
    the CLI and the metrics endpoint drive either one.
    """

    def __init__(self, config: Config, bootstrap: str, pool, partitions: list[int] | None = None):
        self.config = config
        self.bootstrap = bootstrap
        self.pool = pool
        self.partitions = partitions
        self.store = ModelStore(config.store.path, config.model.name, config.store.keep)
        self.version = self.store.latest()
        self.base_counters = dict.fromkeys(COUNTERS, 0)
        self.splits: list[list[int]] = []
        self.reports: list[dict] = []
        self.metrics: dict = {}
        self.features: dict = {}
        self.events_seen = 0
        self.wanted = 0  # workers the run asked for; fewer while a lost one awaits its replacement
        self.workers_lost = 0
        self.last_loss: str | None = None
        self.opened_format: str | None = None  # how the resumed model checkpoints: only "torch" can be averaged
        self._published_offsets: dict[int, int] = {}
        self._learned = False
        self.checkpoints = CheckpointHealth(config.training.checkpoint_every_s)
        self.validation: Reservoir | None = None  # the lineage's, taken from the version each opening starts at
        self.gate = Gate.for_config(self.store, config)

    def _counters(self, reports: Sequence[dict]) -> dict:
        counters = dict(self.base_counters)
        for report in reports:
            for name in COUNTERS:
                counters[name] += report["counters"][name]
        return counters

    def _offsets(self) -> dict[int, int]:
        return {p: o for report in self.reports for p, o in report["offsets"].items()}

    def _news(self) -> bool:
        """Whether the workers learned (or passed) messages since the last published version."""
        return self._offsets() != self._published_offsets

    def status(self) -> TrainerStatus:
        reports = self.reports
        return TrainerStatus(
            **self._counters(reports),
            version=self.version,
            epoch=0,
            offsets=dict(sorted(self._offsets().items())),
            metrics=self.metrics,
            last_error=self.checkpoints.error or next((r["last_error"] for r in reports if r.get("last_error")), None),
            **self.checkpoints.status_fields(),
            workers=[{"partitions": split, "node": node, **r["counters"]}
                     for split, node, r in zip(self.splits, self.pool.nodes, reports)],
            workers_lost=self.workers_lost,
            last_worker_loss=self.last_loss,
            versions_rejected=self.gate.rejected,
        )

    def run(self, stop: threading.Event, topic_wait_s: float = 60.0) -> None:
        """Run rounds until ``stop`` is set, publishing a version every ``checkpoint_every_s`` with news.

        As in the single trainer, a refused checkpoint is retried with backoff while rounds go on, and a
        refused final one raises :class:`StoreWriteError`. A lost worker sends every worker back to the newest
        version (:meth:`_lost`); with none left and no replacement within ``topic_wait_s``, :class:`WorkersLost`.
        """
        training = self.config.training
        self.partitions = self.partitions or topic_partitions(self.bootstrap, self.config.kafka,
                                                              self.config.dataset.topic, timeout_s=topic_wait_s,
                                                              stop=stop)
        self.wanted = len(split_partitions(self.partitions, training.workers))
        self.pool.start(self.wanted)
        try:
            self._open(topic_wait_s)
            if self.opened_format != "torch":
                raise ValueError(f"training.workers is {training.workers}, but model {self.config.model.name!r} "
                                 "checkpoints as JSON and has no tensors to average: set training.workers: 1")
            while not stop.is_set():
                try:
                    self._round()
                    if self._news() and self.checkpoints.due():
                        with suppress(StoreWriteError):  # reported by checkpoint(), tried again after a backoff
                            self.checkpoint()
                    if not self._news() and len(self.pool) < self.wanted and self.pool.arrived(0):
                        log.warning("a replacement trainer worker joined: %d workers resume from version %s",
                                    len(self.pool), self.version)
                        self._open(topic_wait_s)
                except WorkerLost as lost:
                    self._lost(lost, topic_wait_s)
                    self._open(topic_wait_s)
            try:
                if training.shuffle_chunks:  # what waits in the shuffle buffers is learned before the last version
                    self._round(drain=True)
                if self._news():
                    self.checkpoint()
            except WorkerLost as lost:
                log.warning("%s; no final checkpoint: version %s holds the run", lost, self.version)
        finally:
            self.pool.close()

    def _news(self) -> bool:
        """Whether the workers read or learned anything since the last version (a shuffle buffer learns
        without reading)."""
        return self._offsets() != self._published_offsets or self._learned

    def _open(self, topic_wait_s: float) -> None:
        """Split the partitions over the pool's workers, each taking its share from the newest version, and take
        the lineage's validation reservoir from it too (the chunks held since are read and held again)."""
        training = self.config.training
        while True:
            self.version = self.store.latest()
            self.base_counters = dict.fromkeys(COUNTERS, 0)
            if self.version is not None:
                self.base_counters.update(self.store.read_meta(self.version).counters)
            self.splits = split_partitions(self.partitions, len(self.pool))
            try:
                opened = self.pool.call_each("open", [(split, topic_wait_s) for split in self.splits])
                break
            except WorkerLost as lost:
                self._lost(lost, topic_wait_s)
        self.opened_format = opened[0]["checkpoint"]
        self.features, self.events_seen = opened[0]["features"], opened[0]["events_seen"]
        self.reports = [{"offsets": o["offsets"], "counters": dict.fromkeys(COUNTERS, 0)} for o in opened]
        self._published_offsets = self._offsets()
        self._learned = False
        self.validation = stored_reservoir(self.store, self.version, training.validation_events, training.seed)
        log.info("%d workers on partitions %s, from version %s", len(self.splits), self.splits, self.version)

    def _lost(self, lost: WorkerLost, wait_s: float) -> None:
        """Drop the lost worker, say so in one line (the status keeps it), and wait for a replacement if none is
        left; the caller then sends every worker back to the newest version."""
        split = self.splits[lost.index] if lost.index < len(self.splits) else []
        self.pool.drop(lost.index)
        self.workers_lost += 1
        if not len(self.pool) and not self.pool.arrived(wait_s):
            raise WorkersLost(f"{lost}; no trainer worker is left and no replacement started within {wait_s} s "
                              f"(training.topic_wait_s): version {self.store.latest()} holds the run")
        self.last_loss = (f"{lost}; lost with partitions {split}: the {len(self.pool)} worker(s) left take every "
                          f"partition from version {self.store.latest()} (what was learned since is learned again), "
                          "and a replacement joins when the cluster has room")
        log.warning("%s", self.last_loss)

    def _round(self, drain: bool = False) -> None:
        self.reports = self.pool.call("learn_round", self.config.training.round_groups, drain)
        for report in self.reports:  # the workers' validation events join the lineage's reservoir, bounded
            if "validation" in report:
                self.validation.merge(report.pop("validation"))
        learned = [r for r in self.reports if r["events"]]
        if not learned:
            return
        self._learned = True
        weights = [r["events"] for r in learned]
        state = average_states([r["state"] for r in learned], weights)
        self.features = pool_features(self.features, [r["features"] for r in learned])
        self.events_seen += sum(weights)
        self.pool.call("load", state, self.features, self.events_seen)

    def checkpoint(self) -> int:
        """Publish the state between two rounds as one version of the lineage, then let workers commit to Kafka.

        A store that refuses the version raises :class:`StoreWriteError`, reported in :meth:`status`; the
        workers commit nothing and the next checkpoint holds what this one would have.
        """
        shares = self.pool.call("share")
        model_state, meta, state, checkpoint = self.pool.call_one(0, "checkpoint_parts")
        merged = Position.merged(self.config.dataset.topic, shares, self.base_counters).snapshot()
        offsets, counters = merged["offsets"], merged["counters"]
        self.metrics = {**PrequentialMetrics.merged([s["metrics"] for s in shares]).summary(),
                        "drift": merged_drift([s["drift"] for s in shares])}
        meta = replace(meta, parent=self.version, metrics=self.metrics, offsets=offsets, counters=counters,
                       version_metrics=PrequentialMetrics.merged([s["since_checkpoint"] for s in shares]).summary(),
                       workers=[{"partitions": split, "node": node, "events_this_run": s["counters"]["events_trained"]}
                                for split, node, s in zip(self.splits, self.pool.nodes, shares)])
        state.update(merged)
        self.version = self.gate.publish(self.checkpoints, model_state, meta, state, checkpoint, self.validation)
        self._published_offsets = {int(p): o for p, o in offsets.items()}
        self._learned = False
        self.pool.call("checkpointed", self.version)
        return self.version
