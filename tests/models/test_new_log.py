"""A checkpoint carried over to a topic that starts again empty: offsets at 0, everything learned kept."""

from hepstream.models.new_log import resume_on_new_log
from hepstream.models.position import Position
from hepstream.models.store import ModelStore
from hepstream.models.version_meta import VersionMeta


def test_the_newest_version_is_published_again_at_offset_zero_with_its_keys_and_counters(tmp_path):
    store = ModelStore(tmp_path, "m")
    assert resume_on_new_log(store, "t.events") is None  # no version yet
    position = Position("t.events")
    position.start_at({0: 0, 1: 0})
    position.advance(0, 8)
    position.learned(["key-a"], events=50)
    meta = VersionMeta(features={}, feature_state={}, model={"kind": "x"}, events_seen=50)
    store.publish({"w": [1.5]}, meta, {**position.snapshot(), "learner": {"events_seen": 50}}, "json")

    assert resume_on_new_log(store, "t.events") == 2
    meta, model_state, state = store.read(2)
    assert state["offsets"] == {"0": 0, "1": 0} and state["epoch_start"] == {"0": 0, "1": 0}
    assert state["seen_keys"] == ["key-a"] and state["counters"]["events_trained"] == 50
    assert state["learner"] == {"events_seen": 50}
    assert model_state == {"w": [1.5]} and meta.parent == 1 and meta.events_seen == 50
    assert resume_on_new_log(store, "t.events") is None  # at offset 0 already: nothing to move
    assert store.versions() == [1, 2]
