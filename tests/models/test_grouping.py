"""Groups for a training step: full at once, or after the wait from their first record; none from an idle poll."""

import time

from hepstream.models.grouping import GroupPoller


class ScriptedConsumer:
    """Answers each poll with the next batch of records (a list), recording ``max_records``."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.asked = []

    def poll(self, timeout_ms, max_records):
        self.asked.append(max_records)
        batch = self.batches.pop(0) if self.batches else []
        return {"tp": batch} if batch else {}


def test_a_group_is_handed_over_once_full_and_asks_only_for_what_fits():
    consumer = ScriptedConsumer([[1, 2], [3, 4, 5]])
    poller = GroupPoller(consumer, size=5, wait_s=60.0)
    assert poller.poll() is None and poller.pending == [1, 2]
    assert poller.poll() == [1, 2, 3, 4, 5] and poller.pending == []
    assert consumer.asked == [5, 3]


def test_a_group_that_cannot_fill_is_handed_over_after_its_wait():
    poller = GroupPoller(ScriptedConsumer([[1]]), size=5, wait_s=0.05)
    started = time.monotonic()
    assert poller.group() == [1]
    assert time.monotonic() - started >= 0.05


def test_an_idle_first_poll_gives_an_empty_group():
    poller = GroupPoller(ScriptedConsumer([]), size=5, wait_s=60.0)
    assert poller.group() == [] and poller.idle
