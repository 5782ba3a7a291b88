"""The one YAML file that describes a pipeline, validated before anything starts.

Every option has a default that works on one machine, so an empty file is a
valid configuration. Errors are collected by pydantic and reported together,
each naming the dotted key at fault (``features.jagged.0.length``), so a
physicist fixes the whole file in one go instead of one key per run.
"""

from __future__ import annotations

import datetime
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from hepstream.config_types import (
    Bootstrap, ByteSize, Count, EnvironmentVariable, FilePath, Host, Identifier, KeyedError, Label, Name, Names,
    NonNegativeInt, Port, PortOrAny, Seconds, Text, WaitSeconds, no_repeats,
)
from hepstream.expressions import Expression
from hepstream.model_kinds import MODEL_KINDS, MLPConfig, ModelConfig
from hepstream.suggest import did_you_mean
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, field_validator, model_validator

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSpec(_Section):
    """One input file and, for per-file labelled datasets, its class."""

    url: Text = Field(description="Local path, root:// or https:// URL")
    label: Label | None = Field(default=None, description="Class of every event in this file")


class SampleConfig(_Section):
    """A named group of files (a physics dataset such as ``ggH_4mu``) sharing a label and a tree."""

    name: Name
    files: list[FileSpec] = Field(default_factory=list)
    file_list: FilePath | None = Field(default=None,
                                       description="Text file: one URL or glob per line, optional label, # comments")
    label: Label | None = Field(default=None, description="Class of the sample's files that name none")
    tree: Text | None = Field(default=None, description="Tree to read; unset: dataset.tree")


class DatasetConfig(_Section):
    name: Name = "demo"
    tree: Text = "Events"
    files: list[FileSpec] = Field(default_factory=list)
    file_list: FilePath | None = Field(default=None,
                                       description="Text file: one URL or glob per line, optional label, # comments")
    samples: Annotated[list[SampleConfig], no_repeats(lambda sample: sample.name, "sample name")] = Field(
        default_factory=list, description="More groups of files, each with its label")
    redirector: Text | None = Field(default=None, description="XRootD redirector for bare LFNs (/store/...)")
    label_branch: Text | None = Field(default=None, description="Per-event label branch, instead of per-file labels")
    branches: Names = Field(default_factory=list, description="Branches to publish: names, globs, /regex/")
    exclude: Names = Field(default_factory=list, description="Branches never published: names, globs, /regex/")
    define: dict[Identifier, str] = Field(default_factory=dict, description="New branches: name -> expression")
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

    def labels(self) -> list[tuple[str, int]]:
        """Every label the file names, with its dotted key (below ``dataset``)."""
        found = [(f"files.{i}.label", spec.label) for i, spec in enumerate(self.files)]
        for s, sample in enumerate(self.samples):
            found += [(f"samples.{s}.label", sample.label)]
            found += [(f"samples.{s}.files.{i}.label", spec.label) for i, spec in enumerate(sample.files)]
        return [(key, label) for key, label in found if label is not None]


SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS = ("SSL", "SASL_SSL")


class KafkaSecurityConfig(_Section):
    """How clients prove who they are to the brokers, and how they know the brokers are theirs.

    The password is never in the file, which gets copied, committed and
    logged: it is named here by the environment variable or the file that
    holds it, read when a client connects. Files are checked when a client
    connects too, not here: they may exist only on the cluster's nodes.
    """

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="Kafka security.protocol")
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism; required with a SASL protocol")
    username: Text | None = Field(default=None, description="SASL user; required with a SASL protocol")
    password_env: EnvironmentVariable | None = Field(default=None, description="Variable holding the SASL password")
    password_file: FilePath | None = Field(default=None, description="File holding the SASL password")
    ca_file: FilePath | None = Field(default=None, description="PEM CA certificates that sign the brokers' certificates")
    cert_file: FilePath | None = Field(default=None, description="PEM client certificate, with key_file")
    key_file: FilePath | None = Field(default=None, description="PEM client private key, with cert_file")
    check_hostname: bool = Field(default=True, description="The broker's certificate must name the host dialled")

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise KeyedError("password", "a password is never written in the configuration (it gets copied and "
                             "logged): set password_env to a variable, or password_file to a file, that holds it")
        return data

    @model_validator(mode="after")
    def _keys_fit_protocol(self) -> KafkaSecurityConfig:
        sasl = self.protocol in SASL_PROTOCOLS
        for key in ("mechanism", "username", "password_env", "password_file"):
            if not sasl and getattr(self, key) is not None:
                raise KeyedError(key, f"is only used with protocol SASL_PLAINTEXT or SASL_SSL (protocol is "
                                 f"{self.protocol}): set the protocol, or remove the key")
        for key in ("ca_file", "cert_file", "key_file"):
            if self.protocol not in TLS_PROTOCOLS and getattr(self, key) is not None:
                raise KeyedError(key, f"is only used with protocol SSL or SASL_SSL (protocol is {self.protocol}): "
                                 "set the protocol, or remove the key")
        if sasl:
            for key in ("mechanism", "username"):
                if getattr(self, key) is None:
                    raise KeyedError(key, f"is required with protocol {self.protocol}")
            if (self.password_env is None) == (self.password_file is None):
                raise KeyedError("password_env", f"protocol {self.protocol} needs the password from exactly one "
                                 "of password_env and password_file")
        if (self.cert_file is None) != (self.key_file is None):
            raise KeyedError("cert_file" if self.cert_file is None else "key_file",
                             "is required with the other one: a client certificate comes with its key")
        return self

    @property
    def sasl(self) -> bool:
        return self.protocol in SASL_PROTOCOLS

    @property
    def tls(self) -> bool:
        return self.protocol in TLS_PROTOCOLS


class KafkaConfig(_Section):
    bootstrap: Bootstrap | None = Field(default=None, description="host:port[,host:port...]; unset: `hepstream run` and `demo` start the embedded broker")
    partitions: Count = Field(default=4, le=1024)
    # lz4 published 1.03 M events/s against zstd's 0.96 M in `hepstream bench produce` (2 cores), for 34% more bytes.
    compression: Literal["lz4", "zstd", "none"] = Field(default="lz4", description="Arrow IPC body compression")
    max_message_bytes: ByteSize = Field(default=4_000_000, description="Topic max.message.bytes; chunks stay below it")
    linger_ms: NonNegativeInt = 5
    connect_retries: NonNegativeInt = Field(default=3, description="Attempts after the first to reach the brokers")
    connect_timeout_s: Seconds = Field(default=10.0, description="Longest wait for the brokers, per attempt")
    security: KafkaSecurityConfig = KafkaSecurityConfig()


class ProducerConfig(_Section):
    step_size: ByteSize = Field(default=2_000_000, description="Uncompressed bytes of branch data per chunk")
    max_chunk_events: Count = 50_000
    files_in_flight: Count = Field(default=2, le=256, description="Files read at once, one thread each")
    interleave: bool = Field(default=True, description="Take chunks of every class (label, sample) in turn, each "
                             "class keeping its own files open, so no partition gets a long run of one class")
    ray_tasks: NonNegativeInt = Field(default=0, le=4096, description="Ray worker processes publishing files side "
                                      "by side; 0: threads of this process")
    ray_resources: dict[Name, PositiveFloat] = Field(default_factory=dict, description="Custom Ray resources each of "
                                                     "those processes asks for beside its CPU, to place them")
    max_in_flight_bytes: ByteSize = Field(default=64_000_000, description="Encoded bytes sent but not yet acknowledged")
    manifest: FilePath | None = Field(default=None,
                                      description="JSON-lines record of acknowledged chunks, for resuming")
    retries: NonNegativeInt = Field(default=4, description="Retries of a file after transient read errors")
    retry_backoff_s: WaitSeconds = Field(default=1.0, description="Wait before the first retry; doubles each time")
    timeout_s: Seconds = Field(default=30.0, description="XRootD/HTTP request timeout")
    progress_every_s: Seconds = Field(default=10.0, description="Interval of progress log lines off a terminal")
    follow: bool = Field(default=False, description="Keep listing the inputs and publish files as they land")
    poll_s: Seconds = Field(default=2.0, description="Interval between listings of the inputs when following")
    settle_s: WaitSeconds = Field(default=2.0, description="A followed file is complete once unchanged this long")


class JaggedFeature(_Section):
    """A collection such as ``Muon_*``: the first ``length`` objects, padded, with a mask."""

    branches: Names = Field(min_length=1)
    length: Count = Field(default=4, le=1024)
    sort_by: Text | None = Field(default=None, description="Branch to order objects by, descending (e.g. Muon_pt)")

    @model_validator(mode="after")
    def _sort_key_is_selected(self) -> JaggedFeature:
        if self.sort_by is not None and self.sort_by not in self.branches:
            raise ValueError(f"sort_by {self.sort_by!r} must be one of branches {self.branches}")
        return self


class DerivedFeature(_Section):
    """A branch computed from others, e.g. ``HT: sum(Jet_pt)``; usable wherever a branch name is."""

    name: Identifier
    expr: str = Field(description="Arithmetic over branches; see docs/training.md for the functions")

    @field_validator("expr")
    @classmethod
    def _parses(cls, expr: str) -> str:
        Expression.parse(expr)
        return expr


class FeaturesConfig(_Section):
    flat: Names = Field(default_factory=lambda: ["MET_pt", "nMuon", "nJet"])
    jagged: list[JaggedFeature] = Field(
        default_factory=lambda: [
            JaggedFeature(branches=["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass"], length=4),
            JaggedFeature(branches=["Jet_pt", "Jet_eta", "Jet_btag"], length=4),
        ]
    )
    normalize: bool = True
    derived: Annotated[list[DerivedFeature], no_repeats(lambda derived: derived.name, "derived name")] = Field(
        default_factory=list, description="Computed branches, in order")
    weight: Text | None = Field(default=None, description="Branch holding each event's training weight")

    @model_validator(mode="after")
    def _flat_or_jagged(self) -> FeaturesConfig:
        for c, collection in enumerate(self.jagged):
            both = [name for name in collection.branches if name in self.flat]
            if both:
                raise KeyedError(f"jagged.{c}.branches", f"{both} also in features.flat: a branch holds one number "
                                 "per event (flat) or one per object (jagged), so list it in one of the two")
        return self

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
    batch_size: Count = 512
    learning_rate: float = Field(default=1e-2, gt=0, description="Adam's learning rate; the default learns fastest "
                                 "per event of those measured in docs/training.md")
    averaging_events: NonNegativeInt = Field(default=20_000, description="Torch models score (and are served) with "
                                             "their weights averaged over the steps of about this many events, "
                                             "which takes out the noise of single steps; 0: the trained weights")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    chunks_per_step: Count = Field(default=8, description="Chunks learned together, shuffled")
    group_wait_s: WaitSeconds = Field(default=2.0, description="Longest wait for a group of chunks to fill")
    checkpoint_every_s: Seconds = Field(default=3.0, description="Publish a model version at most this often")
    topic_wait_s: Seconds = Field(default=60.0, description="Longest wait for the dataset's topic to exist at start")
    metrics_window: int = Field(default=20_000, ge=100, description="Events in the sliding window of running metrics")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="numpy's generators take no negative seed")
    threads: Count = Field(default=1, description="torch intra-op threads of one trainer")
    prepare_workers: NonNegativeInt | None = Field(
        default=None, description="Processes preparing messages (decode, check, features) beside the training "
        "step; 0: the read-ahead thread prepares; unset: the cores this process may use minus one, at least 1")
    mixed_precision: bool = Field(default=False, description="bfloat16 autocast (CPU) or float16 with loss scaling (CUDA)")
    cuda_graphs: bool = Field(default=False, description="On CUDA, replay each full minibatch's step as a captured "
                              "CUDA graph (full precision, models without dropout or batch norm); ignored elsewhere")
    start: str = Field(default="earliest", description="Where a partition without checkpoint starts: earliest, "
                       "latest, committed, or a time (ISO 8601 or epoch milliseconds)")
    epochs: Count = Field(default=1, description="Passes over the retained topic; the last one follows the live stream")
    dead_letter: bool = Field(default=True, description="Send undecodable messages to <dataset>.dead-letter")
    drift_delta: float = Field(default=0.002, gt=0, lt=1, description="ADWIN confidence on the loss stream")
    metrics_port: PortOrAny | None = Field(default=None, description="Prometheus metrics port (127.0.0.1); 0: any")
    workers: Count = Field(default=1, description="Trainer workers (Ray actors) sharing the topic's partitions, "
                         "parameters averaged between rounds")
    round_groups: Count = Field(default=1, description="Groups each worker learns per round before averaging")
    shuffle_chunks: NonNegativeInt = Field(default=0, le=100_000, description="Chunks of a shuffle buffer across "
                                           "partitions from which each step draws at random; 0: steps learn chunks "
                                           "in arrival order")
    class_weights: Literal["none", "balanced"] = Field(default="none", description="balanced: weigh each event by "
                                                       "n / (classes * n_class) over the events seen so far")
    validation_fraction: float = Field(default=0.03, ge=0, le=0.5, description="Share of chunks (by key hash) never "
                                       "trained on, kept to score every version; 0: no validation slice, no gate")
    validation_events: Count = Field(default=5000, description="Validation events kept per class (a reservoir sample "
                                     "of the slice), checkpointed with the model")

    @field_validator("start")
    @classmethod
    def _start_is_known(cls, value: str) -> str:
        start_timestamp_ms(value)
        return value

    @model_validator(mode="after")
    def _buffer_holds_a_step(self) -> TrainingConfig:
        if 0 < self.shuffle_chunks < self.chunks_per_step:
            raise KeyedError("shuffle_chunks", f"{self.shuffle_chunks} is fewer than chunks_per_step "
                             f"({self.chunks_per_step}): set shuffle_chunks to 0 or at least chunks_per_step")
        return self


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
    path: FilePath = Path("hepstream-store")
    keep: Count = Field(default=20, description="Newest versions kept on disk")


class AutoscalingConfig(_Section):
    """Ray Serve autoscaling: the replica count follows the requests in flight per replica."""

    min_replicas: NonNegativeInt = 1
    max_replicas: Count = 4
    target_ongoing_requests: float = Field(default=16.0, gt=0, description="Requests in flight per replica to aim for")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise KeyedError("min_replicas", f"{self.min_replicas} exceeds max_replicas ({self.max_replicas}): "
                             "write a min_replicas no larger than max_replicas")
        return self


class HttpConfig(_Section):
    """Where the server answers, and the largest requests it takes."""

    host: Host = "127.0.0.1"
    port: Port = 8000
    max_events_per_request: Count = 100_000
    max_request_bytes: ByteSize = Field(default=64_000_000, description="Larger request bodies get 413")
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600,
                                    description="A connection whose request headers take longer is cut off (408)")
    body_timeout_s: float = Field(default=60.0, gt=0, le=3600,
                                  description="A request whose body takes longer to arrive is cut off (408)")


class AuthConfig(_Section):
    tokens_file: FilePath | None = Field(default=None, description="File of bearer tokens, one per line")
    tokens_env: EnvironmentVariable = Field(default="HEPSTREAM_TOKENS",
                                            description="Environment variable of comma-separated tokens")


class BatchingConfig(_Section):
    max_size: Count = Field(default=32, description="Requests scored together by one model call")
    wait_timeout_s: WaitSeconds = Field(default=0.0, description="Longest wait for a batch to fill; 0 batches what "
                                        "is waiting")


class ScalingConfig(_Section):
    replicas: Count = Field(default=1, description="Ray Serve replicas, when autoscaling is unset")
    autoscaling: AutoscalingConfig | None = None
    max_ongoing_requests: Count = Field(default=64, description="Requests one replica accepts at once")
    max_replicas_per_node: Count | None = Field(default=None, description="Most replicas Ray Serve places on one "
                                                "node, so that losing a node loses at most this many; unset: no limit")

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> ScalingConfig:
        if self.autoscaling is not None and "replicas" in self.model_fields_set:
            raise KeyedError("replicas", "is ignored when serve.scaling.autoscaling is set: remove one of the two")
        return self

    @property
    def most_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling is not None else self.replicas


class VersionsConfig(_Section):
    """How replicas find, swap to and keep model versions."""

    poll_interval_s: Seconds = Field(default=0.5, le=60, description="How often each replica looks for a newer version")
    swap_delay_s: WaitSeconds = Field(default=1.0, le=60, description="Replicas swap to a version this long after "
                                      "its publication, together")
    pinned_cached: NonNegativeInt = Field(default=4, description="Older versions kept loaded for pinned requests")


class RayStartConfig(_Section):
    """Settings Ray and Serve read only when Ray starts (``hepstream serve`` starts it with them)."""

    direct_ingress_port: Port | None = Field(default=None, description="Replicas also answer HTTP on ports of "
                                             "their own from this one up, skipping Serve's proxy")
    haproxy: bool = Field(default=True,
                          description="Serve's HAProxy ingress answers on serve.http.host:port instead of its Python "
                                      "proxy, forwarding to the replicas' own ports (from direct_ingress_port, or "
                                      "30000, up); false: Serve's Python proxy, several times slower under load")
    metrics: bool = Field(default=False,
                          description="Ray's own metrics pipeline (Serve's ray_serve_* series, Ray's dashboard), "
                                      "beside hepstream's /metrics")
    drain_s: WaitSeconds = Field(default=2.0,
                                 description="A replica answering on its own port keeps answering this long after "
                                             "it is told to stop, so load balancers can drop it first")


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


# Where replicas' own ports start under serve.ray.haproxy when direct_ingress_port is unset.
DEFAULT_DIRECT_INGRESS_PORT = 30000


class ServeConfig(_Section):
    """The server, one section per concern; the flat keys of older files still read, with a warning."""

    http: HttpConfig = HttpConfig()
    auth: AuthConfig = AuthConfig()
    batching: BatchingConfig = BatchingConfig()
    scaling: ScalingConfig = ScalingConfig()
    versions: VersionsConfig = VersionsConfig()
    ray: RayStartConfig = RayStartConfig()
    max_regression: float | None = Field(default=0.01, ge=0, le=1, description="A version is served only when its "
                                         "validation AUC is at most this much below the served version's on the same "
                                         "events; null: every version is served (no gate)")
    warm_up: Literal["none", "judged", "settled"] = Field(
        default="none", description="What the first version served must show. none: it is served at once, judged or "
        "not; judged: the validation slice judged it (500 events of each class), and versions it cannot judge are "
        "never served; settled: judged, and at most serve.settle_gain AUC better than a version trained on half as "
        "many events, so it has stopped learning fast. Until then the server answers 503")
    settle_gain: float = Field(default=0.015, ge=0, le=1, description="With serve.warm_up: settled, the most the "
                               "first version served may gain in validation AUC over a version trained on half as "
                               "many events")

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

    @model_validator(mode="before")
    @classmethod
    def _promote_unjudged_became_warm_up(cls, data: Any) -> Any:
        """``serve.promote_unjudged`` (before serve.warm_up) still reads, with a FutureWarning: false held every
        unjudged version back, as ``warm_up: judged`` does; true is ``none``."""
        if not isinstance(data, dict) or "promote_unjudged" not in data:
            return data
        if "warm_up" in data:
            raise ValueError("serve.promote_unjudged and serve.warm_up are the same setting: keep serve.warm_up")
        old = data["promote_unjudged"]
        if not isinstance(old, bool):
            return data  # reported as an unknown key
        warm_up = "none" if old else "judged"
        warnings.warn(f"serve.promote_unjudged is deprecated: write serve.warm_up: {warm_up}", FutureWarning,
                      stacklevel=2)
        return {**{k: v for k, v in data.items() if k != "promote_unjudged"}, "warm_up": warm_up}

    @property
    def replica_ports(self) -> range | None:
        """The ports replicas answer on themselves (direct ingress), two per replica for redeploys; None: none."""
        first = self.ray.direct_ingress_port
        if first is None and not self.ray.haproxy:
            return None
        first = first or DEFAULT_DIRECT_INGRESS_PORT
        return range(first, first + 2 * self.scaling.most_replicas)

    @model_validator(mode="after")
    def _replica_ports_fit(self) -> ServeConfig:
        ports = self.replica_ports
        if ports is None:
            return self
        if ports.stop - 1 > 65535:
            raise KeyedError("ray.direct_ingress_port", f"replicas would answer on ports {ports.start}.."
                             f"{ports.stop - 1}, past 65535: write a direct_ingress_port of at most "
                             f"{65536 - len(ports)}")
        if self.http.port in ports:
            raise KeyedError("http.port", f"{self.http.port} is among the replicas' own ports {ports.start}.."
                             f"{ports.stop - 1} (serve.ray): choose another port, or move "
                             "serve.ray.direct_ingress_port")
        return self

    @model_validator(mode="after")
    def _batches_can_fill(self) -> ServeConfig:
        if self.batching.max_size > self.scaling.max_ongoing_requests:
            raise KeyedError("batching.max_size", f"{self.batching.max_size} exceeds serve.scaling."
                             f"max_ongoing_requests ({self.scaling.max_ongoing_requests}), the most requests a replica "
                             "holds to batch: write at most that, or raise max_ongoing_requests")
        return self


class SubmitConfig(_Section):
    """How ``hepstream submit`` runs the three jobs on a Ray cluster's job server (docs/cluster.md)."""

    python: Text = Field(default="python", description="The cluster's Python with hepstream installed; a job runs "
                         "`<python> -m hepstream <job> --config pipeline.yaml`")
    stop_grace_s: Count = Field(default=30, le=3600, description="Seconds Ray waits after SIGTERM to a job before "
                                "SIGKILL (the job's RAY_JOB_STOP_WAIT_TIME_S; Ray's own default is 3)")
    env: dict[EnvironmentVariable, str] = Field(default_factory=dict, description="Environment variables of the job "
                                                "and its actors; readable by whoever can read the job: no secrets")


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
    submit: SubmitConfig = SubmitConfig()

    @model_validator(mode="after")
    def _chunks_fit_messages(self) -> Config:
        if self.producer.step_size > self.kafka.max_message_bytes:
            raise KeyedError("producer.step_size", f"{self.producer.step_size} B exceeds kafka.max_message_bytes "
                             f"({self.kafka.max_message_bytes} B): write a smaller step_size, or raise the limit")
        return self

    @model_validator(mode="after")
    def _labels_are_classes(self) -> Config:
        for key, label in self.dataset.labels():
            if label >= self.model.classes:
                raise KeyedError(f"dataset.{key}", f"{label} is not a class of model.classes {self.model.classes} "
                                 f"(labels are 0 .. {self.model.classes - 1}): write model.classes: {label + 1}")
        return self

    @model_validator(mode="after")
    def _workers_can_average(self) -> Config:
        if self.training.workers == 1:
            return self
        if not MODEL_KINDS[self.model.kind].averageable:
            raise KeyedError("training.workers", f"is {self.training.workers}, but a {self.model.kind!r} model "
                             "has no parameters to average: set training.workers: 1")
        if self.training.epochs > 1:
            raise KeyedError("training.epochs", f"is {self.training.epochs}, but training.workers > 1 follows the "
                             "live stream only: set training.epochs: 1")
        return self

    @model_validator(mode="after")
    def _something_can_be_judged(self) -> Config:
        if self.serve.warm_up != "none" and self.serve.max_regression is not None and \
                not self.training.validation_fraction:
            raise KeyedError("serve.warm_up", f"is {self.serve.warm_up}, but training.validation_fraction is 0: no "
                             "version could ever be judged, so none would be served; set a validation_fraction, or "
                             "warm_up: none")
        return self


class ConfigError(ValueError):
    """A configuration file that cannot be used, with every problem named by its key."""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} problem(s)"]
    for item in error.errors():
        loc, message = list(item["loc"]), item["msg"]
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, ValueError):
            message = str(cause)  # without pydantic's "Value error, " before our own sentence
        if isinstance(cause, KeyedError):
            loc += cause.key.split(".")
        elif item["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), _known_keys(item["loc"][:-1]))
            message = f"unknown key; {hint}" if hint else "unknown key"
        elif isinstance(item["input"], (int, float, str)) and item["type"] != "value_error":
            message = f"{message} (got {item['input']!r})"
        lines.append(f"  {'.'.join(map(str, loc)) or '(top level)'}: {message}")
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
