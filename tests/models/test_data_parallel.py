"""Data-parallel training: the averaging and pooling rules on known values, then two worker actors on a
two-partition topic of the embedded broker, writing one lineage that a restart continues exactly once."""

import collections
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from hepstream.config import ConfigError, FeaturesConfig, JaggedFeature, TrainingConfig
from hepstream.kafka import new_producer
from hepstream.model_kinds import MLPConfig
from hepstream.models.data_parallel import average_states, merged_drift, pool_features
from hepstream.models.features import FeaturePipeline
from hepstream.models.metrics import PrequentialMetrics
from hepstream.models.registry import build_estimator
from hepstream.models.store import ModelStore
from hepstream.models.version_meta import VersionMeta
from tests.helpers import labelled_pair, pipeline_config, produce, read_topic


def test_averaged_state_is_the_event_weighted_mean():
    a = {"model": {"w": torch.tensor([1.0, 3.0]), "batches": torch.tensor(7)},
         "optimizer": {"state": {0: {"step": torch.tensor(2.0), "exp_avg": torch.tensor([0.0, 4.0])}},
                       "param_groups": [{"lr": 0.1, "params": [0]}]}}
    b = {"model": {"w": torch.tensor([5.0, 7.0]), "batches": torch.tensor(9)},
         "optimizer": {"state": {0: {"step": torch.tensor(6.0), "exp_avg": torch.tensor([8.0, 0.0])}},
                       "param_groups": [{"lr": 0.1, "params": [0]}]}}
    averaged = average_states([a, b], [300, 100])
    assert averaged["model"]["w"].tolist() == [2.0, 4.0]  # (300 * [1, 3] + 100 * [5, 7]) / 400
    assert averaged["model"]["batches"].item() == 7  # not a float: the heaviest worker's
    assert averaged["optimizer"]["state"][0]["step"].item() == 3.0
    assert averaged["optimizer"]["state"][0]["exp_avg"].tolist() == [2.0, 3.0]
    assert averaged["optimizer"]["param_groups"] == [{"lr": 0.1, "params": [0]}]
    with pytest.raises(ValueError, match=r"state\.model"):
        average_states([a, {**b, "model": {"w": b["model"]["w"]}}], [1, 1])


def test_averaged_mlp_and_adam_state_load_into_an_estimator():
    features = FeaturePipeline(FeaturesConfig(flat=["x", "y"], jagged=[], normalize=False))
    model, training = MLPConfig(hidden=[4]), TrainingConfig(device="cpu", batch_size=8)
    rng = np.random.default_rng(0)
    states, events = [], [48, 16]
    for n in events:
        estimator = build_estimator(model, features, training)
        estimator.learn(rng.normal(size=(n, 2)).astype(np.float32), rng.integers(0, 2, n), None)
        states.append(estimator.state_dict())
    averaged = average_states(states, events)
    moments = [state["optimizer"]["state"][0] for state in states]
    pairs = [(averaged["model"][name], [state["model"][name] for state in states]) for name in averaged["model"]]
    pairs += [(averaged["optimizer"]["state"][0][name], [m[name] for m in moments])
              for name in ("exp_avg", "exp_avg_sq")]
    for value, (first, second) in pairs:
        assert torch.allclose(value.double(), (48 * first.double() + 16 * second.double()) / 64)
    assert averaged["optimizer"]["state"][0]["step"].item() == (48 * 6 + 16 * 2) / 64  # 6 and 2 batches of 8
    target = build_estimator(model, features, training)
    target.load_state_dict(averaged)
    assert all(torch.equal(target.module.state_dict()[name], value) for name, value in averaged["model"].items())


def _events(rng, n):
    counts = rng.integers(0, 4, n)
    return pa.record_batch({"MET_pt": rng.normal(1000.0, 3.0, n).astype(np.float32),  # NanoAOD's precision
                            "Muon_pt": pa.array([list(rng.normal(50.0, 10.0, c)) for c in counts],
                                                type=pa.list_(pa.float32()))})


def test_pooled_normaliser_equals_the_statistics_of_all_data_at_once():
    spec = FeaturesConfig(flat=["MET_pt"], jagged=[JaggedFeature(branches=["Muon_pt"], length=2)])
    rng = np.random.default_rng(1)
    base_batch, *worker_batches = (_events(rng, n) for n in (200, 150, 90))
    base = FeaturePipeline(spec)
    base.learn(base.extract(base_batch))
    totals = []
    for batch in worker_batches:
        worker = FeaturePipeline(spec)
        worker.load_state_dict(base.state_dict())
        worker.learn(worker.extract(batch))
        totals.append(worker.state_dict())
    pooled = pool_features(base.state_dict(), totals)

    every = pa.concat_batches([base_batch, *worker_batches])
    met = every.column("MET_pt").to_numpy()
    muons = every.column("Muon_pt").to_pylist()
    columns = [met.astype(np.float64)] + [np.array([m[slot] for m in muons if len(m) > slot]) for slot in range(2)]
    assert pooled["count"] == [len(c) for c in columns]
    assert np.allclose(pooled["mean"], [c.mean() for c in columns], rtol=1e-12)
    assert np.allclose(pooled["m2"], [((c - c.mean()) ** 2).sum() for c in columns], rtol=1e-9)
    assert pooled["jagged_sources"] == ["Muon_pt"]


def test_merged_metrics_count_every_worker_once():
    rng = np.random.default_rng(2)
    parts = [PrequentialMetrics(window=1000), PrequentialMetrics(window=1000)]
    together = PrequentialMetrics(window=1000)
    for part, n in zip(parts, (300, 200)):
        scores, labels = rng.uniform(size=n), rng.integers(0, 2, n)
        part.update(scores, labels)
        together.update(scores, labels)
    merged, expected = PrequentialMetrics.merged(parts).summary(), together.summary()
    assert merged["events"] == 500
    for key in ("log_loss", "accuracy", "overall_auc", "auc", "window_log_loss"):
        assert merged[key] == pytest.approx(expected[key], rel=1e-6), key
    drift = merged_drift([{"detections": 1, "latest": [{"time": 5.0}]},
                          {"detections": 2, "latest": [{"time": 3.0}, {"time": 7.0}]}])
    assert drift == {"detections": 3, "latest": [{"time": 3.0}, {"time": 5.0}, {"time": 7.0}]}


@pytest.mark.parametrize(("model", "training", "key"), [
    ({"kind": "logistic"}, {"workers": 2}, "training.workers"),
    ({"kind": "mlp"}, {"workers": 2, "epochs": 3}, "training.epochs"),
])
def test_configurations_that_cannot_average_are_refused(tmp_path, model, training, key):
    with pytest.raises(ConfigError, match=key):
        pipeline_config("t.events", [], tmp_path, model=model, training=training)


def _wait_for(ray, actor, events: int, duplicates: int = 0, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = ray.get(actor.status.remote())
        assert not status["failure"], status["failure"]
        if status["events_trained"] + status["events_validation"] >= events and status["duplicate_chunks"] >= duplicates:
            return status
        time.sleep(0.1)
    raise AssertionError(f"trainer learned {status['events_trained']} events of {events} in {timeout_s} s")


def _running(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except FileNotFoundError:
        return False
    return "Z" not in state.split()[1]


def _lineage(store: ModelStore) -> list[VersionMeta]:
    """The kept versions' metadata, after checking they form one chain, each version the parent of the next."""
    versions = store.versions()
    metas = [store.read_meta(v) for v in versions]
    assert versions == list(range(versions[0], versions[-1] + 1))
    assert [m.parent for m in metas] == [v - 1 or None for v in versions]
    return metas


@pytest.mark.integration
@pytest.mark.parametrize("shuffle_chunks", [0, 4], ids=["in-order", "shuffle-buffer"])
def test_two_workers_write_one_lineage_that_a_killed_run_resumes_exactly_once(ray_session, broker, unique_topic,
                                                                              tmp_path, shuffle_chunks):
    """With shuffle buffers, each worker's buffer is pending in the versions, and the stop learns it."""
    from hepstream.models.actor import spawn_trainer

    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    config = pipeline_config(unique_topic, labelled_pair(tmp_path / "first", 1500, 1500, seed=3), tmp_path / "store",
                             kafka={"partitions": 2},
                             training={"workers": 2, "checkpoint_every_s": 0.1, "chunks_per_step": 2,
                                       "group_wait_s": 0.0, "shuffle_chunks": shuffle_chunks})
    first = produce(config, broker.bootstrap)
    store = ModelStore(config.store.path, config.model.name)
    actor = spawn_trainer(config, broker.bootstrap)
    status = _wait_for(ray_session, actor, first.events)
    assert status["events_trained"] == first.events == 3000
    assert [w["partitions"] for w in status["workers"]] == [[0], [1]]
    assert all(w["events_trained"] > 0 for w in status["workers"])  # each learned its own partition

    # More data, and the coordinator killed (its workers die with it) wherever it is in learning it.
    second = produce(config, broker.bootstrap, [f for f in pipeline_config(
        unique_topic, labelled_pair(tmp_path / "second", 1000, 1000, seed=11), tmp_path).dataset.files])
    coordinator = ray_session.get(actor.__ray_call__.remote(lambda _self: os.getpid()))
    ray_session.kill(actor, no_restart=True)
    deadline = time.monotonic() + 60
    with pytest.raises(ray_session.exceptions.RayActorError):
        while time.monotonic() < deadline:  # the kill is asynchronous: wait until the actor is gone
            ray_session.get(actor.status.remote())
    # Ray reports the actor dead before its process has exited, and a version it was writing may still land.
    while _running(coordinator) and time.monotonic() < deadline:
        time.sleep(0.05)
    learned_before = store.read_meta(store.latest()).counters["events_trained"]
    records = read_topic(broker.bootstrap, config.dataset.topic)
    producer = new_producer(broker.bootstrap, config.kafka)
    for r in records[:2]:  # a producer re-sending chunks after a crash: duplicates, skipped and counted
        producer.send(r.topic, key=r.key, value=r.value, headers=r.headers, partition=r.partition)
    producer.close()

    actor = spawn_trainer(config, broker.bootstrap)
    _wait_for(ray_session, actor, first.events + second.events, duplicates=2)
    final = ray_session.get(actor.stop.remote())
    assert final["failure"] is None
    total = first.events + second.events
    assert final["events_trained"] == total == 5000
    assert final["chunks"] == len(records) and final["duplicate_chunks"] == 2 and final["bad_messages"] == 0
    # The restarted workers began at the last version's offsets: nothing learned twice, nothing lost.
    assert sum(w["events_trained"] for w in final["workers"]) == total - learned_before

    metas = _lineage(store)
    assert metas[-1].version == final["version"]
    assert metas[-1].counters["events_trained"] == metas[-1].events_seen == total
    assert [m.events_seen for m in metas] == sorted(m.events_seen for m in metas)
    assert [w["partitions"] for w in metas[-1].workers] == [[0], [1]]
    per_partition = collections.Counter(str(r.partition) for r in read_topic(broker.bootstrap, config.dataset.topic))
    assert metas[-1].offsets == dict(sorted(per_partition.items()))  # every message of both partitions


@pytest.mark.integration
def test_two_workers_hold_the_validation_slice_apart_and_the_coordinator_keeps_one_reservoir(
        ray_session, broker, unique_topic, tmp_path):
    from hepstream import wire
    from hepstream.models.actor import spawn_trainer
    from hepstream.models.validation import Reservoir, in_slice

    # 40 chunks a class, 30 % of them held: more than 300 events of each (P > 0.998; keys hash anew each run).
    config = pipeline_config(unique_topic, labelled_pair(tmp_path, 4000, 4000, seed=5), tmp_path / "store",
                             kafka={"partitions": 2}, producer={"max_chunk_events": 100},
                             training={"workers": 2, "checkpoint_every_s": 0.1, "chunks_per_step": 4,
                                       "group_wait_s": 0.0, "validation_fraction": 0.3, "validation_events": 300})
    report = produce(config, broker.bootstrap)
    chunks = [wire.decode(r.key, r.value, r.headers) for r in read_topic(broker.bootstrap, config.dataset.topic)]
    held = [c for c in chunks if in_slice(c.id.key().decode(), 0.3)]
    per_class = {label: sum(c.events for c in held if c.label == label) for label in (0, 1)}
    assert min(per_class.values()) > 300  # more than a reservoir keeps: the coordinator's merge must bound it
    actor = spawn_trainer(config, broker.bootstrap)
    _wait_for(ray_session, actor, report.events)
    final = ray_session.get(actor.stop.remote())
    assert final["failure"] is None
    assert final["events_validation"] == sum(per_class.values()) and final["validation_chunks"] == len(held)
    assert final["events_trained"] == report.events - final["events_validation"]  # the slice is never learned
    store = ModelStore(config.store.path, config.model.name)
    meta = store.read_meta(store.latest())
    reservoir = Reservoir.from_bytes(store.read_file(store.latest(), "validation.arrow"), capacity=300)
    assert reservoir.seen == per_class and reservoir.counts() == {0: 300, 1: 300}
    assert meta.validation["per_class"] == {"0": 300, "1": 300} and meta.counters["events_validation"] == \
        final["events_validation"]
