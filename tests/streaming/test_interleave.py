"""Mixing on the way in: every class spread over the whole run and every partition, each file still in order."""

from types import SimpleNamespace

import pytest

from hepstream import wire
from hepstream.streaming.interleave import interleave
from tests.helpers import pipeline_config, produce, read_topic


def _files(sizes: dict[str, int]):
    """A start function: file ``name`` yields one item per entry, as a reader of ``sizes[name]`` entries."""
    def start(name):
        return iter(SimpleNamespace(name=name, entry_stop=k + 1, file_entries=sizes[name]) for k in range(sizes[name]))
    return start


def test_classes_are_paced_by_their_share_of_entries():
    sizes = {"s": 10, "b1": 10, "b2": 10, "b3": 10}
    order = [item.name for item in interleave([["s"], ["b1", "b2", "b3"]], 1, _files(sizes))]
    assert sorted(order) == sorted(n for n, size in sizes.items() for _ in range(size))
    signal_at = [i for i, name in enumerate(order) if name == "s"]
    # One signal file against three of background: about one item in four, from the start to the end.
    assert signal_at[0] == 0 and signal_at[-1] >= len(order) - 6
    assert max(b - a for a, b in zip(signal_at, signal_at[1:])) <= 5
    # Files of one class are opened one after the other (one open per class), each in entry order.
    assert [n for n in order if n != "s"] == ["b1"] * 10 + ["b2"] * 10 + ["b3"] * 10


def test_open_files_of_a_class_take_turns_and_stay_in_entry_order():
    sizes = {"a": 3, "b": 3}
    items = list(interleave([["a", "b"]], 2, _files(sizes)))
    assert [i.name for i in items] == ["a", "b"] * 3
    assert [i.entry_stop for i in items if i.name == "a"] == [1, 2, 3]


@pytest.mark.integration
def test_every_partition_holds_every_label_to_its_end(broker, unique_topic, tmp_path):
    """One signal file then three background files, one file read at a time: still mixed on every partition."""
    from hepstream.streaming.datagen import generate_file

    files = [(generate_file(tmp_path / "s.root", "signal", 2100, seed=3), 1)]
    files += [(generate_file(tmp_path / f"b{i}.root", "background", 2100, seed=4 + i), 0) for i in range(3)]
    config = pipeline_config(unique_topic, files, tmp_path / "store", producer={"files_in_flight": 1,
                                                                               "max_chunk_events": 100})
    report = produce(config, broker.bootstrap)
    assert report.events == 8400 and not report.failed
    by_partition = {}
    for record in sorted(read_topic(broker.bootstrap, config.dataset.topic), key=lambda r: (r.partition, r.offset)):
        by_partition.setdefault(record.partition, []).append(wire.decode(record.key, record.value, record.headers))
    assert set(by_partition) == {0, 1, 2}
    for partition, chunks in by_partition.items():
        labels = [c.label for c in chunks]
        tail = labels[-len(labels) // 4:]
        assert 1 in tail and 0 in tail, (partition, labels)  # the last quarter is not one class
        for source in {c.source for c in chunks}:  # each file's chunks in entry order, on their partitions
            starts = [c.id.entry_start for c in chunks if c.source == source]
            assert starts == sorted(starts)
            index = [str(f) for f, _ in files].index(source)
            assert all((index + c.id.entry_start // 100) % 3 == partition for c in chunks if c.source == source)
