"""Fault suite: messages whose Arrow batch decodes but whose buffers lie never stop training, now or after a restart."""

import pyarrow as pa
import pytest

from hepstream import wire
from hepstream.models.dead_letter import REASON_HEADER, SOURCE_HEADER
from hepstream.models.trainer import StreamTrainer
from tests.helpers import labelled_pair, pipeline_config, produce, read_topic
from tests.models.test_trainer import _send_raw, _train_until
from tests.poison import POISONS

pytestmark = pytest.mark.integration


def test_poison_of_every_kind_is_dead_lettered_and_good_events_around_it_are_learned(broker, unique_topic, tmp_path):
    files = labelled_pair(tmp_path, 1500, 1500, seed=21)
    config = pipeline_config(unique_topic, files, tmp_path / "store")
    topic = config.dataset.topic
    before = produce(config, broker.bootstrap, [config.dataset.files[0]])
    for i, make in enumerate(POISONS.values()):
        _send_raw(broker.bootstrap, topic, *make("Muon_pt", wire.ChunkId("poison", "Events", i, i + 1), 1))
    after = produce(config, broker.bootstrap, [config.dataset.files[1]])
    good = before.events + after.events
    assert good == 3000

    first = StreamTrainer(config, broker.bootstrap)
    _train_until(first, lambda t: t.counters["bad_messages"] == len(POISONS) and t.counters["events_trained"] >= good)
    assert first.counters["events_trained"] == good and first.counters["dead_letters"] == len(POISONS)

    dead = read_topic(broker.bootstrap, f"{config.dataset.name}.dead-letter")
    assert len(dead) == len(POISONS)
    assert all("WireError" in dict(r.headers)[REASON_HEADER].decode() for r in dead)
    assert all("column 'Muon_pt'" in dict(r.headers)[REASON_HEADER].decode() for r in dead)
    assert [r.key for r in dead] == [wire.ChunkId("poison", "Events", i, i + 1).key() for i in range(len(POISONS))]

    # A trainer starting over from the first offset (a fresh model) meets the same poison and goes on.
    again = StreamTrainer(pipeline_config(unique_topic, files, tmp_path / "store-again"), broker.bootstrap)
    _train_until(again, lambda t: t.counters["bad_messages"] == len(POISONS) and t.counters["events_trained"] >= good)
    assert again.counters["events_trained"] == good
    dead = read_topic(broker.bootstrap, f"{config.dataset.name}.dead-letter")
    sources = [dict(r.headers)[SOURCE_HEADER] for r in dead]
    assert len(dead) == 2 * len(POISONS) and sources[:len(POISONS)] == sources[len(POISONS):]


def test_any_error_preparing_one_message_refuses_that_message_alone_now_and_after_a_restart(
        broker, unique_topic, tmp_path, monkeypatch):
    """By construction, not by a list of known errors: whatever turning one message into features raises."""
    from hepstream.models.learner import Learner

    files = labelled_pair(tmp_path, 1000, 1000, seed=22)
    config = pipeline_config(unique_topic, files, tmp_path / "store")
    produce(config, broker.bootstrap, [config.dataset.files[0]])
    bad_key = wire.ChunkId("odd", "Events", 0, 3)
    _send_raw(broker.bootstrap, config.dataset.topic,
              *wire.encode(wire.Chunk(bad_key, "d", "s", pa.record_batch({"MET_pt": [-1.0, 2.0, 3.0]}), 1)))
    produce(config, broker.bootstrap, [config.dataset.files[1]])

    prepare = Learner.prepare

    def explodes_on_the_odd_chunk(self, batch, labels):  # as numpy did on lists whose offsets ran backwards
        if batch.num_rows == 3:
            raise RuntimeError("repeats may not contain negative values")
        return prepare(self, batch, labels)

    monkeypatch.setattr(Learner, "prepare", explodes_on_the_odd_chunk)
    for store in ("store", "store-again"):  # a fresh store reads the topic from its start: the same offset again
        # The patch reaches this process only: the trainer's own thread prepares here, and the workers' same
        # rule is tested in tests/models/test_prepare_pool.py.
        trainer = StreamTrainer(pipeline_config(unique_topic, files, tmp_path / store, training={"prepare_workers": 0}),
                                broker.bootstrap)
        _train_until(trainer, lambda t: t.counters["events_trained"] >= 2000 and t.counters["bad_messages"] >= 1)
        assert trainer.counters["events_trained"] == 2000 and trainer.counters["bad_messages"] == 1
    dead = read_topic(broker.bootstrap, f"{config.dataset.name}.dead-letter")
    assert [r.key for r in dead] == [bad_key.key()] * 2
    assert {dict(r.headers)[REASON_HEADER] for r in dead} == {b"RuntimeError: repeats may not contain negative values"}
