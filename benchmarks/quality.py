"""``hepstream bench quality``: what the served model is worth on a label-ordered stream, with the gate and without.

Real datasets arrive sample by sample: here every signal file is written and
published before any background file, by ``producer.ray_tasks: 2`` Ray
actors, to the embedded broker, and learned by ``training.workers: 2``. The
FastAPI app of ``hepstream.serve`` follows the store on uvicorn, and a client
scores held-out events (files of each class never published) **through HTTP**
over and over, so every version swapped in is scored.

Keys, per run (the gate on at top level, with ``serve.warm_up: settled``
unless ``--warm-up`` says otherwise; ``gate_off`` with
``serve.max_regression: null``):

* ``best_holdout_auc``: the best held-out AUC of any published version (scored
  from the store, whether served or not), and ``best_version``;
* ``final_served_auc``: the held-out AUC the server answers with at the end
  (null, like the other served figures, when a warm-up served nothing before
  the stream ended);
* ``min_served_auc_after_first_promotion``: the worst held-out AUC answered
  over HTTP from the first version served on; and the same from the first
  version the validation slice judged (``..._after_first_judged_promotion``),
  since a label-ordered stream starts with one class that no slice can judge;
* ``first_served_after_s`` and ``first_served_events``: when the server
  first answered, in seconds from the start of the run and in events the
  version had learned: what a warm-up costs;
* ``newest_version_holdout_auc``: what a server swapping blindly would answer;
* ``versions_published``, ``versions_promoted``, ``versions_rejected``; and
  ``served``: each version the client saw answer, with its held-out AUC.

Top-level imports stay in the standard library: the CLI imports this module
to build its parser.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from pathlib import Path

from hepstream.benchmarks.common import scratch_folder, start_app_server, wait_ready
from hepstream.benchmarks.workload import features

PROCESSES = ("signal", "background")  # the order files are written and published in: label-ordered


def add_arguments(parser) -> None:
    parser.add_argument("--events", type=int, default=250_000, help="events per file (default 250000: 1M in all, "
                        "enough for the learning curve to flatten before the stream ends)")
    parser.add_argument("--signal-files", type=int, default=2, help="signal files, published first (default 2)")
    parser.add_argument("--background-files", type=int, default=2, help="background files, then (default 2)")
    parser.add_argument("--holdout", type=int, default=5_000, help="held-out events per class (default 5000)")
    parser.add_argument("--max-regression", type=float, default=0.01, help="serve.max_regression of the gated run")
    parser.add_argument("--validation-fraction", type=float, default=0.05, help="training.validation_fraction")
    parser.add_argument("--warm-up", choices=("none", "judged", "settled"), default="settled",
                        help="serve.warm_up of the gated run (default settled: the first version served is judged "
                             "and has stopped learning fast)")
    parser.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=True,
                        help="producer.interleave (default on); --no-interleave publishes the files label-ordered, "
                             "to show what the gate alone prevents")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> dict:
    import ray

    from hepstream.local_ray import init_ray
    from hepstream.stack.broker import EmbeddedBroker
    from hepstream.streaming.datagen import generate_file

    started = time.monotonic()
    with scratch_folder("quality") as tmp:
        folder = Path(tmp)
        counts = {"signal": args.signal_files, "background": args.background_files}
        files = [(generate_file(folder / f"{process}-{i}.root", process, args.events, args.seed + 10 * k + i),
                  int(process == "signal")) for k, process in enumerate(PROCESSES) for i in range(counts[process])]
        holdout = _holdout(folder, args.holdout, args.seed + 1000)
        init_ray(num_cpus=4)  # 2 producer actors and 2 trainer workers, one logical CPU each
        try:
            with EmbeddedBroker() as broker:
                gated = _one_run(folder, "gated", files, holdout, broker.bootstrap, args.max_regression, args)
                ungated = _one_run(folder, "ungated", files, holdout, broker.bootstrap, None, args)
        finally:
            ray.shutdown()
    return {**gated, "gate_off": ungated, "events": len(files) * args.events, "holdout_events": 2 * args.holdout,
            "order": "label-ordered: every signal file, then every background file",
            "validation_fraction": args.validation_fraction, "interleave": args.interleave,
            "warm_up": args.warm_up,
            "seconds": round(time.monotonic() - started, 1)}


def _holdout(folder: Path, events: int, seed: int):
    """Held-out events of each class as one Arrow table of the feature branches, and their labels."""
    import numpy as np
    import pyarrow as pa
    import uproot

    from hepstream import wire
    from hepstream.streaming.datagen import generate_file

    batches, labels = [], []
    for i, process in enumerate(PROCESSES):
        path = generate_file(folder / f"holdout-{process}.root", process, events, seed + i)
        batches.append(wire.awkward_to_batch(uproot.open(path)["Events"].arrays(features().branches)))
        labels.append(np.full(events, int(process == "signal")))
    return pa.Table.from_batches(batches), np.concatenate(labels)


def _config(folder: Path, name: str, files: list, max_regression: float | None, args):
    from hepstream.config import config_from_dict

    return config_from_dict({
        "dataset": {"name": name, "files": [{"url": str(path), "label": label} for path, label in files]},
        "kafka": {"partitions": 4},
        "producer": {"ray_tasks": 2, "files_in_flight": 1, "interleave": args.interleave,
                     "max_chunk_events": 1_000, "step_size": "1 MB",
                     "manifest": str(folder / f"{name}.manifest.jsonl")},
        "features": features().model_dump(mode="json"),
        "model": {"name": name},
        # Small groups and frequent versions: the stream's order shows in the versions, as over a long run.
        "training": {"workers": 2, "checkpoint_every_s": 0.5, "chunks_per_step": 2, "device": "cpu",
                     "validation_fraction": args.validation_fraction},
        "store": {"path": str(folder / "store"), "keep": 100_000},  # every version kept, to score each one
        "serve": {"max_regression": max_regression, "warm_up": args.warm_up},
    })


class _HttpScorer(threading.Thread):
    """Watches which version the server answers with (``GET /v1/models``, every 20 ms) and scores the held-out
    events through the server with each version it swaps to (``?version=N``, so a version is scored even if the
    server has swapped again while the request ran): the held-out AUC of every version served."""

    def __init__(self, port: int, model: str, holdout):
        super().__init__(name="quality-holdout", daemon=True)
        from hepstream.serve.client import Client

        self.client, self.model, (self.table, self.labels) = Client(f"http://127.0.0.1:{port}"), model, holdout
        self.served: dict[int, float] = {}  # in the order versions were first seen
        self.started, self.first_served_s = time.monotonic(), None
        self.stop_event = threading.Event()

    def score(self) -> tuple[int, float] | None:
        """The version served now and its held-out AUC, scored through HTTP when first seen; None before any."""
        from hepstream.models.metrics import roc_auc

        version = self.client.models()[0]["version"]
        if version is not None and version not in self.served:
            scores, answered = self.client.predict_arrow(self.model, self.table, version=version)
            self.served[answered] = roc_auc(scores, self.labels)
            if self.first_served_s is None:
                self.first_served_s = round(time.monotonic() - self.started, 1)
        return None if version is None else (version, self.served[version])

    def run(self) -> None:
        from hepstream.serve.client import ClientError

        while not self.stop_event.is_set():
            with contextlib.suppress(ClientError):  # the server starting
                self.score()
            self.stop_event.wait(0.02)


def _one_run(folder: Path, name: str, files: list, holdout, bootstrap: str, max_regression: float | None,
             args) -> dict:
    import ray

    from hepstream.models.actor import spawn_trainer
    from hepstream.models.metrics import roc_auc
    from hepstream.models.store import ModelStore
    from hepstream.streaming.distributed import produce_on_ray

    config = _config(folder, name, files, max_regression, args)
    store = ModelStore(config.store.path, name, config.store.keep)
    server, port = start_app_server(store, name, swap_delay_s=0.0)
    trainer = spawn_trainer(config, bootstrap)
    scorer = _HttpScorer(port, name, holdout)
    scorer.start()  # from the first version on, while the stream is published and learned
    try:
        report = produce_on_ray(config, bootstrap)
        if report.failed:
            raise RuntimeError(f"producer failed on {report.as_dict()['failures']}")
        while True:
            status = ray.get(trainer.status.remote())
            if status["failure"]:
                raise RuntimeError(f"trainer failed:\n{status['failure']}")
            if status["events_trained"] + status["events_validation"] >= report.events:
                break
            time.sleep(0.2)
        final = ray.get(trainer.stop.remote())
        servable = store.latest_servable()  # None: a warm-up still waiting when the stream ended
        if servable is not None:
            wait_ready(port, timeout_s=120)
            while (scorer.score() or (None,))[0] != servable:  # the server swaps to it within a poll
                time.sleep(0.1)
        scorer.stop_event.set()
        scorer.join(60)
        final_version, final_auc = scorer.score() or (None, None)
    finally:
        scorer.stop_event.set()
        server.should_exit = True
    table, labels = holdout
    batch = table.combine_chunks().to_batches()[0]
    metas = {v: store.read_meta(v) for v in store.versions()}
    offline = {v: roc_auc(store.load(v).predict(batch), labels) for v in metas}
    best = max(offline, key=offline.get)
    served = sorted(scorer.served.items())
    judged = next((v for v, m in metas.items() if m.promoted and "validation AUC" in (m.promotion_reason or "")), None)
    after_judged = [auc for v, auc in served if judged is not None and v >= judged]
    return {
        "best_holdout_auc": round(offline[best], 4), "best_version": best,
        "final_served_auc": final_auc and round(final_auc, 4), "final_served_version": final_version,
        "min_served_auc_after_first_promotion": round(min(auc for _, auc in served), 4) if served else None,
        "min_served_auc_after_first_judged_promotion": round(min(after_judged), 4) if after_judged else None,
        "first_judged_version": judged,
        # What a warm-up costs: how far into the run (and the stream) the server first answered.
        "first_served_after_s": scorer.first_served_s, "first_served_events": metas[served[0][0]].events_seen if served else None,
        "newest_version_holdout_auc": round(offline[max(metas)], 4),
        "versions_published": len(metas), "versions_promoted": sum(m.promoted for m in metas.values()),
        "versions_rejected": sum(not m.promoted for m in metas.values()),
        "events_trained": final["events_trained"], "events_validation": final["events_validation"],
        "served": [[v, round(auc, 4)] for v, auc in served],
    }
