"""The app on Ray Serve: each replica builds its own store reader, watcher and app, and batches model calls.

Ray Serve's own ways to change a model (``reconfigure``, a new ``serve.run``)
stall a replica while it reloads. Instead each replica runs the app's
:class:`~hepstream.serve.watcher.ModelWatcher`, which loads new versions beside
the old one; Serve only starts replicas, scales them and routes HTTP to them.

Batching: concurrent requests to one replica are gathered by ``@serve.batch``
(``serve.batching.max_size``, ``serve.batching.wait_timeout_s``) and scored
with one model call per version; each request is parsed and checked on its own first,
so a bad request never fails its neighbours. By default a batch is what has
queued up while the replica was busy, with no wait for more: under load
batches form anyway, and a wait only added to every request (figures in
docs/http-api.md).

The replica receives a zero-argument ``open_store`` callable rather than a
store: the store is opened inside the replica's process, so only a path and
a name travel, and the store's imports (torch: seconds) are paid by the
replica that uses them, not by the driver that starts Serve. Bearer tokens
are read by each replica too, from its own file or environment, so they never
travel through Ray's control plane.

:func:`serving` is the one way to run it from a configuration: the
``hepstream serve`` command, the demo and the tests all start Ray, with the
environment Serve reads at start-up, and Serve through it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import ray
from ray import serve
from ray.serve import Application

from hepstream.config import Config, ServeConfig
from hepstream.local_ray import init_ray
from hepstream.serve.app import create_app
from hepstream.serve.slow_clients import timeout_environment
from hepstream.serve.scoring import Result, tune_malloc_for_batches

if TYPE_CHECKING:
    from fastapi import FastAPI

    from hepstream.models.store import LoadedModel, ModelStore

APP_NAME = "hepstream"
SERVE_CONTROLLER_NAME, SERVE_NAMESPACE = "SERVE_CONTROLLER_ACTOR", "serve"  # Serve's own names for its controller
SERVE_SHUTDOWN_TIMEOUT_S = 30.0  # as serve.shutdown's own wait, which tries again after this one
DEFAULT_DIRECT_INGRESS_PORT = 30000  # Serve's own default

logger = logging.getLogger(__name__)


def open_model_store(root: str, model_name: str) -> ModelStore:
    """Open the model store folder; runs inside the replica."""
    from hepstream.models.store import ModelStore

    return ModelStore(root, model_name)


@serve.deployment
@serve.ingress()  # no app yet: Serve calls __serve_build_asgi_app__ in the replica, after __init__
class HepstreamServer:
    """One replica serving one model; ``settings`` is the ``serve`` section as a dict."""

    def __init__(self, open_store: Callable[[], ModelStore], model_name: str, settings: dict):
        import torch

        # One intra-op thread: requests are small, and torch's pool of one thread per core otherwise fights
        # the proxy and the other replicas for the same cores (docs/http-api.md).
        torch.set_num_threads(1)
        tune_malloc_for_batches()
        self.open_store = open_store
        self.model_name = model_name
        self.settings = ServeConfig.model_validate(settings)
        self.score_batch.set_max_batch_size(self.settings.batching.max_size)
        self.score_batch.set_batch_wait_timeout_s(self.settings.batching.wait_timeout_s)
        self.serving = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        replica = serve.get_replica_context().replica_id.unique_id
        app = create_app(self.open_store(), model_name=self.model_name, settings=self.settings, replica=replica)
        self.serving = app.state.serving
        self.serving.scorer = self.score_batch
        return app

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)  # both replaced by the settings in __init__
    async def score_batch(self, models: list[LoadedModel], batches: list[pa.RecordBatch]) -> list[Result | np.ndarray]:
        return await self.serving.score_many_soon(list(zip(models, batches)))


def ray_environment(settings: ServeConfig) -> dict[str, str]:
    """The environment Ray must start with for these settings: Serve reads its ingress flags only then.

    These are the ``serve.ray`` keys, and ``serve.http``'s timeouts
    (:mod:`hepstream.serve.slow_clients`). With ``direct_ingress_port`` every
    replica also serves the app on a port of its own, from that port up, beside
    the proxy's; the range leaves room for replicas being replaced during a
    redeploy. Such a replica then runs our code and its router on its main
    event loop instead of one thread and loop each: direct-ingress requests no
    longer hop between threads. A stopping replica keeps answering on its port
    for ``serve.ray.drain_s`` (Serve's own default, 30 s, is a cloud load
    balancer's deregistration delay: ``serve.shutdown`` gives up after 30 s, so
    every stop of the service then ended in a warning, a 30 s wait and Ray
    killing Serve's controller mid-shutdown, "graceful_shutdown failed").

    With ``haproxy`` (the default), Serve's HAProxy answers on ``serve.http``
    in place of its Python proxy and forwards to those replica ports, which it
    needs, so they start from 30000 when ``direct_ingress_port`` is unset.
    HAProxy runs through ``hepstream-haproxy`` (:mod:`hepstream.serve.haproxy`),
    which keeps its side ports on loopback and gives it the timeouts. Serve's
    proxy sets the pace otherwise, and collapses under many clients.

    Unless ``metrics`` is set, Ray's own metrics are off
    (``RAY_enable_metrics_collection=0``): every replica records Ray's metrics
    of each request, and every few seconds Ray's dashboard agent gathers and
    exports them, which on a busy small node stalls the requests in flight.
    hepstream's own ``/metrics`` does not go through Ray. The measurements
    behind these choices are in docs/http-api.md.
    """
    start, scaling = settings.ray, settings.scaling
    environment = timeout_environment(settings.http)
    if not start.metrics:
        environment["RAY_enable_metrics_collection"] = "0"
    first = start.direct_ingress_port
    if first is None and not start.haproxy:
        return environment
    replicas = scaling.autoscaling.max_replicas if scaling.autoscaling is not None else scaling.replicas
    first = first or DEFAULT_DIRECT_INGRESS_PORT
    environment.update({"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first),
                        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first + 2 * replicas - 1),
                        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(start.drain_s),
                        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"})
    if start.haproxy:
        environment.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_HAPROXY_BINARY_PATH=_haproxy_wrapper())
    return environment


def _haproxy_wrapper() -> str:
    """The ``hepstream-haproxy`` script installed beside this interpreter, else the one on ``PATH``."""
    beside = Path(sys.executable).parent / "hepstream-haproxy"
    found = str(beside) if beside.is_file() else shutil.which("hepstream-haproxy")
    if found is None:
        raise RuntimeError("serve.ray.haproxy needs the hepstream-haproxy script, installed with hepstream; "
                           f"it is neither beside {sys.executable} nor on PATH")
    return found


@contextlib.contextmanager
def serving(config: Config, *, open_store: Callable[[], Any] | None = None, **ray_init: Any) -> Iterator[str]:
    """Serve ``config.model.name`` from ``config.store.path`` while the block runs; yields the base URL.

    Starts Ray unless this process is connected already, with
    :func:`ray_environment` in its environment, on loopback
    (:func:`~hepstream.local_ray.init_ray`; ``ray_init`` are more arguments
    of ``ray.init``), then Serve with ``config.serve``; on leaving,
    stops Serve, and Ray if it started it. ``open_store`` replaces the opener
    of the store folder (tests serve stand-ins). The URL answers once the
    replicas run; ``/v1/health/ready`` is 503 until a first version loads.
    """
    settings = config.serve
    with contextlib.ExitStack() as stack:
        if ray.is_initialized():
            _check_environment(ray_environment(settings))
        else:
            stack.enter_context(_environment(ray_environment(settings)))
            init_ray(**ray_init)
            stack.callback(ray.shutdown)
        serve.start(http_options={"host": settings.http.host, "port": settings.http.port})
        stack.callback(_shutdown_serve)
        open_store = open_store or store_opener(Path(config.store.path).resolve(), config.model.name)
        serve.run(bind_server(open_store, config.model.name, settings), name=APP_NAME, route_prefix="/")
        yield f"http://{settings.http.host}:{settings.http.port}"


def _shutdown_serve() -> None:
    """``serve.shutdown``, without the line Ray prints at every stop: "Task ServeController.graceful_shutdown
    failed. There are infinite retries remaining, so the task will be retried".

    Serve's controller ends a graceful shutdown by killing itself while the
    caller's ``graceful_shutdown`` call still waits, by design; the controller
    retries its tasks for ever, so Ray reports that call as failed, to be
    retried. Asked once with no retries, the call simply ends when the
    controller does; ``serve.shutdown`` then finds it gone and forgets it.
    """
    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        ray.get(controller.graceful_shutdown.options(max_task_retries=0).remote(), timeout=SERVE_SHUTDOWN_TIMEOUT_S)
    except ValueError:  # no controller: Serve is not running
        pass
    except ray.exceptions.RayActorError:  # the controller ended: shut down
        pass
    serve.shutdown()


@contextlib.contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """``variables`` set in this process's environment, which Ray's processes inherit, and put back after."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _check_environment(variables: dict[str, str]) -> None:
    """Ray already runs: warn about settings it did not start with, which Serve cannot take now."""
    missing = sorted(name for name, value in variables.items() if os.environ.get(name) != value)
    if missing:
        logger.warning("Ray was started before hepstream's serve.ray settings could reach it: Serve runs without "
                       "%s; start Ray with these set, or let `hepstream serve` start it", ", ".join(missing))


def store_opener(store_root: str | Path, model_name: str) -> Callable[[], ModelStore]:
    """What a replica calls to open the model store folder."""
    return functools.partial(open_model_store, str(store_root), model_name)


def bind_server(open_store: Callable[[], ModelStore], model_name: str, settings: ServeConfig) -> Application:
    """The deployment with the replicas, autoscaling and concurrency the settings ask for."""
    scaling = settings.scaling
    options: dict[str, Any] = {"max_ongoing_requests": scaling.max_ongoing_requests}
    if scaling.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = scaling.max_replicas_per_node
    if scaling.autoscaling is not None:
        options["autoscaling_config"] = scaling.autoscaling.model_dump()
    else:
        options["num_replicas"] = scaling.replicas
    values = settings.model_dump(mode="json")
    if settings.auth.tokens_file is not None:  # replicas may run in another folder
        values["auth"]["tokens_file"] = str(Path(settings.auth.tokens_file).resolve())
    return HepstreamServer.options(**options).bind(open_store, model_name, values)


def build_app(args: dict) -> Application:
    """Application builder for ``serve deploy`` and KubeRay's RayService (``import_path``).

    ``args`` come from the Serve config file: ``store`` (model store folder,
    mounted in every Ray pod), ``model``, and any section of the ``serve``
    section (``batching``, ``auth``, ``scaling``, ...).
    """
    settings = {key: value for key, value in args.items() if key not in ("store", "model")}
    if "store" not in args or "model" not in args:
        raise ValueError(f"hepstream build_app args need 'store' and 'model'; got {sorted(args)}")
    return bind_server(store_opener(args["store"], args["model"]), args["model"], ServeConfig.model_validate(settings))
