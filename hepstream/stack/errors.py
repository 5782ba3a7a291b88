"""The one error the embedded stack raises, worded so the reader can act on it.

A service that dies at start-up usually explains why in its own log, so the
message carries the command that was run, its exit code and the end of that
log: nobody has to go looking for a temporary file that is about to be removed.
"""

from __future__ import annotations

import shlex
from collections import deque
from pathlib import Path
from typing import Sequence


class StackError(RuntimeError):
    """A stack service is missing, refused to start, or stopped answering."""


def log_tail(log_path: str | Path | None, lines: int = 20) -> str:
    """The last ``lines`` lines of a log, or a note saying why there are none."""
    if log_path is None:
        return "(no log file)"
    try:
        with open(log_path, errors="replace") as log:
            tail = "".join(deque(log, maxlen=lines)).rstrip()
    except OSError as err:
        return f"(cannot read {log_path}: {err.strerror})"
    return tail or f"({log_path} is empty)"


def service_failure(
    what: str,
    problem: str,
    command: Sequence[str] | None = None,
    returncode: int | None = None,
    log_path: str | Path | None = None,
) -> StackError:
    """Build the error for a service that failed: what, why, how it was run, what it said."""
    parts = [f"{what}: {problem}"]
    if command is not None:
        parts.append("command: " + shlex.join(str(arg) for arg in command))
    if returncode is not None:
        parts.append(f"exit code: {returncode}")
    if log_path is not None:
        parts.append(f"last lines of {log_path}:\n{log_tail(log_path)}")
    return StackError("\n".join(parts))
