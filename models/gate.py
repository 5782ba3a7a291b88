"""The quality gate: a version is promoted (the server may swap to it) only if it is no worse than the one served.

An online learner can get worse: a stream that ends with one class makes the
newest version forget the other. So before a version is published, the trainer
scores it on the validation slice (:mod:`~hepstream.models.validation`) and
scores the version the server answers with (the newest promoted one) on the
*same* events, kept in memory so a checkpoint costs two predictions, not a
load. The comparison is paired: both see the same events, so the noise of a
small slice mostly cancels. The rule (:func:`decide`):

- ``serve.max_regression: null`` turns the gate off: every version is promoted;
- the slice cannot judge yet (fewer than :data:`MIN_EVENTS_PER_CLASS` events of
  some class, always so with ``training.validation_fraction: 0``): promoted,
  and the reason says it was not judged; with a ``serve.warm_up``, held back
  instead (until then the server answers 503, its versions' reasons say why);
- nothing promoted yet: the version is promoted (a server with no model answers
  503, and there is nothing better to keep), unless ``serve.warm_up:
  settled`` asks it to have stopped learning fast first: its AUC is at most
  ``serve.settle_gain`` above that of a version trained on half as many
  events or fewer, both scored now on the same events. A learning curve gains
  less with each doubling of the data, so a version that gained little from
  the last one is near what the stream will give, and the first version served
  is not one the next hour makes look poor. A curve that turns down first (a
  version more than ``serve.max_regression`` below the best judged one so
  far) will not settle: that best version is promoted instead;
- otherwise promoted when its AUC is at most ``serve.max_regression`` below
  the served version's, else rejected with both figures in the reason.

A rejected version stays in the store with its reason and training goes on
from it (the lineage is the trainer's, exactly once); only serving holds back.
An operator forces a version through with ``hepstream models promote``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from hepstream.models.store import LoadedModel, ModelStore
from hepstream.models.store_errors import StoreError
from hepstream.models.validation import Reservoir, score
from hepstream.models.version_meta import VersionMeta

log = logging.getLogger(__name__)

# Fewer events of a class than this, and the slice does not judge: an AUC's standard error is about 0.01 at 500
# events a class (AUC 0.9), the scale of serve.max_regression; at 50 the gate rejected rising versions on noise.
MIN_EVENTS_PER_CLASS = 500


# serve.warm_up: settled keeps earlier versions this far apart in events (1.1: within 10 % of exactly half).
SPACING = 1.1


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    promote_instead: int | None = None  # warm_up: settled, a curve past its peak: that version is served


@dataclass(frozen=True)
class Peak:
    """The best version the warm-up of ``warm_up: settled`` has seen, and its figures on the candidate's
    validation events."""

    version: int
    figures: dict


@dataclass(frozen=True)
class Halfway:
    """The settling rule's reference: a version trained on ``events`` events, and its figures on the candidate's
    validation events (None while the candidate has not learned twice as many)."""

    events: int
    figures: dict | None


def judged(figures: dict | None, min_events: int = MIN_EVENTS_PER_CLASS) -> bool:
    """Whether validation figures can judge a version: an AUC, on at least ``min_events`` events of each of
    two classes or more."""
    counts = (figures or {}).get("per_class", {})
    return figures is not None and figures["auc"] is not None and len(counts) >= 2 and \
        min(counts.values()) >= min_events


def decide(candidate: dict | None, served: dict | None, served_version: int | None,
           max_regression: float | None, *, min_events: int = MIN_EVENTS_PER_CLASS, warm_up: str = "none",
           halfway: Halfway | None = None, settle_gain: float = 0.015, peak: Peak | None = None) -> Decision:
    """Whether a version with validation figures ``candidate`` may replace ``served_version`` (figures ``served``
    on the same events); both figure dicts as :func:`~hepstream.models.validation.score` makes them, and
    ``halfway`` and ``peak`` the references of ``warm_up: settled``.

    >>> both = {"0": 999, "1": 999}
    >>> decide({"auc": 0.80, "per_class": both}, {"auc": 0.90}, 3, 0.01)
    Decision(promoted=False, reason="validation AUC 0.8000 is 0.1000 below served version 3's 0.9000 on the same 1998 events (serve.max_regression 0.01)", promote_instead=None)
    >>> decide({"auc": 0.895, "per_class": both}, {"auc": 0.90}, 3, 0.01).promoted
    True
    >>> decide(None, None, None, 0.01).reason
    'first version: nothing is served yet'
    >>> decide({"auc": 0.7, "per_class": {"1": 999}}, None, None, 0.01, warm_up="judged").promoted
    False
    >>> decide({"auc": 0.7, "per_class": both}, None, None, 0.01, warm_up="judged").reason
    'first version judged: validation AUC 0.7000 on 1998 events'
    >>> decide({"auc": 0.85, "per_class": both}, None, None, 0.01, warm_up="settled",
    ...        halfway=Halfway(20_000, None)).reason
    'warming up (serve.warm_up: settled): compared with the version trained on 20000 events once twice as many are learned'
    >>> decide({"auc": 0.85, "per_class": both}, None, None, 0.01, warm_up="settled",
    ...        halfway=Halfway(20_000, {"auc": 0.80})).reason
    'still learning (serve.warm_up: settled): validation AUC 0.8500 is 0.0500 above the version trained on 20000 events, half as many or fewer, on the same 1998 events (serve.settle_gain 0.015)'
    >>> decide({"auc": 0.905, "per_class": both}, None, None, 0.01, warm_up="settled",
    ...        halfway=Halfway(40_000, {"auc": 0.90})).promoted
    True
    """
    if max_regression is None:
        return Decision(True, "gate off (serve.max_regression: null)")
    counts = (candidate or {}).get("per_class", {})
    events = sum(counts.values())
    if not judged(candidate, min_events):
        unjudged = (f"the validation slice holds {counts or 'no events'}, fewer than {min_events} events of "
                    "some class")
        if warm_up != "none":
            return Decision(False, f"held back: {unjudged} (serve.warm_up: {warm_up})")
        if served_version is None:
            return Decision(True, "first version: nothing is served yet")
        return Decision(True, f"not judged: {unjudged}")
    if served_version is None:
        if warm_up == "settled":
            return _settled(candidate, events, halfway, max_regression, settle_gain, peak)
        return Decision(True, f"first version judged: validation AUC {candidate['auc']:.4f} on {events} events")
    if served is None or served["auc"] is None:
        return Decision(True, f"not judged: served version {served_version} cannot be scored on the slice")
    drop = served["auc"] - candidate["auc"]
    if drop > max_regression:
        return Decision(False, f"validation AUC {candidate['auc']:.4f} is {drop:.4f} below served version "
                               f"{served_version}'s {served['auc']:.4f} on the same {events} events "
                               f"(serve.max_regression {max_regression})")
    return Decision(True, f"validation AUC {candidate['auc']:.4f} against served version {served_version}'s "
                          f"{served['auc']:.4f} on the same {events} events")


def _settled(candidate: dict, events: int, halfway: Halfway | None, max_regression: float,
             settle_gain: float, peak: Peak | None) -> Decision:
    """The first promotion of ``warm_up: settled``: the candidate gained at most ``settle_gain`` over
    ``halfway``; or, when it fell more than ``max_regression`` below ``peak``, the curve has turned and the peak
    is promoted instead (a stream that gets worse, as a label-ordered one does, would never settle)."""
    if peak is not None and peak.figures["auc"] - candidate["auc"] > max_regression:
        return Decision(False, f"held back (serve.warm_up: settled): validation AUC {candidate['auc']:.4f} is "
                               f"{peak.figures['auc'] - candidate['auc']:.4f} below version {peak.version}'s "
                               f"{peak.figures['auc']:.4f} on the same {events} events: past its peak, version "
                               f"{peak.version} is served", promote_instead=peak.version)
    if halfway is None or halfway.figures is None or halfway.figures["auc"] is None:
        since = f"the version trained on {halfway.events} events" if halfway else "this one"
        return Decision(False, f"warming up (serve.warm_up: settled): compared with {since} once twice as many "
                               "are learned")
    gain = candidate["auc"] - halfway.figures["auc"]
    than = (f"the version trained on {halfway.events} events, half as many or fewer, on the same {events} "
            "events")
    if gain > settle_gain:
        return Decision(False, f"still learning (serve.warm_up: settled): validation AUC {candidate['auc']:.4f} "
                               f"is {gain:.4f} above {than} (serve.settle_gain {settle_gain})")
    return Decision(True, f"settled: validation AUC {candidate['auc']:.4f}, {gain:+.4f} against {than}")


class Gate:
    """Reviews each version before it is published and remembers the served one, for one model's store."""

    def __init__(self, store: ModelStore, max_regression: float | None, capacity: int, warm_up: str = "none",
                 settle_gain: float = 0.015):
        self.store = store
        self.max_regression = max_regression
        self.warm_up, self.settle_gain = warm_up, settle_gain
        self.min_events = min(MIN_EVENTS_PER_CLASS, capacity)
        self.served: LoadedModel | None = None
        self.earlier: list[LoadedModel] = []  # warm_up: settled, before the first promotion: see _halfway
        self.peak: LoadedModel | None = None  # warm_up: settled: the best judged version before the first promotion
        self.rejected = 0  # in this run, for the trainer's metrics
        self._served_figures: tuple[tuple, dict | None] = ((), None)  # ((version, reservoir, revision), figures)

    @classmethod
    def for_config(cls, store: ModelStore, config) -> Gate:
        """The gate of a trainer of ``config`` (serve.max_regression, warm_up, settle_gain; the slice's size)."""
        return cls(store, config.serve.max_regression, config.training.validation_events, config.serve.warm_up,
                   config.serve.settle_gain)

    def _served_now(self) -> LoadedModel | None:
        """The newest promoted version, loaded once and kept while it stays the newest (an operator may force
        another through meanwhile)."""
        version = self.store.latest_servable()
        if version is None:
            self.served = None
        elif self.served is None or self.served.version != version:
            try:
                self.served = self.store.load(version)
            except (StoreError, ValueError) as error:  # the server cannot load it either: compare with the last one
                log.warning("quality gate: version %d of %s does not load (%s); comparing with version %s",
                            version, self.store.model, error, self.served and self.served.version)
        return self.served

    def review(self, meta: VersionMeta, model_state: dict, reservoir: Reservoir) -> tuple[VersionMeta, LoadedModel]:
        """``meta`` with this version's validation figures and the gate's decision, and the candidate as a model."""
        candidate = LoadedModel(self.store.model, 0, meta, model_state)
        figures = score(candidate, reservoir) if reservoir else None
        served = self._served_now()
        theirs = None
        if served is not None and figures is not None:
            theirs = self._served_score(served, reservoir)
        halfway = peak = None
        if served is None and self.warm_up == "settled" and judged(figures, self.min_events):
            halfway = self._halfway(candidate, reservoir)
            if self.peak is not None:
                peak = Peak(self.peak.version, score(self.peak, reservoir))
        decision = decide(figures, theirs, served.version if served is not None else None, self.max_regression,
                          min_events=self.min_events, warm_up=self.warm_up, halfway=halfway,
                          settle_gain=self.settle_gain, peak=peak)
        if decision.promote_instead is not None:
            self._promote_peak(peak, decision.reason)
        elif halfway is not None and (peak is None or figures["auc"] >= peak.figures["auc"]):
            self.peak = candidate  # its number comes with publish()
        validation = None
        if figures is not None:
            validation = {**figures, "served_version": served.version if served is not None else None,
                          "served_auc": theirs and theirs["auc"], "served_log_loss": theirs and theirs["log_loss"]}
        return replace(meta, validation=validation, promoted=decision.promoted,
                       promotion_reason=decision.reason), candidate

    def _promote_peak(self, peak: Peak, why: str) -> None:  # why: the reason the later version was held back
        """Serve the warm-up's best version now that a later one fell below it: a curve that has turned will
        not settle, and that version is the best the stream has given."""
        self.store.promote(peak.version, f"settled at its peak (serve.warm_up: settled): validation AUC "
                                         f"{peak.figures['auc']:.4f}, the best of the warm-up; then {why}")
        self.peak.meta = self.store.read_meta(peak.version)
        self.served, self.earlier, self.peak = self.peak, [], None
        log.warning("version %d of %s is promoted, the best before the curve turned down", peak.version,
                    self.store.model)

    def _halfway(self, candidate: LoadedModel, reservoir: Reservoir) -> Halfway:
        """The settling rule's reference for ``candidate``: the newest earlier version trained on half its events
        or fewer, and that version's figures on the same events (None until there is one).

        Earlier versions are kept in memory from the first one the slice judged (after a restart too: the
        warm-up then takes at most one doubling longer), each on at least :data:`SPACING` times its
        predecessor's events, and dropped once no later candidate can need them: at most about 8 models,
        whatever the cadence. Judged ones only: a version from before the slice held every class (the first
        half of a label-ordered stream) knows as little as one learned on the same class since, and the curve
        between them looks flat.
        """
        events = candidate.meta.events_seen
        halves = [model for model in self.earlier if 2 * model.meta.events_seen <= events]
        if halves:
            self.earlier = self.earlier[len(halves) - 1:]  # a later candidate's half is at least this one's
        if not self.earlier or events > SPACING * self.earlier[-1].meta.events_seen:
            self.earlier.append(candidate)
        if not halves:
            return Halfway(self.earlier[0].meta.events_seen, None)
        return Halfway(halves[-1].meta.events_seen, score(halves[-1], reservoir) if reservoir else None)

    def _served_score(self, served: LoadedModel, reservoir: Reservoir) -> dict | None:
        """The served version's figures on the reservoir, scored again only when either has changed since."""
        key = (served.version, id(reservoir), reservoir.revision)
        if self._served_figures[0] != key:
            self._served_figures = key, score(served, reservoir)
        return self._served_figures[1]

    def published(self, version: int, meta: VersionMeta, candidate: LoadedModel) -> None:
        """``version`` was published with the reviewed ``meta``: a promoted one is the served version from now."""
        candidate.version = version
        if meta.promoted:
            candidate.meta = self.store.read_meta(version)
            self.served, self.earlier, self.peak = candidate, [], None
        else:
            self.rejected += 1
            log.warning("version %d of %s is not promoted: %s", version, self.store.model, meta.promotion_reason)

    def publish(self, checkpoints, model_state: dict, meta: VersionMeta, state: dict, checkpoint: str,
                reservoir: Reservoir) -> int:
        """Review a version, publish it through ``checkpoints`` (a CheckpointHealth) with its reservoir, and
        remember it if promoted: what both trainers do at a checkpoint."""
        meta, candidate = self.review(meta, model_state, reservoir)
        files = {"validation.arrow": reservoir.to_bytes()} if reservoir else None
        version = checkpoints.publish(self.store, model_state, meta, state, checkpoint, files)
        self.published(version, meta, candidate)
        return version
