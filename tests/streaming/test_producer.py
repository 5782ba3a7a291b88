import shutil

import awkward as ak
import pytest
import uproot

from hepstream import wire
from tests.helpers import labelled_pair, pipeline_config, produce, read_topic
from tests.streaming.range_http import FORBIDDEN, RangeServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    return labelled_pair(tmp_path_factory.mktemp("produce"), 2500, 1800, seed=1)



def _assert_topic_equals_files(bootstrap, topic, files, branches):
    records = read_topic(bootstrap, topic)
    by_file = {}
    for record in records:
        chunk = wire.decode(record.key, record.value, record.headers)
        by_file.setdefault(chunk.source, []).append(chunk)
    assert len(by_file) == len(files)
    for source, label in files:
        chunks = sorted(by_file[str(source)], key=lambda c: c.id.entry_start)
        assert {c.label for c in chunks} == {label}
        starts = [c.id.entry_start for c in chunks]
        stops = [c.id.entry_stop for c in chunks]
        assert starts[0] == 0 and starts[1:] == stops[:-1]  # contiguous, no gap, no overlap
        got = ak.concatenate([ak.from_arrow(c.batch) for c in chunks])
        expected = uproot.open(str(source))["Events"].arrays(branches)
        assert stops[-1] == len(expected)
        for name in branches:
            assert ak.to_list(got[name]) == ak.to_list(expected[name]), (source, name)
    return records


def test_every_event_arrives_equal_to_uproot(broker, unique_topic, small_files, tmp_path):
    config = pipeline_config(unique_topic, small_files, tmp_path / "store")
    report = produce(config, broker.bootstrap)
    assert report.events == 4300 and not report.failed
    records = _assert_topic_equals_files(broker.bootstrap, config.dataset.topic, small_files, config.features.branches)
    assert {r.partition for r in records} == {0, 1, 2}  # chunks spread over every partition
    assert len({r.key for r in records}) == len(records)


def test_reads_over_xrootd(broker, xrootd_server, unique_topic, small_files, tmp_path):
    files = []
    for path, label in small_files:
        served = shutil.copy(path, xrootd_server.root_dir)
        files.append((xrootd_server.url_for(served), label))
    config = pipeline_config(unique_topic, files, tmp_path / "store")
    report = produce(config, broker.bootstrap)
    assert report.events == 4300 and not report.failed
    _assert_topic_equals_files(broker.bootstrap, config.dataset.topic, files, config.features.branches)


def test_bad_files_are_reported_and_skipped(broker, unique_topic, small_files, tmp_path):
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(small_files[0][0].read_bytes()[:5000])
    no_branch = tmp_path / "other.root"
    with uproot.recreate(no_branch) as f:
        f.mktree("Events", {"MET_pt": "f4"}).extend({"MET_pt": [1.0, 2.0]})
    files = [(tmp_path / "missing.root", 0), (truncated, 1), small_files[1], (no_branch, 0)]
    config = pipeline_config(unique_topic, files, tmp_path / "store")
    report = produce(config, broker.bootstrap)
    failures = report.as_dict()["failures"]
    assert set(failures) == {str(tmp_path / "missing.root"), str(truncated), str(no_branch)}
    assert failures[str(tmp_path / "missing.root")] == "no such file"
    assert "lacks branch(es)" in failures[str(no_branch)] and "Muon_pt" in failures[str(no_branch)]
    assert report.events == 1800  # the good file went through whole
    assert report.as_dict()["files_ok"] == 1 and report.as_dict()["files_partial"] == 0
    assert report.as_dict()["files_failed"] == 3 and report.as_dict()["partial"] == {}


def test_a_file_failing_midway_is_reported_partial_with_how_far_it_got(broker, unique_topic, tmp_path,
                                                                       monkeypatch):
    from hepstream.streaming import datagen

    monkeypatch.setattr(datagen, "_BLOCK", 500)  # one basket per 500 entries
    path = datagen.generate_file(tmp_path / "sig.root", "signal", 2500, seed=3)
    branch = uproot.open(path)["Events"]["Muon_pt"]
    last_basket = int(branch.member("fBasketSeek")[branch.num_baskets - 1])
    data = bytearray(path.read_bytes())
    data[last_basket:last_basket + 2] = b"XX"  # a byte count in its key: entries 2000-2500 of Muon_pt no longer read
    path.write_bytes(bytes(data))
    config = pipeline_config(unique_topic, [(path, 1)], tmp_path / "store")
    report = produce(config, broker.bootstrap).as_dict()
    assert report["files_ok"] == 0 and report["files_failed"] == 0 and report["files_partial"] == 1
    assert report["failures"] == {}
    partial = report["partial"][str(path)]
    assert partial["file_entries"] == 2500 and 0 < partial["entries_published"] <= 2000
    assert partial["error"].startswith(f"reading failed at entry {partial['entries_published']}")
    records = read_topic(broker.bootstrap, config.dataset.topic)
    chunks = sorted((wire.decode(r.key, r.value, r.headers) for r in records), key=lambda c: c.id.entry_start)
    assert {c.file_entries for c in chunks} == {2500}  # every chunk says the file is longer than the topic holds
    assert [c.id.entry_start for c in chunks] == [0] + [c.id.entry_stop for c in chunks[:-1]]
    assert chunks[-1].id.entry_stop == partial["entries_published"] == report["events"]


def test_missing_tree_suggests_names(broker, unique_topic, small_files, tmp_path):
    config = pipeline_config(unique_topic, small_files[:1], tmp_path / "store", dataset={"tree": "Event"})
    report = produce(config, broker.bootstrap)
    assert "has no tree 'Event' (did you mean 'Events'?)" in report.failed[0].error


def test_chunks_too_big_for_a_message_are_split(broker, unique_topic, small_files, tmp_path):
    config = pipeline_config(
        unique_topic, small_files[:1], tmp_path / "store",
        kafka={"max_message_bytes": 40_000, "compression": "none"},
        producer={"step_size": 40_000, "max_chunk_events": 2500},
    )
    report = produce(config, broker.bootstrap)
    records = read_topic(broker.bootstrap, config.dataset.topic)
    assert report.events == 2500 and len(records) > 2
    assert max(len(r.value) for r in records) < 40_000
    assert sum(int(dict(r.headers)["events"]) for r in records) == 2500


def test_reads_over_http_and_reports_refusals_without_retrying(broker, unique_topic, small_files, tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    for path, _ in small_files:
        shutil.copy(path, folder)
    with RangeServer(folder) as server:
        files = [(f"{server.url}/{path.name}", label) for path, label in small_files]
        missing, forbidden = f"{server.url}/missing.root", f"{server.url}/{FORBIDDEN}"
        config = pipeline_config(unique_topic, files + [(missing, 0), (forbidden, 0)], tmp_path / "store")
        report = produce(config, broker.bootstrap)
        failures = report.as_dict()["failures"]
        assert set(failures) == {missing, forbidden}
        assert "403" in failures[forbidden]
        assert all(f.retries == 0 for f in report.files)  # a refusal is final: no backoff spent on it
        assert report.events == 4300
        local = [(str(folder / url.rsplit("/", 1)[1]), label) for url, label in files]
        records = read_topic(broker.bootstrap, config.dataset.topic)
        assert sum(int(dict(r.headers)["events"]) for r in records) == 4300
    # Every event equals uproot's local reading of the same file.
    by_url = {}
    for record in records:
        chunk = wire.decode(record.key, record.value, record.headers)
        by_url.setdefault(chunk.source, []).append(chunk)
    for (url, _), (path, _) in zip(files, local):
        chunks = sorted(by_url[url], key=lambda c: c.id.entry_start)
        got = ak.concatenate([ak.from_arrow(c.batch) for c in chunks])
        expected = uproot.open(path)["Events"].arrays(config.features.branches)
        for name in config.features.branches:
            assert ak.to_list(got[name]) == ak.to_list(expected[name]), (url, name)
