"""Which read failures are worth retrying (with :class:`hepstream.backoff.Backoff`): those that go away by themselves.

Grid storage fails transiently and often (ServiceX saw half of its first
attempts on XRootD end in "Operation expired"), so a remote read is retried;
a missing or corrupt file is not, since retrying it only delays the report.
Local files are never retried: a local read error does not heal in seconds.
"""

from __future__ import annotations

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
