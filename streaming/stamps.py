"""How big a file is and when it last changed, locally or on a server: what tells the follower a file stopped growing.

A local file is asked with ``stat``; a remote one (``root://``, ``https://``)
through its fsspec filesystem, one request each, so the follower only asks
about files it has not published yet.

>>> import tempfile
>>> with tempfile.NamedTemporaryFile() as landing:
...     _ = landing.write(b"root"); landing.flush()
...     stamp(landing.name).size
4
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hepstream.streaming.retry import is_remote


@dataclass(frozen=True)
class Stamp:
    size: int
    mtime: float | None  # seconds since the epoch; None where the server does not say


def stamp(url: str) -> Stamp:
    """The file's size and modification time; ``OSError`` (``FileNotFoundError`` locally) when it is not there."""
    if not is_remote(url):
        found = os.stat(url)
        return Stamp(found.st_size, found.st_mtime)
    from fsspec.core import url_to_fs

    filesystem, path = url_to_fs(url)
    filesystem.invalidate_cache()  # fsspec may answer from a listing it kept: the size then is stale
    info = filesystem.info(path)
    return Stamp(int(info.get("size") or 0), info.get("mtime"))
