"""The one poll loop: first truthy answer, a deadline, a stop, and the error naming what was awaited."""

import doctest
import threading
import time

import pytest

from hepstream import backoff, waiting
from hepstream.waiting import poll_until


def test_doctest_examples_run():
    assert doctest.testmod(waiting).failed == 0
    assert doctest.testmod(backoff).failed == 0


def test_returns_the_first_truthy_answer_and_asks_no_more():
    answers = iter([None, 0, {}, "found", "later"])
    asked = []

    def probe():
        asked.append(1)
        return next(answers)

    assert poll_until(probe, timeout_s=5.0, what="x", interval_s=0.001) == "found"
    assert len(asked) == 4


def test_a_set_stop_ends_the_wait_at_once_after_one_probe():
    stop = threading.Event()
    stop.set()
    asked = []
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^topic 't' does not exist on b:9 after 60 s$"):
        poll_until(lambda: asked.append(1), timeout_s=60.0, what="topic 't' does not exist on b:9", stop=stop)
    assert asked == [1] and time.monotonic() - started < 1.0


def test_an_error_in_the_probe_is_not_swallowed():
    def probe():
        raise ValueError("the service exited")

    with pytest.raises(ValueError, match="the service exited"):
        poll_until(probe, timeout_s=5.0, what="x")
