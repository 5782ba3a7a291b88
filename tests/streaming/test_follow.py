"""Following storage: files that land in a watched folder (local or XRootD) while the follower runs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest
import yaml

from hepstream import wire
from hepstream.streaming.datagen import generate_file
from hepstream.streaming.follow import Follower
from hepstream.waiting import poll_until
from tests.helpers import pipeline_config, read_topic

pytestmark = pytest.mark.integration

EVENTS = 3_000


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    """A finished file, generated outside any watched folder, to be copied in."""
    return generate_file(tmp_path_factory.mktemp("follow-source") / "run1.root", "signal", EVENTS, seed=41)


def follow_config(topic, pattern, tmp_path, **producer):
    return pipeline_config(topic, [(pattern, 1)], tmp_path, producer={
        "poll_s": 0.2, "settle_s": 0.3, "retries": 2, "retry_backoff_s": 0.1,
        "manifest": str(tmp_path / "manifest.jsonl"), **producer})


@contextmanager
def following(config, bootstrap):
    """A follower running in a thread; stopped, and its report checked to be clean of bugs, on the way out."""
    follower, stop, outcome = Follower(config, bootstrap), threading.Event(), {}
    thread = threading.Thread(target=lambda: outcome.setdefault("report", follower.run(stop)))
    thread.start()
    try:
        yield follower
    finally:
        stop.set()
        thread.join(timeout=30)
        follower.close()
    assert not thread.is_alive() and "report" in outcome, "the follower did not stop cleanly"


def wait_for(follower, condition, what, timeout_s=30.0):
    """The follower's first status that meets ``condition``."""
    def probe():
        status = follower.status()
        return status if condition(status) else None
    return poll_until(probe, timeout_s=timeout_s, what=what, interval_s=0.05)


def topic_events(bootstrap, topic) -> tuple[int, int, int]:
    """Events on the topic, records, and distinct chunk keys among them."""
    records = read_topic(bootstrap, topic)
    events = sum(wire.decode(r.key, r.value, r.headers).events for r in records)
    return events, len(records), len({r.key for r in records})


def test_a_file_copied_in_is_published_once_and_a_restart_sends_nothing(broker, unique_topic, landed, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    config = follow_config(unique_topic, incoming / "*.root", tmp_path)
    with following(config, broker.bootstrap) as follower:
        wait_for(follower, lambda s: s.polls >= 2, "two listings of an empty folder")
        assert follower.status().files == ()
        shutil.copy(landed, incoming / "run1.root")
        status = wait_for(follower, lambda s: s.published, "the copied file published")
    [published] = status.published
    assert (published.events, published.attempts, published.already_published) == (EVENTS, 1, False)
    events, records, keys = topic_events(broker.bootstrap, config.dataset.topic)
    assert (events, records) == (EVENTS, keys) and records > 1

    with following(config, broker.bootstrap) as again:  # a restart: the manifest already holds every chunk
        status = wait_for(again, lambda s: s.published, "the file found in the manifest")
    assert status.as_dict()["files_already_published"] == 1 and status.events == 0
    assert topic_events(broker.bootstrap, config.dataset.topic)[:2] == (EVENTS, records)


def test_a_growing_file_waits_until_it_is_whole(broker, unique_topic, landed, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    data = landed.read_bytes()
    config = follow_config(unique_topic, incoming / "*.root", tmp_path, retries=20, poll_s=0.1, settle_s=1.0)
    with following(config, broker.bootstrap) as follower, open(incoming / "run1.root", "wb") as writing:
        for piece in range(5):  # a piece every listing: never unchanged for settle_s
            writing.write(data[piece * len(data) // 10: (piece + 1) * len(data) // 10])
            writing.flush()
            polls = follower.status().polls
            wait_for(follower, lambda s: s.polls > polls, "a listing")
        assert follower.status().files[0].attempts == 0  # not even opened while it grows
        status = wait_for(follower, lambda s: s.files and s.files[0].attempts >= 1, "an attempt on the half file")
        assert status.files[0].state != "published" and "not whole yet" in status.files[0].reason
        assert status.events == 0
        writing.write(data[len(data) // 2:])
        writing.flush()
        status = wait_for(follower, lambda s: s.published, "the whole file published")
    assert status.published[0].events == EVENTS and status.published[0].size == len(data)
    assert topic_events(broker.bootstrap, config.dataset.topic)[0] == EVENTS


def test_a_corrupt_file_is_reported_and_the_others_go_on(broker, unique_topic, landed, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "broken.root").write_bytes(os.urandom(4096))
    shutil.copy(landed, incoming / "run1.root")
    config = follow_config(unique_topic, incoming / "*.root", tmp_path)
    with following(config, broker.bootstrap) as follower:
        status = wait_for(follower, lambda s: s.failed and s.published, "one failed and one published file")
    [(url, reason)] = status.failed.items()
    assert url == str(incoming / "broken.root") and "cannot open as a ROOT file" in reason
    assert [f.attempts for f in status.files if f.state == "failed"] == [3]  # the first try and producer.retries
    assert status.events == EVENTS == topic_events(broker.bootstrap, config.dataset.topic)[0]


def test_a_failed_file_is_tried_again_once_it_changes_and_a_vanished_one_is_forgotten(broker, unique_topic, landed,
                                                                                       tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    data = landed.read_bytes()
    (incoming / "run1.root").write_bytes(data[: len(data) // 2])  # a copy that stopped halfway
    (incoming / "run2.root").write_bytes(os.urandom(4096))
    config = follow_config(unique_topic, incoming / "*.root", tmp_path)
    with following(config, broker.bootstrap) as follower:
        status = wait_for(follower, lambda s: len(s.failed) == 2, "both files failed")
        assert "not whole yet" in status.failed[str(incoming / "run1.root")]
        (incoming / "run2.root").unlink()
        (incoming / "run1.root").write_bytes(data)  # the copy finished after all
        status = wait_for(follower, lambda s: s.published and not s.failed, "the finished copy published")
    assert [(f.url, f.events) for f in status.files] == [(str(incoming / "run1.root"), EVENTS)]
    assert topic_events(broker.bootstrap, config.dataset.topic)[0] == EVENTS


def test_an_xrootd_folder_is_followed(broker, xrootd_server, unique_topic, landed, tmp_path):
    folder = xrootd_server.root_dir / unique_topic
    folder.mkdir(mode=0o755)
    try:
        config = follow_config(unique_topic, xrootd_server.url_for(folder) + "/", tmp_path)  # a folder: its *.root
        with following(config, broker.bootstrap) as follower:
            wait_for(follower, lambda s: s.polls >= 2, "two listings of an empty folder")
            shutil.copy(landed, folder / "run1.root")
            status = wait_for(follower, lambda s: s.published, "the file published from XRootD")
    finally:
        shutil.rmtree(folder)
    assert [f.url for f in status.published] == [xrootd_server.url_for(folder / "run1.root")]
    assert status.listing_error is None and status.events == EVENTS
    assert topic_events(broker.bootstrap, config.dataset.topic)[0] == EVENTS


def test_produce_follow_runs_until_interrupted(broker, unique_topic, landed, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    config = follow_config(unique_topic, incoming / "*.root", tmp_path)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    process = subprocess.Popen([sys.executable, "-m", "hepstream", "produce", "--follow", "--config", str(path),
                                "--bootstrap", broker.bootstrap], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        shutil.copy(landed, incoming / "run1.root")
        manifest = tmp_path / "manifest.jsonl"
        poll_until(lambda: manifest.exists() and sum(json.loads(line)["events"] for line in
                                                     manifest.read_text().splitlines()[1:]) == EVENTS,
                   timeout_s=60, what="the file published by hepstream produce --follow", interval_s=0.1)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert (report["files_ok"], report["events"], report["files_pending"]) == (1, EVENTS, [])
