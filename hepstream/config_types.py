"""The kinds of value a configuration is made of, one type per meaning, each refusing what makes no sense.

A field says what it *means* by its type (``Count``, ``Seconds``, ``Port``,
``Name``), and the type carries the check and a message that says what to
write instead; no field repeats a validator of its own. Pydantic reports each
failure under the field's dotted key (``model.hidden.0``). A problem that
spans keys is a :class:`KeyedError`, blamed on the key to change.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
# Kafka allows 249 characters in a topic name; a dataset's longest topic is "<name>.dead-letter".
MAX_NAME_LENGTH = 249 - len(".dead-letter")


class KeyedError(ValueError):
    """A problem of several keys together, blamed on ``key`` (dotted, relative to the section that raises it)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def parse_bytes(value: int | str) -> int:
    """Turn ``4_000_000``, ``"4 MB"`` or ``"1 MiB"`` into a number of bytes.

    >>> parse_bytes("8 MB"), parse_bytes("1 KiB"), parse_bytes(512)
    (8000000, 1024, 512)
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4000000 or '4 MB'")
    if isinstance(value, (int, float)):
        number, unit = value, ""
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if not match or match.group(2).upper() not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size; use bytes or a unit such as '4 MB' or '1 MiB'")
        number, unit = float(match.group(1)), match.group(2).upper()
    size = int(number * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size


def matching(pattern: str, is_not: str) -> AfterValidator:
    """A check that a whole string matches ``pattern``; else "'<value>' is not <is_not>", which says what to write."""

    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"{value!r} is not {is_not}")
        return value

    return AfterValidator(check)


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty: write a value or leave the key out")
    return value


def _path(value: Any) -> Any:
    """Refuse ``""`` before it becomes ``Path(".")``, the current folder, which nobody means by leaving it empty."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("is an empty path: write a file or folder, or leave the key out")
    return value


def _bootstrap(value: str) -> str:
    """``host:port[,host:port...]``, each port in 1..65535 (``[::1]:9092`` for IPv6)."""
    for server in value.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or re.search(r"[\s/]", host):
            among = f" (in {value!r})" if "," in value else ""
            raise ValueError(f"{server.strip()!r}{among} is not host:port with a port in 1..65535: write e.g. "
                             "kafka-0.example.org:9092,kafka-1.example.org:9092")
    return value


def repeated(values: Iterable[str]) -> list[str]:
    """The values that occur more than once, in order of their second occurrence.

    >>> repeated(["a", "b", "a", "c", "b", "a"])
    ['a', 'b']
    """
    seen: set[str] = set()
    found: list[str] = []
    for value in values:
        if value in seen and value not in found:
            found.append(value)
        seen.add(value)
    return found


def no_repeats(key: Callable[[Any], str] = str, what: str = "entry") -> AfterValidator:
    """A check that a list names each ``what`` once (``key`` reads the name of an element)."""

    def check(values: list) -> list:
        twice = repeated(key(value) for value in values)
        if twice:
            raise ValueError(f"{what} {', '.join(map(repr, twice))} appears more than once: list each once")
        return values

    return AfterValidator(check)


ByteSize = Annotated[int, BeforeValidator(parse_bytes)]
"""Bytes, as a number or with a unit (``"4 MB"``); always positive."""
Count = Annotated[int, Field(ge=1)]
"""A number of things there must be at least one of (events, workers, layer units)."""
NonNegativeInt = Annotated[int, Field(ge=0)]
"""A number of things where none is meaningful (retries, cached versions)."""
Label = Annotated[int, Field(ge=0)]
"""A class number, 0 .. model.classes - 1."""
Seconds = Annotated[float, Field(gt=0)]
"""A timeout or an interval: zero would mean never waiting or spinning."""
WaitSeconds = Annotated[float, Field(ge=0)]
"""A wait where 0 means not waiting."""
Port = Annotated[int, Field(ge=1, le=65535)]
"""A TCP port to listen on."""
PortOrAny = Annotated[int, Field(ge=0, le=65535)]
"""A TCP port to listen on, 0 for any free one (only where the code asks the OS for one)."""
Name = Annotated[str, matching(r"(?!\.+$)[A-Za-z0-9._-]{1,%d}" % MAX_NAME_LENGTH,
                                f"a name: use 1 to {MAX_NAME_LENGTH} letters, digits, '.', '_' or '-' "
                                "(not only dots), e.g. hzz_4mu")]
"""A dataset, sample or model name: it becomes a topic, a folder and part of URLs."""
Identifier = Annotated[str, matching(r"[A-Za-z_][A-Za-z0-9_]*", "a branch name expressions can use: start with "
                                     "a letter or '_', then letters, digits or '_', e.g. lead_mu_pt")]
"""The name of a computed branch, usable in expressions."""
Text = Annotated[str, AfterValidator(_text)]
"""A branch, tree, URL or other string that cannot be blank."""
Host = Annotated[str, matching(r"[^\s/]+", "a host: write a name or an address such as 127.0.0.1 or 0.0.0.0")]
"""A host name or address to bind or connect to."""
FilePath = Annotated[Path, BeforeValidator(_path)]
"""A file or folder; an empty string is refused rather than read as the current folder."""
Bootstrap = Annotated[str, AfterValidator(_bootstrap)]
"""Kafka brokers, ``host:port[,host:port...]``."""
EnvironmentVariable = Annotated[str, matching(r"[A-Za-z_][A-Za-z0-9_]*", "an environment variable name: letters, "
                                              "digits and '_', e.g. HEPSTREAM_TOKENS")]
"""The name of an environment variable."""
Names = Annotated[list[Text], no_repeats(what="name")]
"""Branch names or patterns, each listed once."""
