"""``hepstream submit`` and ``hepstream jobs`` against the session's real 2-node Ray cluster, with its token.

The producer (two Ray actors) and the trainer (two worker actors) run as Ray
jobs sent by the command line, from a configuration whose paths are
relative; the counts are read back from the model store the jobs wrote.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests
import yaml

from hepstream.cli import main
from hepstream.models.store import ModelStore
from hepstream.ray_jobs import CLEAN_STOP
from hepstream.stack.ports import free_port
from hepstream.waiting import poll_until
from tests.helpers import labelled_pair


class Commands:
    """The ``hepstream`` command line as a user runs it, in this process (no interpreter start-up per command),
    with the cluster's token in the environment; each call gives the exit status, stdout and stderr."""

    def __init__(self, cluster, monkeypatch, capfd):
        self.address, self.capfd = ["--address", cluster.dashboard_url], capfd
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        for name, value in cluster.client_env().items():
            monkeypatch.setenv(name, value)

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capfd.readouterr()
        status = main([*args, *self.address])
        out, err = self.capfd.readouterr()
        return status, out, err


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
                                                                           tmp_path, monkeypatch, capfd):
    pipeline = write_pipeline(tmp_path, broker, unique_topic)
    hepstream = Commands(ray_cluster, monkeypatch, capfd)

    status, produce_id, err = hepstream("submit", "produce", "--config", str(pipeline))
    assert status == 0, err
    assert (f"store.path 'store' is relative, and the job runs in Ray's copy of its working dir: sent as "
            f"{tmp_path}/store") in err
    assert "dataset.files.0.url 'sig.root' is relative" in err
    status, job_id, err = hepstream("submit", "train", "--config", str(pipeline))  # starts while it produces
    assert status == 0, err
    job_id = job_id.strip()

    status, produced, _ = hepstream("jobs", "logs", produce_id.strip(), "--follow")
    assert status == 0, produced  # the job SUCCEEDED
    report = final_report(produced)
    assert report["events"] == 3000 and report["files_ok"] == 2 and report["files_failed"] == 0
    assert list(tmp_path.glob("manifest.jsonl.task-*"))  # in the configuration's folder, not in Ray's copy

    store = ModelStore(tmp_path / "store", "m")
    poll_until(lambda: store.latest() and store.read_meta(store.latest()).events_seen == 3000, timeout_s=120,
               what="no version holding all 3000 events")
    _, listed, _ = hepstream("jobs", "list")
    assert f"{job_id}\tRUNNING\t{sys.executable} -m hepstream train --config pipeline.yaml" in listed

    status, stopped, err = hepstream("jobs", "stop", job_id)
    log = hepstream("jobs", "logs", job_id)[1]
    assert status == 0, err + log
    assert f"job {job_id} STOPPED: it stopped cleanly within its 20 s grace" in stopped
    assert hepstream("jobs", "status", job_id)[1].startswith(f"{job_id}\tSTOPPED")
    newest = store.read_meta(store.latest())
    assert f"hepstream train: {CLEAN_STOP} SIGTERM: newest version v{newest.version} holds 3000 events" in log
    assert newest.events_seen == newest.counters["events_trained"] == 3000
    assert [w["partitions"] for w in newest.workers] == [[0], [1]]
    supervisor = next(ray_cluster.head.temp_dir.glob(f"session_*/logs/jobs/supervisor-{job_id}.log")).read_text()
    assert "terminated gracefully with SIGTERM" in supervisor and "SIGKILL" not in supervisor
    print("SIGTERM to exit:", re.search(r"([\d.]+) s after the signal", log).group(1), "s")


def jobs_list(cluster, monkeypatch, capfd, **env: str) -> tuple[int, str]:
    """``hepstream jobs list`` in this process with ``env`` as the only Ray variables; its status and stderr."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status = main(["jobs", "list", "--address", cluster.dashboard_url])
    return status, capfd.readouterr().err


def test_a_missing_empty_or_wrong_token_is_one_line_naming_where_it_came_from(ray_cluster, monkeypatch, capfd,
                                                                            tmp_path):
    assert jobs_list(ray_cluster, monkeypatch, capfd, HOME=str(tmp_path)) == (3, (
        f"hepstream jobs: the Ray job server at {ray_cluster.dashboard_url} wants a token and none was found "
        "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token): `ray get-auth-token` on the cluster's head node "
        "prints it\n"))

    (tmp_path / "token").write_text("")
    assert jobs_list(ray_cluster, monkeypatch, capfd, RAY_AUTH_TOKEN_PATH=str(tmp_path / "token")) == (3, (
        f"hepstream jobs: the Ray token file (RAY_AUTH_TOKEN_PATH {tmp_path}/token) is empty: copy the cluster's "
        "token into it (`ray get-auth-token` on the head node prints it)\n"))

    status, refused = jobs_list(ray_cluster, monkeypatch, capfd, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32)
    assert status == 3 and len(refused.splitlines()) == 1
    assert refused.startswith(f"hepstream jobs: the Ray job server at {ray_cluster.dashboard_url} refused the token "
                              "from RAY_AUTH_TOKEN (Authentication failed: Forbidden: Invalid authentication token)")
    assert refused.endswith("`ray get-auth-token` on the head node prints the right one\n")

    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(ray_cluster.token)
    assert jobs_list(ray_cluster, monkeypatch, capfd, HOME=str(tmp_path)) == (0, "")  # Ray's default file


def test_serve_joins_the_cluster_with_address_and_stops_cleanly(ray_cluster, tmp_path):
    port = free_port()
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"store": {"path": str(tmp_path / "store")}, "model": {"name": "m"},
                                        "serve": {"http": {"port": port}, "ray": {"haproxy": False}}}))
    environment = {**os.environ, **ray_cluster.client_env()}
    environment.pop("RAY_ADDRESS", None)
    server = subprocess.Popen([sys.executable, "-m", "hepstream", "serve", "--address", ray_cluster.address,
                               "--config", str(pipeline)], env=environment, stderr=subprocess.PIPE, text=True)
    try:
        poll_until(lambda: _answers(f"http://127.0.0.1:{port}/v1/health/live"), timeout_s=120,
                   what=f"hepstream serve not answering on port {port}")
        applications = requests.get(f"{ray_cluster.dashboard_url}/api/serve/applications/", timeout=10,
                                    headers={"Authorization": f"Bearer {ray_cluster.token}"}).json()
        assert applications["applications"]["hepstream"]["status"] == "RUNNING"  # on the cluster, not a Ray of its own
    finally:
        server.send_signal(signal.SIGTERM)
        _, errors = server.communicate(timeout=60)
    assert server.returncode == 0, errors
    assert f"hepstream serve: {CLEAN_STOP} SIGTERM: Serve shut down" in errors


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
