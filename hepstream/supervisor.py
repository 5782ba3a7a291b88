"""Keep a few child processes running: report each exit with its reason, restart with backoff, stop them all.

Each stage of ``hepstream run`` is a child process of its own (``hepstream
produce``, ``train``, ``serve``), so a native crash in one (a segfault in
torch or a client library) cannot take the others down. A child that exits
is reported (exit code or signal, and the last lines of its stderr) and
started again after a wait that doubles with each restart
(:class:`~hepstream.backoff.Backoff`); more than ``max_restarts`` within
``window_s`` means it will not come up by itself, and the supervisor gives up.
A stage that may finish (the producer without follow mode) is not restarted
when it exits with one of its ``finished_codes``.

Each child leads a process group of its own: a terminal's Ctrl-C reaches
only the supervisor, which forwards SIGTERM, and whatever a child started
(Ray's processes under ``hepstream serve``) is killed with its group if it
outlives the child. On Linux a child is sent SIGTERM if the supervisor itself
dies, even by SIGKILL. Processes are addressed by PID and group, never by name.
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hepstream.backoff import Backoff
from hepstream.run_state import StageState

ERROR_LINES = 8
_PR_SET_PDEATHSIG = 1


def terminate_with_parent() -> None:
    """SIGTERM to this process when its parent dies, even by SIGKILL (Linux): called in a child before it runs
    (here), or first thing by a child that must not outlive its parent (a preparation worker).

    Linux sends it when the *thread* that started the child ends, so a parent starts such children from a
    thread that lives as long as they should.
    """
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class StageSpec:
    name: str
    argv: tuple[str, ...]
    finished_codes: frozenset[int] = field(default_factory=frozenset)  # exits that mean "done", not "died"


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5
    window_s: float = 300.0
    first_wait_s: float = 1.0
    max_wait_s: float = 30.0


def describe_exit(returncode: int) -> str:
    """How a child ended, in the words the report and ``hepstream status`` use.

    >>> describe_exit(-9), describe_exit(3)
    ('killed by SIGKILL', 'exit code 3')
    """
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _tail(path: Path, since: int, lines: int = ERROR_LINES) -> tuple[str, ...]:
    """The last ``lines`` non-empty lines written to ``path`` after byte ``since``."""
    with open(path, "rb") as log:
        log.seek(max(since, os.path.getsize(path) - 16_384))
        text = log.read().decode(errors="replace")
    return tuple(line for line in text.splitlines() if line.strip())[-lines:]


class Stage:
    """One child: started, watched and stopped through its :class:`subprocess.Popen`."""

    def __init__(self, spec: StageSpec, log_dir: Path, policy: RestartPolicy, env: dict[str, str] | None = None):
        self.spec = spec
        self.policy = policy
        self.env = env
        self.log = log_dir / f"{spec.name}.log"
        self.output = log_dir / f"{spec.name}.out"
        self.state = "starting"
        self.restarts = 0
        self.last_exit: str | None = None
        self.last_error: tuple[str, ...] = ()
        self.started: float | None = None
        self.restart_at: float | None = None
        self._recent_restarts: collections.deque[float] = collections.deque()
        self._popen: subprocess.Popen | None = None
        self._log_start = 0

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    def start(self) -> None:
        self._log_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log, open(self.output, "wb") as output:
            self._popen = subprocess.Popen(self.spec.argv, stdin=subprocess.DEVNULL, stdout=output, stderr=log,
                                           env=self.env, start_new_session=True,
                                           preexec_fn=terminate_with_parent if sys.platform == "linux" else None)
        self.started = time.time()
        self.state = "running"
        self.restart_at = None

    def check(self, now: float) -> str | None:
        """Act on an exit or a due restart; returns a line to report, or ``None`` when nothing happened."""
        if self.state == "waiting" and now >= self.restart_at:
            self.restarts += 1
            self.start()
            return f"{self.spec.name}: restarted (pid {self.pid}, restart {self.restarts})"
        if self.state != "running" or self._popen.poll() is None:
            return None
        code = self._popen.returncode
        self._kill_group()
        self.last_exit = describe_exit(code)
        self.last_error = _tail(self.log, self._log_start)
        if code in self.spec.finished_codes:
            self.state = "finished"
            return f"{self.spec.name}: finished ({self.last_exit})"
        while self._recent_restarts and now - self._recent_restarts[0] > self.policy.window_s:
            self._recent_restarts.popleft()
        waits = list(Backoff(self.policy.max_restarts, self.policy.first_wait_s, self.policy.max_wait_s).waits())
        reason = f"{self.spec.name} died ({self.last_exit})" + "".join(f"\n    {line}" for line in self.last_error)
        if len(self._recent_restarts) >= len(waits):
            self.state = "failed"
            return (f"{reason}\n{self.spec.name}: {len(waits)} restarts within {self.policy.window_s:g} s, "
                    "giving up; its log: " + str(self.log))
        wait = waits[len(self._recent_restarts)]
        self._recent_restarts.append(now)
        self.state = "waiting"
        self.restart_at = now + wait
        return f"{reason}\n{self.spec.name}: restarting in {wait:g} s"

    def terminate(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.terminate()

    def wait_stopped(self, timeout_s: float) -> None:
        """Wait for the child to exit after :meth:`terminate`, kill it past ``timeout_s``, and clear its group."""
        if self._popen is None:
            return
        try:
            self._popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
            self.last_exit = f"killed after {timeout_s:g} s: it did not stop on SIGTERM"
        self._kill_group()
        if self.state in ("running", "waiting", "starting"):
            self.state = "stopped"

    def _kill_group(self) -> None:
        # The child led its own group and was reaped just now: while any member lives the group's ID cannot be
        # reused, so this reaches only what the child left behind.
        try:
            os.killpg(self._popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def snapshot(self) -> StageState:
        return StageState(self.spec.name, self.pid, self.state, self.started, self.restarts, self.last_exit,
                          self.last_error, str(self.log), str(self.output))


class Supervisor:
    """Runs the stages until ``stop`` is set (exit 0) or one of them keeps dying (exit 1)."""

    def __init__(self, stages: list[Stage], report: Callable[[str], None], changed: Callable[[], None],
                 stop_timeout_s: float = 60.0):
        self.stages = stages
        self.report = report
        self.changed = changed
        self.stop_timeout_s = stop_timeout_s

    def run(self, stop: threading.Event, tick_s: float = 0.2) -> int:
        try:
            for stage in self.stages:
                stage.start()
                self.report(f"{stage.spec.name}: started (pid {stage.pid})")
            self.changed()
            while not stop.wait(tick_s):
                now = time.monotonic()
                news = [line for line in (stage.check(now) for stage in self.stages) if line]
                for line in news:
                    self.report(line)
                if news:
                    self.changed()
                if any(stage.state == "failed" for stage in self.stages):
                    return 1
            return 0
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        """SIGTERM to every child at once (the trainer checkpoints on it), then wait for each."""
        for stage in self.stages:
            stage.terminate()
        for stage in self.stages:
            stage.wait_stopped(self.stop_timeout_s)
        self.changed()
