"""The online trainer: consume chunks from Kafka, learn from each exactly once, publish versions.

Offsets are this trainer's own state, checkpointed together with the model in
the same store version; Kafka commits follow a checkpoint and only serve
monitoring. A restart reads the newest version and seeks each partition to the
offset recorded there, so the model reflects every chunk once: chunks learned
after the last checkpoint are learned again into the checkpointed model, never
into a model that already saw them. Chunks whose key was already learned (a
producer re-sent them) are skipped and counted.

No Ray here: :mod:`hepstream.models.actor` wraps this class for a cluster, and
a GPU box runs it directly.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from hepstream import wire
from hepstream.config import Config
from hepstream.models.features import FeatureError
from hepstream.models.learner import Learner
from hepstream.models.store import ModelStore

log = logging.getLogger(__name__)


class StreamTrainer:
    def __init__(self, config: Config, bootstrap: str, partitions: list[int] | None = None):
        self.config = config
        self.bootstrap = bootstrap
        self.topic = config.dataset.topic
        self.partitions = partitions
        self.store = ModelStore(config.store.path, config.model.name, config.store.keep)
        self.learner = Learner(config.features, config.model, config.training)
        self.offsets: dict[int, int] = {}
        self.seen_keys: set[str] = set()
        self.counters = {"events_trained": 0, "chunks": 0, "duplicate_chunks": 0, "bad_messages": 0}
        self.version: int | None = None
        self.last_error: str | None = None
        self._dirty = False
        self._resume()

    def _resume(self) -> None:
        latest = self.store.latest()
        if latest is None:
            return
        meta, weights, state = self.store.read(latest)
        self.learner.load_state_dict(
            {**weights, "features": meta["feature_state"], "events_seen": meta["events_seen"]}
        )
        self.offsets = {int(p): int(o) for p, o in state["offsets"].items()}
        self.seen_keys = set(state["seen_keys"])
        self.counters.update(state["counters"])
        self.version = latest
        log.info("resuming %s from version %d at offsets %s", self.config.model.name, latest, self.offsets)

    def status(self) -> dict:
        return {
            **self.counters,
            "version": self.version,
            "offsets": dict(self.offsets),
            "metrics": self.learner.metrics.summary(),
            "last_error": self.last_error,
        }

    def _labels(self, chunk: wire.Chunk) -> np.ndarray:
        branch = self.config.dataset.label_branch
        if branch is not None:
            index = chunk.batch.schema.get_field_index(branch)
            if index < 0:
                raise FeatureError(branch, "label branch missing from the chunk")
            return chunk.batch.column(index).to_numpy(zero_copy_only=False)
        if chunk.label is None:
            raise FeatureError("label", "the chunk has no 'label' header and dataset.label_branch is not set")
        return np.full(chunk.events, chunk.label, dtype=np.float32)

    def learn_messages(self, messages) -> None:
        """Learn a polled group of messages (``kafka`` ConsumerRecords) together.

        A bad message is logged and counted, and never stops the stream; a
        chunk already learned (same key) is skipped and counted.
        """
        raws, labels, keys = [], [], []
        for m in messages:
            try:
                chunk = wire.decode(m.key, m.value, m.headers)
                key = chunk.id.key().decode()
                if key in self.seen_keys or key in keys:
                    self.counters["duplicate_chunks"] += 1
                else:
                    raws.append(self.learner.prepare(chunk.batch))
                    labels.append(self._labels(chunk))
                    keys.append(key)
            except (wire.WireError, FeatureError) as error:
                self.counters["bad_messages"] += 1
                self.last_error = f"{m.topic}[{m.partition}]@{m.offset}: {error}"
                log.warning("skipping message %s", self.last_error)
            self.offsets[m.partition] = m.offset + 1
            self._dirty = True
        if raws:
            self.learner.learn_many(raws, labels)
            self.seen_keys.update(keys)
            self.counters["events_trained"] += sum(len(y) for y in labels)
            self.counters["chunks"] += len(keys)

    def checkpoint(self, consumer: KafkaConsumer | None = None) -> int:
        """Publish model, features, offsets and counters as one new version."""
        learner = self.learner
        meta = {
            "parent": self.version,
            "events_seen": learner.events_seen,
            "metrics": learner.metrics.summary(),
            "features": self.config.features.model_dump(mode="json"),
            "feature_state": learner.features.state_dict(),
            "model": self.config.model.model_dump(mode="json"),
            "topic": self.topic,
            "offsets": {str(p): o for p, o in self.offsets.items()},
            "counters": dict(self.counters),
        }
        weights = {"model": learner.model.state_dict(), "optimizer": learner.optimizer.state_dict()}
        state = {"offsets": meta["offsets"], "seen_keys": sorted(self.seen_keys), "counters": dict(self.counters)}
        self.version = self.store.publish(weights, meta, state)
        self._dirty = False
        if consumer is not None:
            self._commit(consumer)
        return self.version

    def _commit(self, consumer: KafkaConsumer) -> None:
        offsets = {TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1) for p, o in self.offsets.items()}
        try:
            consumer.commit(offsets)
        except Exception as error:  # monitoring only: the checkpoint is the truth
            log.warning("Kafka offset commit failed (checkpoint %s is still valid): %s", self.version, error)

    def _consumer(self) -> KafkaConsumer:
        limit = self.config.kafka.max_message_bytes
        return KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=f"hepstream.{self.config.model.name}",
            enable_auto_commit=False,
            max_partition_fetch_bytes=2 * limit,
            fetch_max_bytes=max(52_428_800, 2 * limit),
        )

    def _assign(self, consumer: KafkaConsumer, stop: threading.Event, wait_s: float) -> None:
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
        for tp in assigned:
            if tp.partition in self.offsets:
                consumer.seek(tp, self.offsets[tp.partition])
            else:
                consumer.seek_to_beginning(tp)

    def run(self, stop: threading.Event, topic_wait_s: float = 60.0) -> None:
        """Consume until ``stop`` is set, publishing a version every ``checkpoint_every_s`` with news.

        Messages are learned in groups of ``chunks_per_step``: a group waits
        up to ``group_wait_s`` to fill, so that a trainer started before its
        producer does not learn from one file's chunks alone.
        """
        training = self.config.training
        consumer = self._consumer()
        try:
            self._assign(consumer, stop, topic_wait_s)
            last_checkpoint = time.monotonic()
            pending, first_pending = [], 0.0
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=100, max_records=training.chunks_per_step - len(pending))
                for messages in polled.values():
                    if not pending:
                        first_pending = time.monotonic()
                    pending.extend(messages)
                waited = time.monotonic() - first_pending
                if pending and (len(pending) >= training.chunks_per_step or waited >= training.group_wait_s):
                    self.learn_messages(pending)
                    pending = []
                if self._dirty and time.monotonic() - last_checkpoint >= training.checkpoint_every_s:
                    self.checkpoint(consumer)
                    last_checkpoint = time.monotonic()
            if pending:
                self.learn_messages(pending)
            if self._dirty:
                self.checkpoint(consumer)
        finally:
            consumer.close()
