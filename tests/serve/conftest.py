"""Stand-ins for hepstream.models' store and model, a real version publisher, and an HTTP server harness.

The stand-in store keeps versions as small JSON files, as the real one keeps
them on disk: a test publishes a version by writing a file, and the watcher,
in this process or in a Ray Serve replica, picks it up by polling. A version
file says how its model behaves (a weight in the score, a slow or failing load,
a missing branch, NaN scores), so each test states what it needs.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import uvicorn

from hepstream.config import FeaturesConfig, JaggedFeature, ServeConfig, TrainingConfig
from hepstream.model_kinds import MLPConfig
from hepstream.models.features import BranchSpec, FeatureError, FeaturePipeline
from hepstream.models.registry import build_estimator
from hepstream.models.store import ModelStore
from hepstream.models.version_meta import VersionMeta

INPUTS = [BranchSpec("MET_pt", False), BranchSpec("Muon_pt", True)]


def score_of(met_pt: float, muon_pt: list[float], weight: float) -> np.float32:
    """What the stand-in model answers for one event: a function of MET_pt and the leading muon."""
    leading = muon_pt[0] if muon_pt else 0.0
    with np.errstate(over="ignore"):  # as a real network does, overflow saturates instead of raising
        return np.float32(1.0 / (1.0 + np.exp(-(0.01 * met_pt + 0.02 * leading - weight))))


class StandinModel:
    def __init__(self, name: str, version: int, spec: dict):
        self.name = name
        self.version = version
        self.spec = spec
        self.inputs = INPUTS
        self.meta = VersionMeta(name=name, version=version, events_seen=1000 * version, parent=version - 1 or None,
                                created=spec.get("created", 1.7e9 + version),
                                metrics={"loss": 0.5 / version, "auc": float("nan") if version == 1 else 0.8},
                                features={}, feature_state={}, model={}, promoted=spec.get("promoted", True),
                                promotion_reason=spec.get("reason"))

    def predict(self, batch: pa.RecordBatch) -> np.ndarray:
        for name in self.spec.get("needs", []):
            if batch.schema.get_field_index(name) < 0:
                raise FeatureError(name, "missing")
        if self.spec.get("explode"):
            raise RuntimeError("stand-in model broke")
        met = batch.column("MET_pt").to_pylist()
        muons = batch.column("Muon_pt").to_pylist()
        scores = np.array([score_of(m, mu, self.spec.get("weight", 0.0)) for m, mu in zip(met, muons)],
                          dtype=np.float32)
        if self.spec.get("nan"):
            scores[-1] = np.nan
        return scores


class StandinStore:
    """Versions are ``<root>/<model>/<version>.json``; loading one reads it and sleeps ``load_delay_s``.

    Loads are recorded in ``loads`` and, for other processes, as ``<version>.loading`` files.
    """

    def __init__(self, root: str | Path, model: str):
        self.folder = Path(root) / model
        self.model = model
        self.loads: list[int] = []

    def versions(self) -> list[int]:
        return sorted(int(path.stem) for path in self.folder.glob("*.json"))

    def latest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def latest_servable(self) -> int | None:
        """The newest version whose spec does not say ``"promoted": false`` (an unreadable one is tried, as the
        real store's watcher would find it broken on load)."""
        newest = self.latest()
        for version in reversed(self.versions()):
            if version <= (newest or 0) and self._promoted(version):
                return version
        return None

    def _promoted(self, version: int) -> bool:
        try:
            return json.loads((self.folder / f"{version}.json").read_text()).get("promoted", True)
        except ValueError:
            return True

    def load(self, version: int) -> StandinModel:
        self.loads.append(version)
        (self.folder / f"{version}.loading").touch()  # seen from other processes, such as a Serve replica
        spec = json.loads((self.folder / f"{version}.json").read_text())  # a corrupt version raises here
        time.sleep(spec.get("load_delay_s", 0.0))
        return StandinModel(self.model, version, spec)

    def read_meta(self, version: int) -> VersionMeta:
        return StandinModel(self.model, version, json.loads((self.folder / f"{version}.json").read_text())).meta

    def publish(self, version: int, **spec) -> None:
        self._write(version, json.dumps(spec))

    def publish_corrupt(self, version: int) -> None:
        self._write(version, '{"weight": ')

    def _write(self, version: int, text: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f"{version}.tmp"
        partial.write_text(text)
        partial.rename(self.folder / f"{version}.json")


def publish_real_version(root: str | Path, model: str, seed: int, classes: int = 2) -> int:
    """Publish an untrained MLP over MET_pt and two muons as hepstream.models' trainer would; its version."""
    features = FeaturesConfig(flat=["MET_pt"], jagged=[JaggedFeature(branches=["Muon_pt"], length=2)])
    network_config = MLPConfig(name=model, hidden=[8], classes=classes)
    pipeline = FeaturePipeline(features)
    network = build_estimator(network_config, pipeline, TrainingConfig(seed=seed, device="cpu")).module
    meta = VersionMeta(events_seen=100 * seed, metrics={"auc": 0.5}, features=features.model_dump(mode="json"),
                       feature_state=pipeline.state_dict(), model=network_config.model_dump(mode="json"))
    return ModelStore(root, model).publish({"model": network.state_dict()}, meta, {"offsets": {}})


def quick_settings(**sections) -> ServeConfig:
    """Serve settings whose replicas look for new versions every 20 ms; ``sections`` as in the YAML file."""
    return ServeConfig.model_validate({**sections, "versions": {"poll_interval_s": 0.02, **sections.get("versions", {})}})


def wait_for(condition, timeout_s: float = 10.0, what: str = "condition"):
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


class ServedApp:
    """An ASGI app on a real uvicorn server in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> ServedApp:
        self.thread.start()
        wait_for(lambda: self.server.started, what="uvicorn to start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def store(tmp_path) -> StandinStore:
    return StandinStore(tmp_path / "store", "demo")


@pytest.fixture
def serve_standin(store):
    """``serve_standin(replica, **serve_sections)``: the app over the stand-in store on uvicorn, stopped after the test."""
    from hepstream.serve.app import create_app

    started = []

    def start(replica: str | None = None, **sections) -> ServedApp:
        app = create_app(store, model_name="demo", settings=quick_settings(**sections), replica=replica)
        served = ServedApp(app).__enter__()
        served.app = app
        started.append(served)
        return served

    yield start
    for served in started:
        served.__exit__(None, None, None)


def serve_version(served: ServedApp, store: StandinStore, version: int, **spec) -> None:
    """Publish a stand-in version and wait until the served app answers with it."""
    store.publish(version, **spec)
    wait_for(lambda: getattr(served.app.state.watcher.current, "version", None) == version,
             what=f"version {version} to be served")


@pytest.fixture
def standins():
    """This module's helpers, for tests to use: test modules cannot import a conftest."""
    return sys.modules[__name__]
