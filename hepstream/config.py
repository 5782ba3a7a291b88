"""The one YAML file that describes a pipeline, validated before anything starts.

Every option has a default that works on one machine, so an empty file is a
valid configuration. Errors are collected by pydantic and reported together,
each naming the dotted key at fault (``features.jagged.0.length``), so a
physicist fixes the whole file in one go instead of one key per run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(value: int | str) -> int:
    """Turn ``4_000_000``, ``"4 MB"`` or ``"1 MiB"`` into a number of bytes.

    >>> parse_bytes("8 MB"), parse_bytes("1 KiB"), parse_bytes(512)
    (8000000, 1024, 512)
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4000000 or '4 MB'")
    if isinstance(value, (int, float)):
        number, unit = value, ""
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if not match or match.group(2).upper() not in _SIZE_UNITS:
            raise ValueError(f"{value!r} is not a size; use bytes or a unit such as '4 MB' or '1 MiB'")
        number, unit = float(match.group(1)), match.group(2).upper()
    size = int(number * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"size must be positive, got {value!r}")
    return size


ByteSize = Annotated[int, BeforeValidator(parse_bytes)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSpec(_Section):
    """One input file and, for per-file labelled datasets, its class."""

    url: str = Field(description="Local path, root:// or https:// URL")
    label: int | None = Field(default=None, ge=0, description="Class of every event in this file")


class DatasetConfig(_Section):
    name: str = Field(default="demo", pattern=r"^[A-Za-z0-9._-]+$")
    tree: str = "Events"
    files: list[FileSpec] = Field(default_factory=list)
    label_branch: str | None = Field(default=None, description="Per-event label branch, instead of per-file labels")

    @property
    def topic(self) -> str:
        return f"{self.name}.events"


class KafkaConfig(_Section):
    bootstrap: str | None = Field(default=None, description="host:port[,host:port...]; unset: `hepstream demo` starts its own broker")
    partitions: int = Field(default=4, ge=1, le=1024)
    compression: Literal["zstd", "lz4", "gzip", "snappy", "none"] = "zstd"
    max_message_bytes: ByteSize = Field(default=4_000_000, description="Topic max.message.bytes; chunks stay below it")
    linger_ms: int = Field(default=5, ge=0)


class ProducerConfig(_Section):
    step_size: ByteSize = Field(default=2_000_000, description="Uncompressed bytes of branch data per chunk")
    max_chunk_events: int = Field(default=50_000, ge=1)


class JaggedFeature(_Section):
    """A collection such as ``Muon_*``: the first ``length`` objects, padded, with a mask."""

    branches: list[str] = Field(min_length=1)
    length: int = Field(default=4, ge=1, le=1024)
    sort_by: str | None = Field(default=None, description="Branch to order objects by, descending (e.g. Muon_pt)")

    @model_validator(mode="after")
    def _sort_key_is_selected(self) -> JaggedFeature:
        if self.sort_by is not None and self.sort_by not in self.branches:
            raise ValueError(f"sort_by {self.sort_by!r} must be one of branches {self.branches}")
        return self


class FeaturesConfig(_Section):
    flat: list[str] = Field(default_factory=lambda: ["MET_pt", "nMuon", "nJet"])
    jagged: list[JaggedFeature] = Field(
        default_factory=lambda: [
            JaggedFeature(branches=["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass"], length=4),
            JaggedFeature(branches=["Jet_pt", "Jet_eta", "Jet_btag"], length=4),
        ]
    )
    normalize: bool = True

    @property
    def branches(self) -> list[str]:
        """Every branch the features read, in a stable order."""
        names = list(self.flat)
        for collection in self.jagged:
            names.extend(b for b in collection.branches if b not in names)
        return names


class ModelConfig(_Section):
    name: str = Field(default="demo", pattern=r"^[A-Za-z0-9._-]+$")
    kind: Literal["mlp"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64, 64])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class TrainingConfig(_Section):
    batch_size: int = Field(default=512, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    chunks_per_step: int = Field(default=8, ge=1, description="Chunks learned together, shuffled")
    group_wait_s: float = Field(default=2.0, ge=0, description="Longest wait for a group of chunks to fill")
    checkpoint_every_s: float = Field(default=3.0, gt=0, description="Publish a model version at most this often")
    metrics_window: int = Field(default=20_000, ge=100, description="Events in the sliding window of running metrics")
    seed: int = 0
    threads: int = Field(default=1, ge=1, description="torch intra-op threads of one trainer")


class StoreConfig(_Section):
    path: Path = Path("hepstream-store")
    keep: int = Field(default=20, ge=1, description="Newest versions kept on disk")


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    poll_interval_s: float = Field(default=0.5, gt=0)
    max_events_per_request: int = Field(default=100_000, ge=1)


class Config(_Section):
    """The whole pipeline: what to read, where to stream it, how to learn and serve."""

    dataset: DatasetConfig = DatasetConfig()
    kafka: KafkaConfig = KafkaConfig()
    producer: ProducerConfig = ProducerConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    store: StoreConfig = StoreConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _chunks_fit_messages(self) -> Config:
        if self.producer.step_size > self.kafka.max_message_bytes:
            raise ValueError(
                f"producer.step_size ({self.producer.step_size} B) exceeds "
                f"kafka.max_message_bytes ({self.kafka.max_message_bytes} B)"
            )
        return self


class ConfigError(ValueError):
    """A configuration file that cannot be used, with every problem named by its key."""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} problem(s)"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def config_from_dict(data: dict | None, source: str = "config") -> Config:
    try:
        return Config.model_validate(data or {})
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: str | Path | None) -> Config:
    """Read and validate a YAML file; ``None`` gives the one-machine defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return config_from_dict(data, str(path))
