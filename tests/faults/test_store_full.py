"""A model store on a real filesystem that refuses versions: full, read-only, or not writable by the trainer.

Each test mounts its own small tmpfs (as root, as CI runs), so the errors are
the kernel's own: ENOSPC from a full disk, EROFS after a read-only remount,
EACCES for a process that may not write. The store must name itself, the
version folder and the cause, leave no half version and keep the earlier ones;
a trainer must keep learning, report the failure, retry, and once space is
freed checkpoint everything it learned, each event once.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from kafka import TopicPartition

from hepstream.config import FileSpec, KafkaConfig
from hepstream.kafka import new_consumer
from hepstream.models.monitoring import serve_metrics
from hepstream.models.store import ModelStore
from hepstream.models.store_errors import StoreWriteError
from hepstream.models.trainer import StreamTrainer
from hepstream.models.version_meta import VersionMeta
from hepstream.stack.ports import free_port
from tests.helpers import labelled_pair, pipeline_config, produce
from tests.serve.conftest import publish_real_version


def _mount(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_fs():
    """A fresh 8 MiB tmpfs, unmounted afterwards whatever the test did to it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    folder = Path(tempfile.mkdtemp(prefix="hepstream-small-fs-"))
    mounted = _mount(["-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(folder)])
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()


def _fill(folder: Path) -> Path:
    """Write a file until the filesystem holding ``folder`` has no space left; the filler, to delete later."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return filler


def _no_staging(store: ModelStore) -> list[str]:
    return [name for name in os.listdir(store.folder) if name.startswith(".staging")]


def test_a_full_store_names_the_store_the_folder_and_the_space(small_fs):
    root = small_fs / "store"
    assert publish_real_version(root, "m", seed=1) == 1
    _fill(small_fs)
    with pytest.raises(StoreWriteError) as refused:
        publish_real_version(root, "m", seed=2)
    message = str(refused.value)
    assert message.startswith(f"model store {root}: could not write version {root / 'm' / 'v000002'}: ")
    assert "no space left on device (ENOSPC)" in message
    assert f"free of 8.0 MiB on {small_fs}" in message and "the version needs" in message
    assert refused.value.errno == errno.ENOSPC and refused.value.version_folder == root / "m" / "v000002"
    store = ModelStore(root, "m")
    assert _no_staging(store) == [] and store.versions() == [1]
    assert store.load(1).meta.events_seen == 100  # the version before is whole


def test_a_read_only_store_says_so_and_takes_versions_again_once_writable(small_fs):
    root = small_fs / "store"
    publish_real_version(root, "m", seed=1)
    assert _mount(["-o", "remount,ro", str(small_fs)]).returncode == 0
    with pytest.raises(StoreWriteError, match=r"read-only filesystem \(EROFS\)") as refused:
        publish_real_version(root, "m", seed=2)
    assert str(root / "m" / "v000002") in str(refused.value)
    store = ModelStore(root, "m")
    assert store.versions() == [1] and store.load(1).version == 1
    assert _mount(["-o", "remount,rw", str(small_fs)]).returncode == 0
    assert publish_real_version(root, "m", seed=2) == 2


def test_a_store_the_trainer_may_not_write_says_permission_denied(small_fs):
    """As root every permission check passes, so a forked child drops to ``nobody`` before it publishes."""
    root = small_fs / "store"
    publish_real_version(root, "m", seed=1)  # root's folders, mode 0755: readable by all, writable by root alone
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and never returns to pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            meta = VersionMeta(features={}, feature_state={}, model={})
            ModelStore(root, "m").publish({"weights": [1.0]}, meta, {}, checkpoint="json")
            report = "published"
        except StoreWriteError as error:
            report = json.dumps({"message": str(error), "errno": error.errno})
        except BaseException as error:  # noqa: BLE001 - whatever happened goes back to the test
            report = f"{type(error).__name__}: {error}"
        os.write(write, report.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    os.waitpid(child, 0)
    refused = json.loads(report)
    assert refused["errno"] == errno.EACCES
    assert "permission denied (EACCES) at " + str(root / "m" / ".staging-v000002") in refused["message"]
    assert ModelStore(root, "m").versions() == [1] and _no_staging(ModelStore(root, "m")) == []


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("hepstream_trainer_")}


def _scrape_if_up(port: int) -> dict[str, float]:
    try:
        return _scrape(port)
    except OSError:  # not listening yet
        return {}


def _wait(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def _committed(bootstrap: str, topic: str, partitions) -> dict[int, int | None]:
    consumer = new_consumer(bootstrap, KafkaConfig(), group_id="hepstream.m")
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close()


@pytest.mark.integration
def test_a_trainer_on_a_full_store_keeps_learning_and_checkpoints_once_space_is_freed(broker, unique_topic,
                                                                                     small_fs, tmp_path):
    signal_file, background_file = labelled_pair(tmp_path, 3000, 3000, seed=21)
    config = pipeline_config(unique_topic, [signal_file], small_fs / "store")
    store = ModelStore(config.store.path, "m")
    first = produce(config, broker.bootstrap)
    trainer = StreamTrainer(config, broker.bootstrap)
    _, port = serve_metrics("m", trainer.status, 0)
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,))
    thread.start()
    try:
        _wait(lambda: store.latest() is not None and store.read_meta(store.latest()).events_seen == first.events,
              "the first file is checkpointed")
        good = store.versions()
        filler = _fill(small_fs)
        second = produce(config, broker.bootstrap, [FileSpec(url=str(background_file[0]), label=0)])
        _wait(lambda: trainer.counters["events_trained"] == first.events + second.events
              and trainer.status().checkpoint_failures >= 2, "the second file is learned and checkpoints refused")

        status = trainer.status()
        assert f"model store {small_fs / 'store'}: could not write version" in status.store_error
        assert "no space left on device (ENOSPC)" in status.store_error and status.last_error == status.store_error
        assert store.versions() == good and _no_staging(store) == []  # the server keeps serving the last good one
        assert trainer.version == good[-1]
        last_good = store.read_meta(good[-1]).offsets
        assert _committed(broker.bootstrap, config.dataset.topic, range(3)) == \
            {int(p): o for p, o in last_good.items()}  # Kafka commits wait for a checkpoint
        scraped = _scrape(port)
        assert scraped["hepstream_trainer_checkpoint_failures_total"] >= 2
        assert scraped["hepstream_trainer_store_failing"] == 1.0
        assert scraped["hepstream_trainer_checkpoint_age_seconds"] > 0.2

        filler.unlink()
        _wait(lambda: trainer.status().store_error is None, "a checkpoint succeeds again")
        meta = store.read_meta(store.latest())
        assert meta.events_seen == meta.counters["events_trained"] == first.events + second.events == 6000
        produced_chunks = sum(f.chunks for f in first.files + second.files)
        assert meta.counters["chunks"] == produced_chunks and meta.counters["duplicate_chunks"] == 0
        assert meta.parent == good[-1]
        assert _scrape(port)["hepstream_trainer_store_failing"] == 0.0
    finally:
        stop.set()
        thread.join(30)
    assert trainer.status().events_trained == 6000 and trainer.status().checkpoint_failures >= 2


@pytest.mark.integration
def test_train_exits_4_with_the_cause_when_the_final_checkpoint_is_refused(broker, unique_topic, small_fs,
                                                                          tmp_path):
    files = labelled_pair(tmp_path, 1500, 1500, seed=23)
    port = free_port()
    config = pipeline_config(unique_topic, files, small_fs / "store",
                             training={"checkpoint_every_s": 60.0, "metrics_port": port})
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    produce(config, broker.bootstrap)
    process = subprocess.Popen(
        [sys.executable, "-m", "hepstream", "train", "--config", str(config_path), "--bootstrap", broker.bootstrap],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Learning, with its first checkpoint a minute away: the only one it writes is the last, at the stop.
        _wait(lambda: process.poll() is None and _scrape_if_up(port).get("hepstream_trainer_events_trained_total"),
              "the trainer learns")
        assert _mount(["-o", "remount,ro", str(small_fs)]).returncode == 0
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 4, err
    assert "hepstream train: the final checkpoint failed: model store " in err
    assert "read-only filesystem (EROFS)" in err and "Traceback" not in err
    assert json.loads(out)["checkpoint_failures"] == 1
