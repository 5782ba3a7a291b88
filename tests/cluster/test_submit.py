"""``hepstream submit`` and ``hepstream jobs`` against the session's real 2-node Ray cluster, with its token.

The producer (two Ray actors) and the trainer (two worker actors) run as Ray
jobs sent by the command line, from a configuration whose paths are
relative; the counts are read back from the model store the jobs wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from hepstream.models.store import ModelStore
from hepstream.ray_jobs import CLEAN_STOP
from hepstream.waiting import poll_until
from tests.helpers import labelled_pair


def hepstream(cluster, *args: str, env: dict[str, str] | None = None, timeout_s: float = 240):
    """The ``hepstream`` command as a user runs it, with the cluster's token in its environment unless ``env``."""
    environment = {**os.environ, **(cluster.client_env() if env is None else env)}
    environment.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "hepstream", *args], env=environment, capture_output=True,
                          text=True, timeout=timeout_s)


def write_pipeline(folder: Path, broker, name: str) -> Path:
    """A pipeline file whose inputs, manifest and store are relative to its folder, as a user writes one."""
    labelled_pair(folder, 1500, 1500, seed=5)
    config = {
        "dataset": {"name": name, "files": [{"url": "sig.root", "label": 1}, {"url": "bkg.root", "label": 0}]},
        "kafka": {"bootstrap": broker.bootstrap, "partitions": 2},
        "producer": {"ray_tasks": 2, "max_chunk_events": 500, "manifest": "manifest.jsonl"},
        "model": {"name": "m", "hidden": [16]},
        "training": {"workers": 2, "checkpoint_every_s": 0.2, "chunks_per_step": 2, "group_wait_s": 0.0,
                     "topic_wait_s": 30},
        "store": {"path": "store"},
        "submit": {"python": sys.executable, "stop_grace_s": 20},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def final_report(log: str) -> dict:
    """The JSON object a job printed last (its report), from its log."""
    start = log.rindex("\n{\n")
    return json.loads(log[start:log.index("\n}\n", start) + 3])


def test_produce_and_train_as_jobs_then_stop_the_trainer_with_a_checkpoint(ray_cluster, broker, unique_topic,
                                                                           tmp_path):
    pipeline = write_pipeline(tmp_path, broker, unique_topic)
    address = ["--address", ray_cluster.dashboard_url]

    produced = hepstream(ray_cluster, "submit", "produce", *address, "--config", str(pipeline), "--follow")
    assert produced.returncode == 0, produced.stderr + produced.stdout
    assert (f"store.path 'store' is relative, and the job runs in Ray's copy of its working dir: sent as "
            f"{tmp_path}/store") in produced.stderr
    assert f"dataset.files.0.url 'sig.root' is relative" in produced.stderr
    report = final_report(produced.stdout)
    assert report["events"] == 3000 and report["files_ok"] == 2 and report["files_failed"] == 0
    assert list(tmp_path.glob("manifest.jsonl.task-*"))  # in the configuration's folder, not in Ray's copy

    trained = hepstream(ray_cluster, "submit", "train", *address, "--config", str(pipeline))
    assert trained.returncode == 0, trained.stderr
    job_id = trained.stdout.strip()
    store = ModelStore(tmp_path / "store", "m")
    poll_until(lambda: store.latest() and store.read_meta(store.latest()).events_seen == 3000, timeout_s=120,
               what="no version holding all 3000 events")
    listed = hepstream(ray_cluster, "jobs", "list", *address)
    assert f"{job_id}\tRUNNING\t{sys.executable} -m hepstream train --config pipeline.yaml" in listed.stdout

    stopped = hepstream(ray_cluster, "jobs", "stop", *address, job_id)
    log = hepstream(ray_cluster, "jobs", "logs", *address, job_id).stdout
    assert stopped.returncode == 0, stopped.stderr + log
    assert f"job {job_id} STOPPED: it stopped cleanly within its 20 s grace" in stopped.stdout
    status = hepstream(ray_cluster, "jobs", "status", *address, job_id)
    assert status.stdout.startswith(f"{job_id}\tSTOPPED")
    newest = store.read_meta(store.latest())
    assert f"hepstream train: {CLEAN_STOP} SIGTERM: newest version v{newest.version} holds 3000 events" in log
    assert newest.events_seen == newest.counters["events_trained"] == 3000
    assert [w["partitions"] for w in newest.workers] == [[0], [1]]
    supervisor = next(ray_cluster.head.temp_dir.glob(f"session_*/logs/jobs/supervisor-{job_id}.log")).read_text()
    assert "terminated gracefully with SIGTERM" in supervisor and "SIGKILL" not in supervisor
    print("SIGTERM to exit:", re.search(r"([\d.]+) s after the signal", log).group(1), "s")


def test_a_missing_token_is_named_with_where_it_was_looked_for(ray_cluster, tmp_path):
    refused = hepstream(ray_cluster, "jobs", "list", "--address", ray_cluster.dashboard_url,
                        env={"RAY_AUTH_TOKEN": "", "HOME": str(tmp_path)})
    assert refused.returncode == 3
    assert refused.stderr == (f"hepstream jobs: the Ray job server at {ray_cluster.dashboard_url} wants a token and "
                              "none was found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token): "
                              "`ray get-auth-token` on the cluster's head node prints it\n")


def test_a_wrong_token_is_refused_in_one_line(ray_cluster, tmp_path):
    refused = hepstream(ray_cluster, "jobs", "list", "--address", ray_cluster.dashboard_url,
                        env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32})
    assert refused.returncode == 3
    assert refused.stderr.startswith(f"hepstream jobs: the Ray job server at {ray_cluster.dashboard_url} refused "
                                     "the token from RAY_AUTH_TOKEN (")
    assert "`ray get-auth-token` on the head node prints the right one" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1

    (tmp_path / "token").write_text("")
    empty = hepstream(ray_cluster, "jobs", "list", "--address", ray_cluster.dashboard_url,
                      env={"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")})
    assert empty.returncode == 3
    assert f"the Ray token file (RAY_AUTH_TOKEN_PATH {tmp_path}/token) is empty" in empty.stderr
