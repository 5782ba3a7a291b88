"""``hepstream bench train``: the training path against its own baselines, measured in the same run.

* ``train_events_per_s``: NanoAOD-like events published to the embedded
  broker, then consumed, decoded, featurised, scored (prequential metrics)
  and learned by :class:`StreamTrainer`, checkpoints included.
* ``inmemory_events_per_s``: the same model and batch size learning the
  same events from feature matrices already in memory: the ceiling of (a).
* ``features_events_per_s``: :class:`FeaturePipeline` alone (extract, pad,
  normalise) on Kafka-sized chunks, against ``per_event_loop_events_per_s``,
  a per-event Python loop that pads each event's collections like
  MLaaS4HEP's reader (sampled on at most 20k events; the conversion to Python
  objects is not timed, which flatters the loop).
* ``freshness_s``: seconds from publishing a chunk to the first HTTP answer
  from a version that learned it (FastAPI app of ``hepstream.serve`` on
  uvicorn, polling the store; trainer checkpointing every second).

The workload (events, features, the in-memory ceiling) is shared with
``hepstream bench core``, in :mod:`hepstream.benchmarks.workload`.

Top-level imports stay in the standard library: the CLI imports this module
to build its parser.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from hepstream.benchmarks.common import rate, scratch_folder, start_app_server, wait_ready
from hepstream.benchmarks.workload import CHUNK_EVENTS, features, labelled_batches, learn_in_memory, shuffled_matrix

_PER_EVENT_SAMPLE = 20_000


def add_arguments(parser) -> None:
    # 4M events in all: the trainer learns for about 8 s, so that starting its consumer and preparation
    # workers (about a second) does not decide the ratio to the in-memory ceiling (docs/training.md).
    parser.add_argument("--events", type=int, default=2_000_000, help="events per class (default 2000000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prepare-workers", type=int, default=None,
                        help="training.prepare_workers (default: the configuration's default)")


def run(args) -> dict:
    from hepstream.stack.broker import EmbeddedBroker
    from hepstream.streaming.datagen import generate_file

    with scratch_folder("train") as tmp:
        folder = Path(tmp)
        files, batches, labels = labelled_batches(folder, args.events, args.seed)
        extra = generate_file(folder / "extra.root", "signal", 2_000, args.seed + 7)
        config = _config(folder, files, args.prepare_workers)
        result = {"events": 2 * args.events, "device": "cpu", "prepare_workers": args.prepare_workers,
                  **_measure_features(batches, config.features)}
        with EmbeddedBroker() as broker:
            result.update(_measure_training(config, broker.bootstrap, batches, labels))
            result["freshness_s"] = _freshness(config, broker.bootstrap, extra)
    return result


def _config(folder: Path, files: list, prepare_workers: int | None):
    from hepstream.config import config_from_dict

    return config_from_dict({
        "dataset": {"name": "bench", "files": [{"url": str(p), "label": label} for p, label in files]},
        "producer": {"max_chunk_events": CHUNK_EVENTS, "step_size": "3 MB"},
        "features": features().model_dump(mode="json"),
        "model": {"name": "bench"},
        # No validation slice: every event is learned, as the in-memory ceiling learns every one.
        "training": {"checkpoint_every_s": 1.0, "group_wait_s": 0.5, "chunks_per_step": 4, "device": "cpu",
                     "validation_fraction": 0, "prepare_workers": prepare_workers},
        "store": {"path": str(folder / "store")},
    })


def per_event_features(rows: list[dict], spec, mean, scale) -> list[list[float]]:
    """The baseline: event by event, sort each collection, pad or cut it, add masks, standardise."""
    out = []
    for row in rows:
        values = [float(row[name]) for name in spec.flat]
        masks = []
        for collection in spec.jagged:
            objects = list(zip(*(row[b] for b in collection.branches)))
            if collection.sort_by is not None:
                key = collection.branches.index(collection.sort_by)
                objects.sort(key=lambda o: -o[key])
            kept = objects[: collection.length]
            for position in range(len(collection.branches)):
                column = [float(o[position]) for o in kept]
                values.extend(column + [None] * (collection.length - len(column)))
            masks.extend([1.0] * len(kept) + [0.0] * (collection.length - len(kept)))
        out.append([0.0 if v is None else (v - m) / s for v, m, s in zip(values, mean, scale)] + masks)
    return out


def _measure_features(batches, spec) -> dict:
    import awkward as ak

    from hepstream.models.features import FeaturePipeline

    pipeline = FeaturePipeline(spec)
    for batch in batches:
        pipeline.learn(pipeline.extract(batch))
    events = sum(b.num_rows for b in batches)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for batch in batches:
            pipeline.transform(batch)
        best = min(best, time.perf_counter() - started)
    sample = batches[0].slice(0, _PER_EVENT_SAMPLE)
    rows = ak.to_list(ak.from_arrow(sample))
    started = time.perf_counter()
    per_event_features(rows, spec, pipeline.moments.mean.tolist(), pipeline.moments.scale.tolist())
    loop = time.perf_counter() - started
    fast, slow = rate(events, best), rate(len(rows), loop)
    return {"features_per_event": pipeline.n_features, "features_events_per_s": fast,
            "per_event_loop_events_per_s": slow, "features_speedup": round(fast / slow, 1)}


def _measure_training(config, bootstrap: str, batches, labels) -> dict:
    """The full path through the broker, then the same model learning the same events from memory."""
    from hepstream.models.learner import Learner
    from hepstream.models.trainer import use_compute_threads
    from hepstream.streaming.producer import Producer

    producer = Producer(config, bootstrap)
    report = producer.run(config.dataset.files)
    producer.close()
    stream_s, trainer = _train_stream(config, bootstrap, report.events)
    use_compute_threads(config.training.threads)  # as the stream trainer does
    learner = Learner(config.features, config.model, config.training)
    x, y = shuffled_matrix(learner, batches, labels)
    events, memory_s = learn_in_memory(learner, x, y, config.training.chunks_per_step * CHUNK_EVENTS)
    streamed, in_memory = rate(trainer.counters["events_trained"], stream_s), rate(events, memory_s)
    return {"train_events_per_s": streamed, "inmemory_events_per_s": in_memory,
            "prequential_auc": trainer.learner.metrics.summary().get("overall_auc"),
            "ratio_vs_inmemory": round(streamed / in_memory, 3)}


def _start_trainer(config, bootstrap: str):
    """A :class:`StreamTrainer` running in a thread: (trainer, stop event, thread)."""
    from hepstream.models.trainer import StreamTrainer

    trainer = StreamTrainer(config, bootstrap)
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,), daemon=True)
    thread.start()
    return trainer, stop, thread


def _train_stream(config, bootstrap, produced: int) -> tuple[float, object]:
    trainer, stop, thread = _start_trainer(config, bootstrap)
    started = time.perf_counter()
    while trainer.counters["events_trained"] < produced and thread.is_alive():
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join(60)
    return elapsed, trainer


def _freshness(config, bootstrap, extra_file) -> float | None:
    """Publish one more file while trainer and server run; seconds until an answer comes from a version
    whose offsets cover it."""
    import uproot

    from hepstream.models.store import ModelStore
    from hepstream.serve.client import Client

    store = ModelStore(config.store.path, config.model.name)
    server, port = start_app_server(store, config.model.name)
    trainer, stop, thread = _start_trainer(config, bootstrap)
    client = Client(f"http://127.0.0.1:{port}")
    rows = uproot.open(extra_file)["Events"].arrays(config.features.branches, entry_stop=5).to_list()
    try:
        wait_ready(port, timeout_s=30)
        before = trainer.counters["events_trained"]
        published = _publish_file(config, bootstrap, extra_file)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            version = client.predict(config.model.name, rows)["version"]
            if version and store.read_meta(version).counters["events_trained"] > before:
                return round(time.perf_counter() - published, 2)
            time.sleep(0.02)
        return None
    finally:
        stop.set()
        thread.join(30)
        server.should_exit = True


def _publish_file(config, bootstrap: str, path) -> float:
    """Publish the one file at ``path`` to the dataset's topic; returns the ``perf_counter`` it started at."""
    from hepstream.streaming.producer import Producer

    producer = Producer(config.model_copy(update={"dataset": config.dataset.model_copy(
        update={"files": [config.dataset.files[0].model_copy(update={"url": str(path)})]})}), bootstrap)
    published = time.perf_counter()
    producer.run(producer.config.dataset.files)
    producer.close()
    return published
