"""The trainer core of ``hepstream bench core``: Kafka records learned as the stream trainer learns them."""

import numpy as np

from hepstream.benchmarks.core import core_trainer, kafka_records, learn_records
from hepstream.models.checks import FEATURES, synthetic_events


def _one_class_batches(rng, count):
    """Batches of one class each, as the benchmark's per-file labelled chunks."""
    batches, labels = [], []
    for _ in range(count // 2):
        batch, y = synthetic_events(rng, 600)
        for label in (0, 1):
            batches.append(batch.filter(y == label))
            labels.append(np.full(batches[-1].num_rows, label))
    return batches, labels


def test_every_group_after_the_warm_up_is_learned_once_with_its_read_ahead_state(tmp_path):
    batches, labels = _one_class_batches(np.random.default_rng(0), 12)
    records = kafka_records(batches, labels)
    trainer = core_trainer(tmp_path, {"device": "cpu", "batch_size": 64, "learning_rate": 0.01}, feature_spec=FEATURES)
    learned, seconds = learn_records(trainer, [records[i : i + 4] for i in range(0, 12, 4)], seconds=60)
    events = sum(b.num_rows for b in batches)
    assert learned == events - sum(b.num_rows for b in batches[:4])  # the first group warms up, untimed
    assert seconds > 0
    assert trainer.counters["events_trained"] == trainer.learner.metrics.summary()["events"] == events
    assert trainer.counters["chunks"] == 12 and trainer.offsets == {0: 12}
    assert trainer.learner.features.moments.count[0] == events  # the read-ahead copy's statistics were adopted
    assert trainer.learner.metrics.summary()["auc"] > 0.7  # and learned something
