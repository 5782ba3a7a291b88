"""``hepstream bench serve``: the Ray Serve app against bare uvicorn running the same app, in one run.

One untrained MLP over the demo's branches is published to a scratch store and
served twice: (a) by the full Ray Serve deployment (ingress, batching,
replicas) and (b) by the same ``create_app`` on bare uvicorn in a child
process. Both run one process per core of the 2-core reference machine
(``--processes``): Serve two replicas, uvicorn two workers. A second process
is how either uses a second core: a replica's threads share one interpreter
lock, which its stream reading and feature pipeline hold.

The same client (:mod:`hepstream.benchmarks.http_load`) loads both:
single-event JSON requests at concurrency 1 and 8, then batched Arrow
requests of 10k events. Both servers run side by side and the client takes
them in turns, ``--rounds`` times (bare first in odd rounds, Serve first in
even ones); each headline figure is the median over the rounds, and the
figures of every round are in the ``*_rounds`` keys: the machine's speed
drifts and has slow spells, which then move one round, not the result. Last,
single-event requests at concurrency 8 while new versions are published
every half second (hot swap). Figures are in docs/http-api.md.

Serve is deployed with the default ``serve`` settings: Serve's HAProxy
answers on the app's port and forwards to the replicas' own ports (direct
ingress); its figures are the headline ones. Serve's Python proxy, which
answers with ``serve.ray.haproxy: false`` and still runs behind
HAProxy as its fallback, is measured on its own port in the same run
(``proxy_*``), and so is the first replica's own port, alone (``direct_*``).
Ray and Serve run in a child process started with the environment Ray
reads its switches from, as ``hepstream serve`` starts Ray with them.

Top-level imports are the standard library only: the CLI imports this module
to build its parser.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hepstream.benchmarks import http_load
from hepstream.benchmarks.common import child_environment, scratch_folder, start_python, wait_ready

_BARE_STORE = "HEPSTREAM_BENCH_STORE"  # how the bare server's workers find the store
_RAY_START_TIMEOUT_S = 600.0  # Ray and Serve starting on a busy 2-core machine; a failed start is seen at once


def add_arguments(parser) -> None:
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each load phase (default: 4)")
    parser.add_argument("--arrow-events", type=int, default=10_000, help="events per Arrow request")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the headline phases, alternating between the servers (default: 3)")
    parser.add_argument("--processes", type=int, default=2,
                        help="Serve replicas and bare uvicorn workers (default: 2, one per core of the reference machine)")


@dataclass(frozen=True)
class Ports:
    """Where each server answers: bare uvicorn, Serve through HAProxy, Serve's Python proxy, the first replica."""

    bare: int
    serve: int
    proxy: int
    direct: int

    @classmethod
    def free(cls) -> Ports:
        from hepstream.stack.ports import free_port

        return cls(bare=free_port(), serve=free_port(), proxy=free_port(), direct=free_port())


def run(args) -> dict:
    import pyarrow as pa

    from hepstream.serve.arrow_io import write_stream

    body = write_stream(pa.Table.from_pylist([http_load.event(i) for i in range(args.arrow_events)]))
    with scratch_folder("serve") as folder:
        _publish(Path(folder), "bench", seed=1)
        ports = Ports.free()
        # Each server in processes of its own, so that the client does not share their interpreter.
        bare = _start_bare_server(folder, ports.bare, args.processes)
        spawn = multiprocessing.get_context("spawn")
        go, stop = spawn.Event(), spawn.Event()
        publisher = spawn.Process(target=_publisher, args=(folder, go, stop), daemon=True)
        publisher.start()  # now, so that its imports are done before it is needed
        serving = _start_ray_serve(folder, ports, args.processes)
        try:
            figures = _measure(args, body, ports, bare, serving, go)
        finally:
            stop.set()
            publisher.join(30)
            _stop_ray_serve(serving)
            if bare.poll() is None:
                bare.kill()
                bare.wait()
    return _report(args, **figures)


def _measure(args, body: bytes, ports: Ports, bare: subprocess.Popen, serving: subprocess.Popen, go) -> dict:
    """Rounds on both servers, then Serve's proxy and one replica's port alone, then the hot swap."""
    servers = {"bare": ports.bare, "serve": ports.serve}
    wait_ready(ports.bare, server=bare)
    http_load.warm_up(ports.bare, body, args.arrow_events)
    wait_ready(ports.serve, _RAY_START_TIMEOUT_S, server=serving)
    http_load.warm_up(ports.serve, body, args.arrow_events)
    rounds = _rounds(servers, body, args)
    bare.terminate()  # uvicorn stops its workers on SIGTERM
    bare.wait(30)
    wait_ready(ports.proxy)
    proxy_json = http_load.json_phases(ports.proxy, args.seconds)
    wait_ready(ports.direct)
    direct_json = http_load.json_phases(ports.direct, args.seconds)
    direct_arrow, _ = http_load.arrow_phase(ports.direct, body, args.arrow_events, args.seconds)
    # Hot swap: single-event requests at concurrency 8 while another process publishes versions,
    # as the trainer does; publishing from a thread here would stall the client on its GIL.
    go.set()
    swap = http_load.load(ports.serve, http_load.PREDICT, http_load.single_event_bodies(), http_load.JSON, 8,
                          args.seconds)
    return {"rounds": rounds, "proxy_json": proxy_json, "direct_json": direct_json, "direct_arrow": direct_arrow,
            "swap_load": swap}


def _rounds(servers: dict[str, int], body: bytes, args) -> dict[str, list[dict]]:
    """The headline phases, ``--rounds`` times on each server.

    Rounds alternate between the two servers, each starting the other half of
    them, so that the machine's own drift (a quarter over a day, and slow
    spells of tens of seconds) touches both.
    """
    rounds: dict[str, list[dict]] = {"bare": [], "serve": []}
    for index in range(args.rounds):
        for name in (("bare", "serve") if index % 2 == 0 else ("serve", "bare")):
            rounds[name].append(http_load.one_round(servers[name], body, args.arrow_events, args.seconds))
    return rounds


def _publish(root: Path, name: str, seed: int) -> int:
    """Publish an untrained MLP over the demo's branches, seeded, as a new version of ``name``."""
    from hepstream.config import FeaturesConfig, TrainingConfig
    from hepstream.model_kinds import MLPConfig
    from hepstream.models.features import FeaturePipeline
    from hepstream.models.registry import build_estimator
    from hepstream.models.store import ModelStore
    from hepstream.models.version_meta import VersionMeta

    features, model = FeaturesConfig(), MLPConfig(name=name)
    pipeline = FeaturePipeline(features)
    estimator = build_estimator(model, pipeline, TrainingConfig(seed=seed, device="cpu"))
    meta = VersionMeta(features=features.model_dump(mode="json"), feature_state=pipeline.state_dict(),
                       model=model.model_dump(mode="json"))
    return ModelStore(root, name).publish({"model": estimator.module.state_dict()}, meta, {"offsets": {}})


def _publisher(root: str, go, stop) -> None:
    """Publish a new version every half second from ``go`` until ``stop``: the trainer's part, in its own process."""
    _publish(Path(root), "warm-up", 0)  # the first publication imports torch and more: seconds, not measured
    seed = 2
    go.wait()
    while not stop.wait(0.5):
        _publish(Path(root), "bench", seed)
        seed += 1


def bare_app():
    """The app of one bare uvicorn worker; uvicorn calls it in each worker process."""
    from hepstream.config import ServeConfig
    from hepstream.models.store import ModelStore
    from hepstream.serve.app import create_app
    from hepstream.serve.scoring import tune_malloc_for_batches

    import torch

    torch.set_num_threads(1)  # as every Serve replica does, and:
    tune_malloc_for_batches()
    return create_app(ModelStore(os.environ[_BARE_STORE], "bench"), model_name="bench",
                      settings=ServeConfig(versions={"poll_interval_s": 0.5}))


def _start_bare_server(root: str, port: int, workers: int) -> subprocess.Popen:
    """uvicorn with ``workers`` worker processes serving :func:`bare_app`, as an operator would start it."""
    command = [sys.executable, "-m", "uvicorn", f"{__name__}:bare_app", "--factory", "--workers", str(workers),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(command, env=child_environment({_BARE_STORE: root}), stdin=subprocess.DEVNULL)


def _ray_environment(ports: Ports, replicas: int) -> dict[str, str]:
    """What Ray must start with: Serve's HAProxy ingress on ``ports.serve``, its Python proxy on ``ports.proxy``,
    the replicas' own ports from ``ports.direct``; HAProxy's statistics and exporter on free ports."""
    from hepstream.serve.deployment import ray_environment
    from hepstream.stack.ports import free_port

    return {**ray_environment(_serve_section(ports.serve, ports.direct, replicas)),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(ports.proxy),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()), "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0.5"}  # no client is left at shutdown


def _start_ray_serve(root: str, ports: Ports, replicas: int) -> subprocess.Popen:
    """Ray and the Serve app in a process of its own, started with :func:`_ray_environment`; its stdout goes to
    stderr, so that the bench's own stdout holds only the JSON."""
    return start_python(serve_until_stdin_closes, root, ports.serve, ports.direct, replicas,
                        env=_ray_environment(ports, replicas),
                        stdin=subprocess.PIPE, stdout=sys.stderr)


def serve_until_stdin_closes(root: str, port: int, direct: int, replicas: int) -> None:
    """Start Ray and serve the store's ``bench`` model on ``port`` until the bench closes this process's stdin."""
    from hepstream.config import Config
    from hepstream.serve.deployment import serving

    config = Config(store={"path": root}, model={"name": "bench"}, serve=_serve_section(port, direct, replicas))
    with serving(config, num_cpus=max(2, replicas), log_to_driver=False, logging_level="ERROR"):
        sys.stdin.read()


def _serve_section(port: int, direct: int, replicas: int):
    """The ``serve`` settings both the Ray environment and the app are built from: the defaults (HAProxy on
    ``port``, the timeouts) with ``replicas`` replicas answering from ``direct`` up."""
    from hepstream.config import ServeConfig

    return ServeConfig(http={"port": port}, versions={"poll_interval_s": 0.25}, scaling={"replicas": replicas},
                       ray={"direct_ingress_port": direct})


def _stop_ray_serve(serving: subprocess.Popen) -> None:
    """Ask the Serve process to stop Serve and Ray (its stdin closes); kill it if it has not within a minute."""
    serving.stdin.close()
    try:
        serving.wait(60)
    except subprocess.TimeoutExpired:
        serving.kill()
        serving.wait()


def _report(args, rounds: dict, proxy_json: dict, direct_json: dict, direct_arrow: float, swap_load) -> dict:
    swap_latencies, swap_failures, swap_versions, swap_elapsed = swap_load
    swap = http_load.summary(swap_latencies, swap_elapsed)
    serve_rounds, bare_rounds = rounds["serve"], rounds["bare"]
    json_c8_p99 = _median(serve_rounds, "c8", "p99_ms")
    bare_c8 = _median(bare_rounds, "c8", "req_per_s")
    return {
        "processes": args.processes,
        "rounds": args.rounds,
        "json_c1_p50_ms": round(_median(serve_rounds, "c1", "p50_ms"), 2),
        "json_c1_p99_ms": round(_median(serve_rounds, "c1", "p99_ms"), 2),
        "json_c8_p50_ms": round(_median(serve_rounds, "c8", "p50_ms"), 2),
        "json_c8_p99_ms": round(json_c8_p99, 2),
        "json_c8_p99_ms_rounds": _each(serve_rounds, 2, "c8", "p99_ms"),
        "json_c8_max_ms": round(max(_each(serve_rounds, 2, "c8", "max_ms")), 2),
        "json_c8_req_per_s": round(_median(serve_rounds, "c8", "req_per_s"), 1),
        "json_c8_req_per_s_rounds": _each(serve_rounds, 1, "c8", "req_per_s"),
        "bare_c1_p50_ms": round(_median(bare_rounds, "c1", "p50_ms"), 2),
        "bare_c8_p99_ms": round(_median(bare_rounds, "c8", "p99_ms"), 2),
        "bare_c8_req_per_s": round(bare_c8, 1),
        "bare_c8_req_per_s_rounds": _each(bare_rounds, 1, "c8", "req_per_s"),
        "ratio_vs_bare": round(_median(serve_rounds, "c8", "req_per_s") / bare_c8, 3),
        "arrow_events_per_request": args.arrow_events,
        "arrow_events_per_s": round(_median(serve_rounds, "arrow")),
        "arrow_events_per_s_rounds": _each(serve_rounds, 0, "arrow"),
        "arrow_failed_requests": sum(figures["arrow_failures"] for figures in serve_rounds),
        "bare_arrow_events_per_s": round(_median(bare_rounds, "arrow")),
        "bare_arrow_events_per_s_rounds": _each(bare_rounds, 0, "arrow"),
        "proxy_c1_p50_ms": round(proxy_json["c1"]["p50_ms"], 2),
        "proxy_c8_p99_ms": round(proxy_json["c8"]["p99_ms"], 2),
        "proxy_c8_req_per_s": round(proxy_json["c8"]["req_per_s"], 1),
        "proxy_ratio_vs_bare": round(proxy_json["c8"]["req_per_s"] / bare_c8, 3),
        "direct_c1_p50_ms": round(direct_json["c1"]["p50_ms"], 2),
        "direct_c8_p99_ms": round(direct_json["c8"]["p99_ms"], 2),
        "direct_c8_req_per_s": round(direct_json["c8"]["req_per_s"], 1),
        "direct_ratio_vs_bare": round(direct_json["c8"]["req_per_s"] / bare_c8, 3),
        "direct_arrow_events_per_s": round(direct_arrow),
        "swap_versions_seen": len({v for vs in swap_versions for v in vs}),
        "swap_p99_ms": round(swap["p99_ms"], 2),
        "swap_max_latency_ms": round(swap["max_ms"], 2),
        "swap_failed_requests": swap_failures,
        "swap_versions_monotone": all(vs == sorted(vs) for vs in swap_versions),
        "swap_max_over_p99_without_swaps": round(swap["max_ms"] / json_c8_p99, 2),
    }


def _figures(rounds: list[dict], *keys: str) -> list[float]:
    """One figure of every round, named by its keys: ``("c8", "p99_ms")``, ``("arrow",)``."""
    values = []
    for figures in rounds:
        for key in keys:
            figures = figures[key]
        values.append(figures)
    return values


def _each(rounds: list[dict], digits: int, *keys: str) -> list[float]:
    return [round(value, digits or None) for value in _figures(rounds, *keys)]


def _median(rounds: list[dict], *keys: str) -> float:
    """The median over the rounds: a slow spell of the machine moves one round, not the result."""
    return statistics.median(_figures(rounds, *keys))
