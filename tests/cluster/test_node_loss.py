"""A node lost mid-run on a real multi-node Ray cluster: its raylet killed, no clean stop.

Each test adds a node of its own, makes sure work lands there, kills that
node's raylet and checks that the run goes on and that every count is exact;
the session's head and worker are left as they were.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from hepstream.models.store import ModelStore
from hepstream.streaming.datagen import generate_file
from hepstream.streaming.manifest import family
from hepstream.waiting import poll_until
from tests.helpers import labelled_pair, pipeline_config, process_gone, produce, read_topic
from tests.ray_cluster import RayCluster, RayNode, wait_for_nodes

pytestmark = pytest.mark.integration

EVENTS = 20_000  # per file of the producer test: enough that the files are still in flight at the first ack


def _driver(cluster: RayCluster, command: list[str], config, folder) -> subprocess.Popen:
    """``hepstream <command> --config ...`` as a driver joining the cluster, as a Ray job's entrypoint would."""
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "RAY_ADDRESS": cluster.address, **cluster.client_env()}
    return subprocess.Popen([sys.executable, "-m", "hepstream", *command, "--config", str(path)], env=env,
                            stdout=(folder / "stdout").open("w"), stderr=(folder / "stderr").open("w"))


def _lose(cluster: RayCluster, node: RayNode) -> None:
    node.stop()
    cluster.workers.remove(node)


def _versions_since(store: ModelStore, version: int | None) -> list:
    return [store.read_meta(v) for v in store.versions() if version is None or v > version]


def test_a_trainer_worker_lost_with_its_node_is_replaced_and_every_event_counts_once(ray_cluster, broker,
                                                                                     unique_topic, tmp_path):
    node = ray_cluster.add_worker()
    trainer = None
    try:
        doomed = ray_cluster.node_id(node)
        (tmp_path / "first").mkdir()
        (tmp_path / "second").mkdir()
        config = pipeline_config(unique_topic, labelled_pair(tmp_path / "first", 8000, 8000, seed=5),
                                 tmp_path / "store",
                                 training={"workers": 3, "checkpoint_every_s": 0.3, "chunks_per_step": 2,
                                           "group_wait_s": 0.0})
        first = produce(config, broker.bootstrap)
        store = ModelStore(config.store.path, config.model.name)
        trainer = _driver(ray_cluster, ["train", "--bootstrap", broker.bootstrap], config, tmp_path)

        # Three workers spread over three nodes: one of them on the node about to be lost.
        placed = poll_until(lambda: next((m for m in _versions_since(store, None)
                                          if doomed in {w["node"] for w in m.workers}), None),
                            timeout_s=90, what="no version with a worker on the added node")
        node.kill_raylet()
        killed = time.monotonic()
        second = produce(config, broker.bootstrap, [f for f in pipeline_config(
            unique_topic, labelled_pair(tmp_path / "second", 3000, 3000, seed=9), tmp_path).dataset.files])

        def progressing():
            return next((m for m in _versions_since(store, placed.version)
                         if doomed not in {w["node"] for w in m.workers}
                         and sum(w["events_this_run"] for w in m.workers) > 0), None)

        poll_until(progressing, timeout_s=90, what="no version learned without the lost node")
        print(f"\nnode lost -> training progressing again: {time.monotonic() - killed:.1f} s")
        poll_until(lambda: "replacement trainer worker joined" in (tmp_path / "stderr").read_text(), timeout_s=90,
                   what="the lost worker's replacement never joined")
        print(f"node lost -> replacement worker joined: {time.monotonic() - killed:.1f} s")
        total = first.events + second.events
        poll_until(lambda: store.read_meta(store.latest()).counters["events_trained"] >= total, timeout_s=90,
                   what=f"the trainer never reached {total} events")
        trainer.send_signal(signal.SIGINT)
        assert trainer.wait(60) == 0
        output = (tmp_path / "stdout").read_text()  # Ray's own lines (a raylet's end) come before the status
        final = json.loads(output[output.rindex("\n{\n"):])
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
            trainer.wait(10)
        _lose(ray_cluster, node)

    records = read_topic(broker.bootstrap, config.dataset.topic)
    newest = store.read_meta(store.latest())
    assert newest.counters["events_trained"] == newest.events_seen == final["events_trained"] == total
    assert newest.counters["chunks"] == final["chunks"] == len(records)  # every chunk learned once
    assert final["duplicate_chunks"] == 0 and final["bad_messages"] == 0
    assert final["workers_lost"] >= 1 and doomed in final["last_worker_loss"]
    assert len(final["workers"]) == 3 and doomed not in {w["node"] for w in final["workers"]}
    stderr = (tmp_path / "stderr").read_text()
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if doomed in line and "partitions" in line]



def _acknowledged_keys(manifest) -> set[str]:
    """Every chunk key the manifest family records (a line cut short by a killed process left out)."""
    keys = set()
    for member in family(manifest):
        for line in member.read_text().splitlines(keepends=True)[1:]:
            if line.endswith("\n"):
                keys.add(json.loads(line)["key"])
    return keys


def test_files_of_a_producer_actor_lost_with_its_node_are_retaken_without_resending_acknowledged_chunks(
        ray_cluster, broker, unique_topic, tmp_path):
    # Producer actors only fit where the "hs_publish" resource is: first on one added node, then on the next.
    where = ["--resources", json.dumps({"hs_publish": 1})]
    node = ray_cluster.add_worker(where)
    producer, later = None, None
    manifest = tmp_path / "run.manifest.jsonl"
    files = [(generate_file(tmp_path / f"f{i}.root", ("background", "signal")[i % 2], EVENTS, seed=60 + i), i % 2)
             for i in range(6)]
    config = pipeline_config(unique_topic, files, tmp_path / "store",
                             producer={"ray_tasks": 2, "files_in_flight": 1, "manifest": str(manifest),
                                       "ray_resources": {"hs_publish": 0.5}})
    try:
        producer = _driver(ray_cluster, ["produce", "--bootstrap", broker.bootstrap], config, tmp_path)
        # The broker frozen once a chunk is acknowledged, so that the node is lost with files in flight.
        poll_until(lambda: _acknowledged_keys(manifest), timeout_s=90, interval_s=0.01, what="no chunk acknowledged")
        broker.pause()
        try:
            actors = [a for a in ray_cluster.listed("actors", "class_name", "_Publisher") if a["state"] == "ALIVE"]
            node.kill_raylet()
            assert all(process_gone(actor["pid"], timeout_s=30) for actor in actors)
            acknowledged = _acknowledged_keys(manifest)
        finally:
            broker.resume()
        _lose(ray_cluster, node)
        later = ray_cluster.add_worker(where)  # resources return: the replacements start there
        assert producer.wait(90) == 0
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait(10)
        for added in (node, later):
            if added in ray_cluster.workers:
                _lose(ray_cluster, added)

    output = (tmp_path / "stdout").read_text()
    summary = json.loads(output[output.rfind("\n{\n") + 1:])  # the report: the last JSON object, maybe all of stdout
    assert summary["files_ok"] == 6 and summary["files_failed"] == summary["files_partial"] == 0
    assert summary["files_retaken"] >= 1
    records = read_topic(broker.bootstrap, config.dataset.topic)
    sent = collections.Counter(r.key.decode() for r in records)
    unique = {r.key.decode(): int(dict(r.headers)["events"]) for r in records}
    assert sum(unique.values()) == 6 * EVENTS  # every event on the topic
    assert acknowledged and not {key for key, count in sent.items() if count > 1} & acknowledged
    assert summary["chunks"] + summary["chunks_skipped"] == len(unique)
    stderr = (tmp_path / "stderr").read_text()
    assert "retaken by another actor" in stderr and "Traceback" not in stderr
