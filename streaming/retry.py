"""Retries with exponential backoff and a bounded budget, for the failures that go away by themselves.

Grid storage fails transiently and often (ServiceX saw half of its first
attempts on XRootD end in "Operation expired"), so a remote read is retried;
a missing or corrupt file is not, since retrying it only delays the report.
Local files are never retried: a local read error does not heal in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

REMOTE_SCHEMES = ("root://", "http://", "https://")
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# XRootD status codes that mean the file is not there or not readable, which waiting does not change.
_PERMANENT_XROOTD = ("[3010]", "[3011]")


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_SCHEMES)


def is_transient(error: BaseException, url: str) -> bool:
    """Whether reading ``url`` again might succeed: network and server trouble on a remote source.

    >>> is_transient(OSError("[FATAL] Connection error"), "root://host//f.root")
    True
    >>> is_transient(OSError("[3011] no such file"), "root://host//f.root"), is_transient(OSError("x"), "/data/f.root")
    (False, False)
    >>> forbidden, busy = OSError("Forbidden"), OSError("Service Unavailable")
    >>> forbidden.status, busy.status = 403, 503
    >>> is_transient(forbidden, "https://host/f.root"), is_transient(busy, "https://host/f.root")
    (False, True)
    """
    if not is_remote(url) or isinstance(error, _PERMANENT):
        return False
    if any(code in str(error) for code in _PERMANENT_XROOTD):
        return False
    status = getattr(error, "status", None)  # an HTTP answer (aiohttp's ClientResponseError)
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return False  # refused or not there: asking again gets the same answer; 408 and 429 say "later"
    module = type(error).__module__.split(".")[0]
    # fsspec-xrootd reopens a closed handle with ValueError after a dropped connection.
    return isinstance(error, (OSError, TimeoutError, ConnectionError, ValueError)) or module in ("aiohttp", "requests")


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
