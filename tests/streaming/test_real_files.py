"""Real ROOT files of varied layout (scikit-hep-testdata 0.3.12): every event of every branch arrives as uproot reads it."""

import awkward as ak
import pytest
import uproot

from hepstream import wire
from hepstream.config import config_from_dict
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
