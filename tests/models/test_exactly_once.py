"""Exactly-once under SIGKILL: a trainer process killed at random points, restarted each time, learns every event once.

The stream is live: a thread publishes chunks while the trainer runs, so the
kills land while it polls, learns, writes a checkpoint or commits offsets.
At the end the counters in the newest checkpoint must equal what was
produced, to the event: nothing lost, nothing learned twice. A fifth of the
chunks fall in the validation slice: those are never learned, counted apart,
and each is in the checkpointed reservoir exactly once.
"""

import json
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from hepstream import wire
from hepstream.config import KafkaConfig
from hepstream.kafka import ensure_topic, new_producer
from hepstream.models.store import ModelStore
from hepstream.models.validation import Reservoir, in_slice
from hepstream.streaming.datagen import generate_file
from hepstream.streaming.producer import read_plan
from hepstream.streaming.reader import iterate_chunks
from tests.helpers import pipeline_config

pytestmark = pytest.mark.integration

KILLS = 4


def _messages(config):
    """Every chunk of the dataset, files interleaved, encoded as Kafka messages; and the chunks themselves."""
    plan = read_plan(config)
    streams = [list(iterate_chunks(f.url, plan, f.label)) for f in config.dataset.files]
    chunks = [c for group in zip(*streams) for c in group]
    return [wire.encode(c, "zstd") for c in chunks], chunks


class LiveStream(threading.Thread):
    """Publishes messages one by one at a steady pace, round-robin over the partitions."""

    def __init__(self, bootstrap, topic, messages, partitions, per_s, first=0):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.messages = bootstrap, topic, messages
        self.partitions, self.pause, self.first = partitions, 1.0 / per_s, first

    def run(self):
        producer = new_producer(self.bootstrap, KafkaConfig())
        try:
            for i, (key, value, headers) in enumerate(self.messages, start=self.first):
                producer.send(self.topic, key=key, value=value, headers=headers, partition=i % self.partitions)
                producer.flush()
                time.sleep(self.pause)
        finally:
            producer.close()


def _start_trainer(config_path, bootstrap):
    return subprocess.Popen(
        [sys.executable, "-m", "hepstream", "train", "--config", str(config_path), "--bootstrap", bootstrap],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_new_version(store, after, process, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        latest = store.latest()
        if latest is not None and latest > (after or 0):
            return latest
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("trainer published no new version")


@pytest.mark.parametrize("shuffle_chunks", [0, 8], ids=["in-order", "shuffle-buffer"])
def test_sigkill_at_random_points_loses_nothing_and_learns_nothing_twice(broker, unique_topic, tmp_path,
                                                                        shuffle_chunks):
    """With a shuffle buffer, kills land while chunks wait in it: checkpoints hold them as pending."""
    files = [(generate_file(tmp_path / "s.root", "signal", 3000, seed=5), 1),
             (generate_file(tmp_path / "b.root", "background", 3000, seed=6), 0)]
    config = pipeline_config(unique_topic, files, tmp_path / "store",
                             producer={"max_chunk_events": 100},
                             training={"checkpoint_every_s": 0.05, "chunks_per_step": 2, "group_wait_s": 0.0,
                                       "shuffle_chunks": shuffle_chunks,
                                       "validation_fraction": 0.2, "validation_events": 10_000})
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    messages, chunks = _messages(config)
    produced = sum(c.events for c in chunks)
    held = [c for c in chunks if in_slice(c.id.key().decode(), 0.2)]
    assert 0 < len(held) < len(chunks)
    resent = messages[:5]  # a producer restarted after a crash re-sends chunks it had already sent
    ensure_topic(broker.bootstrap, config.dataset.topic, config.kafka.partitions, config.kafka)
    store = ModelStore(config.store.path, config.model.name)
    rng = random.Random(7)
    # One slice of the stream per trainer life, published while that trainer runs: on a slow machine a
    # trainer start (a few seconds of imports) must not outlast the whole stream, or there is nothing
    # left to kill it in the middle of.
    everything = messages + resent
    slices = [everything[i::KILLS + 1] for i in range(KILLS + 1)]
    offset, killed_with_pending = 0, []
    for part in slices[:-1]:
        process = _start_trainer(config_path, broker.bootstrap)
        stream = LiveStream(broker.bootstrap, config.dataset.topic, part, config.kafka.partitions, per_s=12, first=offset)
        stream.start()
        _wait_for_new_version(store, store.latest(), process)
        time.sleep(rng.uniform(0.0, 0.4))  # somewhere in polling, learning, checkpointing or committing
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_with_pending.append("pending" in store.read(store.latest())[2])
        stream.join()
        offset += len(part)
    last = LiveStream(broker.bootstrap, config.dataset.topic, slices[-1], config.kafka.partitions, per_s=12, first=offset)
    last.start()
    last.join()

    process = _start_trainer(config_path, broker.bootstrap)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            latest = store.latest()
            counters = store.read(latest)[0].counters if latest else {}
            consumed = counters.get("events_trained", 0) + counters.get("events_validation", 0)
            if consumed >= produced and counters.get("duplicate_chunks", 0) >= len(resent):
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    final = json.loads(out)
    meta = store.read(store.latest())[0]
    validation = sum(c.events for c in held)
    assert produced == 6000
    assert final["events_trained"] == meta.counters["events_trained"] == produced - validation  # the slice: never
    assert final["events_validation"] == meta.counters["events_validation"] == validation
    assert meta.events_seen == produced - validation
    assert final["chunks"] == len(messages) - len(held) and final["validation_chunks"] == len(held)
    reservoir = Reservoir.from_bytes(store.read_file(store.latest(), "validation.arrow"), capacity=10_000)
    per_class = {label: sum(c.events for c in held if c.label == label) for label in (0, 1)}
    assert reservoir.seen == reservoir.counts() == {k: v for k, v in per_class.items() if v}  # each once
    assert final["duplicate_chunks"] == len(resent)
    assert final["bad_messages"] == 0
    assert sum(meta.offsets.values()) == len(messages) + len(resent)
    assert "pending" not in store.read(store.latest())[2]  # the stop learned what waited in the buffer
    assert any(killed_with_pending) == bool(shuffle_chunks)  # restarts resumed with chunks still waiting
