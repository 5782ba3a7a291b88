"""The quality gate on the real broker, trainer, store and server: a broken version is never served, an
operator can force it through, and every reader says why a newer version does not answer."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import requests
import torch
import yaml

from hepstream.models.store import ModelStore
from hepstream.models.trainer import StreamTrainer
from hepstream.serve.app import create_app
from hepstream.serve.watcher import ModelWatcher, not_served
from tests.helpers import labelled_pair, pipeline_config, produce
from tests.models.test_trainer import _train_until

pytestmark = pytest.mark.integration


def _hepstream(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hepstream", *args], capture_output=True, text=True, timeout=120)


def _zeroed(parts):
    """A broken candidate: the trainer's state with every weight of the network zeroed (scores all 0.5), the
    averaged weights that score too."""
    model_state, meta, state, checkpoint = parts
    model_state = {**model_state, **{part: {k: torch.zeros_like(v) for k, v in model_state[part].items()}
                                     for part in ("model", "averaged")}}
    return model_state, meta, state, checkpoint


def test_a_broken_version_is_never_served_and_an_operator_can_force_it(broker, unique_topic, tmp_path, monkeypatch,
                                                                       standins):
    wait_for = standins.wait_for
    files = labelled_pair(tmp_path, 4000, 4000, seed=21)
    config = pipeline_config(unique_topic, files, tmp_path / "store", producer={"max_chunk_events": 200},
                             training={"validation_fraction": 0.4, "validation_events": 1000})
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    report = produce(config, broker.bootstrap)
    trainer = StreamTrainer(config, broker.bootstrap)
    _train_until(trainer, lambda t: t.counters["events_trained"] + t.counters["events_validation"] >= report.events)
    assert trainer.counters["events_trained"] + trainer.counters["events_validation"] == report.events == 8000
    store = ModelStore(config.store.path, "m")
    good = store.latest()
    meta = store.read_meta(good)
    assert meta.promoted and min(meta.validation["per_class"].values()) >= 500, meta.validation  # judged
    assert meta.validation["auc"] > 0.6  # one pass over about 5k events; the broken version below scores 0.5
    assert store.latest_servable() == good

    app = create_app(store, model_name="m", settings=standins.quick_settings())
    with standins.ServedApp(app) as server:
        predict = f"{server.url}/v1/models/m/predict"
        event = {"events": [{b.name: [30.0] if b.jagged else 1.0 for b in store.load(good).inputs}]}
        wait_for(lambda: requests.post(predict, json=event, timeout=10).json().get("version") == good,
                 what=f"version {good} served")

        original = StreamTrainer.checkpoint_parts
        monkeypatch.setattr(StreamTrainer, "checkpoint_parts", lambda self: _zeroed(original(self)))
        broken = trainer.checkpoint()
        monkeypatch.undo()
        rejected = store.read_meta(broken)
        assert (broken, rejected.promoted) == (good + 1, False)
        assert f"below served version {good}'s" in rejected.promotion_reason
        assert rejected.validation["auc"] == 0.5 and rejected.validation["served_version"] == good
        assert trainer.status().versions_rejected == 1
        assert store.latest_servable() == good

        # Replicas poll every 20 ms: many polls later, the broken version is still not served.
        time.sleep(0.5)
        assert requests.post(predict, json=event, timeout=10).json()["version"] == good
        described = requests.get(f"{server.url}/v1/models/m", timeout=5).json()
        assert (described["version"], described["promoted"]) == (good, True)
        assert described["not_served"] == [{"version": broken, "promoted": False, "why": rejected.promotion_reason}]

        listed = _hepstream("models", "list", "--config", str(config_path))
        assert listed.returncode == 0, listed.stderr
        rows = {row["version"]: row for row in json.loads(listed.stdout)["versions"]}
        assert json.loads(listed.stdout)["served"] == good
        assert (rows[broken]["promoted"], rows[broken]["promotion_reason"]) == (False, rejected.promotion_reason)
        assert rows[good]["promoted"] and rows[good]["validation_auc"] == meta.validation["auc"]

        forced = _hepstream("models", "promote", str(broken), "--config", str(config_path))
        assert forced.returncode == 0, forced.stderr
        assert f"model m version {broken} promoted by an operator: forced by" in forced.stderr  # logged
        assert json.loads(forced.stdout)["served"] == broken
        wait_for(lambda: requests.post(predict, json=event, timeout=10).json().get("version") == broken,
                 what=f"the forced version {broken} served")
        assert store.read_meta(broken).promotion_reason.startswith("forced by")
        assert requests.post(predict, json=event, timeout=10).json()["scores"] == [0.5]


def test_a_settled_warm_up_serves_nothing_while_each_doubling_of_the_events_still_pays(broker, unique_topic,
                                                                                      tmp_path, standins):
    sections = {"producer": {"max_chunk_events": 200},
                "training": {"validation_fraction": 0.4, "validation_events": 1000, "checkpoint_every_s": 3600},
                "serve": {"warm_up": "settled", "settle_gain": 0.001}}
    phases = []
    for i, (name, events) in enumerate([("a", 1000), ("b", 1000), ("c", 4000)]):
        (tmp_path / name).mkdir()
        phases.append(labelled_pair(tmp_path / name, events, events, seed=23 + i))
    config = pipeline_config(unique_topic, [f for files in phases for f in files], tmp_path / "store", **sections)
    trainer, published = StreamTrainer(config, broker.bootstrap), 0
    for files in phases:  # the stream grows by phases, the last twice all before it: a version at each end
        published += produce(pipeline_config(unique_topic, files, tmp_path / "store", **sections),
                             broker.bootstrap).events
        _train_until(trainer, lambda t: t.counters["events_trained"] + t.counters["events_validation"] >= published)
    store = ModelStore(config.store.path, "m")
    metas = list(map(store.read_meta, store.versions()))
    reasons = [meta.promotion_reason for meta in metas]
    assert len(metas) == 3 and store.latest_servable() is None, reasons  # the server answers 503 all along
    assert not any(meta.promoted for meta in metas), reasons
    assert all(r.startswith(("held back", "warming up", "still learning")) for r in reasons), reasons
    last = metas[-1]  # judged, and compared with the newest version trained on half its events or fewer
    assert last.promotion_reason.startswith("still learning (serve.warm_up: settled): validation AUC"), reasons
    assert f"above the version trained on {metas[1].events_seen} events" in last.promotion_reason, reasons
    assert 2 * metas[1].events_seen <= last.events_seen and "(serve.settle_gain 0.001)" in last.promotion_reason

    app = create_app(store, model_name="m", settings=standins.quick_settings())
    with standins.ServedApp(app) as server:  # a client asking is told why nothing answers yet
        ready = requests.get(f"{server.url}/v1/health/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["error"] == f"version {len(metas)} is not served: {last.promotion_reason}"
        event = {"events": [{b.name: [30.0] if b.jagged else 1.0 for b in store.load(1).inputs}]}
        answer = requests.post(f"{server.url}/v1/models/m/predict", json=event, timeout=5)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
        assert answer.json()["error"].endswith(f"is not served: {last.promotion_reason}")


def test_versions_from_before_the_gate_are_served(tmp_path, standins):
    """meta.json without ``promoted`` (an old store) reads as promoted: the watcher follows it."""
    root = tmp_path / "store"
    version = standins.publish_real_version(root, "demo", seed=1)
    path = ModelStore(root, "demo").path(version) / "meta.json"
    document = json.loads(path.read_text())
    for field in ("promoted", "promotion_reason", "validation"):
        del document[field]
    path.write_text(json.dumps(document))
    assert ModelStore(root, "demo").latest_servable() == version
    watcher = ModelWatcher(ModelStore(root, "demo"))
    assert watcher.poll() and watcher.current.version == version


def _reject(store: ModelStore, version: int, reason: str = "worse") -> None:
    """Mark a published version rejected, as the gate writes it (a test's own meta.json rewrite)."""
    path = store.path(version) / "meta.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "promoted": False, "promotion_reason": reason}))


def test_pruning_keeps_the_served_version_however_many_rejected_ones_follow(tmp_path, standins):
    root = tmp_path / "store"
    served = standins.publish_real_version(root, "demo", seed=1)
    store = ModelStore(root, "demo", keep=2)
    for seed in (2, 3):
        _reject(store, standins.publish_real_version(root, "demo", seed=seed))
    meta, model_state, trainer_state = store.read(3)
    store.publish(model_state, meta, trainer_state)  # rejected too (its meta says so), and pruning runs
    assert store.versions() == [served, 3, 4] and store.latest_servable() == served


def test_every_newer_version_says_why_it_does_not_answer(tmp_path, standins):
    root = tmp_path / "store"
    store = ModelStore(root, "demo")
    for seed in (1, 2, 3):
        standins.publish_real_version(root, "demo", seed=seed)
    _reject(store, 2, "validation AUC 0.5 is 0.3 below served version 1's 0.8")
    assert not_served(store, 1, None) == [
        {"version": 2, "promoted": False, "why": "validation AUC 0.5 is 0.3 below served version 1's 0.8"},
        {"version": 3, "promoted": True, "why": "promoted, not swapped in yet"}]
    assert not_served(store, 1, 1)[1]["why"] == "pinned to version 1"
    assert not_served(store, 3, None) == []
