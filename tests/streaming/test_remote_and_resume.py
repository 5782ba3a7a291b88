"""Grid-like failures and restarts: a real XRootD server that loses files or dies, a producer killed mid-run."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from hepstream import wire
from hepstream.stack.xrootd import XRootDServer
from hepstream.streaming.datagen import generate_file
from hepstream.streaming.progress import Progress
from tests.helpers import pipeline_config, produce, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    return generate_file(tmp_path_factory.mktemp("remote") / "sig.root", "signal", 30_000, seed=21)



def test_missing_remote_file_is_reported_and_the_others_go_on(broker, xrootd_server, unique_topic, big_file, tmp_path):
    served = xrootd_server.url_for(shutil.copy(big_file, xrootd_server.root_dir))
    missing = xrootd_server.url_for("nowhere.root")
    config = pipeline_config(unique_topic, [(missing, 0), (served, 1)], tmp_path, producer={"retry_backoff_s": 0.05})
    started = time.monotonic()
    report = produce(config, broker.bootstrap)
    assert time.monotonic() - started < 20
    assert report.as_dict()["files_ok"] == 1 and report.events == 30_000
    assert [f.url for f in report.failed] == [missing]
    assert "[3011]" in report.failed[0].error and report.failed[0].retries == 0  # not retried: it will not appear


def test_a_remote_file_read_leaves_no_xrootd_handle_open(broker, xrootd_server, unique_topic, big_file, tmp_path):
    """fsspec-xrootd keeps a closed file's handle and closes it from a timer task up to a minute later: once the
    server is gone, that close fails and Python prints the task's traceback when the process exits."""
    import fsspec_xrootd

    # A name of its own: other tests' reads of the session server's files are not this read's handles.
    served = xrootd_server.url_for(shutil.copy(big_file, xrootd_server.root_dir / f"{unique_topic}.root"))
    report = produce(pipeline_config(unique_topic, [(served, 1)], tmp_path), broker.bootstrap)
    assert report.events == 30_000
    kept = [url for fs in fsspec_xrootd.XRootDFileSystem._cache.values() for url in fs._readonly_filehandle_cache._cache]
    assert served not in kept


class _StopServerAfterFirstChunk(Progress):
    def __init__(self, server):
        super().__init__()
        self.server = server

    def advance(self, events, nbytes):
        super().advance(events, nbytes)
        if self.server.pid is not None:
            self.server.stop()


def test_server_stopped_mid_run_is_an_error_not_a_hang(broker, unique_topic, tmp_path):
    root = tempfile.mkdtemp(prefix="hepstream-xrootd-stop-")
    os.chmod(root, 0o755)
    try:
        with XRootDServer(root) as server:  # its own server: the session one stays up
            url = server.url_for(generate_file(f"{root}/big.root", "signal", 200_000, seed=22))
            config = pipeline_config(unique_topic, [(url, 1)], tmp_path,
                                     producer={"max_chunk_events": 500, "retries": 2, "retry_backoff_s": 0.1,
                                               "timeout_s": 2, "files_in_flight": 1, "max_in_flight_bytes": 1})
            started = time.monotonic()
            report = produce(config, broker.bootstrap, progress=_StopServerAfterFirstChunk(server))
    finally:
        shutil.rmtree(root)
    assert time.monotonic() - started < 30
    assert report.failed and report.failed[0].url == url
    assert "after 2 retries" in report.failed[0].error and report.failed[0].retries == 2
    assert 0 < report.events < 200_000


def test_killed_producer_resumes_without_resending_acknowledged_chunks(broker, unique_topic, tmp_path):
    files = [(generate_file(tmp_path / f"f{i}.root", "background", 40_000, seed=30 + i), i % 2) for i in range(3)]
    manifest = tmp_path / "manifest.jsonl"
    config = pipeline_config(unique_topic, files, tmp_path, producer={"max_chunk_events": 200, "manifest": str(manifest)})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    process = subprocess.Popen([sys.executable, "-m", "hepstream", "produce", "--config", str(path),
                                "--bootstrap", broker.bootstrap], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if manifest.exists() and manifest.read_text().count("\n") > 40:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the producer finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    first_run = {line.split('"key": "')[1].split('"')[0] for line in manifest.read_text().splitlines()[1:] if '"key"' in line}

    report = produce(config, broker.bootstrap)
    assert not report.failed and report.as_dict()["chunks_skipped"] >= len(first_run) > 0

    counts = {}
    for record in read_topic(broker.bootstrap, config.dataset.topic):
        counts[record.key.decode()] = counts.get(record.key.decode(), 0) + 1
    assert all(counts[key] == 1 for key in first_run)  # nothing acknowledged was sent twice
    ranges = {}
    for key in counts:
        chunk = wire.ChunkId.from_key(key.encode())
        ranges.setdefault(chunk.file_uuid, []).append((chunk.entry_start, chunk.entry_stop))
    assert len(ranges) == 3
    for spans in ranges.values():  # every entry of every file is in the topic, in distinct chunks
        spans.sort()
        assert spans[0][0] == 0 and spans[-1][1] == 40_000
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
