"""Versioned model store on a filesystem: ``<root>/<model>/v000001/``.

A version is written into a hidden folder and renamed into place, so a reader
(the server polling for new versions) never sees half of one. Version numbers
only grow. Each version holds the weights (``weights.pt``, read back with
``torch.load(weights_only=True)``: a checkpoint is data, never code), the
metadata a reader needs (``meta.json``: feature spec and state, metrics,
lineage) and the trainer's resume state (``trainer.json``: offsets, seen chunk
keys).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from hepstream.config import FeaturesConfig, ModelConfig
from hepstream.models.features import BranchSpec, FeaturePipeline
from hepstream.models.registry import build_model

_VERSION_DIR = re.compile(r"^v(\d{6,})$")


class StoreError(RuntimeError):
    """A version that is missing or unreadable; names the folder."""


class LoadedModel:
    """One published version, ready to score events in branch space."""

    def __init__(self, name: str, version: int, meta: dict, weights: dict):
        self.name = name
        self.version = version
        self.meta = meta
        self.features = FeaturePipeline(FeaturesConfig.model_validate(meta["features"]))
        self.features.load_state_dict(meta["feature_state"])
        self.model = build_model(ModelConfig.model_validate(meta["model"]), self.features.n_features)
        self.model.load_state_dict(weights["model"])
        self.model.eval()

    @property
    def inputs(self) -> list[BranchSpec]:
        return self.features.inputs

    def predict(self, batch: pa.RecordBatch) -> np.ndarray:
        x = torch.from_numpy(self.features.transform(batch))
        with torch.no_grad():
            return torch.sigmoid(self.model(x)).numpy()


class ModelStore:
    def __init__(self, root: str | Path, model: str, keep: int = 20):
        self.root = Path(root)
        self.model = model
        self.folder = self.root / model
        self.keep = keep

    def versions(self) -> list[int]:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_VERSION_DIR.match, names) if m)

    def latest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def path(self, version: int) -> Path:
        return self.folder / f"v{version:06d}"

    def publish(self, weights: dict, meta: dict, trainer_state: dict) -> int:
        """Write a new version atomically and return its number."""
        self.folder.mkdir(parents=True, exist_ok=True)
        version = (self.latest() or 0) + 1
        staging = self.folder / f".staging-v{version:06d}-{os.getpid()}-{time.monotonic_ns()}"
        staging.mkdir()
        meta = {**meta, "name": self.model, "version": version, "created": time.time()}
        torch.save(weights, staging / "weights.pt")
        (staging / "meta.json").write_text(json.dumps(meta, indent=1))
        (staging / "trainer.json").write_text(json.dumps(trainer_state))
        try:
            os.rename(staging, self.path(version))
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(f"could not publish {self.path(version)}: {error}") from None
        self._prune()
        return version

    def _prune(self) -> None:
        for version in self.versions()[: -self.keep]:
            shutil.rmtree(self.path(version), ignore_errors=True)

    def read(self, version: int) -> tuple[dict, dict, dict]:
        """(meta, weights, trainer_state) of a version, for resuming training."""
        folder = self.path(version)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            trainer_state = json.loads((folder / "trainer.json").read_text())
            weights = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        except FileNotFoundError as error:
            raise StoreError(f"{folder}: version {version} of model {self.model!r} is missing {error.filename}") from None
        except (OSError, ValueError, RuntimeError) as error:
            raise StoreError(f"{folder}: unreadable ({error})") from None
        return meta, weights, trainer_state

    def load(self, version: int) -> LoadedModel:
        meta, weights, _ = self.read(version)
        return LoadedModel(self.model, version, meta, weights)
