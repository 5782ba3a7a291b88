"""Loopback ports: pick a free one, and wait until a service listens on it.

Every stack service gets a port chosen at run time, so parallel test sessions
and a developer's own broker on 9092 never collide.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from hepstream.stack.errors import service_failure
from hepstream.waiting import poll_until

_POLL_INTERVAL_S = 0.005


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The port is released before returning, so another process could take it
    first; the window is a few milliseconds and a service that loses the race
    fails to bind, which :func:`wait_for_port` reports.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    """Whether a service could bind ``host:port`` now.

    Checked before a service starts: if another process already listens
    there, :func:`wait_for_port` would connect to it and call the wrong
    server ready. SO_REUSEADDR lets a port held only by TIME_WAIT sockets of a
    just-stopped service count as free, as it does for the service itself.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(
    host: str,
    port: int,
    timeout_s: float,
    process: subprocess.Popen | None = None,
    what: str = "service",
    log_path: str | Path | None = None,
) -> None:
    """Return once ``host:port`` accepts a TCP connection.

    If ``process`` exits first, or ``timeout_s`` passes, raise
    :class:`~hepstream.stack.errors.StackError` naming ``what``, the command,
    its exit code and the end of ``log_path``: a service that cannot start
    says why in its log, not on the socket.
    """

    def listening() -> bool:
        if process is not None and process.poll() is not None:
            raise service_failure(
                what,
                f"exited before listening on {host}:{port}",
                process.args,
                process.returncode,
                log_path,
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        poll_until(listening, timeout_s=timeout_s, what=f"nothing listens on {host}:{port}",
                   interval_s=_POLL_INTERVAL_S)
    except TimeoutError as timeout:
        raise service_failure(
            what,
            str(timeout),
            None if process is None else process.args,
            None if process is None else process.poll(),
            log_path,
        ) from None
