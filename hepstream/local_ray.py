"""The one way hepstream starts Ray itself: on this machine, every Ray process listening on 127.0.0.1 only.

By default Ray takes the machine's outward address as the node's and binds its
GCS, raylets, workers, agents, dashboard and autoscaler monitor to it or to
every interface, some of them answering ``/metrics`` to anybody; asked for
``_node_ip_address="127.0.0.1"``, it swaps loopback back for that address. Ray
keeps loopback only in its single-machine mode, which it turns on for macOS and
Windows and reads from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` elsewhere: then
the node's address is 127.0.0.1 and everything binds there (docs/http-api.md
lists the ports). Ray reads that variable once, when it is imported, so
:func:`init_ray` sets Ray's copy of it too; the variable itself goes to Ray's
processes through the environment.

Ray turns its token authentication on by default for a cluster it starts, and
says so with a warning at every start, which is all a user of the demo or of
``hepstream run`` would see from Ray. hepstream asks for it explicitly
(``RAY_AUTH_MODE=token``, unless the variable is set): the same
authentication, and Ray keeps quiet about a choice it did not make. Ray
caches the variable when it is imported, so :func:`init_ray` refreshes Ray's
copy, as Ray does when it sets it itself.

A cluster named by ``RAY_ADDRESS`` (as under ``ray job submit``) is joined as
it is: its nodes must reach each other, and its operator decides what listens.
"""

from __future__ import annotations

import os
import signal
from typing import Any

SINGLE_MACHINE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
AUTH_MODE = "RAY_AUTH_MODE"
DEFAULTS = {"include_dashboard": False, "logging_level": "WARNING"}


def init_ray(**options: Any) -> None:
    """``ray.init`` with hepstream's defaults (no dashboard, warnings only) and ``options``: joins the cluster
    ``RAY_ADDRESS`` names, else starts Ray on this machine listening on loopback only.

    A driver's ``ray.init`` installs a SIGTERM handler that exits at once; the SIGINT and SIGTERM handlers the
    command had set (its clean stop) are put back, so a signal during start-up is a clean stop too.
    """
    import ray

    own = {number: handler for number in (signal.SIGINT, signal.SIGTERM)
           if callable(handler := signal.getsignal(number)) and handler is not signal.default_int_handler}

    if not os.environ.get("RAY_ADDRESS") and "address" not in options:
        os.environ.update(SINGLE_MACHINE)
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # what Ray read from the variable at import
        if AUTH_MODE not in os.environ:
            from ray._raylet import Config

            os.environ[AUTH_MODE] = "token"
            Config.initialize("")  # what Ray read from the variable at import
    ray.init(**{**DEFAULTS, **options})
    for number, handler in own.items():
        signal.signal(number, handler)
