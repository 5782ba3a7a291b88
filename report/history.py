"""A model's versions as one record, read once from the store: what every panel but the held-out ones draws.

Each version's ``meta.json`` already says where the stream stood when it was
published (events seen, offsets, the time), how the model did on events it
had not yet learned from (prequential metrics) and when the loss drifted, so
the history needs nothing but the store. Drift alarms are kept in each
version's metrics (the latest few), so the history gathers them across
versions, each alarm once.

>>> meta = VersionMeta(version=1, created=10.0, events_seen=500, features={}, feature_state={}, model={},
...                    metrics={"auc": 0.8, "log_loss": 0.5, "drift": {"latest": [{"time": 9.0, "events": 400}]}},
...                    offsets={"0": 3, "1": 4})
>>> history = history_of("demo", [meta])
>>> history.points[0].auc, history.points[0].messages, history.drift
(0.8, 7, (DriftAlarm(time=9.0, events=400),))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hepstream.models.store import StoreError
from hepstream.models.version_meta import VersionMeta


@dataclass(frozen=True)
class VersionPoint:
    """One published version: when, how far into the stream, how well it predicted unseen events."""

    version: int
    created: float  # Unix time of publication
    events_seen: int
    messages: int  # messages consumed: the sum of the next offsets over the partitions
    auc: float | None  # prequential, over the sliding window
    log_loss: float | None  # prequential, over the whole stream


@dataclass(frozen=True)
class DriftAlarm:
    time: float  # Unix time
    events: int  # events seen when the loss drifted


@dataclass(frozen=True)
class History:
    model: str
    points: tuple[VersionPoint, ...]  # oldest first
    drift: tuple[DriftAlarm, ...]  # oldest first


def history_of(model: str, metas: Iterable[VersionMeta]) -> History:
    """The history of published versions (``version`` and ``created`` set), in version order."""
    points, alarms = [], set()
    for meta in sorted(metas, key=lambda m: m.version):
        metrics = meta.metrics
        points.append(VersionPoint(meta.version, meta.created, meta.events_seen, sum(meta.offsets.values()),
                                   _number(metrics.get("auc")), _number(metrics.get("log_loss"))))
        drift = metrics.get("drift") or {}
        alarms.update(DriftAlarm(float(a["time"]), int(a["events"])) for a in drift.get("latest", []))
    return History(model, tuple(points), tuple(sorted(alarms, key=lambda a: a.time)))


def read_history(store) -> History:
    """The history of every version on disk; ``store`` is a ModelStore or anything with ``versions()``,
    ``read_meta(version)`` and ``model``. A version pruned while it is read is left out."""
    metas = []
    for version in store.versions():
        try:
            metas.append(store.read_meta(version))
        except StoreError:
            if version in store.versions():
                raise
    return history_of(store.model, metas)


def _number(value) -> float | None:
    """A metric as a float; None where the trainer had none yet (NaN, or absent)."""
    return None if value is None or value != value else float(value)
