"""What every stage's benchmark needs: timed loops, rates, scratch folders, child processes and readiness.

Stages run parts of themselves in fresh interpreters (a producer whose peak
RSS is its own, servers the load client must not share an interpreter
with): those children get their environment passed to them, never by
editing this process's ``os.environ``.

Top-level imports are the standard library only: the CLI imports the stage
modules, which import this one, to build its parser.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Mapping


def rate(events: int, seconds: float) -> float:
    """Events per second, to a tenth."""
    return round(events / max(seconds, 1e-9), 1)


def run_for(steps: Generator[int, None, None], seconds: float = float("inf")) -> tuple[int, float]:
    """Run ``steps`` (each yields the events it did) until they end or ``seconds`` have passed.

    Returns (events, seconds). The generator is closed inside the timed
    stretch, so work it started and waits for on closing (a read-ahead
    thread's last group) is timed too.
    """
    events, started = 0, time.perf_counter()
    with contextlib.closing(steps):
        for done in steps:
            events += done
            if time.perf_counter() - started >= seconds:
                break
    return events, time.perf_counter() - started


def scratch_folder(stage: str) -> tempfile.TemporaryDirectory:
    """A folder for one run of ``stage``, removed after it."""
    return tempfile.TemporaryDirectory(prefix=f"hepstream-bench-{stage}-")


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with ``extra`` on top, for a child process; this one's is left as it is."""
    return {**os.environ, **(extra or {})}


def _python_command(function: Callable, args: tuple) -> list[str]:
    """A fresh interpreter calling ``function(*args)``; the arguments travel as JSON."""
    call = (f"import json, sys; from {function.__module__} import {function.__name__}; "
            f"{function.__name__}(*json.loads(sys.argv[1]))")
    return [sys.executable, "-c", call, json.dumps(args)]


def start_python(function: Callable, *args, env: Mapping[str, str] | None = None, **popen) -> subprocess.Popen:
    """``function(*args)`` in a process of its own, with ``env`` added to its environment."""
    return subprocess.Popen(_python_command(function, args), env=child_environment(env), **popen)


def call_python(function: Callable, *args) -> dict:
    """``function(*args)`` in a process of its own, so that its figures (peak RSS) are its own alone.

    Returns the JSON object the child printed last; raises
    ``CalledProcessError``, with the child's stderr, when it fails.
    """
    out = subprocess.run(_python_command(function, args), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_ready(port: int, timeout_s: float = 120.0, server: subprocess.Popen | None = None) -> None:
    """Wait until the hepstream app on ``port`` answers ``/v1/health/ready``; fail early if ``server`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"server for port {port} exited with status {server.returncode} before it was ready")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/v1/health/ready")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} not ready after {timeout_s} s")


def start_app_server(store, model_name: str, **versions):
    """The FastAPI app of ``hepstream.serve`` on uvicorn in a thread, polling ``store`` every 0.1 s (or as
    ``versions``, keys of ``serve.versions``, say): (server, port). Stop it with ``server.should_exit = True``."""
    import uvicorn

    from hepstream.config import ServeConfig
    from hepstream.serve.app import create_app
    from hepstream.stack.ports import free_port

    port = free_port()
    settings = ServeConfig(versions={"poll_interval_s": 0.1, **versions})
    app = create_app(store, model_name=model_name, settings=settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    return server, port
