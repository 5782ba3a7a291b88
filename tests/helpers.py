"""Small helpers the integration tests share: configs pointing at a test's own topic and store."""

from __future__ import annotations

import os
import time

import awkward as ak
from kafka import TopicPartition

from hepstream import wire
from hepstream.config import KafkaConfig, config_from_dict
from hepstream.kafka import new_consumer
from hepstream.streaming.datagen import generate_file
from hepstream.streaming.producer import Producer


def pipeline_config(topic: str, files, store, **sections):
    """A config whose dataset name gives ``topic`` (``<name>.events``)."""
    name = topic.removesuffix(".events")
    data = {
        "dataset": {"name": name, "files": [{"url": str(url), "label": label} for url, label in files]},
        "kafka": {"partitions": 3},
        "producer": {"max_chunk_events": 700, "step_size": "1 MB"},
        # No validation slice unless a test asks for one: these tests count every event as learned.
        "training": {"checkpoint_every_s": 0.2, "validation_fraction": 0},
        "store": {"path": str(store)},
    }
    model = sections.pop("model", {})
    small = {"hidden": [16]} if model.get("kind", "mlp") in ("mlp", "deepsets") else {}  # torch kinds: a small network
    data["model"] = {"name": "m", **small, **model}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values}
    return config_from_dict(data)


def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0, kafka: KafkaConfig = KafkaConfig()) -> list:
    """Every record of a topic, read with explicit assignment (no slow group join)."""
    consumer = new_consumer(bootstrap, kafka)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        records = []
        for _ in range(int(timeout_s * 5)):
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if all(consumer.position(tp) >= ends[tp] for tp in partitions):
                break
        return records
    finally:
        consumer.close()


def decoded_events(records) -> dict[str, ak.Array]:
    """Chunks of a topic keyed by chunk key, as awkward arrays."""
    return {r.key.decode(): ak.from_arrow(wire.decode(r.key, r.value, r.headers).batch) for r in records}


def labelled_pair(folder, signal_events: int, background_events: int, seed: int) -> list:
    """A signal file (label 1) and a background file (label 0) of NanoAOD-like events."""
    return [
        (generate_file(folder / "sig.root", "signal", signal_events, seed=seed), 1),
        (generate_file(folder / "bkg.root", "background", background_events, seed=seed + 1), 0),
    ]


def produce(config, bootstrap: str, files=None, progress=None):
    """Publish ``files`` (default: the config's inputs) once, as ``hepstream produce`` does; the report."""
    producer = Producer(config, bootstrap, progress=progress)
    try:
        return producer.run(files)
    finally:
        producer.close()


def is_running(pid: int) -> bool:
    """Whether a process of that PID exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def process_gone(pid: int, timeout_s: float = 5.0) -> bool:
    """Whether ``pid`` exits within ``timeout_s``; a zombie left to a reaper that has not run yet counts as gone."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# What healthy runs printed before each cause was fixed: Serve's shutdown outliving its 30 s (replicas kept for a
# cloud load balancer, serve.ray.drain_s), then Ray killing Serve's controller mid-shutdown, or Ray reporting the
# call that waits for it as failed; fsspec-xrootd's timer closing a kept XRootD handle after the server had gone;
# Ray announcing at each start the token authentication it turned on by itself.
FIXED_NOISE = ("Task exception was never retrieved", "graceful_shutdown failed", "failed to shut down",
               "Token authentication is enabled")
# And any traceback, in what a user reads; not in Serve's own logs, where the controller logs the tracebacks of
# replicas it replaces (one whose port another Serve on this shared machine held, for one).
NOISE = ("Traceback", *FIXED_NOISE)


def noise_in(output: str, noise: tuple[str, ...] = NOISE) -> list[str]:
    """The lines of ``output`` that hold any of ``noise``."""
    return [line for line in output.splitlines() if any(text in line for text in noise)]
