"""Which files a dataset names: paths, globs, URLs, file lists, samples and LFNs, resolved once.

Everything the configuration can say about inputs is turned here into a flat
list of :class:`Source` (one file, its tree, label and sample), so the reader
never re-parses a URL. A glob that matches nothing is a failed input, reported
with the others, not a silent empty dataset.

>>> from hepstream.config import DatasetConfig
>>> dataset = DatasetConfig(files=[{"url": "/store/mc/a.root", "label": 1}], redirector="cms-xrd-global.cern.ch")
>>> sources, problems = resolve(dataset)
>>> sources[0].url, sources[0].label, problems
('root://cms-xrd-global.cern.ch//store/mc/a.root', 1, [])
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from hepstream.config import ConfigError, DatasetConfig, FileSpec
from hepstream.streaming.retry import is_remote

LFN_PREFIX = "/store/"
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Source:
    """One file to publish and everything needed to read it."""

    url: str
    tree: str
    label: int | None = None
    sample: str | None = None


def read_file_list(path: Path, default_label: int | None = None) -> list[FileSpec]:
    """Parse a file list: ``URL [label]`` per line, ``#`` comments; relative paths are relative to the list.

    Errors name the list and the line, before anything is read or published.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise ConfigError(f"file list {path}: {error.strerror or error}") from None
    specs = []
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2 or (len(fields) == 2 and not fields[1].isdigit()):
            raise ConfigError(f"{path}:{number}: expected 'URL [label]' with a label 0, 1, ..., got {line.strip()!r}")
        url = fields[0]
        if not is_remote(url) and not url.startswith(LFN_PREFIX) and not Path(url).is_absolute():
            url = str(Path(path).parent / url)
        specs.append(FileSpec(url=url, label=int(fields[1]) if len(fields) == 2 else default_label))
    return specs


def remote_glob(url: str) -> list[str]:
    """The files an XRootD glob matches, as ``root://host//path`` URLs (sorted), through the server's listing.

    >>> remote_glob("root://host//data/a.root")  # no wildcard: the URL itself, nothing asked
    ['root://host//data/a.root']
    """
    if not _GLOB_CHARS & set(url.split("//", 2)[-1]):
        return [url]
    from fsspec.core import url_to_fs

    filesystem, pattern = url_to_fs(url)
    filesystem.invalidate_cache()  # fsspec keeps listings; a follower asks again for what has landed since
    server = url[: url.index("/", len("root://"))]
    return sorted(f"{server}//{path.lstrip('/')}" for path in filesystem.glob(pattern))


def _expand(url: str, redirector: str | None) -> list[str]:
    """An LFN through the redirector, a folder (``/`` at the end) to its ``*.root``, a glob to its matches (sorted).

    Local globs are matched on this machine, ``root://`` ones by listing the
    XRootD server's folder; any other URL is taken as it is.
    """
    if redirector and url.startswith(LFN_PREFIX):
        url = f"root://{redirector.removeprefix('root://').rstrip('/')}/{url}"
    if url.endswith("/"):
        url += "*.root"
    if url.startswith("root://"):
        return remote_glob(url)
    if is_remote(url) or not _GLOB_CHARS & set(url):
        return [url]
    return sorted(glob.glob(url))


def resolve(dataset: DatasetConfig, files: list[FileSpec] | None = None) -> tuple[list[Source], list[tuple[str, str]]]:
    """Every input of the dataset, and the ``(pattern, reason)`` of each that names no file.

    ``files`` replaces the dataset's own top-level ``files`` (the demo passes
    them explicitly); file lists and samples are always included.
    """
    groups = [(None, dataset.tree, None, list(dataset.files if files is None else files), dataset.file_list)]
    groups += [(s.name, s.tree or dataset.tree, s.label, list(s.files), s.file_list) for s in dataset.samples]
    sources, problems = [], []
    for sample, tree, sample_label, specs, file_list in groups:
        if file_list is not None:
            specs += read_file_list(file_list, sample_label)
        for spec in specs:
            label = sample_label if spec.label is None else spec.label
            urls = _expand(spec.url, dataset.redirector)
            if not urls:
                problems.append((spec.url, "no file matches this pattern"))
            sources.extend(Source(url, tree, label, sample) for url in urls)
    return sources, problems
