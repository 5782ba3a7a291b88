"""Groups of messages for one training step, polled from a consumer: one rule for every trainer.

A step learns ``chunks_per_step`` chunks together. A group waits up to
``group_wait_s``, counted from its first record, to fill; so a trainer that
started before its producer does not learn from one file's chunks alone, and a
trickle of messages is still learned within that wait.
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer

_POLL_MS = 100


class GroupPoller:
    """Forms groups from short polls of ``consumer``; it keeps the records of a group not yet complete."""

    def __init__(self, consumer: KafkaConsumer, size: int, wait_s: float):
        self.consumer = consumer
        self.size = size
        self.wait_s = wait_s
        self.pending: list = []
        self.idle = False  # the last poll found nothing, and nothing is pending
        self._first_at = 0.0

    def poll(self) -> list | None:
        """One short poll; the group once it is full or its wait is over, else None."""
        polled = self.consumer.poll(timeout_ms=_POLL_MS, max_records=self.size - len(self.pending))
        for records in polled.values():
            if not self.pending:
                self._first_at = time.monotonic()
            self.pending.extend(records)
        self.idle = not polled and not self.pending
        if self.pending and (len(self.pending) >= self.size or time.monotonic() - self._first_at >= self.wait_s):
            return self.take()
        return None

    def take(self) -> list:
        """The records pending, which this poller forgets."""
        group, self.pending = self.pending, []
        return group

    def group(self) -> list:
        """Poll until a group is ready; an empty list at once when a first short poll finds nothing."""
        while (group := self.poll()) is None:
            if self.idle:
                return []
        return group
