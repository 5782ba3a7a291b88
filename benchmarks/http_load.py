"""The load client of ``hepstream bench serve``: keep-alive connections, one per thread, in a process of its own.

The client runs in a process of its own, as a real one would: sharing the
interpreter of the Ray driver, its threads waited on Ray's for the interpreter
lock (figures in docs/http-api.md, "Throughput: Serve's ingress").

Top-level imports are the standard library only: the CLI imports the stage
modules, which import this one, to build its parser.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import statistics
import threading
import time

PREDICT = "/v1/models/bench/predict"
JSON = {"Content-Type": "application/json"}


def event(i: int) -> dict:
    """One event of the demo's branches, varied by ``i``."""
    return {"MET_pt": 20.0 + i % 50, "nMuon": 2, "nJet": 1, "Muon_pt": [51.0, 33.2], "Muon_eta": [0.3, -1.1],
            "Muon_phi": [2.0, -1.2], "Muon_mass": [0.106, 0.106], "Jet_pt": [45.0], "Jet_eta": [2.1],
            "Jet_btag": [0.05]}


def single_event_bodies() -> list[bytes]:
    """JSON requests of one event each, 64 different ones."""
    return [json.dumps({"events": [event(i)]}).encode() for i in range(64)]


def load(port: int, path: str, bodies: list[bytes], headers: dict, concurrency: int, seconds: float):
    """Latencies (s), failures, versions seen by each connection, and the elapsed seconds, with ``concurrency``
    keep-alive connections for ``seconds``, from a client process of its own."""
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


def summary(latencies: list[float], elapsed: float) -> dict:
    ordered = sorted(latencies)
    return {"p50_ms": 1e3 * statistics.median(ordered), "p99_ms": 1e3 * ordered[int(0.99 * (len(ordered) - 1))],
            "max_ms": 1e3 * ordered[-1], "req_per_s": len(ordered) / elapsed}


def json_phases(port: int, seconds: float) -> dict:
    """Single-event JSON requests at concurrency 1, then 8."""
    bodies = single_event_bodies()
    return {f"c{concurrency}": _summary_of(load(port, PREDICT, bodies, JSON, concurrency, seconds))
            for concurrency in (1, 8)}


def _summary_of(result) -> dict:
    latencies, _failures, _versions, elapsed = result
    return summary(latencies, elapsed)


def arrow_phase(port: int, body: bytes, events: int, seconds: float) -> tuple[float, int]:
    """Events scored per second and failed requests, with 2 clients sending ``events`` per Arrow request."""
    from hepstream.serve.arrow_io import ARROW_STREAM

    latencies, failures, _, elapsed = load(port, PREDICT, [body], {"Content-Type": ARROW_STREAM}, 2, seconds)
    return len(latencies) * events / elapsed, failures


def one_round(port: int, body: bytes, events: int, seconds: float) -> dict:
    """One round of the headline phases on one server: JSON at concurrency 1 and 8, then Arrow."""
    figures = json_phases(port, seconds)
    figures["arrow"], figures["arrow_failures"] = arrow_phase(port, body, events, seconds)
    return figures


def warm_up(port: int, body: bytes, events: int) -> None:
    load(port, PREDICT, [json.dumps({"events": [event(0)]}).encode()], JSON, 8, 1.0)
    arrow_phase(port, body, events, 1.0)
