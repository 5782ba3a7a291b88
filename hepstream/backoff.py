"""Retries with exponential backoff and a bounded budget, for the failures that go away by themselves.

Shared by the layers: the producer retries remote reads with it
(:mod:`hepstream.streaming.retry` decides which errors are worth it) and
:mod:`hepstream.kafka` retries reaching the brokers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``retries`` waits after the first attempt, starting at ``first_s`` and doubling up to ``max_s``.

    >>> list(Backoff(retries=4, first_s=1.0, max_s=5.0).waits())
    [1.0, 2.0, 4.0, 5.0]
    """

    retries: int
    first_s: float
    max_s: float = 30.0

    def waits(self) -> Iterator[float]:
        for attempt in range(self.retries):
            yield min(self.first_s * 2**attempt, self.max_s)

    def call(self, attempt: Callable, retry_on: Callable[[BaseException], bool], on_retry=None):
        """Run ``attempt()`` until it succeeds, an error is not retryable, or the budget is spent."""
        waits = self.waits()
        while True:
            try:
                return attempt()
            except Exception as error:
                wait = next(waits, None) if retry_on(error) else None
                if wait is None:
                    raise
                if on_retry:
                    on_retry(error, wait)
                time.sleep(wait)
