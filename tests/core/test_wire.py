import re

import awkward as ak
import numpy as np
import pyarrow as pa
import pytest
import skhep_testdata
import uproot

from hepstream import wire
from hepstream.wire import Chunk, ChunkId, WireError
from tests.poison import POISONS


def _roundtrip(chunk, compression="zstd"):
    key, value, headers = wire.encode(chunk, compression)
    return wire.decode(key, value, headers), (key, value, headers)


def test_jagged_awkward_roundtrip_equals_uproot_reading():
    path = skhep_testdata.data_path("uproot-HZZ.root")
    tree = uproot.open(path)["events"]
    branches = ["NMuon", "Muon_Px", "Muon_Charge", "Jet_E", "MET_px", "triggerIsoMu24", "EventWeight"]
    original = tree.arrays(branches, entry_start=100, entry_stop=600)
    chunk = Chunk(ChunkId(str(tree.file.uuid), "events", 100, 600), "hzz", path, wire.awkward_to_batch(original), 1)
    decoded, (key, value, headers) = _roundtrip(chunk)
    assert decoded.id == chunk.id
    assert decoded.label == 1 and decoded.source == path and decoded.dataset == "hzz"
    assert decoded.events == 500
    back = ak.from_arrow(decoded.batch)
    for name in branches:
        assert ak.to_list(back[name]) == ak.to_list(original[name]), name
    assert dict(headers)["entry_start"] == b"100"


@pytest.mark.parametrize("compression", ["zstd", "lz4", None])
def test_lists_stay_plain_arrow_lists(compression):
    batch = wire.awkward_to_batch(ak.Array({"x": [[1.5, 2.5], [], [3.0]], "n": [2, 0, 1]}))
    assert pa.types.is_list(batch.schema.field("x").type)  # not an awkward extension type
    decoded, _ = _roundtrip(Chunk(ChunkId("u", "t", 0, 3), "d", "s", batch), compression)
    assert decoded.batch.column("x").to_pylist() == [[1.5, 2.5], [], [3.0]]


def _valid():
    batch = pa.record_batch({"x": np.arange(4.0)})
    return wire.encode(Chunk(ChunkId("u", "Events", 0, 4), "d", "s", batch))


def test_garbage_value_is_named():
    key, value, headers = _valid()
    with pytest.raises(WireError, match=r"value \(8 bytes\) is not an Arrow IPC stream"):
        wire.decode(key, b"\x00garbage", headers)


def test_unknown_format_version_is_refused():
    key, value, headers = _valid()
    headers = [(n, b"99" if n == "format_version" else v) for n, v in headers]
    with pytest.raises(WireError, match="format_version' is '99'"):
        wire.decode(key, value, headers)


def test_event_count_must_match_header():
    key, value, headers = _valid()
    headers = [(n, b"5" if n == "events" else v) for n, v in headers]
    with pytest.raises(WireError, match="header 'events' says 5 but the record batch has 4 rows"):
        wire.decode(key, value, headers)


@pytest.mark.parametrize("key", [None, b"nonsense", b"\xff\xfe", b"u/t/1-x"])
def test_bad_keys(key):
    _, value, headers = _valid()
    with pytest.raises(WireError, match="message key"):
        wire.decode(key, value, headers)


def test_tree_names_with_slashes_roundtrip():
    chunk_id = ChunkId("abc", "dir/sub/Events", 5, 10)
    assert ChunkId.from_key(chunk_id.key()) == chunk_id


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_poisoned_batches_are_refused_naming_the_column(poison):
    key, value, headers = POISONS[poison]("Muon_pt", ChunkId("u", "Events", 0, 64), 1)
    with pytest.raises(WireError, match=r"record batch of 'u/Events/0-64': column 'Muon_pt'") as refused:
        wire.decode(key, value, headers)
    expected = {
        "offsets running backwards": "non-monotonic offset at slot 6: 15 < 18",
        "offsets past the child's end": "offset for slot 64 out of bounds: 1192 > 192",
        "negative first offset": "starts at negative offset -7",
        "child shorter than its parent": r"child array #0 has length smaller than expected .* \(7914 < 7919\)",
        "truncated buffer": "Buffer #1 too small in array of type double and length 11919",
        "unsupported type": "type dictionary<values=string, indices=int32, ordered=0> is not one the wire format",
    }
    assert re.search(expected[poison], str(refused.value)), refused.value


def test_a_cut_value_is_refused():
    key, value, headers = POISONS["offsets running backwards"]("x", ChunkId("u", "Events", 0, 64), None)
    with pytest.raises(WireError, match=r"value \(\d+ bytes\) is not an Arrow IPC stream"):
        wire.decode(key, bytes(value)[: len(value) - 100], headers)


@pytest.mark.parametrize("name", ["uproot-stl_containers.root", "uproot-double32-float16.root",
                                  "uproot-small-evnt-tree-fullsplit.root"])
def test_every_type_the_producer_emits_passes_the_check(name):
    tree = uproot.open(skhep_testdata.data_path(name))["tree"]
    readable = [key for key, branch in tree.iteritems() if not branch.branches]
    batch = wire.awkward_to_batch(tree.arrays(readable))
    decoded, _ = _roundtrip(Chunk(ChunkId("u", "tree", 0, tree.num_entries), "d", "s", batch))
    assert decoded.batch.schema.names == readable and decoded.events == tree.num_entries


def test_file_entries_travel_in_a_header_and_old_messages_have_none():
    batch = pa.record_batch({"x": np.arange(4.0)})
    decoded, (_, _, headers) = _roundtrip(Chunk(ChunkId("u", "Events", 0, 4), "d", "s", batch, file_entries=130525))
    assert decoded.file_entries == 130525 and dict(headers)["file_entries"] == b"130525"
    key, value, old_headers = _valid()
    assert "file_entries" not in dict(old_headers) and wire.decode(key, value, old_headers).file_entries is None
