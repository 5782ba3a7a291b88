"""A trainer's position in its topic: what trainer.json holds, both ways, and the moves the trainers make."""

import doctest

from kafka import TopicPartition

from hepstream.models import position as position_module
from hepstream.models.position import COUNTERS, Position

# trainer.json as StreamTrainer wrote it before the position had a type of its own.
WRITTEN = {"offsets": {"0": 12, "2": 7, "10": 3}, "epoch": 1, "epoch_start": {"0": 4, "2": 0, "10": 0},
           "seen_keys": ["a", "b"], "counters": {"events_trained": 900, "chunks": 9, "duplicate_chunks": 1,
                                                 "bad_messages": 2, "dead_letters": 2}}


def test_doctest_examples_run():
    assert doctest.testmod(position_module).failed == 0


def test_reads_a_written_checkpoint_and_writes_it_back_unchanged():
    position = Position("t.events")
    position.restore(WRITTEN)
    assert position.offsets == {0: 12, 2: 7, 10: 3} and position.epoch_start == {0: 4, 2: 0, 10: 0}
    assert position.epoch == 1 and position.seen_keys == {"a", "b"} and position.counters["bad_messages"] == 2
    snapshot = position.snapshot()
    # Counters added after the checkpoint was written (the validation slice's) read as 0.
    assert snapshot == {**WRITTEN, "counters": {**WRITTEN["counters"], "events_validation": 0, "validation_chunks": 0}}
    assert list(snapshot["offsets"]) == ["0", "2", "10"]  # partitions in numeric order, as before


def test_reads_a_checkpoint_from_before_epochs():
    position = Position("t.events")
    position.restore({"offsets": {"1": 5}, "seen_keys": [], "counters": dict.fromkeys(COUNTERS, 0)})
    assert position.epoch == 0 and position.epoch_start == {} and position.offsets == {1: 5}


def test_a_worker_keeps_its_own_partitions_and_counts_from_zero():
    position = Position("t.events")
    position.restore(WRITTEN)
    position.own([2, 10])
    position.reset_counters()
    assert position.offsets == {2: 7, 10: 3} and position.epoch_start == {2: 0, 10: 0}
    assert position.counters == dict.fromkeys(COUNTERS, 0)
    assert position.unstarted([0, 2, 5]) == [0, 5]


def test_starting_a_partition_keeps_an_epoch_start_it_has():
    position = Position("t.events")
    position.restore(WRITTEN)
    position.start_at({0: 20, 5: 8})
    assert position.offsets[0] == 20 and position.offsets[5] == 8
    assert position.epoch_start[0] == 4 and position.epoch_start[5] == 8


def test_the_commit_request_names_the_topic_and_the_next_offsets():
    position = Position("t.events")
    position.start_at({0: 0, 1: 0})
    position.advance(1, 41)
    request = position.commit_request()
    assert {tp: meta.offset for tp, meta in request.items()} == {TopicPartition("t.events", 0): 0,
                                                                 TopicPartition("t.events", 1): 42}


def test_workers_snapshots_merge_side_by_side_and_their_counters_add_up():
    one, two = Position("t.events"), Position("t.events")
    one.restore(WRITTEN)
    one.own([0])
    one.reset_counters()
    one.learned(["c"], events=40)
    two.start_at({3: 5})
    two.advance(3, 8)
    two.count("bad_messages")
    merged = Position.merged("t.events", [{**one.snapshot(), "metrics": "ignored"}, two.snapshot()],
                             counted_before=WRITTEN["counters"])
    assert merged.topic == "t.events" and merged.epoch == 1
    assert merged.offsets == {0: 12, 3: 9} and merged.epoch_start == {0: 4, 3: 5}
    assert merged.seen_keys == {"a", "b", "c"}
    assert merged.counters == {"events_trained": 940, "chunks": 10, "duplicate_chunks": 1,
                               "bad_messages": 3, "dead_letters": 2, "events_validation": 0, "validation_chunks": 0}


def test_merging_no_workers_keeps_the_totals_counted_before():
    merged = Position.merged("t.events", [], counted_before=WRITTEN["counters"])
    assert merged.offsets == {} and merged.seen_keys == set()
    assert {name: merged.counters[name] for name in WRITTEN["counters"]} == WRITTEN["counters"]
