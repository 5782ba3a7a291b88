"""``hepstream demo``: the whole pipeline on one machine, checked from the outside.

Generate labelled NanoAOD-like files, serve them over a local XRootD server,
publish them to the embedded broker, train online in a Ray actor, serve the
newest version with Ray Serve, and meanwhile send held-out events over HTTP
like any client would. The held-out AUC comes from those HTTP answers, not
from the trainer, so the number vouches for the served path end to end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from hepstream.cli.output import Progress
from hepstream.config import Config, config_from_dict
from hepstream.serve.client import Client, ClientError
from hepstream.stack.ports import free_port

DONE_TIMEOUT_S = 240.0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the whole pipeline on the embedded stack and report")
    parser.add_argument("--events", type=int, default=150_000, help="training events per class (default 150000)")
    parser.add_argument("--holdout", type=int, default=10_000, help="held-out events per class (default 10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep data and model store here (default: a temporary folder)")
    parser.add_argument("--no-xrootd", action="store_true", help="read local files even when xrootd is installed")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    parser.set_defaults(run=run)


def _holdout_events(files, branches: list[str], tree: str) -> tuple[list[dict], np.ndarray]:
    """Held-out events as JSON rows in branch space, as an HTTP client would send them."""
    import numpy as np
    import uproot

    rows, labels = [], []
    for path, label in files:
        arrays = uproot.open(path)[tree].arrays(branches, library="ak")
        rows.extend(arrays.to_list())
        labels.append(np.full(len(arrays), label))
    return rows, np.concatenate(labels)


class HoldoutClient(threading.Thread):
    """Sends held-out events in small requests while the model trains, recording which versions answered."""

    def __init__(self, client: Client, model: str, rows: list[dict], per_request: int = 200):
        super().__init__(name="holdout-client", daemon=True)
        self.client, self.model, self.rows, self.per_request = client, model, rows, per_request
        self.versions: list[int] = []
        self.failures: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        start = 0
        while not self.stop_event.is_set():
            batch = self.rows[start : start + self.per_request]
            start = (start + self.per_request) % max(1, len(self.rows) - self.per_request)
            try:
                answer = self.client.predict(self.model, batch)
                self.versions.append(answer["version"])
            except ClientError as error:
                self.failures.append(str(error))
            self.stop_event.wait(0.02)


def _wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def _demo_config(workdir: Path, train_files, read_url, port: int, bootstrap: str | None) -> Config:
    return config_from_dict(
        {
            "dataset": {"name": "demo", "files": [{"url": read_url(p), "label": label} for p, label in train_files]},
            "kafka": {"bootstrap": bootstrap},
            # Small chunks and frequent versions, so that a short demo shows models being swapped in.
            "producer": {"max_chunk_events": 5_000},
            "model": {"name": "demo"},
            "training": {"checkpoint_every_s": 1.0},
            "store": {"path": str(workdir / "store")},
            "serve": {"http": {"port": port}},
        },
        "demo",
    )


def run_demo(args, progress: Progress) -> dict:
    # Heavy imports here, not at the top: every `hepstream` command builds this module's parser.
    import numpy as np
    import ray

    from hepstream.models.metrics import roc_auc

    from hepstream.models.actor import spawn_trainer
    from hepstream.serve.deployment import serving
    from hepstream.stack.broker import EmbeddedBroker
    from hepstream.stack.xrootd import XRootDServer
    from hepstream.streaming.datagen import generate_demo
    from hepstream.streaming.producer import Producer

    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hepstream-demo-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        data = workdir / "data"
        data.mkdir(exist_ok=True)
        for folder in (workdir, data):
            os.chmod(folder, 0o755)  # the XRootD server runs as its own user

        progress.step(f"generating {args.events:,} + {args.events:,} training and {2 * args.holdout:,} held-out events")
        files = generate_demo(data, args.events, args.holdout, args.seed)
        for path, _ in files.train + files.holdout:
            os.chmod(path, 0o644)

        broker = stack.enter_context(EmbeddedBroker())
        progress.step(f"Kafka-protocol broker (tansu) on {broker.bootstrap}, pid {broker.pid}")
        if not args.no_xrootd and XRootDServer.available():
            xrootd = stack.enter_context(XRootDServer(data))
            read_via, read_url = "root", lambda p: xrootd.url_for(p)
            progress.step(f"XRootD server on {xrootd.url}, pid {xrootd.pid}")
        else:
            read_via, read_url = "file", lambda p: str(p)
            why = "--no-xrootd given" if args.no_xrootd else "no xrootd binary found (apt-get install xrootd-server)"
            progress.step(f"reading local files: {why}")

        config = _demo_config(workdir, files.train, read_url, free_port(), broker.bootstrap)
        progress.step("starting Ray and Ray Serve")
        base_url = stack.enter_context(serving(config, num_cpus=2, log_to_driver=False))  # the trainer's Ray, too
        trainer = spawn_trainer(config, broker.bootstrap)
        progress.step(f"trainer actor consuming {config.dataset.topic}; serving on {base_url}")

        rows, labels = _holdout_events(files.holdout, config.features.branches, config.dataset.tree)
        client = Client(base_url)
        holdout = HoldoutClient(client, config.model.name, rows)

        producer = Producer(config, broker.bootstrap)
        producing = threading.Thread(target=lambda: setattr(producer, "report", producer.run(config.dataset.files)))
        producing.start()
        _wait_for(lambda: client.ready(), 120, "the first model version to be served")
        holdout.start()
        producing.join()
        producer.close()
        report = producer.report
        progress.step(f"published {report.events:,} events in {sum(f.chunks for f in report.files)} chunks")
        if report.failed:
            raise RuntimeError(f"producer failed on {report.as_dict()['failures']}")

        def trained_all():
            status = ray.get(trainer.status.remote())
            if status["failure"]:
                raise RuntimeError(f"trainer failed:\n{status['failure']}")
            return status["events_trained"] + status["events_validation"] >= report.events

        _wait_for(trained_all, DONE_TIMEOUT_S, "the trainer to learn every published event")
        final = ray.get(trainer.stop.remote())
        progress.step(f"trained {final['events_trained']:,} events; final version {final['version']}")
        from hepstream.models.store import ModelStore

        served = ModelStore(config.store.path, config.model.name).latest_servable()  # the gate may hold newer back
        _wait_for(lambda: served in holdout.versions[-5:], 60, f"the server to answer with version {served}")
        holdout.stop_event.set()
        holdout.join()

        # One request, so that one version scores every held-out event.
        answer = client.predict(config.model.name, rows)
        return {
            "events_produced": report.events,
            "events_trained": final["events_trained"],
            "events_validation": final["events_validation"],
            "duplicate_chunks": final["duplicate_chunks"],
            "bad_messages": final["bad_messages"],
            "model_versions_published": final["version"],
            "model_versions_rejected": final["versions_rejected"],
            "model_versions_served": len(set(holdout.versions)),
            "versions_answering": sorted(set(holdout.versions)),
            "holdout_events": len(rows),
            "holdout_auc": roc_auc(np.asarray(answer["scores"]), labels),
            "holdout_version": answer["version"],
            "prequential_auc": final["metrics"].get("auc"),
            "requests": len(holdout.versions) + len(holdout.failures),
            "failed_requests": len(holdout.failures),
            "first_failures": holdout.failures[:3],
            "read_via": read_via,
            "broker_pid": broker.pid,
            "xrootd_pid": xrootd.pid if read_via == "root" else None,
            "seconds": round(time.monotonic() - started, 1),
        }


def healthy(summary: dict) -> bool:
    return (
        summary["events_trained"] + summary["events_validation"] == summary["events_produced"] > 0
        and summary["failed_requests"] == 0
        and summary["model_versions_served"] >= 2
        and (summary["holdout_auc"] or 0) >= 0.85
    )


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything written to file descriptor 1 to stderr meanwhile, Ray's child processes included.

    Ray and Serve print on stdout (worker log lines, shutdown notices), which
    would spoil the one JSON object that ``--json`` promises there, or the
    summary table.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run(args) -> int:
    import ray.serve  # noqa: F401  (sets its logger to INFO when first imported: quieted after, not before)

    progress = Progress(enabled=not args.json)
    # The demo prints its own line for each step; Serve's (started, connecting, ready) would say them again.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    with _stdout_to_stderr():
        summary = run_demo(args, progress)
    if args.json:
        print(json.dumps(summary))
    else:
        progress.summary("hepstream demo", summary)
    ok = healthy(summary)
    if not ok:
        print("demo FAILED: see the figures above", file=sys.stderr)
    return 0 if ok else 1
