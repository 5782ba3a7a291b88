"""Relative paths of a configuration made absolute against its folder, before the file leaves for a Ray cluster.

A submitted job runs in Ray's temporary copy of its working dir: a relative
``store.path`` there puts every model version where nobody else looks (and
Ray deletes it), a relative ``producer.manifest`` is forgotten between runs,
and relative inputs name files that were never copied. So before a
configuration is shipped, every local path it holds is made absolute against
the folder of the file on the submitting machine, and each change is reported
by its dotted key. On a cluster those absolute paths must name a shared
filesystem mounted at the same place on every node (docs/cluster.md).

>>> from hepstream.config import config_from_dict
>>> config = config_from_dict({"store": {"path": "models"}, "dataset": {"files": [{"url": "root://eos//a.root"}]}})
>>> config, changes = absolute_paths(config, Path("/home/me/run"))
>>> changes
[('store.path', 'models', '/home/me/run/models')]
>>> str(config.store.path), config.dataset.files[0].url
('/home/me/run/models', 'root://eos//a.root')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from hepstream.config import Config, FileSpec

# URLs that name no local file: left as they are (a bare LFN goes through dataset.redirector).
NOT_LOCAL = ("root://", "http://", "https://", "s3://", "/store/")


def absolute_paths(config: Config, folder: Path) -> tuple[Config, list[tuple[str, str, str]]]:
    """``config`` with its relative local paths joined to ``folder``, and ``(key, before, after)`` for each."""
    changes: list[tuple[str, str, str]] = []
    return _walk(config, "", Path(folder).absolute(), changes), changes


def _walk(value: Any, key: str, folder: Path, changes: list) -> Any:
    if isinstance(value, FileSpec):
        if value.url.startswith(NOT_LOCAL) or Path(value.url).is_absolute():
            return value
        url = str(folder / value.url)
        changes.append((f"{key}.url", value.url, url))
        return value.model_copy(update={"url": url})
    if isinstance(value, BaseModel):
        update = {name: _walk(getattr(value, name), f"{key}.{name}".lstrip("."), folder, changes)
                  for name in type(value).model_fields}
        return value.model_copy(update=update)
    if isinstance(value, list):
        return [_walk(item, f"{key}.{index}", folder, changes) for index, item in enumerate(value)]
    if isinstance(value, Path) and not value.is_absolute():
        changes.append((key, str(value), str(folder / value)))
        return folder / value
    return value
