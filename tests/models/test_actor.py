"""Torch and River models train through the same Ray actor, side by side on one topic (one Ray session)."""

import time

import pytest

from hepstream.models.store import ModelStore
from hepstream.streaming.datagen import generate_file
from hepstream.streaming.producer import Producer
from tests.helpers import pipeline_config

pytestmark = pytest.mark.integration


def test_torch_and_river_models_train_through_the_same_actor(ray_session, broker, unique_topic, tmp_path):
    from hepstream.models.actor import spawn_trainer

    files = [(generate_file(tmp_path / "s.root", "signal", 1500, seed=1), 1),
             (generate_file(tmp_path / "b.root", "background", 1500, seed=2), 0)]
    configs = [pipeline_config(unique_topic, files, tmp_path / "store", model={"name": name, "kind": kind})
               for name, kind in (("torch", "mlp"), ("river", "logistic"))]
    producer = Producer(configs[0], broker.bootstrap)
    report = producer.run(configs[0].dataset.files)
    producer.close()
    actors = [spawn_trainer(config, broker.bootstrap) for config in configs]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        statuses = ray_session.get([a.status.remote() for a in actors])
        assert not any(s["failure"] for s in statuses), statuses
        if all(s["events_trained"] >= report.events for s in statuses):
            break
        time.sleep(0.2)
    finals = ray_session.get([a.stop.remote() for a in actors])
    for config, final in zip(configs, finals):
        assert final["events_trained"] == report.events == 3000
        assert final["duplicate_chunks"] == final["bad_messages"] == 0 and final["failure"] is None
        assert final["metrics"]["events"] == 3000  # every event scored before it was learned
        store = ModelStore(config.store.path, config.model.name)
        assert store.read_meta(final["version"]).checkpoint == ("torch" if config.model.kind == "mlp" else "json")
