"""The online trainer: consume chunks from Kafka, learn from each exactly once, publish versions.

Offsets are this trainer's own state, checkpointed together with the model in
the same store version; Kafka commits follow a checkpoint and only serve
monitoring. A restart reads the newest version and seeks each partition to the
offset recorded there (the next offset to read, Kafka's convention), so the
model reflects every chunk once: chunks learned after the last checkpoint are
learned again into the checkpointed model, never into a model that already saw
them. Chunks whose key was already learned in this epoch (a producer re-sent
them) are skipped and counted. Messages that cannot be used go to the
dead-letter topic (:mod:`~hepstream.models.dead_letter`) and are counted.

Where a partition without a checkpoint starts is ``training.start``: the
earliest retained offset, the latest, the group's committed offset, or the
first offset at a time. With ``training.epochs`` > 1 the trainer goes back to
where it started once it has read every partition to its end, forgets the
chunk keys of the finished epoch, and learns the data again.

No Ray here: :mod:`hepstream.models.actor` wraps this class for a cluster, and
a GPU box runs it directly.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, NamedTuple

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from hepstream import wire
from hepstream.config import Config, start_timestamp_ms
from hepstream.models.dead_letter import DeadLetters, dead_letter_topic
from hepstream.models.features import FeatureError
from hepstream.models.learner import Group, Learner, Preparation
from hepstream.models.read_ahead import EpochEnd, ReadAhead
from hepstream.models.store import ModelStore
from hepstream.models.trainer_status import TrainerStatus
from hepstream.models.version_meta import VersionMeta

log = logging.getLogger(__name__)

COUNTERS = ("events_trained", "chunks", "duplicate_chunks", "bad_messages", "dead_letters")
_DUPLICATE = "duplicate"  # the verdict on a chunk whose key was learned already


class Step(NamedTuple):
    """A group of messages made ready: each record with its verdict (None, duplicate, or the error refusing
    it), the keys of the chunks kept, and their prepared features (None when none was kept)."""

    verdicts: list[tuple[Any, Any]]
    keys: list[str]
    group: Group | None


def use_compute_threads(threads: int) -> None:
    """Give torch ``training.threads`` intra-op threads in this process, and numpy's BLAS as many.

    Torch's default, one thread per core, collapses when the cores are shared with the broker, the
    read-ahead thread or other trainers: its threads spin waiting for each other. Learning 100k events
    on 2 busy cores (load 11) ran at 72k events/s with one thread and at 3-7k events/s with two.
    OpenBLAS does the same after any numpy call that reaches it (a user's model, a derived feature):
    its idle threads spun for 26 % of the wall time of `hepstream bench train`, beside the trainer.
    """
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")


class StreamTrainer:
    def __init__(self, config: Config, bootstrap: str, partitions: list[int] | None = None):
        use_compute_threads(config.training.threads)
        self.config = config
        self.bootstrap = bootstrap
        self.topic = config.dataset.topic
        self.partitions = partitions
        self.store = ModelStore(config.store.path, config.model.name, config.store.keep)
        self.learner = Learner(config.features, config.model, config.training)
        self.offsets: dict[int, int] = {}
        self.epoch_start: dict[int, int] = {}
        self.epoch = 0
        self.seen_keys: set[str] = set()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.version: int | None = None
        self.last_error: str | None = None
        self.dead_letters = None
        if config.training.dead_letter:
            self.dead_letters = DeadLetters(bootstrap, dead_letter_topic(config.dataset.name),
                                            config.kafka.max_message_bytes)
        self._dirty = False
        self._resume()

    def _resume(self) -> None:
        latest = self.store.latest()
        if latest is None:
            return
        meta, model_state, state = self.store.read(latest)
        self.learner.estimator.load_state_dict(model_state)
        self.learner.load_state_dict(state.get("learner", {"features": meta.feature_state,
                                                            "events_seen": meta.events_seen}))
        self.offsets = {int(p): int(o) for p, o in state["offsets"].items()}
        self.epoch_start = {int(p): int(o) for p, o in state.get("epoch_start", {}).items()}
        self.epoch = int(state.get("epoch", 0))
        self.seen_keys = set(state["seen_keys"])
        self.counters.update(state["counters"])
        self.version = latest
        log.info("resuming %s from version %d at offsets %s", self.config.model.name, latest, self.offsets)

    def status(self) -> TrainerStatus:
        return TrainerStatus(**self.counters, version=self.version, epoch=self.epoch, offsets=dict(self.offsets),
                             metrics=self.learner.metrics_summary(), last_error=self.last_error)

    def _labels(self, chunk: wire.Chunk) -> np.ndarray:
        branch = self.config.dataset.label_branch
        if branch is not None:
            index = chunk.batch.schema.get_field_index(branch)
            if index < 0:
                raise FeatureError(branch, "label branch missing from the chunk")
            return chunk.batch.column(index).to_numpy(zero_copy_only=False)
        if chunk.label is None:
            raise FeatureError("label", "the chunk has no 'label' header and dataset.label_branch is not set")
        return np.full(chunk.events, chunk.label, dtype=np.int64)

    def _refuse(self, record, error: Exception) -> None:
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        self.counters["bad_messages"] += 1
        self.last_error = f"{where}: {error}"
        log.warning("skipping message %s", self.last_error)
        if self.dead_letters is not None:
            self.dead_letters.send(record, f"{type(error).__name__}: {error}")
            self.counters["dead_letters"] += 1

    def learn_messages(self, messages) -> None:
        """Learn a polled group of messages (``kafka`` ConsumerRecords) together.

        A bad message is sent to the dead-letter topic, counted, and never
        stops the stream; a chunk already learned (same key) is skipped and
        counted.
        """
        self.learn_step(self.prepare_messages(messages, self.seen_keys))

    def prepare_messages(self, messages, known: set[str], ahead: Preparation | None = None) -> Step:
        """Decode, check and prepare a group of messages, skipping the chunks whose key is in ``known``.

        Changes no state of the trainer's, so the read-ahead thread runs it
        (with ``ahead``, see :meth:`Learner.prepare_group`) while the previous
        group trains.
        """
        verdicts, chunks, keys = [], [], []
        for m in messages:
            verdict = None
            try:
                chunk = wire.decode(m.key, m.value, m.headers)
                key = chunk.id.key().decode()
                if key in known or key in keys:
                    verdict = _DUPLICATE
                else:
                    chunks.append(self.learner.prepare(chunk.batch, self._labels(chunk)))
                    keys.append(key)
            except (wire.WireError, FeatureError) as error:
                verdict = error
            verdicts.append((m, verdict))
        return Step(verdicts, keys, self.learner.prepare_group(chunks, ahead) if chunks else None)

    def learn_step(self, step: Step) -> None:
        """Learn a prepared group, count duplicates, refuse bad messages, and move the offsets past them all."""
        for record, verdict in step.verdicts:
            if verdict is _DUPLICATE:
                self.counters["duplicate_chunks"] += 1
            elif verdict is not None:
                self._refuse(record, verdict)
            self.offsets[record.partition] = record.offset + 1
            self._dirty = True
        if step.group is not None:
            self.learner.learn_group(step.group)
            self.seen_keys.update(step.keys)
            self.counters["events_trained"] += len(step.group.labels)
            self.counters["chunks"] += len(step.keys)

    def checkpoint_parts(self) -> tuple[dict, VersionMeta, dict, str]:
        """(model_state, meta, trainer_state, checkpoint format) of the state now; see :meth:`checkpoint`."""
        learner = self.learner
        offsets = {str(p): o for p, o in sorted(self.offsets.items())}
        meta = VersionMeta(
            parent=self.version,
            events_seen=learner.events_seen,
            epoch=self.epoch,
            metrics=learner.metrics_summary(),
            version_metrics=learner.since_checkpoint.summary(),
            features=self.config.features.model_dump(mode="json"),
            feature_state=learner.features.state_dict(),
            model=self.config.model.model_dump(mode="json"),
            training=self.config.training.model_dump(mode="json"),
            topic=self.topic,
            offsets=offsets,
            counters=dict(self.counters),
        )
        state = {"offsets": offsets, "epoch": self.epoch,
                 "epoch_start": {str(p): o for p, o in self.epoch_start.items()},
                 "seen_keys": sorted(self.seen_keys), "counters": dict(self.counters),
                 "learner": learner.state_dict()}
        return learner.estimator.state_dict(), meta, state, learner.estimator.checkpoint

    def checkpoint(self, consumer: KafkaConsumer | None = None) -> int:
        """Publish model, features, offsets and counters as one new version, then commit the offsets."""
        if self.dead_letters is not None:
            self.dead_letters.flush()  # never record a refused message as consumed before its copy is stored
        self.version = self.store.publish(*self.checkpoint_parts())
        self.learner.since_checkpoint = type(self.learner.metrics)(self.config.training.metrics_window,
                                                                   self.config.model.classes)
        self._dirty = False
        if consumer is not None:
            self._commit(consumer)
        return self.version

    def _commit(self, consumer: KafkaConsumer) -> None:
        try:
            consumer.commit(self.commit_offsets())
        except Exception as error:  # monitoring only: the checkpoint is the truth
            log.warning("Kafka offset commit failed (checkpoint %s is still valid): %s", self.version, error)

    def commit_offsets(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """The trainer's offsets as Kafka commits them; taken right after a checkpoint, they are its offsets."""
        return {TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in self.offsets.items()}

    def consumer(self) -> KafkaConsumer:
        limit = self.config.kafka.max_message_bytes
        return KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=f"hepstream.{self.config.model.name}",
            enable_auto_commit=False,
            max_partition_fetch_bytes=2 * limit,
            fetch_max_bytes=max(52_428_800, 2 * limit),
        )

    def _start_offsets(self, consumer: KafkaConsumer, assigned: list[TopicPartition]) -> dict[int, int]:
        """Where partitions without a checkpointed offset begin, by ``training.start``."""
        start = self.config.training.start
        earliest = consumer.beginning_offsets(assigned)
        if start == "earliest":
            return {tp.partition: earliest[tp] for tp in assigned}
        if start == "latest":
            return {tp.partition: o for tp, o in consumer.end_offsets(assigned).items()}
        if start == "committed":
            committed = {tp: consumer.committed(tp) for tp in assigned}
            return {tp.partition: committed[tp] if committed[tp] is not None else earliest[tp] for tp in assigned}
        found = consumer.offsets_for_times({tp: start_timestamp_ms(start) for tp in assigned})
        ends = consumer.end_offsets(assigned)
        # No record at or after the time: Kafka answers None, tansu offset 0 with timestamp -1. Both mean "the end".
        return {tp.partition: found[tp].offset if found.get(tp) and found[tp].timestamp >= 0 else ends[tp]
                for tp in assigned}

    def assign(self, consumer: KafkaConsumer, stop: threading.Event, wait_s: float) -> list[TopicPartition]:
        deadline = time.monotonic() + wait_s
        partitions = self.partitions
        while partitions is None:
            found = consumer.partitions_for_topic(self.topic)
            if found:
                partitions = sorted(found)
            elif stop.is_set() or time.monotonic() > deadline:
                raise RuntimeError(f"topic {self.topic!r} does not exist on {self.bootstrap} after {wait_s:.0f} s")
            else:
                time.sleep(0.2)
        assigned = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(assigned)
        fresh = [tp for tp in assigned if tp.partition not in self.offsets]
        if fresh:
            starts = self._start_offsets(consumer, fresh)
            self.offsets.update(starts)
            for partition, offset in starts.items():
                self.epoch_start.setdefault(partition, offset)
        for tp in assigned:
            consumer.seek(tp, self.offsets[tp.partition])
        return assigned

    def _next_epoch(self) -> None:
        """Every partition was read to its end and epochs remain: learn the data again, from the epoch's start."""
        self.epoch += 1
        self.seen_keys.clear()
        log.info("epoch %d of %d starts", self.epoch + 1, self.config.training.epochs)
        for partition in self.offsets:
            self.offsets[partition] = self.epoch_start.get(partition, 0)
        self._dirty = True

    def run(self, stop: threading.Event, topic_wait_s: float = 60.0) -> None:
        """Consume until ``stop`` is set, publishing a version every ``checkpoint_every_s`` with news.

        Messages are learned in groups of ``chunks_per_step``: a group waits
        up to ``group_wait_s`` to fill, so that a trainer started before its
        producer does not learn from one file's chunks alone. The next group
        is read and prepared while this one trains (:mod:`~hepstream.models.read_ahead`).
        """
        training = self.config.training
        consumer = self.consumer()
        try:
            assigned = self.assign(consumer, stop, topic_wait_s)
            known, ahead = set(self.seen_keys), self.learner.read_ahead()

            def prepare(messages) -> Step:  # in the read-ahead thread
                step = self.prepare_messages(messages, known, ahead)
                known.update(step.keys)
                return step

            reader = ReadAhead(consumer, assigned, prepare, chunks_per_step=training.chunks_per_step,
                               group_wait_s=training.group_wait_s, epoch_start=self.epoch_start,
                               epochs_left=training.epochs - 1 - self.epoch, on_rewind=known.clear)
            reader.start()
            try:
                last_checkpoint = time.monotonic()
                while not stop.is_set():
                    group = reader.next(timeout_s=0.1)
                    if group is not None:
                        self._learn_group(group)
                    if self._dirty and time.monotonic() - last_checkpoint >= training.checkpoint_every_s:
                        self.checkpoint()
                        reader.commit(self.commit_offsets())
                        last_checkpoint = time.monotonic()
            finally:
                left = reader.stop()  # the consumer is this thread's again
            for group in left:
                self._learn_group(group)
            if self._dirty:
                self.checkpoint(consumer)
        finally:
            consumer.close()
            if self.dead_letters is not None:
                self.dead_letters.close()

    def _learn_group(self, group: Step | EpochEnd) -> None:
        if isinstance(group, EpochEnd):
            self._next_epoch()
        else:
            self.learn_step(group)
