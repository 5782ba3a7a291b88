"""Waiting for something to appear (a topic, a listening port): one poll loop, one error on timeout.

Every wait in hepstream is bounded and says what it waited for, so a stuck
start names the topic or the port instead of hanging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(probe: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.2,
               stop: threading.Event | None = None) -> T:
    """The first truthy answer of ``probe()``, asked every ``interval_s``.

    Past ``timeout_s``, or once ``stop`` is set, raises
    ``TimeoutError("<what> after <timeout_s> s")``; the probe is always asked
    at least once, and an error it raises ends the wait at once.

    >>> answers = iter([None, [], [0, 1]])
    >>> poll_until(lambda: next(answers), timeout_s=1.0, what="topic 't' does not exist", interval_s=0.001)
    [0, 1]
    >>> poll_until(lambda: None, timeout_s=0.01, what="topic 't' does not exist", interval_s=0.001)
    Traceback (most recent call last):
    ...
    TimeoutError: topic 't' does not exist after 0.01 s
    """
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found:
            return found
        if (stop is not None and stop.is_set()) or time.monotonic() >= deadline:
            raise TimeoutError(f"{what} after {timeout_s:g} s")
        time.sleep(interval_s)
