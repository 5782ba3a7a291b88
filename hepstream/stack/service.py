"""What every stack service shares: a child process on a loopback port, owned by its PID.

A service runs as a plain child of the Python process, in a temporary run
folder that holds its log and whatever files it needs. It is stopped through
the :class:`subprocess.Popen` that started it, never by name, so a developer's
own broker or XRootD server is never touched. An :mod:`atexit` hook stops a
service the caller forgot, so none outlives the interpreter on a normal exit,
an exception or Ctrl-C.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from hepstream.stack.errors import StackError, service_failure
from hepstream.stack.ports import free_port, port_is_free, wait_for_port


class LocalService:
    """Start, check, pause and stop one service; subclasses say how to run it and how to ask it.

    ``port`` is fixed for the object's life (picked free when not given), so
    clients keep their address across a :meth:`stop` and a new :meth:`start`.
    """

    name = "service"  # names the run folder and the log file
    what = "service"  # names the service in errors
    host = "127.0.0.1"

    def __init__(self, port: int | None = None, start_timeout_s: float = 10.0):
        self.port = free_port() if port is None else port
        self.start_timeout_s = start_timeout_s
        self._popen: subprocess.Popen | None = None
        self._run_dir: Path | None = None

    def _prepare(self, run_dir: Path) -> list[str]:
        """Write what the service needs into ``run_dir`` and return its command line."""
        raise NotImplementedError

    def _check_ready(self, timeout_s: float) -> None:
        """Prove that the service answers its own protocol, not only that its port is open."""

    @property
    def pid(self) -> int | None:
        """PID of the running service, ``None`` before :meth:`start` and after :meth:`stop`."""
        return None if self._popen is None else self._popen.pid

    @property
    def log_path(self) -> Path | None:
        """The service's log while it runs; :meth:`stop` removes it with the run folder."""
        return None if self._run_dir is None else self._run_dir / f"{self.name}.log"

    def start(self) -> Self:
        """Run the service and return once it answers; on any failure nothing is left running."""
        if self._popen is not None:
            raise StackError(f"{self.what} was already started (PID {self._popen.pid}); stop() it first")
        if not port_is_free(self.host, self.port):
            raise StackError(f"{self.what}: port {self.port} on {self.host} is already in use by another process")
        deadline = time.monotonic() + self.start_timeout_s
        atexit.register(self.stop)
        try:
            self._run_dir = Path(tempfile.mkdtemp(prefix=f"hepstream-{self.name}-"))
            command = self._prepare(self._run_dir)
            self._spawn(command)
            wait_for_port(self.host, self.port, deadline - time.monotonic(), self._popen, self.what, self.log_path)
            # A port that opened just before the deadline still gets a fair protocol check.
            self._check_ready(max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate, wait up to ``timeout_s``, then kill, and remove the run folder; idempotent."""
        atexit.unregister(self.stop)
        if self._popen is not None:
            if self._popen.poll() is None:
                self._popen.terminate()
                # Not reaped yet, so the PID is still ours; SIGCONT lets a paused process act on SIGTERM.
                os.kill(self._popen.pid, signal.SIGCONT)
                try:
                    self._popen.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._popen.kill()
                    self._popen.wait()
            self._popen = None
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    def pause(self) -> None:
        """Freeze the service (SIGSTOP): its port stays open but nothing answers, like a hung server."""
        self._send(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused service run again (SIGCONT)."""
        self._send(signal.SIGCONT)

    def failure(self, problem: str) -> StackError:
        """An error about the running service that carries its command, exit code and log tail."""
        popen = self._popen
        return service_failure(
            self.what,
            problem,
            None if popen is None else popen.args,
            None if popen is None else popen.poll(),
            self.log_path,
        )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _spawn(self, command: list[str]) -> None:
        with open(self.log_path, "ab") as log:
            try:
                self._popen = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self._run_dir
                )
            except OSError as err:
                raise StackError(f"{self.what}: cannot run {command[0]}: {err.strerror}") from err

    def _send(self, signum: int) -> None:
        # poll() reaps an exited child, so a PID it reports as running cannot belong to another process.
        if self._popen is None or self._popen.poll() is not None:
            raise self.failure(f"cannot send {signal.Signals(signum).name}: it is not running")
        os.kill(self._popen.pid, signum)
