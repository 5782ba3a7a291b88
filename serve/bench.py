"""``hepstream bench serve``: the Ray Serve app against bare uvicorn running the same app, in one run.

One untrained MLP over the demo's branches is published to a scratch store and
served twice: (a) by the full Ray Serve deployment (ingress, batching,
replicas) and (b) by the same ``create_app`` on bare uvicorn in a child
process. Both run one process per core of the 2-core reference machine
(``--processes``): Serve two replicas, uvicorn two workers. A second process
is how either uses a second core: a replica's threads share one interpreter
lock, which its stream reading and feature pipeline hold (10k-event Arrow
requests at concurrency 2, paired runs: 779k-811k events/s with one
replica, 951k-1,067k with two).

The same client loads both: keep-alive ``http.client`` connections, one per
thread, sending single-event JSON requests at concurrency 1 and 8, then
batched Arrow requests of 10k events. Both servers run side by side and the
client takes them in turns, ``--rounds`` times (bare first in odd rounds,
Serve first in even ones); each headline figure is the median over the
rounds, and the figures of every round are in the ``*_rounds`` keys. This
machine's speed drifts by a quarter over a day and has slow spells of tens
of seconds: one after the other, the same code gave JSON p99 25-43 ms and
800k-1,150k Arrow events/s over five runs. Last, single-event requests at
concurrency 8 while new versions are published every half second (hot swap).

Serve is deployed as ``serve.haproxy: true`` sets it up: Serve's HAProxy
answers on the app's port and forwards to the replicas' own ports (direct
ingress); its figures are the headline ones. Serve's Python proxy, which
answers with the default ``serve.haproxy: false`` and still runs behind
HAProxy as its fallback, is measured on its own port in the same run
(``proxy_*``), and so is the first replica's own port, alone (``direct_*``).

Top-level imports are the standard library only: the CLI imports this module
to build its parser.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each load phase (default: 4)")
    parser.add_argument("--arrow-events", type=int, default=10_000, help="events per Arrow request")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the headline phases, alternating between the servers (default: 3)")
    parser.add_argument("--processes", type=int, default=2,
                        help="Serve replicas and bare uvicorn workers (default: 2, one per core of the reference machine)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _event(i: int) -> dict:
    return {"MET_pt": 20.0 + i % 50, "nMuon": 2, "nJet": 1, "Muon_pt": [51.0, 33.2], "Muon_eta": [0.3, -1.1],
            "Muon_phi": [2.0, -1.2], "Muon_mass": [0.106, 0.106], "Jet_pt": [45.0], "Jet_eta": [2.1],
            "Jet_btag": [0.05]}


def _publish(root: Path, name: str, seed: int) -> int:
    import torch

    from hepstream.config import FeaturesConfig, ModelConfig
    from hepstream.models.features import FeaturePipeline
    from hepstream.models.registry import build_model
    from hepstream.models.store import ModelStore
    from hepstream.models.version_meta import VersionMeta

    features, model = FeaturesConfig(), ModelConfig(name=name)
    pipeline = FeaturePipeline(features)
    torch.manual_seed(seed)
    network = build_model(model, pipeline.n_features)
    meta = VersionMeta(features=features.model_dump(mode="json"), feature_state=pipeline.state_dict(),
                       model=model.model_dump(mode="json"))
    return ModelStore(root, name).publish({"model": network.state_dict()}, meta, {"offsets": {}})


def _publisher(root: str, go, stop) -> None:
    """Publish a new version every half second from ``go`` until ``stop``: the trainer's part, in its own process."""
    _publish(Path(root), "warm-up", 0)  # the first publication imports torch and more: seconds, not measured
    seed = 2
    go.wait()
    while not stop.wait(0.5):
        _publish(Path(root), "bench", seed)
        seed += 1


def _load(port: int, path: str, bodies: list[bytes], headers: dict, concurrency: int, seconds: float):
    """Latencies (s), failures and versions seen, with ``concurrency`` keep-alive connections for ``seconds``.

    The client runs in a process of its own, as a real one would: sharing the
    interpreter of the Ray driver, its threads waited on Ray's for the GIL
    (Serve through HAProxy at concurrency 8, three runs each: p99 39-46 ms
    measured from here, 30-37 ms from a process of its own).
    """
    with multiprocessing.get_context("spawn").Pool(1) as client:
        return client.apply(_load_here, (port, path, bodies, headers, concurrency, seconds))


def _load_here(port: int, path: str, bodies: list[bytes], headers: dict, concurrency: int, seconds: float):
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency
    versions: list[list[int]] = [[] for _ in range(concurrency)]
    deadline = time.perf_counter() + seconds

    def worker(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = k
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                connection.request("POST", path, body=bodies[i % len(bodies)], headers=headers)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
                if ok:
                    versions[k].append(int(response.getheader("X-Model-Version")))
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok = False
            latencies[k].append(time.perf_counter() - started)
            failures[k] += not ok
            i += concurrency
        connection.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return [x for xs in latencies for x in xs], sum(failures), versions, elapsed


def _summary(latencies: list[float], elapsed: float) -> dict:
    ordered = sorted(latencies)
    return {"p50_ms": 1e3 * statistics.median(ordered), "p99_ms": 1e3 * ordered[int(0.99 * (len(ordered) - 1))],
            "max_ms": 1e3 * ordered[-1], "req_per_s": len(ordered) / elapsed}


def _json_phases(port: int, seconds: float) -> dict:
    path = "/v1/models/bench/predict"
    bodies = [json.dumps({"events": [_event(i)]}).encode() for i in range(64)]
    headers = {"Content-Type": "application/json"}
    c1 = _summary(*_pick(_load(port, path, bodies, headers, 1, seconds)))
    c8 = _summary(*_pick(_load(port, path, bodies, headers, 8, seconds)))
    return {"c1": c1, "c8": c8}


def _round(port: int, body: bytes, events: int, seconds: float) -> dict:
    """One round of the headline phases on one server: JSON at concurrency 1 and 8, then Arrow."""
    figures = _json_phases(port, seconds)
    figures["arrow"], figures["arrow_failures"] = _arrow_phase(port, body, events, seconds)
    return figures


def _warm_up(port: int, body: bytes, events: int) -> None:
    _load(port, "/v1/models/bench/predict", [json.dumps({"events": [_event(0)]}).encode()],
          {"Content-Type": "application/json"}, 8, 1.0)
    _arrow_phase(port, body, events, 1.0)


def _arrow_phase(port: int, body: bytes, events: int, seconds: float) -> tuple[float, int]:
    """Events scored per second and failed requests, with 2 clients sending ``events`` per Arrow request."""
    from hepstream.serve.arrow_io import ARROW_STREAM

    latencies, failures, _, elapsed = _load(port, "/v1/models/bench/predict", [body], {"Content-Type": ARROW_STREAM},
                                            2, seconds)
    return len(latencies) * events / elapsed, failures


def _pick(result):
    latencies, _failures, _versions, elapsed = result
    return latencies, elapsed


_BARE_STORE = "HEPSTREAM_BENCH_STORE"  # how the bare server's workers find the store


def bare_app():
    """The app of one bare uvicorn worker; uvicorn calls it in each worker process."""
    from hepstream.models.store import ModelStore
    from hepstream.serve.app import create_app
    from hepstream.serve.scoring import tune_malloc_for_batches

    import torch

    torch.set_num_threads(1)  # as every Serve replica does, and:
    tune_malloc_for_batches()
    return create_app(ModelStore(os.environ[_BARE_STORE], "bench"), model_name="bench", poll_interval_s=0.5)


def _start_bare_server(root: str, port: int, workers: int) -> subprocess.Popen:
    """uvicorn with ``workers`` worker processes serving :func:`bare_app`, as an operator would start it."""
    command = [sys.executable, "-m", "uvicorn", f"{__name__}:bare_app", "--factory", "--workers", str(workers),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(command, env={**os.environ, _BARE_STORE: root}, stdin=subprocess.DEVNULL)


def _wait_ready(port: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/v1/health/ready")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} not ready after {timeout_s} s")


def run(args) -> dict:
    import pyarrow as pa
    import ray

    from hepstream.serve.arrow_io import write_stream
    from hepstream.serve.app import serve_settings
    from hepstream.serve.deployment import ray_environment, start_serve, stop_serve

    seconds = args.seconds
    body = write_stream(pa.Table.from_pylist([_event(i) for i in range(args.arrow_events)]))
    rounds: dict[str, list[dict]] = {"bare": [], "serve": []}
    with tempfile.TemporaryDirectory(prefix="hepstream-bench-serve-") as folder:
        root = Path(folder)
        _publish(root, "bench", seed=1)

        # (b) bare uvicorn, in processes of its own so that the client does not share their interpreter;
        # started first, so that it does not inherit the environment Ray is started with below.
        bare_port = _free_port()
        bare = _start_bare_server(str(root), bare_port, args.processes)

        # (a) the full Ray Serve app, through HAProxy; Serve's Python proxy; the first replica's own port.
        port, direct_port, proxy_port = _free_port(), _free_port(), _free_port()
        saved_env = dict(os.environ)
        os.environ.update(ray_environment(serve_settings(direct_ingress_port=direct_port, haproxy=True,
                                                         replicas=args.processes)))
        os.environ.update(RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=str(proxy_port), RAY_SERVE_HAPROXY_STATS_PORT=str(
            _free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(_free_port()))
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "0.5"  # no client is left at shutdown
        spawn = multiprocessing.get_context("spawn")
        go, stop = spawn.Event(), spawn.Event()
        publisher = spawn.Process(target=_publisher, args=(str(root), go, stop), daemon=True)
        publisher.start()  # now, so that its imports are done before it is needed
        ray.init(num_cpus=max(2, args.processes), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            start_serve(root, "bench", port=port, poll_interval_s=0.25, replicas=args.processes)
            servers = {"bare": bare_port, "serve": port}
            for name, server_port in servers.items():
                _wait_ready(server_port)
                _warm_up(server_port, body, args.arrow_events)
            # Rounds alternate between the two servers, each starting the other half of them, so that the
            # machine's own drift (a quarter over a day, and slow spells of tens of seconds) touches both.
            for index in range(args.rounds):
                for name in (("bare", "serve") if index % 2 == 0 else ("serve", "bare")):
                    rounds[name].append(_round(servers[name], body, args.arrow_events, seconds))
            bare.terminate()  # uvicorn stops its workers on SIGTERM
            bare.wait(30)
            _wait_ready(proxy_port)
            proxy_json = _json_phases(proxy_port, seconds)
            _wait_ready(direct_port)
            direct_json = _json_phases(direct_port, seconds)
            direct_arrow, _ = _arrow_phase(direct_port, body, args.arrow_events, seconds)

            # Hot swap: single-event requests at concurrency 8 while another process publishes versions,
            # as the trainer does; publishing from a thread here would stall the client on its GIL.
            go.set()
            bodies = [json.dumps({"events": [_event(i)]}).encode() for i in range(64)]
            swap_latencies, swap_failures, swap_versions, swap_elapsed = _load(
                port, "/v1/models/bench/predict", bodies, {"Content-Type": "application/json"}, 8, seconds)
        finally:
            stop.set()
            publisher.join(30)
            stop_serve()
            ray.shutdown()
            os.environ.clear()
            os.environ.update(saved_env)
            if bare.poll() is None:
                bare.kill()
                bare.wait()

    swap = _summary(swap_latencies, swap_elapsed)
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
