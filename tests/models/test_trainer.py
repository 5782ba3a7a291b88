import datetime
import threading
import time

import numpy as np
import pyarrow as pa
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from hepstream import wire
from hepstream.config import KafkaConfig
from hepstream.kafka import new_producer
from hepstream.models.metrics import roc_auc
from hepstream.models.store import ModelStore
from hepstream.models.trainer import StreamTrainer, use_compute_threads
from hepstream.streaming.datagen import generate_file
from tests.helpers import labelled_pair, pipeline_config, produce

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def labelled_files(tmp_path_factory):
    return labelled_pair(tmp_path_factory.mktemp("train"), 6000, 6000, seed=11)



def _train_until(trainer: StreamTrainer, done, timeout_s: float = 60.0) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not done(trainer) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    assert done(trainer), trainer.status()


def _send_raw(bootstrap, topic, key, value, headers):
    producer = new_producer(bootstrap, KafkaConfig())
    producer.send(topic, key=key, value=value, headers=headers, partition=0)
    producer.flush()
    producer.close()


def test_learns_every_event_once_and_survives_poison(broker, unique_topic, labelled_files, tmp_path):
    config = pipeline_config(unique_topic, labelled_files, tmp_path / "store")
    report = produce(config, broker.bootstrap)
    topic = config.dataset.topic
    _send_raw(broker.bootstrap, topic, b"not-a-key", b"\x00garbage", [("format_version", b"1")])
    batch = pa.record_batch({"MET_pt": [1.0]})
    key, value, headers = wire.encode(wire.Chunk(wire.ChunkId("u", "Events", 0, 1), "d", "s", batch, 1))
    _send_raw(broker.bootstrap, topic, key, value, [(n, b"2" if n == "format_version" else v) for n, v in headers])

    trainer = StreamTrainer(config, broker.bootstrap)
    _train_until(trainer, lambda t: t.counters["bad_messages"] == 2 and t.counters["events_trained"] >= report.events)
    status = trainer.status()
    assert status.events_trained == report.events == 12000
    assert status.duplicate_chunks == 0
    assert "format_version" in status.last_error or "message key" in status.last_error

    store = ModelStore(tmp_path / "store", "m")
    model = store.load(store.latest())
    assert model.meta.events_seen == 12000
    assert model.meta.counters["bad_messages"] == 2
    assert sum(model.meta.offsets.values()) == sum(status.offsets.values())

    holdout = [(generate_file(tmp_path / f"h{label}.root", kind, 2000, seed=40 + label), label)
               for kind, label in (("signal", 1), ("background", 0))]
    import uproot
    scores, labels = [], []
    for path, label in holdout:
        arrays = uproot.open(path)["Events"].arrays(config.features.branches)
        scores.append(model.predict(wire.awkward_to_batch(arrays)))
        labels.append(np.full(len(arrays), label))
    auc = roc_auc(np.concatenate(scores), np.concatenate(labels))
    assert auc > 0.75, auc  # 12k events, one pass, a 16-unit network: well above chance


def test_restart_resumes_from_checkpoint_and_skips_resent_chunks(broker, unique_topic, labelled_files, tmp_path):
    config = pipeline_config(unique_topic, labelled_files[:1], tmp_path / "store")
    first_report = produce(config, broker.bootstrap)
    first = StreamTrainer(config, broker.bootstrap)
    _train_until(first, lambda t: t.counters["events_trained"] >= first_report.events)
    version = first.version

    # The producer runs again (say, after a crash before it recorded progress): every chunk is re-sent.
    again = produce(config, broker.bootstrap)
    second = StreamTrainer(config, broker.bootstrap)
    assert second.version == version and second.counters["events_trained"] == 6000
    _train_until(second, lambda t: t.counters["duplicate_chunks"] >= first.counters["chunks"])
    status = second.status()
    assert status.events_trained == 6000  # nothing learned twice
    assert status.duplicate_chunks == first.counters["chunks"]
    assert again.events == 6000
    store = ModelStore(tmp_path / "store", "m")
    assert store.latest() > version
    assert store.read(store.latest())[0].parent == store.versions()[-2]


def test_poison_messages_go_to_the_dead_letter_topic_with_a_reason(broker, unique_topic, tmp_path):
    from hepstream.models.dead_letter import REASON_HEADER, SOURCE_HEADER
    from tests.helpers import read_topic

    config = pipeline_config(unique_topic, [], tmp_path / "store")
    topic = config.dataset.topic
    batch = pa.record_batch({"MET_pt": [1.0]})
    key, value, headers = wire.encode(wire.Chunk(wire.ChunkId("u", "Events", 0, 1), "d", "s", batch, 1))
    _send_raw(broker.bootstrap, topic, b"garbage-key", b"\x00garbage", [("format_version", b"1")])
    _send_raw(broker.bootstrap, topic, key, value, headers)  # decodes, but lacks every feature branch
    trainer = StreamTrainer(config, broker.bootstrap)
    _train_until(trainer, lambda t: t.counters["bad_messages"] == 2 and t.version is not None)
    assert trainer.counters["dead_letters"] == 2 and trainer.counters["events_trained"] == 0
    dead = read_topic(broker.bootstrap, f"{config.dataset.name}.dead-letter")
    assert [r.value for r in dead] == [b"\x00garbage", value]
    reasons = [dict(r.headers)[REASON_HEADER].decode() for r in dead]
    assert "content_type" in reasons[0] or "message key" in reasons[0]
    assert "branch 'MET_pt'" in reasons[1] or "branch 'nMuon'" in reasons[1]
    assert dict(dead[1].headers)[SOURCE_HEADER].decode() == f"{topic}[0]@1"


@pytest.mark.parametrize("shuffle_chunks", [0, 8], ids=["in-order", "shuffle-buffer"])
def test_epochs_replay_the_retained_topic_and_metrics_are_scraped(broker, unique_topic, labelled_files, tmp_path,
                                                                  shuffle_chunks):
    """With a shuffle buffer, an epoch's end learns what waits in it before the keys are forgotten."""
    import urllib.request

    from hepstream.models.monitoring import serve_metrics

    config = pipeline_config(unique_topic, labelled_files[:1], tmp_path / "store",
                             training={"epochs": 2, "shuffle_chunks": shuffle_chunks})
    report = produce(config, broker.bootstrap)
    trainer = StreamTrainer(config, broker.bootstrap)
    server, port = serve_metrics("m", trainer.status, 0)
    try:
        _train_until(trainer, lambda t: t.counters["events_trained"] >= 2 * report.events)
        assert trainer.epoch == 1 and trainer.counters["events_trained"] == 2 * report.events
        assert trainer.counters["duplicate_chunks"] == 0
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert f'hepstream_trainer_events_trained_total{{model="m"}} {2 * report.events}.0' in text
    assert "hepstream_trainer_log_loss" in text and "hepstream_trainer_drift_detections" in text


def _only_what_follows(broker, config, before, after, start, *, same_group_trainer=None):
    """Produce ``before``, start a trainer from ``start``, produce ``after``: it must learn ``after`` alone."""
    first = produce(config, broker.bootstrap, before)
    assert first.events > 0
    if same_group_trainer is not None:
        same_group_trainer(first.events)
    if callable(start):
        start = start()
    second_config = config.model_copy(update={
        "training": config.training.model_copy(update={"start": start}),
        "store": config.store.model_copy(update={"path": config.store.path.parent / "fresh-store"}),
    })
    trainer = StreamTrainer(second_config, broker.bootstrap)
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,))
    thread.start()
    try:
        time.sleep(1.5)  # assigned and positioned before the new data arrives
        later = produce(config, broker.bootstrap, after)
        deadline = time.monotonic() + 60
        while trainer.counters["events_trained"] < later.events and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # and nothing more comes
    finally:
        stop.set()
        thread.join(30)
    return trainer.counters["events_trained"], later.events


@pytest.mark.parametrize("start", ["latest", "timestamp", "committed"])
def test_start_positions_skip_what_came_before(broker, unique_topic, labelled_files, tmp_path, start):
    from hepstream.config import FileSpec

    config = pipeline_config(unique_topic, labelled_files, tmp_path / "store", kafka={"partitions": 2})
    signal, background = (FileSpec(url=str(path), label=label) for path, label in labelled_files)
    group_trainer = None
    if start == "timestamp":
        start = lambda: datetime.datetime.now(datetime.timezone.utc).isoformat()  # noqa: E731
    if start == "committed":
        def group_trainer(events):  # a first trainer of the same group learns (and commits) what is there
            _train_until(StreamTrainer(config, broker.bootstrap), lambda t: t.counters["events_trained"] >= events)
    trained, expected = _only_what_follows(broker, config, [signal], [background], start,
                                           same_group_trainer=group_trainer)
    assert trained == expected == 6000


def test_the_trainer_gives_torch_and_numpys_blas_its_thread_count():
    """Idle OpenBLAS threads spin beside the trainer on shared cores, as torch's do."""
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    if not blas:
        pytest.skip("numpy has no threaded BLAS here")
    before, torch_before = threadpool_limits(None), torch.get_num_threads()  # records the limits to restore
    try:
        use_compute_threads(1)
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {1}
        assert torch.get_num_threads() == 1
    finally:
        before.restore_original_limits()
        torch.set_num_threads(torch_before)
