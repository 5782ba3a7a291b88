"""The online trainer: consume chunks from Kafka, learn from each exactly once, publish versions.

Offsets are this trainer's own state (:class:`~hepstream.models.position.Position`),
checkpointed together with the model in the same store version; Kafka commits
follow a checkpoint and only serve monitoring. A restart reads the newest version and seeks each partition to the
offset recorded there (the next offset to read, Kafka's convention), so the
model reflects every chunk once: chunks learned after the last checkpoint are
learned again into the checkpointed model, never into a model that already saw
them. Chunks whose key was already learned in this epoch (a producer re-sent
them) are skipped and counted. Messages that cannot be used go to the
dead-letter topic (:mod:`~hepstream.models.dead_letter`) and are counted.
Chunks of the validation slice (:mod:`~hepstream.models.validation`) are
checked, kept in a reservoir and counted as ``events_validation``, never
learned; at each checkpoint :mod:`~hepstream.models.gate` scores the version on
them and decides whether servers may swap to it.

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
from contextlib import suppress

from kafka import KafkaConsumer, TopicPartition

from hepstream import wire
from hepstream.config import Config, start_timestamp_ms
from hepstream.kafka import commit, new_consumer, wait_for_topic
from hepstream.models.checkpoint_health import CheckpointHealth
from hepstream.models.dead_letter import DeadLetters, dead_letter_topic
from hepstream.models.gate import Gate
from hepstream.models.labels import chunk_labels
from hepstream.models.learner import Learner, Preparation
from hepstream.models.position import Position, Replay
from hepstream.models.prepare_pool import InThread, PreparePool, preparation
from hepstream.models.read_ahead import EpochEnd, ReadAhead
from hepstream.models.shuffle import ClassWeights, ShuffleBuffer, Waiting
from hepstream.models.store import ModelStore
from hepstream.models.store_errors import StoreWriteError
from hepstream.models.trainer_status import TrainerStatus
from hepstream.models.validation import Reservoir, in_slice, stored_reservoir
from hepstream.models.verdicts import Duplicate, Held, Ok, Refused, Replayed, Step
from hepstream.models.version_meta import VersionMeta

log = logging.getLogger(__name__)


def use_compute_threads(threads: int) -> None:
    """Give torch ``training.threads`` intra-op threads in this process, and numpy's BLAS as many.

    Torch's default, one thread per core, collapses when the cores are shared with the broker, the
    read-ahead thread or other trainers: its threads spin waiting for each other, and learning slows by
    an order of magnitude. OpenBLAS does the same after any numpy call that reaches it (a user's model,
    a derived feature): its idle threads spin beside the trainer. Figures in docs/training.md.
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
        self.position = Position(self.topic)
        self.version: int | None = None
        self.last_error: str | None = None
        self.dead_letters = None
        if config.training.dead_letter:
            self.dead_letters = DeadLetters(bootstrap, dead_letter_topic(config.dataset.name), config.kafka)
        self.checkpoints = CheckpointHealth(config.training.checkpoint_every_s)
        training = config.training
        self.shuffle = None
        if training.shuffle_chunks:
            self.shuffle = ShuffleBuffer(training.shuffle_chunks, training.chunks_per_step, training.seed)
        self.class_weights = ClassWeights(training.class_weights, config.model.classes)
        self.validation = Reservoir(config.training.validation_events, config.training.seed)
        self.gate = Gate.for_config(self.store, config)
        self._dirty = False
        self._resume()
        self.replay = Replay(self.position)

    def _resume(self) -> None:
        latest = self.store.latest()
        if latest is None:
            return
        meta, model_state, state = self.store.read(latest)
        self.learner.estimator.load_state_dict(model_state)
        self.learner.load_state_dict(state.get("learner", {"features": meta.feature_state,
                                                            "events_seen": meta.events_seen}))
        self.position.restore(state)
        if "class_counts" in state:  # older checkpoints have none
            self.class_weights.load_state_dict(state["class_counts"])
        self.validation = stored_reservoir(self.store, latest, self.config.training.validation_events,
                                           self.config.training.seed)
        self.version = latest
        log.info("resuming %s from version %d at offsets %s", self.config.model.name, latest, self.offsets)

    # Read-only views of the position, for status, metrics and callers that watch progress.
    @property
    def offsets(self) -> dict[int, int]:
        return self.position.offsets

    @property
    def epoch(self) -> int:
        return self.position.epoch

    @property
    def counters(self) -> dict[str, int]:
        return self.position.counters

    def status(self) -> TrainerStatus:
        return TrainerStatus(**self.counters, version=self.version, epoch=self.epoch, offsets=dict(self.offsets),
                             metrics=self.learner.metrics_summary(),
                             last_error=self.checkpoints.error or self.last_error,
                             **self.checkpoints.status_fields(), versions_rejected=self.gate.rejected)

    def _refuse(self, refused: Refused) -> None:
        record, error = refused.record, refused.error
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        self.position.count("bad_messages")
        self.last_error = f"{where}: {error}"
        log.warning("skipping message %s", self.last_error)
        if self.dead_letters is not None:
            self.dead_letters.send(record, f"{type(error).__name__}: {error}")
            self.position.count("dead_letters")

    def learn_messages(self, messages) -> None:
        """Learn a polled group of messages (``kafka`` ConsumerRecords) together.

        A bad message is sent to the dead-letter topic, counted, and never
        stops the stream; a chunk already learned (same key) is skipped and
        counted.
        """
        known = self.position.seen_keys if self.shuffle is None else self.position.seen_keys | self.shuffle.keys()
        self.learn_step(self.prepare_messages(messages, known, replay=self.replay))

    def prepare_messages(self, messages, known: set[str], ahead: Preparation | None = None,
                         replay: Replay | None = None) -> Step:
        """Decode, check and prepare a group of messages, skipping the chunks whose key is in ``known`` and the
        records ``replay`` says were dealt with before a restart.

        Changes no state of the trainer's, so the read-ahead thread runs it
        (with ``ahead``, see :meth:`Learner.prepare_group`) while the previous
        group trains.
        """
        verdicts, chunks, keys = [], [], set()
        for m in messages:
            if replay is not None and replay.done(m.partition, m.offset):
                verdicts.append(Replayed(m))
                continue
            try:
                chunk = wire.decode(m.key, m.value, m.headers)
                key = chunk.id.key().decode()
                if key in known or key in keys:
                    verdicts.append(Duplicate(m, key))
                elif in_slice(key, self.config.training.validation_fraction):
                    # Checked as a learned chunk is, so that no version is ever scored on a chunk it cannot read.
                    labels = self.learner.prepare(chunk.batch, chunk_labels(chunk, self.config.dataset.label_branch)).labels
                    keys.add(key)
                    verdicts.append(Held(m, key, chunk.batch, labels))
                else:
                    chunks.append(self.learner.prepare(chunk.batch, chunk_labels(chunk, self.config.dataset.label_branch)))
                    keys.add(key)
                    verdicts.append(Ok(m, key))
            except Exception as error:  # noqa: BLE001 - whatever one message raises refuses that message alone
                # Not only WireError and FeatureError: a library deep in the feature pipeline may raise anything
                # on bytes that passed validation, and letting it through would kill the trainer again on the
                # same offset after every restart. Refused, the message is dead-lettered and its offset passed.
                verdicts.append(Refused(m, error))
        if self.shuffle is not None:
            return Step(verdicts, None, tuple(chunks))
        return Step(verdicts, self.learner.prepare_group(self.class_weights.weigh(chunks), ahead) if chunks else None)

    def learn_step(self, step: Step) -> None:
        """Learn a prepared group, count duplicates, refuse bad messages, and move the offsets past them all."""
        for verdict in step.verdicts:
            if isinstance(verdict, Duplicate):
                self.position.count("duplicate_chunks")
            elif isinstance(verdict, Refused):
                self._refuse(verdict)
            elif isinstance(verdict, Held):
                self.validation.add(verdict.batch, verdict.labels, self.config.features.branches)
                self.position.held([verdict.key], len(verdict.labels))
            self.position.advance(verdict.record.partition, verdict.record.offset)
            self._dirty = True
        if self.shuffle is not None:
            kept = [v for v in step.verdicts if isinstance(v, Ok)]
            for verdict, chunk in zip(kept, step.chunks):
                record = verdict.record
                self.shuffle.add(Waiting(record.partition, record.offset, verdict.key, chunk))
                self.position.hold(record.partition, record.offset)
            while self.shuffle.full():
                self.learn_buffered(1)
        elif step.group is not None:
            self.learner.learn_group(step.group)
            self.position.learned(step.keys, len(step.group.labels))

    def learn_buffered(self, steps: int | None = None) -> int:
        """Learn up to ``steps`` steps drawn from the shuffle buffer (every chunk in it when None); how many."""
        done = 0
        while self.shuffle is not None and len(self.shuffle) and (steps is None or done < steps):
            drawn = self.shuffle.draw()
            group = self.learner.prepare_group(self.class_weights.weigh([w.chunk for w in drawn]))
            self.learner.learn_group(group)
            self.position.learned([w.key for w in drawn], len(group.labels))
            for waiting in drawn:
                self.position.release(waiting.partition, waiting.offset)
            self._dirty = True
            done += 1
        return done

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
        state = {**self.position.snapshot(), "learner": learner.state_dict(),
                 "class_counts": self.class_weights.state_dict()}
        return learner.estimator.state_dict(), meta, state, learner.estimator.checkpoint

    def checkpoint(self, consumer: KafkaConsumer | None = None) -> int:
        """Publish model, features, offsets and counters as one new version, then commit the offsets.

        A store that refuses the version raises :class:`StoreWriteError`, reported in
        :meth:`status`; nothing is committed and the state stays to be checkpointed later.
        """
        self.flush_dead_letters()
        self.published(self.gate.publish(self.checkpoints, *self.checkpoint_parts(), self.validation), consumer)
        return self.version

    def take_validation(self) -> Reservoir:
        """The validation events held since the last call, leaving an empty reservoir: a data-parallel worker
        hands them to its coordinator, which keeps the lineage's reservoir."""
        held, self.validation = self.validation, Reservoir(self.validation.capacity, self.config.training.seed)
        return held

    def flush_dead_letters(self) -> None:
        """Store the refused messages' copies: before a checkpoint records them as consumed, never after."""
        if self.dead_letters is not None:
            self.dead_letters.flush()

    def published(self, version: int, consumer: KafkaConsumer | None = None) -> None:
        """``version`` holds this trainer's state now (published here or by a data-parallel coordinator):
        the version's own metrics start afresh, and the offsets go to Kafka through ``consumer``."""
        self.version = version
        self.learner.since_checkpoint = type(self.learner.metrics)(self.config.training.metrics_window,
                                                                   self.config.model.classes)
        self._dirty = False
        if consumer is not None:
            commit(consumer, self.position.commit_request(), version)

    def consumer(self) -> KafkaConsumer:
        limit = self.config.kafka.max_message_bytes
        return new_consumer(
            self.bootstrap,
            self.config.kafka,
            group_id=f"hepstream.{self.config.model.name}",
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
        """Assign this trainer's partitions (the topic's, once it exists, if none were given) and seek each to
        the position's offset, placing the partitions it has none for by ``training.start``."""
        partitions = self.partitions
        if partitions is None:
            partitions = wait_for_topic(consumer, self.topic, timeout_s=wait_s, stop=stop)
        assigned = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(assigned)
        fresh = self.position.unstarted(partitions)
        if fresh:
            self.position.start_at(self._start_offsets(consumer, [TopicPartition(self.topic, p) for p in fresh]))
        for tp in assigned:
            consumer.seek(tp, self.position.resume_offset(tp.partition))
        return assigned

    def _next_epoch(self) -> None:
        """Every partition was read to its end and epochs remain: learn the data again, from the epoch's start."""
        self.position.next_epoch()
        log.info("epoch %d of %d starts", self.epoch + 1, self.config.training.epochs)
        self._dirty = True

    def run(self, stop: threading.Event, topic_wait_s: float = 60.0) -> None:
        """Consume until ``stop`` is set, publishing a version every ``checkpoint_every_s`` with news.

        A checkpoint the store refuses is retried with backoff while learning
        goes on (:mod:`~hepstream.models.checkpoint_health`); the final one, at
        the stop, raises :class:`StoreWriteError` when refused.

        Messages are learned in groups of ``chunks_per_step``: a group waits
        up to ``group_wait_s`` to fill, so that a trainer started before its
        producer does not learn from one file's chunks alone. The next group
        is read and prepared while this one trains (:mod:`~hepstream.models.read_ahead`).
        """
        training = self.config.training
        preparer = self.preparation()  # its workers start while the consumer connects
        try:
            consumer = self.consumer()
        except BaseException:
            preparer.close()
            raise
        try:
            assigned = self.assign(consumer, stop, topic_wait_s)
            reader = ReadAhead(consumer, assigned, preparer, chunks_per_step=training.chunks_per_step,
                               group_wait_s=training.group_wait_s, epoch_start=self.position.epoch_start,
                               epochs_left=training.epochs - 1 - self.epoch)
            reader.start()
            try:
                while not stop.is_set():
                    group = reader.next(timeout_s=0.1)
                    if group is not None:
                        self._learn_group(group)
                    elif reader.idle:  # read to the end for now: what waits in the shuffle buffer is learned
                        self.learn_buffered(1)
                    if self._dirty and self.checkpoints.due():
                        with suppress(StoreWriteError):  # reported by checkpoint(), tried again after a backoff
                            self.checkpoint()
                            reader.commit(self.position.commit_request(), self.version)
            finally:
                left = reader.stop()  # the consumer is this thread's again
            for group in left:
                self._learn_group(group)
            self.learn_buffered()
            if self._dirty:
                self.checkpoint(consumer)
        finally:
            preparer.close()  # closed already by the reader's stop, unless the topic never came
            consumer.close()
            if self.dead_letters is not None:
                self.dead_letters.close()

    def preparation(self, workers: int | None = None) -> InThread | PreparePool:
        """How :meth:`run` prepares groups from here: on the keys learned in this epoch and a read-ahead copy
        of the normaliser and shuffle, in ``training.prepare_workers`` processes (or ``workers``, when given)."""
        known, ahead, replay = set(self.position.seen_keys), self.learner.read_ahead(), self.replay

        def prepare(messages) -> Step:  # in the read-ahead thread
            step = self.prepare_messages(messages, known, ahead, replay)
            known.update(step.consumed_keys)
            return step

        return preparation(self.config, known, ahead, prepare, replay, self.class_weights, workers)

    def _learn_group(self, group: Step | EpochEnd) -> None:
        if isinstance(group, EpochEnd):
            self.learn_buffered()
            self._next_epoch()
        else:
            self.learn_step(group)
