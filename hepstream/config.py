"""The one YAML file that describes a pipeline, validated before anything starts.

Every option has a default that works on one machine, so an empty file is a
valid configuration. Errors are collected by pydantic and reported together,
each naming the dotted key at fault (``features.jagged.0.length``), so a
physicist fixes the whole file in one go instead of one key per run.
"""

from __future__ import annotations

import datetime
import re
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from hepstream.expressions import Expression
from hepstream.model_kinds import MODEL_KINDS, MLPConfig, ModelConfig
from hepstream.suggest import did_you_mean
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class SampleConfig(_Section):
    """A named group of files (a physics dataset such as ``ggH_4mu``) sharing a label and a tree."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    files: list[FileSpec] = Field(default_factory=list)
    file_list: Path | None = Field(default=None, description="Text file: one URL or glob per line, optional label, # comments")
    label: int | None = Field(default=None, ge=0, description="Class of the sample's files that name none")
    tree: str | None = Field(default=None, description="Tree to read; unset: dataset.tree")


class DatasetConfig(_Section):
    name: str = Field(default="demo", pattern=r"^[A-Za-z0-9._-]+$")
    tree: str = "Events"
    files: list[FileSpec] = Field(default_factory=list)
    file_list: Path | None = Field(default=None, description="Text file: one URL or glob per line, optional label, # comments")
    samples: list[SampleConfig] = Field(default_factory=list, description="More groups of files, each with its label")
    redirector: str | None = Field(default=None, description="XRootD redirector for bare LFNs (/store/...)")
    label_branch: str | None = Field(default=None, description="Per-event label branch, instead of per-file labels")
    branches: list[str] = Field(default_factory=list, description="Branches to publish: names, globs, /regex/")
    exclude: list[str] = Field(default_factory=list, description="Branches never published: names, globs, /regex/")
    define: dict[str, str] = Field(default_factory=dict, description="New branches: name -> expression")
    cuts: list[str] = Field(default_factory=list, description="Event selections, all of which must hold")

    @field_validator("define")
    @classmethod
    def _definitions_parse(cls, define: dict[str, str]) -> dict[str, str]:
        for text in define.values():
            Expression.parse(text)
        return define

    @field_validator("cuts")
    @classmethod
    def _cuts_parse(cls, cuts: list[str]) -> list[str]:
        for text in cuts:
            Expression.parse(text)
        return cuts

    @property
    def topic(self) -> str:
        return f"{self.name}.events"


class KafkaConfig(_Section):
    bootstrap: str | None = Field(default=None, description="host:port[,host:port...]; unset: `hepstream run` and `demo` start the embedded broker")
    partitions: int = Field(default=4, ge=1, le=1024)
    # lz4 published 1.03 M events/s against zstd's 0.96 M in `hepstream bench produce` (2 cores), for 34% more bytes.
    compression: Literal["lz4", "zstd", "none"] = Field(default="lz4", description="Arrow IPC body compression")
    max_message_bytes: ByteSize = Field(default=4_000_000, description="Topic max.message.bytes; chunks stay below it")
    linger_ms: int = Field(default=5, ge=0)
    connect_retries: int = Field(default=3, ge=0, description="Attempts after the first to reach the brokers")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="Longest wait for the brokers, per attempt")


class ProducerConfig(_Section):
    step_size: ByteSize = Field(default=2_000_000, description="Uncompressed bytes of branch data per chunk")
    max_chunk_events: int = Field(default=50_000, ge=1)
    files_in_flight: int = Field(default=2, ge=1, le=256, description="Files read at once, one thread each")
    ray_tasks: int = Field(default=0, ge=0, le=4096,
                           description="Ray worker processes publishing files side by side; 0: threads of this process")
    max_in_flight_bytes: ByteSize = Field(default=64_000_000, description="Encoded bytes sent but not yet acknowledged")
    manifest: Path | None = Field(default=None, description="JSON-lines record of acknowledged chunks, for resuming")
    retries: int = Field(default=4, ge=0, description="Retries of a file after transient read errors")
    retry_backoff_s: float = Field(default=1.0, ge=0, description="Wait before the first retry; doubles each time")
    timeout_s: float = Field(default=30.0, gt=0, description="XRootD/HTTP request timeout")
    progress_every_s: float = Field(default=10.0, gt=0, description="Interval of progress log lines off a terminal")


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


class DerivedFeature(_Section):
    """A branch computed from others, e.g. ``HT: sum(Jet_pt)``; usable wherever a branch name is."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    expr: str = Field(description="Arithmetic over branches; see docs/training.md for the functions")

    @field_validator("expr")
    @classmethod
    def _parses(cls, expr: str) -> str:
        Expression.parse(expr)
        return expr


class FeaturesConfig(_Section):
    flat: list[str] = Field(default_factory=lambda: ["MET_pt", "nMuon", "nJet"])
    jagged: list[JaggedFeature] = Field(
        default_factory=lambda: [
            JaggedFeature(branches=["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass"], length=4),
            JaggedFeature(branches=["Jet_pt", "Jet_eta", "Jet_btag"], length=4),
        ]
    )
    normalize: bool = True
    derived: list[DerivedFeature] = Field(default_factory=list, description="Computed branches, in order")
    weight: str | None = Field(default=None, description="Branch holding each event's training weight")

    @property
    def branches(self) -> list[str]:
        """Every branch read from the files (derived ones replaced by what they read), in a stable order."""
        derived = {d.name: d.expr for d in self.derived}
        wanted = list(self.flat) + [b for c in self.jagged for b in c.branches]
        wanted += [self.weight] if self.weight else []
        names: list[str] = []
        while wanted:
            name = wanted.pop(0)
            if name in derived:
                wanted[:0] = sorted(Expression.parse(derived.pop(name)).names)
            elif name not in names and name not in {d.name for d in self.derived}:
                names.append(name)
        return names


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
    mixed_precision: bool = Field(default=False, description="bfloat16 autocast (CPU) or float16 with loss scaling (CUDA)")
    cuda_graphs: bool = Field(default=False, description="On CUDA, replay each full minibatch's step as a captured "
                              "CUDA graph (full precision, models without dropout or batch norm); ignored elsewhere")
    start: str = Field(default="earliest", description="Where a partition without checkpoint starts: earliest, "
                       "latest, committed, or a time (ISO 8601 or epoch milliseconds)")
    epochs: int = Field(default=1, ge=1, description="Passes over the retained topic; the last one follows the live stream")
    dead_letter: bool = Field(default=True, description="Send undecodable messages to <dataset>.dead-letter")
    drift_delta: float = Field(default=0.002, gt=0, lt=1, description="ADWIN confidence on the loss stream")
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus metrics port (127.0.0.1)")
    workers: int = Field(default=1, ge=1, description="Trainer workers (Ray actors) sharing the topic's partitions, "
                         "parameters averaged between rounds")
    round_groups: int = Field(default=1, ge=1, description="Groups each worker learns per round before averaging")

    @field_validator("start")
    @classmethod
    def _start_is_known(cls, value: str) -> str:
        start_timestamp_ms(value)
        return value


def start_timestamp_ms(start: str) -> int | None:
    """The epoch milliseconds of a time-based ``training.start``; None for earliest/latest/committed.

    >>> start_timestamp_ms("2024-05-01T00:00:00Z"), start_timestamp_ms("committed")
    (1714521600000, None)
    """
    if start in ("earliest", "latest", "committed"):
        return None
    if start.isdigit():
        return int(start)
    try:
        moment = datetime.datetime.fromisoformat(start)
    except ValueError:
        raise ValueError(f"training.start {start!r} is not earliest, latest, committed, "
                         "an ISO 8601 time or epoch milliseconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp() * 1000)


class StoreConfig(_Section):
    path: Path = Path("hepstream-store")
    keep: int = Field(default=20, ge=1, description="Newest versions kept on disk")


class AutoscalingConfig(_Section):
    """Ray Serve autoscaling: the replica count follows the requests in flight per replica."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    target_ongoing_requests: float = Field(default=16.0, gt=0, description="Requests in flight per replica to aim for")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class HttpConfig(_Section):
    """Where the server answers, and the largest requests it takes."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_events_per_request: int = Field(default=100_000, ge=1)
    max_request_bytes: ByteSize = Field(default=64_000_000, description="Larger request bodies get 413")


class AuthConfig(_Section):
    tokens_file: Path | None = Field(default=None, description="File of bearer tokens, one per line")
    tokens_env: str = Field(default="HEPSTREAM_TOKENS", description="Environment variable of comma-separated tokens")


class BatchingConfig(_Section):
    max_size: int = Field(default=32, ge=1, description="Requests scored together by one model call")
    wait_timeout_s: float = Field(default=0.0, ge=0,
                                  description="Longest wait for a batch to fill; 0 batches what is waiting")


class ScalingConfig(_Section):
    replicas: int = Field(default=1, ge=1, description="Ray Serve replicas, when autoscaling is unset")
    autoscaling: AutoscalingConfig | None = None
    max_ongoing_requests: int = Field(default=64, ge=1, description="Requests one replica accepts at once")


class VersionsConfig(_Section):
    """How replicas find, swap to and keep model versions."""

    poll_interval_s: float = Field(default=0.5, gt=0, le=60, description="How often each replica looks for a newer version")
    swap_delay_s: float = Field(default=1.0, ge=0, le=60,
                                description="Replicas swap to a version this long after its publication, together")
    pinned_cached: int = Field(default=4, ge=0, description="Older versions kept loaded for pinned requests")


class RayStartConfig(_Section):
    """Settings Ray and Serve read only when Ray starts (``hepstream serve`` starts it with them)."""

    direct_ingress_port: int | None = Field(default=None, ge=1, le=65535,
                                            description="Replicas also answer HTTP on ports of their own from this "
                                                        "one up, skipping Serve's proxy")
    haproxy: bool = Field(default=False,
                          description="Serve's HAProxy ingress answers on serve.http.host:port instead of its Python "
                                      "proxy, forwarding to the replicas' own ports (from direct_ingress_port, or "
                                      "30000, up)")
    metrics: bool = Field(default=False,
                          description="Ray's own metrics pipeline (Serve's ray_serve_* series, Ray's dashboard), "
                                      "beside hepstream's /metrics")


# Keys of the flat serve section before it was split by concern: old key -> (section, key).
_FLAT_SERVE_KEYS = {
    "host": ("http", "host"), "port": ("http", "port"),
    "max_events_per_request": ("http", "max_events_per_request"), "max_request_bytes": ("http", "max_request_bytes"),
    "tokens_file": ("auth", "tokens_file"), "tokens_env": ("auth", "tokens_env"),
    "max_batch_size": ("batching", "max_size"), "batch_wait_timeout_s": ("batching", "wait_timeout_s"),
    "replicas": ("scaling", "replicas"), "autoscaling": ("scaling", "autoscaling"),
    "max_ongoing_requests": ("scaling", "max_ongoing_requests"),
    "poll_interval_s": ("versions", "poll_interval_s"), "swap_delay_s": ("versions", "swap_delay_s"),
    "pinned_versions_cached": ("versions", "pinned_cached"),
    "direct_ingress_port": ("ray", "direct_ingress_port"), "haproxy": ("ray", "haproxy"),
    "ray_metrics": ("ray", "metrics"),
}


class ServeConfig(_Section):
    """The server, one section per concern; the flat keys of older files still read, with a warning."""

    http: HttpConfig = HttpConfig()
    auth: AuthConfig = AuthConfig()
    batching: BatchingConfig = BatchingConfig()
    scaling: ScalingConfig = ScalingConfig()
    versions: VersionsConfig = VersionsConfig()
    ray: RayStartConfig = RayStartConfig()

    @model_validator(mode="before")
    @classmethod
    def _flat_keys_move(cls, data: Any) -> Any:
        """Older files' ``serve.port`` becomes ``serve.http.port``, with a FutureWarning (shown to users by default)."""
        if not isinstance(data, dict) or not _FLAT_SERVE_KEYS.keys() & data.keys():
            return data
        moved = {key: value for key, value in data.items() if key not in _FLAT_SERVE_KEYS}
        for old in [key for key in data if key in _FLAT_SERVE_KEYS]:
            section, key = _FLAT_SERVE_KEYS[old]
            into = moved.get(section) or {}
            if not isinstance(into, dict):
                return data  # a section that is not a mapping: reported as such
            if key in into:
                raise ValueError(f"serve.{old} and serve.{section}.{key} are the same setting: "
                                 f"keep serve.{section}.{key}")
            moved[section] = {**into, key: data[old]}
            warnings.warn(f"serve.{old} is deprecated: write serve.{section}.{key}", FutureWarning, stacklevel=2)
        return moved


class Config(_Section):
    """The whole pipeline: what to read, where to stream it, how to learn and serve."""

    dataset: DatasetConfig = DatasetConfig()
    kafka: KafkaConfig = KafkaConfig()
    producer: ProducerConfig = ProducerConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = MLPConfig()
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

    @model_validator(mode="after")
    def _workers_can_average(self) -> Config:
        if self.training.workers == 1:
            return self
        if not MODEL_KINDS[self.model.kind].averageable:
            raise ValueError(f"training.workers is {self.training.workers}, but a {self.model.kind!r} model "
                             "has no parameters to average: set training.workers: 1")
        if self.training.epochs > 1:
            raise ValueError(f"training.workers > 1 follows the live stream only: set training.epochs: 1 "
                             f"(got {self.training.epochs})")
        return self


class ConfigError(ValueError):
    """A configuration file that cannot be used, with every problem named by its key."""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} problem(s)"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            hint = did_you_mean(str(item["loc"][-1]), _known_keys(item["loc"][:-1]))
            message = f"unknown key; {hint}" if hint else "unknown key"
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


def _known_keys(loc: tuple) -> list[str]:
    """The keys the schema allows where ``loc`` points, for an unknown key's "did you mean".

    A list index, a mapping key or a union member's tag in ``loc`` names no
    field: the walk stays on the sections it had, so keys of every member of a
    union are offered.
    """
    sections: list[type[BaseModel]] = [Config]
    for part in loc:
        fields = [section.model_fields[part] for section in sections if part in section.model_fields]
        if fields:
            sections = [section for field in fields for section in _sections_in(field.annotation)]
    return [name for section in sections for name in section.model_fields]


def _sections_in(annotation) -> list[type[BaseModel]]:
    """The schema classes an annotation holds (``FileSpec`` in ``list[FileSpec] | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [section for argument in typing.get_args(annotation) for section in _sections_in(argument)]
