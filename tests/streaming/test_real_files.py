"""Real ROOT files of varied layout (scikit-hep-testdata 0.3.12): every event of every branch arrives as uproot reads it."""

import awkward as ak
import pyarrow as pa
import pytest
import uproot

from hepstream import wire
from hepstream.config import config_from_dict
from hepstream.streaming.datagen import generate_file
from hepstream.streaming.producer import Producer
from tests.helpers import read_topic

skhep_testdata = pytest.importorskip("skhep_testdata")
pytestmark = pytest.mark.integration

# name -> tree: compressions (zlib, lz4, lzma, zstd, none), flat and jagged numbers, strings, booleans,
# fixed-size arrays, every integer width, and a tree in nested directories.
FILES = {
    "uproot-HZZ.root": "events",
    "uproot-HZZ-lz4.root": "events",
    "uproot-HZZ-lzma.root": "events",
    "uproot-HZZ-uncompressed.root": "events",
    "uproot-Zmumu-zstd.root": "events",
    "uproot-small-flat-tree.root": "tree",
    "uproot-sample-6.20.04-uncompressed.root": "sample",
    "uproot-nesteddirs.root": "one/two/tree",
}


def test_every_branch_of_varied_real_files_arrives_equal(broker, unique_topic):
    samples = [{"name": f"s{i}", "tree": tree, "files": [{"url": skhep_testdata.data_path(name)}]}
               for i, (name, tree) in enumerate(FILES.items())]
    config = config_from_dict({
        "dataset": {"name": unique_topic, "samples": samples, "branches": ["*"]},
        "kafka": {"partitions": 2},
        "producer": {"max_chunk_events": 700},
    })
    producer = Producer(config, broker.bootstrap)
    try:
        report = producer.run([])
    finally:
        producer.close()
    assert not report.failed, report.as_dict()["failures"]
    chunks = {}
    for record in read_topic(broker.bootstrap, config.dataset.topic):
        chunk = wire.decode(record.key, record.value, record.headers)
        chunks.setdefault(chunk.source, []).append(chunk)
    assert len(chunks) == len(FILES)
    for name, tree in FILES.items():
        path = skhep_testdata.data_path(name)
        mine = sorted(chunks[path], key=lambda c: c.id.entry_start)
        got = ak.concatenate([ak.from_arrow(c.batch) for c in mine])
        expected = uproot.open(path)[tree].arrays()
        assert len(got) == len(expected) and mine[-1].id.entry_stop == len(expected), name
        assert set(got.fields) == set(expected.fields), name
        for branch in expected.fields:
            assert ak.to_list(got[branch]) == ak.to_list(expected[branch]), (name, branch)


def _to_arrow_table_batch(array):
    """The conversion the wire format was written against: ``ak.to_arrow_table``, one batch."""
    table = ak.to_arrow_table(array, extensionarray=False, list_to32=True, string_to32=True)
    return table.combine_chunks().to_batches()[0]


def _value(batch, compression):
    return bytes(wire.encode(wire.Chunk(wire.ChunkId("u", "Events", 0, 1), "d", "s", batch), compression)[1])


def test_batches_equal_ak_to_arrow_table_down_to_the_message_bytes(tmp_path):
    nano = uproot.open(generate_file(tmp_path / "nano.root", "signal", 3000, seed=5))["Events"].arrays()
    arrays = [uproot.open(skhep_testdata.data_path(name))[tree].arrays() for name, tree in FILES.items()]
    arrays += [nano, nano[nano.nMuon > 1], nano[["Jet_pt", "MET_pt", "event"]][17:1234],
               ak.zip({"ht": ak.sum(nano.Jet_pt, axis=1), "pt2": nano.Muon_pt ** 2}, depth_limit=1)]
    for array in arrays:
        expected = _to_arrow_table_batch(array)
        batch = wire.awkward_to_batch(array)
        assert batch.schema.equals(expected.schema, check_metadata=True)
        assert batch.equals(expected)
        if not any(pa.types.is_boolean(t) or pa.types.is_fixed_size_list(t) for t in expected.schema.types):
            # bit-packed booleans leave unset padding bits that differ from one conversion to the next
            for compression in ("lz4", "zstd", None):
                assert _value(batch, compression) == _value(expected, compression)


def _as_published(value):
    """uproot's values as the wire carries them: a map's (key, value) tuples become structs of fields '0' and '1'."""
    if isinstance(value, tuple):
        return {str(i): _as_published(item) for i, item in enumerate(value)}
    if isinstance(value, list):
        return [_as_published(item) for item in value]
    return value


def test_a_glob_publishes_the_leaves_of_grouping_branches_and_an_rntuple_is_refused(broker, unique_topic, tmp_path):
    split, stl = (skhep_testdata.data_path(name) for name in ("uproot-small-evnt-tree-fullsplit.root",
                                                              "uproot-stl_containers.root"))
    rntuple = tmp_path / "rntuple.root"
    with uproot.recreate(rntuple) as f:
        f["Events"] = {"x": [1.0, 2.0, 3.0]}  # uproot 5.7 writes a dict as an RNTuple
    samples = [{"name": "split", "tree": "tree", "files": [{"url": split}]},
               {"name": "new", "tree": "Events", "files": [{"url": str(rntuple)}]},
               {"name": "stl", "tree": "tree", "files": [{"url": stl}]}]
    config = config_from_dict({"dataset": {"name": unique_topic, "samples": samples, "branches": ["*"]},
                               "producer": {"max_chunk_events": 700}})
    producer = Producer(config, broker.bootstrap)
    try:
        report = producer.run([]).as_dict()
    finally:
        producer.close()
    assert report["failures"] == {
        str(rntuple): f"not supported: {rntuple} Events is an RNTuple, hepstream reads TTrees"}
    assert report["files_ok"] == 2 and report["partial"] == {}
    chunks = {}
    for record in read_topic(broker.bootstrap, config.dataset.topic):
        chunk = wire.decode(record.key, record.value, record.headers)
        chunks.setdefault(chunk.source, []).append(chunk)
    published = {}
    for path in (split, stl):
        tree = uproot.open(path)["tree"]
        leaves = published[path] = [name for name, branch in tree.iteritems() if not branch.branches]
        got = ak.concatenate([ak.from_arrow(c.batch) for c in sorted(chunks[path], key=lambda c: c.id.entry_start)])
        expected = tree.arrays(leaves)
        assert got.fields == leaves and len(got) == tree.num_entries, path
        for name in leaves:
            assert ak.to_list(got[name]) == _as_published(ak.to_list(expected[name])), (path, name)
    assert "evt/P3/P3.Px" in published[split] and not {"evt", "evt/P3"} & set(published[split])
