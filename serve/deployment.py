"""The app on Ray Serve: each replica builds its own store reader, watcher and app.

Ray Serve's own ways to change a model (``reconfigure``, a new ``serve.run``)
stall a replica while it reloads. Instead each replica runs the app's
:class:`~hepstream.serve.watcher.ModelWatcher`, which loads new versions beside
the old one; Serve only starts replicas and routes HTTP to them.

The replica receives a zero-argument ``open_store`` callable rather than a
store: the store is opened inside the replica's process, so only a path and
a name travel, and the store's imports (torch: seconds) are paid by the
replica that uses them, not by the driver that starts Serve.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from hepstream.serve.app import create_app

APP_NAME = "hepstream"


def open_model_store(root: str, model_name: str) -> Any:
    """Open the model store folder; runs inside the replica."""
    from hepstream.models.store import ModelStore

    return ModelStore(root, model_name)


@serve.deployment
@serve.ingress()  # no app yet: Serve calls __serve_build_asgi_app__ in the replica, after __init__
class HepstreamServer:
    """One replica serving one model; the arguments are those of :func:`~hepstream.serve.app.create_app`."""

    def __init__(self, open_store: Callable[[], Any], model_name: str, poll_interval_s: float = 0.5,
                 max_events_per_request: int = 100_000):
        self.open_store = open_store
        self.model_name = model_name
        self.poll_interval_s = poll_interval_s
        self.max_events_per_request = max_events_per_request

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.open_store(), model_name=self.model_name, poll_interval_s=self.poll_interval_s,
                          max_events_per_request=self.max_events_per_request)


def start_serve(store_root: str | Path, model_name: str, host: str = "127.0.0.1", port: int = 8000,
                poll_interval_s: float = 0.5, max_events_per_request: int = 100_000) -> str:
    """Serve the newest version of ``model_name`` from the store folder; returns the base URL.

    Needs Ray started (``ray.init``) by the caller. Returns once the replica
    runs; it answers 503 on ``/v1/health/ready`` until a first version loads.
    """
    serve.start(http_options={"host": host, "port": port})
    serve.run(bind_server(store_root, model_name, poll_interval_s, max_events_per_request),
              name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def bind_server(store_root: str | Path, model_name: str, poll_interval_s: float = 0.5,
                max_events_per_request: int = 100_000) -> Application:
    open_store = functools.partial(open_model_store, str(store_root), model_name)
    return HepstreamServer.bind(open_store, model_name, poll_interval_s, max_events_per_request)


def build_app(args: dict) -> Application:
    """Application builder for ``serve deploy`` and KubeRay's RayService (``import_path``).

    ``args`` come from the Serve config file: ``store`` (model store folder,
    mounted in every Ray pod), ``model``, and optionally ``poll_interval_s``
    and ``max_events_per_request``.
    """
    unknown = set(args) - {"store", "model", "poll_interval_s", "max_events_per_request"}
    if unknown or "store" not in args or "model" not in args:
        raise ValueError(f"hepstream build_app args need 'store' and 'model'; unknown: {sorted(unknown)}")
    return bind_server(args["store"], args["model"], float(args.get("poll_interval_s", 0.5)),
                       int(args.get("max_events_per_request", 100_000)))


def stop_serve() -> None:
    """Stop Serve: its HTTP proxy, controller and replicas. Ray itself keeps running."""
    serve.shutdown()
