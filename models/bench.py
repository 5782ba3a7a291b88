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

Top-level imports stay in the standard library: the CLI imports this module
to build its parser.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

_PER_EVENT_SAMPLE = 20_000
CHUNK_EVENTS = 25_000  # events per wire message, as the producer's max_chunk_events


def add_arguments(parser) -> None:
    parser.add_argument("--events", type=int, default=200_000, help="events per class (default 200000)")
    parser.add_argument("--seed", type=int, default=0)


def bench_features():
    """The feature spec of the benchmark: 80 features per event from NanoAOD-like branches."""
    from hepstream.config import FeaturesConfig, JaggedFeature

    return FeaturesConfig(flat=["MET_pt", "MET_phi", "nMuon", "nJet"], jagged=[
        JaggedFeature(branches=["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge"], length=6,
                      sort_by="Muon_pt"),
        JaggedFeature(branches=["Jet_pt", "Jet_eta", "Jet_phi", "Jet_btag"], length=8, sort_by="Jet_pt"),
    ])


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


def rate(events: int, seconds: float) -> float:
    return round(events / max(seconds, 1e-9), 1)


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


def _train_stream(config, bootstrap, produced: int) -> tuple[float, object]:
    from hepstream.models.trainer import StreamTrainer

    trainer = StreamTrainer(config, bootstrap)
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,), daemon=True)
    started = time.perf_counter()
    thread.start()
    while trainer.counters["events_trained"] < produced and thread.is_alive():
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    thread.join(60)
    return elapsed, trainer


def bench_data(folder: Path, events: int, seed: int) -> tuple[list, list, list]:
    """NanoAOD-like signal and background files of ``events`` each, as ``[(path, label)]``, and their events
    as wire-sized Arrow batches (25k events) with a label array per batch."""
    import numpy as np
    import uproot

    from hepstream import wire
    from hepstream.streaming.datagen import generate_file

    spec = bench_features()
    files = [(generate_file(folder / f"{p}.root", p, events, seed + i), int(p == "signal"))
             for i, p in enumerate(("signal", "background"))]
    batches, labels = [], []
    for path, label in files:
        array = uproot.open(path)["Events"].arrays(spec.branches)
        for start in range(0, len(array), CHUNK_EVENTS):
            batches.append(wire.awkward_to_batch(array[start : start + CHUNK_EVENTS]))
            labels.append(np.full(batches[-1].num_rows, label, np.int64))
    return files, batches, labels


def shuffled_matrix(learner, batches, labels) -> tuple:
    """Every batch through ``learner``'s feature pipeline, as one shuffled (features, labels) pair in memory."""
    import numpy as np

    for batch in batches:
        learner.features.learn(learner.features.extract(batch))
    x = np.concatenate([learner.features.transform(b) for b in batches])
    y = np.concatenate(labels)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


def learn_in_memory(learner, x, y, group: int, seconds: float = float("inf")) -> tuple[int, float]:
    """Learn ``x`` in groups of ``group`` rows, as the stream trainer's steps, after one untimed warm-up group
    (allocator, kernels); stops early after ``seconds``. Returns (events learned, seconds)."""
    learner.learn_features(x[:group], y[:group])
    learned, started = 0, time.perf_counter()
    for start in range(0, len(x), group):
        learner.learn_features(x[start : start + group], y[start : start + group])
        learned += len(x[start : start + group])
        if time.perf_counter() - started >= seconds:
            break
    return learned, time.perf_counter() - started


def _freshness(config, bootstrap, extra_file) -> float | None:
    """Publish one more file while trainer and server run; seconds until an answer comes from a version
    whose offsets cover it."""
    import socket

    import uproot
    import uvicorn

    from hepstream.models.store import ModelStore
    from hepstream.models.trainer import StreamTrainer
    from hepstream.serve.app import create_app
    from hepstream.serve.client import Client
    from hepstream.streaming.producer import Producer

    store = ModelStore(config.store.path, config.model.name)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(store, model_name=config.model.name, poll_interval_s=0.1),
                                           host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    trainer = StreamTrainer(config, bootstrap)
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,), daemon=True)
    thread.start()
    client = Client(f"http://127.0.0.1:{port}")
    rows = uproot.open(extra_file)["Events"].arrays(config.features.branches, entry_stop=5).to_list()
    try:
        deadline = time.monotonic() + 30
        while not client.ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        before = trainer.counters["events_trained"]
        producer = Producer(config.model_copy(update={"dataset": config.dataset.model_copy(
            update={"files": [config.dataset.files[0].model_copy(update={"url": str(extra_file)})]})}), bootstrap)
        published = time.perf_counter()
        producer.run(producer.config.dataset.files)
        producer.close()
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


def run(args) -> dict:
    from hepstream.config import config_from_dict
    from hepstream.models.learner import Learner
    from hepstream.models.trainer import use_compute_threads
    from hepstream.stack.broker import EmbeddedBroker
    from hepstream.streaming.datagen import generate_file
    from hepstream.streaming.producer import Producer

    spec = bench_features()
    with tempfile.TemporaryDirectory(prefix="hepstream-bench-train-") as tmp:
        folder = Path(tmp)
        files, batches, labels = bench_data(folder, args.events, args.seed)
        extra = generate_file(folder / "extra.root", "signal", 2_000, args.seed + 7)
        config = config_from_dict({
            "dataset": {"name": "bench", "files": [{"url": str(p), "label": label} for p, label in files]},
            "producer": {"max_chunk_events": CHUNK_EVENTS, "step_size": "3 MB"},
            "features": spec.model_dump(mode="json"),
            "model": {"name": "bench"},
            "training": {"checkpoint_every_s": 1.0, "group_wait_s": 0.5, "chunks_per_step": 4, "device": "cpu"},
            "store": {"path": str(folder / "store")},
        })
        result = {"events": 2 * args.events, "device": "cpu", **_measure_features(batches, spec)}
        with EmbeddedBroker() as broker:
            producer = Producer(config, broker.bootstrap)
            report = producer.run(config.dataset.files)
            producer.close()
            stream_s, trainer = _train_stream(config, broker.bootstrap, report.events)
            use_compute_threads(config.training.threads)  # as the stream trainer does
            learner = Learner(config.features, config.model, config.training)
            x, y = shuffled_matrix(learner, batches, labels)
            events, memory_s = learn_in_memory(learner, x, y, config.training.chunks_per_step * CHUNK_EVENTS)
            result.update({
                "train_events_per_s": rate(trainer.counters["events_trained"], stream_s),
                "inmemory_events_per_s": rate(events, memory_s),
                "prequential_auc": trainer.learner.metrics.summary().get("overall_auc"),
            })
            result["ratio_vs_inmemory"] = round(result["train_events_per_s"] / result["inmemory_events_per_s"], 3)
            result["freshness_s"] = _freshness(config, broker.bootstrap, extra)
    return result
