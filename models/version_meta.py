"""What a stored model version says about itself: the ``meta.json`` record and its one JSON schema.

The trainer writes it, the store fills in the version's identity when it
publishes, and the server, the CLI and the exporter read it; so it is a frozen
record with a schema, not a dict each of them spells on its own.

A version outlives the code that wrote it, so the record carries
``schema_version``. Files written before there was one are version 1. The
configuration sections (``features``, ``model``, ``training``) stay the JSON
the run had: they are validated when a version is loaded as a model
(:class:`~hepstream.models.store.LoadedModel`), so listing or showing an old
version never depends on today's configuration schema.

>>> meta = VersionMeta(features={"flat": ["MET_pt"]}, feature_state={}, model={"kind": "mlp"}, events_seen=10)
>>> VersionMeta.from_json(meta.to_json()) == meta
True
>>> VersionMeta.from_json('{"features": {}, "feature_state": {}, "model": {}, "events_sen": 3}')
Traceback (most recent call last):
...
hepstream.models.version_meta.VersionMetaError: field 'events_sen': not a field of meta.json (did you mean 'events_seen'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

SCHEMA_VERSION = 1


class VersionMetaError(ValueError):
    """A ``meta.json`` that does not follow the schema; names the field at fault (the store adds the file)."""


@dataclass(frozen=True, kw_only=True)
class VersionMeta:
    """One version's metadata, as ``<store>/<model>/v000001/meta.json`` holds it."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)

    schema_version: int = SCHEMA_VERSION
    # Filled in by ModelStore.publish; None only on a record not yet published.
    name: str | None = None
    version: int | None = None
    created: float | None = None  # Unix time of publication; replicas swap to it together (serve.swap_delay_s)
    checkpoint: str = "torch"  # how the model state is stored: "torch" (weights.pt) or "json" (model.json)
    # Lineage and what the model has learned.
    parent: int | None = None
    events_seen: int = 0
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)  # prequential metrics over the whole stream
    version_metrics: dict[str, Any] = field(default_factory=dict)  # the same, since the previous version
    # What a reader needs to turn branches into the model's inputs and rebuild the model.
    features: dict[str, Any]  # the run's `features` section, as JSON
    feature_state: dict[str, Any]  # FeaturePipeline.state_dict(): normalisation statistics
    model: dict[str, Any]  # the run's `model` section, as JSON
    training: dict[str, Any] = field(default_factory=dict)  # the run's `training` section, as JSON
    # Where the stream stood: the next offset to read per partition ("0", "1", ...), and the trainer's counters.
    topic: str = ""
    offsets: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    workers: list[dict[str, Any]] | None = None  # data-parallel runs: each worker's partitions, node and events
    # The quality gate (models/gate.py): this version's figures on the validation slice, the served version's on
    # the same events, and whether the server may swap to it. Versions written before the gate read as promoted.
    validation: dict[str, Any] | None = None
    promoted: bool = True
    promotion_reason: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> VersionMeta:
        """Read a ``meta.json``; raises :class:`VersionMetaError` naming every field at fault."""
        try:
            document = json.loads(text)
        except ValueError as error:
            raise VersionMetaError(f"not JSON ({error})") from None
        if not isinstance(document, dict):
            raise VersionMetaError(f"expected a JSON object, got {type(document).__name__}")
        written = document.get("schema_version", SCHEMA_VERSION)
        if written != SCHEMA_VERSION:
            raise VersionMetaError(f"field 'schema_version': {written!r}, but this hepstream reads version "
                                   f"{SCHEMA_VERSION} (was it written by a newer one?)")
        try:
            return _ADAPTER.validate_json(text)
        except ValidationError as error:
            raise VersionMetaError("; ".join(_describe(problem) for problem in error.errors())) from None


_ADAPTER = TypeAdapter(VersionMeta)
_FIELDS = [f.name for f in dataclasses.fields(VersionMeta)]


def _describe(problem: dict) -> str:
    where = ".".join(str(part) for part in problem["loc"])
    if problem["type"] == "unexpected_keyword_argument":
        near = difflib.get_close_matches(where, _FIELDS, n=1)
        return f"field {where!r}: not a field of meta.json" + (f" (did you mean {near[0]!r}?)" if near else "")
    if problem["type"] == "missing":
        return f"field {where!r}: missing"
    return f"field {where!r}: {problem['msg']}, got {problem['input']!r}"


def version_meta_schema() -> dict:
    """The JSON Schema of ``meta.json``, for tools outside Python and for docs/training.md."""
    return _ADAPTER.json_schema()
