"""Reading ahead: the next group of chunks is fetched, decoded and featurised while the current one trains.

A training step spends its time in torch kernels that release the GIL;
fetching from the broker, decoding Arrow and extracting features are socket
and numpy work that can run beside it on another core. So one thread reads
ahead: it owns the Kafka consumer (kafka-python's consumer is not
thread-safe), polls, forms groups of ``chunks_per_step`` messages (waiting up
to ``group_wait_s`` for a group to fill), has each group prepared and hands it
over a queue holding at most the preparer's ``depth`` groups. The preparer
prepares in this thread (``InThread``) or in worker processes
(:mod:`~hepstream.models.prepare_pool`), whose :class:`Pending` groups are
taken in the order they were polled. It also performs what the trainer
asks of the consumer meanwhile: offset commits and the rewind at the end of an
epoch.

Nothing here advances the trainer's offsets: they move when the trainer has
learned a group, so a crash or a stop loses only work that was prepared, never
a count. A group still being read when the reader stops is handed over too,
so that a stop learns everything fetched, as a trainer without read-ahead did.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from hepstream.kafka import commit
from hepstream.models.grouping import GroupPoller
from hepstream.models.prepare_pool import InThread, Pending, PreparePool

log = logging.getLogger(__name__)


class EpochEnd:
    """Queued after the last group of an epoch: the trainer forgets the epoch's keys and rewinds its offsets."""


class ReadAhead:
    """Polls, groups and prepares in a thread of its own; :meth:`next` hands the groups over in order.

    ``preparer.submit(records)`` turns a group of records into what the trainer
    learns, or a :class:`Pending` one; it is called in the reading thread, and
    the reader closes the preparer when it stops. ``epochs_left`` is how many
    times the reader may rewind to ``epoch_start`` (partition -> offset) once
    every partition is read to its end; ``preparer.rewind()`` is called in the
    reading thread when it does.
    """

    def __init__(self, consumer: KafkaConsumer, assigned: list[TopicPartition], preparer: InThread | PreparePool, *,
                 chunks_per_step: int, group_wait_s: float, epoch_start: dict[int, int], epochs_left: int):
        self.consumer = consumer
        self.assigned = assigned
        self.preparer = preparer
        self._poller = GroupPoller(consumer, chunks_per_step, group_wait_s)
        self.epoch_start = dict(epoch_start)
        self.epochs_left = epochs_left
        self._groups: queue.Queue = queue.Queue(maxsize=preparer.depth)
        self._head: Any = None  # taken from the queue, still being prepared
        self._leftover: list = []
        self._stop = threading.Event()
        self._commit: tuple[dict, int | None] | None = None
        self._commit_lock = threading.Lock()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hepstream-read-ahead", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def next(self, timeout_s: float) -> Any | None:
        """The next prepared group or :class:`EpochEnd`; None when nothing came within ``timeout_s``.

        Raises what the reading thread failed with, so a broken consumer stops the trainer.
        """
        if self._head is None:
            try:
                self._head = self._groups.get(timeout=timeout_s)
            except queue.Empty:
                if self._failure is not None:
                    raise RuntimeError(f"reading from Kafka failed: {self._failure}") from self._failure
                return None
        item = self._head.result(timeout_s) if isinstance(self._head, Pending) else self._head
        if item is not None:
            self._head = None
        return item

    @property
    def idle(self) -> bool:
        """The last poll found nothing and no group waits: the partitions are read to their end for now."""
        return self._poller.idle and self._groups.empty()

    def commit(self, request: dict, checkpoint: int | None) -> None:
        """Ask for ``request`` (``TopicPartition -> OffsetAndMetadata``, ``checkpoint``'s offsets) to be committed
        before the next poll."""
        with self._commit_lock:
            self._commit = (request, checkpoint)

    def stop(self) -> list:
        """Stop reading, wait for the groups submitted, close the preparer, and return every group prepared but
        not yet handed over, in order.

        Afterwards the caller owns the consumer again.
        """
        self._stop.set()
        self._thread.join()
        left = [] if self._head is None else [self._head]
        while not self._groups.empty():
            left.append(self._groups.get_nowait())
        try:
            return [item.result(None) if isinstance(item, Pending) else item for item in left + self._leftover]
        finally:
            self.preparer.close()

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as error:  # handed to the trainer by next()
            log.exception("read-ahead thread failed")
            self._failure = error

    def _read(self) -> None:
        while not self._stop.is_set():
            self._commit_requested()
            group = self._poller.poll()
            if group is not None:
                self._hand_over(self.preparer.submit(group))
            elif self._poller.idle:
                self._rewind_if_epoch_done()
        if self._poller.pending:
            self._leftover.append(self.preparer.submit(self._poller.take()))
        self._commit_requested()

    def _hand_over(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._groups.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        self._leftover.append(item)  # stopping while the trainer is busy: the stop still learns it

    def _commit_requested(self) -> None:
        with self._commit_lock:
            requested, self._commit = self._commit, None
        if requested is not None and requested[0]:
            commit(self.consumer, *requested)

    def _rewind_if_epoch_done(self) -> None:
        """After an idle poll: when every partition is read to its end, queue :class:`EpochEnd` and rewind."""
        if self.epochs_left <= 0:
            return
        ends = self.consumer.end_offsets(self.assigned)
        if any(self.consumer.position(tp) < ends[tp] for tp in self.assigned):
            return
        self.epochs_left -= 1
        self.preparer.rewind()
        self._hand_over(EpochEnd())
        for tp in self.assigned:
            self.consumer.seek(tp, self.epoch_start.get(tp.partition, 0))
