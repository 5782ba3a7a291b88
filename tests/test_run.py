"""``hepstream run`` and ``hepstream status`` as a user runs them: real broker, Ray Serve and HTTP, counts exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hepstream.cli.status import _end_offsets, _served_version
from hepstream.config import KafkaConfig
from hepstream.models.store import ModelStore
from hepstream.run_state import RunState, state_path
from hepstream.serve.client import Client
from hepstream.stack.ports import free_port
from hepstream.streaming.datagen import generate_demo
from hepstream.waiting import poll_until
from tests.helpers import FIXED_NOISE, noise_in, process_gone

pytestmark = pytest.mark.integration

EVENTS_PER_CLASS = 1_500
EVENT = {"MET_pt": 30.0, "nMuon": 2, "nJet": 1, "Muon_pt": [40.0, 20.0], "Muon_eta": [0.1, -0.3],
         "Muon_phi": [1.0, -2.0], "Muon_mass": [0.1, 0.1], "Jet_pt": [50.0], "Jet_eta": [1.2], "Jet_btag": [0.3]}
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def pipeline(tmp_path) -> Path:
    generate_demo(tmp_path / "data", EVENTS_PER_CLASS, 100, seed=1)
    path = tmp_path / "pipeline.yaml"
    # Globs, which the following producer lists again; the held-out files (holdout_*.root) do not match them.
    files = [{"url": str(tmp_path / "data" / "signal*.root"), "label": 1},
             {"url": str(tmp_path / "data" / "background*.root"), "label": 0}]
    path.write_text(yaml.safe_dump({
        "dataset": {"name": f"run-{tmp_path.name[-12:]}", "files": files},
        "producer": {"max_chunk_events": 400, "poll_s": 0.5, "settle_s": 0.5},
        "model": {"name": "mine", "hidden": [8]},
        "training": {"checkpoint_every_s": 0.3, "validation_fraction": 0},  # every event learned, newest served
        "store": {"path": str(tmp_path / "store")},
        # The replicas' own ports too: Serve's default, 30000, is every concurrent run's on a shared machine.
        # No load balancer drops a replica here, and one replica swaps alone: a short drain and swap delay.
        "serve": {"http": {"port": free_port()}, "ray": {"direct_ingress_port": free_port(), "drain_s": 0.5},
                  "versions": {"poll_interval_s": 0.1, "swap_delay_s": 0.1}},
    }))
    return path


def _with_bootstrap(pipeline: Path, bootstrap: str) -> None:
    settings = yaml.safe_load(pipeline.read_text())
    pipeline.write_text(yaml.safe_dump({**settings, "kafka": {"bootstrap": bootstrap}}))


def _start(pipeline: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hepstream", "run", "--config", str(pipeline)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _status(pipeline: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "hepstream", "status", "--json", "--config", str(pipeline),
                             "--sample-s", "0.2"], capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode in (0, 3), result.stderr[-3000:]
    return json.loads(result.stdout)


def _state(pipeline: Path, service: subprocess.Popen) -> RunState:
    store = yaml.safe_load(pipeline.read_text())["store"]["path"]

    def running():
        assert service.poll() is None, service.communicate()[1][-3000:]
        return RunState.read(state_path(store))

    return poll_until(running, timeout_s=60, what="no state file of hepstream run")


def _settled(pipeline: Path, service: subprocess.Popen, events: int) -> dict:
    """Status once every event is trained and the server answers with the newest version.

    Until the server answers with the store's newest version at all, the test asks it itself: a ``hepstream
    status`` a second, a second of CPU each, would slow the service's start-up it waits for on two cores.
    """
    state = _state(pipeline, service)
    store = ModelStore(state.store, state.model)

    def serving_newest():
        assert service.poll() is None, service.communicate()[1][-3000:]
        return store.latest() is not None and _served_version(state) == store.latest()

    poll_until(serving_newest, timeout_s=150, interval_s=0.5, what="the newest version served")

    def done():
        assert service.poll() is None, service.communicate()[1][-3000:]
        status = _status(pipeline)
        settled = (status.get("events_trained") == events and status["version_served"] is not None
                   and status["version_served"] == status["version_newest"])
        return status if settled else None

    return poll_until(done, timeout_s=150, interval_s=1.0, what=f"{events} events trained and served")


def _stop(service: subprocess.Popen, state: RunState) -> str:
    service.send_signal(signal.SIGTERM)
    _, err = service.communicate(timeout=120)
    assert service.returncode == 0, err[-3000:]
    for pid in [state.broker_pid, *(s.pid for s in state.stages)]:
        assert pid is None or process_gone(pid), f"pid {pid} outlived hepstream run"
    assert RunState.read(Path(state.store) / ".hepstream-run" / "state.json") is None
    assert noise_in(err) == []
    for output in ("server.log", "server.out"):  # Ray prints some of its own lines on stdout
        log = (Path(state.store) / ".hepstream-run" / "logs" / output).read_text()
        noise = noise_in(log, FIXED_NOISE)
        assert noise == [], log[max(0, log.find(noise[0]) - 2000):][:8000]
    return err


def test_run_on_the_embedded_broker_publishes_trains_serves_and_survives_a_killed_trainer(pipeline, tmp_path):
    events = 2 * EVENTS_PER_CLASS
    service = _start(pipeline)
    try:
        state = _state(pipeline, service)
        assert state.broker_pid is not None
        status = _settled(pipeline, service, events)
        assert status["events_published"] == events and status["lag_events"] == 0
        assert status["files_published"] == status["files_seen"] == 2 and status["files_failed"] == 0
        assert status["stages"]["producer"]["state"] == "running" and status["files_pending"] == []  # following
        assert sum(_end_offsets(state.bootstrap, KafkaConfig(), state.topic).values()) == status["messages"] > 0
        store = ModelStore(state.store, "mine")
        assert status["version_newest"] == store.latest()
        assert 0 < status["prequential_auc"] <= 1
        answer = Client(status["serve_url"]).predict("mine", [EVENT])
        assert answer["version"] == status["version_served"] and len(answer["scores"]) == 1

        landed = generate_demo(tmp_path / "later", 300, 1, seed=3).train[0][0]  # signal.root
        landed.rename(tmp_path / "data" / "signal_later.root")  # lands whole, as a copy tool's rename does
        events += 300
        status = _settled(pipeline, service, events)
        assert status["files_seen"] == status["files_published"] == 3 and status["events_published"] == events

        trainer = state.stage("trainer").pid
        os.kill(trainer, signal.SIGKILL)
        restarted = poll_until(lambda: (s := RunState.read(state_path(state.store)))
                               and s.stage("trainer").restarts == 1 and s.stage("trainer").state == "running" and s,
                               timeout_s=60, what="the trainer was not restarted")
        assert restarted.stage("trainer").last_exit == "killed by SIGKILL"
        status = _settled(pipeline, service, events)
        assert status["events_trained"] == status["events_published"] == events  # nothing learned twice
        assert status["stages"]["trainer"]["restarts"] == 1
        assert status["requests"] == 1 and status["failed_requests"] == 0  # the one prediction; not status's probes
        assert status["latency_p50_ms"] is not None
        err = _stop(service, restarted)
    finally:
        if service.poll() is None:
            service.kill()
    assert "trainer died (killed by SIGKILL)" in err
    meta = ModelStore(state.store, "mine").read_meta(ModelStore(state.store, "mine").latest())
    assert meta.events_seen == events


def test_a_restarted_run_sends_nothing_again_and_learns_nothing_again(pipeline, broker):
    events = 2 * EVENTS_PER_CLASS
    _with_bootstrap(pipeline, broker.bootstrap)
    service = _start(pipeline)
    try:
        state = _state(pipeline, service)
        assert state.broker_pid is None and state.bootstrap == broker.bootstrap
        first = _settled(pipeline, service, events)
        _stop(service, state)
        ends = _end_offsets(broker.bootstrap, KafkaConfig(), state.topic)
        newest = ModelStore(state.store, "mine").latest()

        service = _start(pipeline)
        state = _state(pipeline, service)
        again = _settled(pipeline, service, events)
        assert _end_offsets(broker.bootstrap, KafkaConfig(), state.topic) == ends  # nothing re-sent
        assert {k: again[k] for k in ("events_published", "events_trained", "messages")} == \
               {k: first[k] for k in ("events_published", "events_trained", "messages")}
        assert again["version_served"] == again["version_newest"] >= newest
        _stop(service, state)
    finally:
        if service.poll() is None:
            service.kill()
    assert _status(pipeline)["running"] is False


def test_a_restarted_run_on_the_embedded_broker_learns_the_files_added_meanwhile(pipeline, tmp_path):
    """The embedded broker's topic starts empty again: the new file's chunks land at offset 0 and are learned."""
    events = 2 * EVENTS_PER_CLASS
    service = _start(pipeline)
    try:
        state = _state(pipeline, service)
        _settled(pipeline, service, events)
        _stop(service, state)

        settings = yaml.safe_load(pipeline.read_text())
        added = generate_demo(tmp_path / "more", 300, 1, seed=2).train[0]
        settings["dataset"]["files"].append({"url": str(added[0]), "label": added[1]})
        pipeline.write_text(yaml.safe_dump(settings))
        service = _start(pipeline)
        state = _state(pipeline, service)
        status = _settled(pipeline, service, events + 300)
        assert status["events_published"] == events + 300 and status["lag_events"] == 0
        assert status["messages"] == sum(_end_offsets(state.bootstrap, KafkaConfig(), state.topic).values())
        assert status["messages"] == 1  # only the new file went to the new log: 300 events fit one chunk
        err = _stop(service, state)
    finally:
        if service.poll() is None:
            service.kill()
    assert "empty topic" in err
