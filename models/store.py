"""Versioned model store on a filesystem: ``<root>/<model>/v000001/``.

A version is written into a hidden folder and renamed into place, so a reader
(the server polling for new versions) never sees half of one; staging folders
left by a killed trainer are removed by the next publish. A version the
filesystem refuses (full, read-only, no permission) is a
:class:`~hepstream.models.store_errors.StoreWriteError` that names the store,
the folder and the cause; the versions before it stay as they were. Version numbers only
grow, and only the newest ``store.keep`` versions stay on disk. Each version
holds the model state, as ``weights.pt`` (torch models, read back with
``torch.load(weights_only=True)``) or ``model.json`` (river and JSON user
models): a checkpoint is data, never code. ``meta.json`` holds what a reader
needs (a :class:`~hepstream.models.version_meta.VersionMeta`: feature spec
and state, metrics, lineage); ``trainer.json`` the trainer's resume state
(offsets, seen chunk keys, counters); ``validation.arrow``, when the run keeps
a validation slice, its reservoir (:mod:`~hepstream.models.validation`).

The server follows the newest *promoted* version (:meth:`ModelStore.latest_servable`,
see :mod:`~hepstream.models.gate`), so pruning never removes it, however many
rejected versions follow it.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from hepstream.config import FeaturesConfig, TrainingConfig
from hepstream.model_kinds import stored_model_config
from hepstream.models.features import BranchSpec, FeaturePipeline
from hepstream.models.registry import build_estimator
from hepstream.models.store_errors import StoreError, StoreWriteError, describe_os_error
from hepstream.models.version_meta import VersionMeta

_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_STAGING = re.compile(r"^\.staging-v\d+-(\d+)-")


class LoadedModel:
    """One published version, ready to score events in branch space."""

    def __init__(self, name: str, version: int, meta: VersionMeta, model_state: dict):
        self.name = name
        self.version = version
        self.meta = meta
        self.features = FeaturePipeline(FeaturesConfig.model_validate(meta.features))
        self.features.load_state_dict(meta.feature_state)
        self.config = stored_model_config(meta.model)
        self.estimator = build_estimator(self.config, self.features, TrainingConfig(device="cpu"))
        self.estimator.load_state_dict(model_state)

    @property
    def inputs(self) -> list[BranchSpec]:
        return self.features.inputs

    @property
    def classes(self) -> int:
        return self.config.classes

    def predict(self, batch: pa.RecordBatch) -> np.ndarray:
        """Probability of class 1, ``(n,)``, for binary models; ``(n, classes)`` probabilities otherwise."""
        return self.estimator.predict_proba(self.features.transform(batch))


def _model_file(model_state: dict, checkpoint: str) -> dict[str, bytes]:
    """The model state as the one file of a version that holds it."""
    if checkpoint != "torch":
        return {"model.json": json.dumps(model_state).encode()}
    import torch

    buffer = io.BytesIO()
    torch.save(model_state, buffer)
    return {"weights.pt": buffer.getvalue()}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

    def latest_servable(self) -> int | None:
        """The newest promoted version (the quality gate let it through, or an operator forced it): the one
        servers answer with. Versions written before the gate read as promoted; a version whose ``meta.json``
        cannot be read is returned too, so that the server tries it and reports why it fails to load."""
        for version in reversed(self.versions()):
            try:
                if not self.read_meta(version).promoted:
                    continue
            except StoreError:
                pass
            return version
        return None

    def promote(self, version: int, reason: str) -> VersionMeta:
        """Mark a version promoted with ``reason`` (an operator forcing it): its ``meta.json`` is replaced by
        an atomic rename, so a server polling meanwhile reads the old record or the new one, never half."""
        meta = replace(self.read_meta(version), promoted=True, promotion_reason=reason)
        path = self.path(version) / "meta.json"
        partial = path.with_name(f".meta.json.{os.getpid()}.{time.monotonic_ns()}")
        try:
            partial.write_text(meta.to_json())
            os.replace(partial, path)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise StoreWriteError(self.root, self.path(version), describe_os_error(error, self.root, 0),
                                  error.errno) from error
        return meta

    def publish(self, model_state: dict, meta: VersionMeta, trainer_state: dict, checkpoint: str = "torch",
                files: dict[str, bytes] | None = None) -> int:
        """Write a new version atomically and return its number.

        ``checkpoint`` is ``"torch"`` (``model_state`` holds tensors) or ``"json"``. The
        version's name, number, time and checkpoint format replace those of ``meta``; ``files`` are more
        files of the version (``validation.arrow``).
        Every file is made in memory before any is written, so a filesystem that
        refuses one fails with the OS's error and its errno (torch writing to a
        file reports a full disk as ``basic_ios::clear: iostream error``); any
        such failure leaves no trace of the version and raises :class:`StoreWriteError`.
        """
        version = (self.latest() or 0) + 1
        meta = replace(meta, name=self.model, version=version, created=time.time(), checkpoint=checkpoint)
        files = {**_model_file(model_state, checkpoint), "meta.json": meta.to_json().encode(),
                 "trainer.json": json.dumps(trainer_state).encode(), **(files or {})}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._remove_abandoned_staging()
            self._write_version(version, files)
        except OSError as error:
            cause = describe_os_error(error, self.root, sum(map(len, files.values())))
            raise StoreWriteError(self.root, self.path(version), cause, error.errno) from error
        self._prune()
        return version

    def _write_version(self, version: int, files: dict[str, bytes]) -> None:
        """Write the files into a staging folder and rename it into place; on any failure remove it."""
        staging = self.folder / f".staging-v{version:06d}-{os.getpid()}-{time.monotonic_ns()}"
        staging.mkdir()
        try:
            for name, data in files.items():
                (staging / name).write_bytes(data)
            os.rename(staging, self.path(version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _remove_abandoned_staging(self) -> None:
        """Staging folders whose writer died (SIGKILL mid-publish) are never renamed: remove them."""
        for name in os.listdir(self.folder):
            match = _STAGING.match(name)
            if match and not _process_alive(int(match.group(1))):
                shutil.rmtree(self.folder / name, ignore_errors=True)

    def _prune(self) -> None:
        old = self.versions()[: -self.keep]
        served = self.latest_servable() if old else None
        for version in old:
            if version != served:
                shutil.rmtree(self.path(version), ignore_errors=True)

    def read_meta(self, version: int) -> VersionMeta:
        return self._read(version, "meta.json", VersionMeta.from_json)

    def _read(self, version: int, name: str, parse):
        path = self.path(version) / name
        try:
            return parse(path.read_bytes() if name.endswith(".pt") else path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{self.path(version)}: version {version} of model {self.model!r} is missing "
                             f"{name} (was it pruned? versions on disk: {self.versions()[-5:]})") from None
        except (OSError, ValueError, RuntimeError) as error:
            raise StoreError(f"{path}: unreadable ({error})") from None

    def read_file(self, version: int, name: str) -> bytes | None:
        """A further file of a version (``validation.arrow``) as bytes; None when the version has none."""
        try:
            return (self.path(version) / name).read_bytes()
        except FileNotFoundError:
            return None

    def read(self, version: int) -> tuple[VersionMeta, dict, dict]:
        """(meta, model_state, trainer_state) of a version, for resuming training."""
        meta = self.read_meta(version)
        trainer_state = self._read(version, "trainer.json", json.loads)
        if meta.checkpoint == "torch":
            import torch

            model_state = self._read(version, "weights.pt",
                                     lambda data: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        else:
            model_state = self._read(version, "model.json", json.loads)
        return meta, model_state, trainer_state

    def load(self, version: int) -> LoadedModel:
        meta, model_state, _ = self.read(version)
        return LoadedModel(self.model, version, meta, model_state)
