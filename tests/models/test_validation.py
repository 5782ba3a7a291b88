"""The validation slice and the gate's rule, without services: which chunks are held, what the reservoir keeps."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from hepstream.models.gate import Decision, Gate, Halfway, Peak, decide
from hepstream.models.validation import LABEL_COLUMN, Reservoir, in_slice, score

KEYS = [f"file-{f}/Events/{start}-{start + 100}" for f in range(20) for start in range(0, 50_000, 100)]


def test_the_slice_is_the_same_for_every_process_and_grows_with_the_fraction():
    held = {key for key in KEYS if in_slice(key, 0.03)}
    assert held == {key for key in KEYS if in_slice(key, 0.03)}  # a hash of the key, not Python's salted hash()
    assert 0.02 < len(held) / len(KEYS) < 0.04
    assert held < {key for key in KEYS if in_slice(key, 0.1)}  # a larger slice holds the smaller one
    assert not any(in_slice(key, 0.0) for key in KEYS)


def _chunk(events: int, label: int, start: float) -> tuple[pa.RecordBatch, np.ndarray]:
    batch = pa.record_batch({"MET_pt": np.arange(start, start + events, dtype=np.float64),
                             "Muon_pt": [[1.0]] * events, "unused": np.zeros(events)})
    return batch, np.full(events, label)


def test_the_reservoir_keeps_at_most_its_capacity_per_class_and_counts_what_it_saw():
    reservoir = Reservoir(capacity=300, seed=1)
    for i in range(20):
        reservoir.add(*_chunk(100, i % 2, 1000.0 * i), branches=["MET_pt", "Muon_pt"])
    reservoir.add(*_chunk(7, 2, 0.0), branches=["MET_pt", "Muon_pt"])
    assert reservoir.counts() == {0: 300, 1: 300, 2: 7} and reservoir.seen == {0: 1000, 1: 1000, 2: 7}
    batch, labels = reservoir.events()
    assert batch.schema.names == ["MET_pt", "Muon_pt"] and len(labels) == 607
    kept = batch.column("MET_pt").to_numpy()
    assert len(set(kept[labels == 0] // 1000)) >= 5  # a sample of the whole stream, not its first chunks
    again = Reservoir.from_bytes(reservoir.to_bytes(), capacity=300)
    assert again.counts() == reservoir.counts() and again.seen == reservoir.seen
    assert again.events()[0].equals(batch)


def test_merged_reservoirs_stay_bounded_and_add_up_what_they_saw():
    one, two = Reservoir(capacity=50, seed=1), Reservoir(capacity=50, seed=2)
    for i in range(6):
        one.add(*_chunk(40, 0, 100.0 * i))
        two.add(*_chunk(40, i % 2, 100.0 * i))
    one.merge(two)
    assert one.counts() == {0: 50, 1: 50} and one.seen == {0: 240 + 120, 1: 120}
    assert LABEL_COLUMN not in one.events()[0].schema.names


class _ByMet:
    def __init__(self, sign: float):
        self.sign = sign

    def predict(self, batch):
        return 1.0 / (1.0 + np.exp(-self.sign * batch.column("MET_pt").to_numpy() / 100.0))


def test_a_model_is_scored_on_the_reservoir_with_auc_loss_and_counts():
    reservoir = Reservoir(capacity=100)
    reservoir.add(*_chunk(60, 0, 0.0))
    assert score(_ByMet(1.0), reservoir)["auc"] is None  # one class: no AUC yet
    reservoir.add(*_chunk(60, 1, 100.0))
    good, bad = score(_ByMet(1.0), reservoir), score(_ByMet(-1.0), reservoir)
    assert (good["auc"], bad["auc"], good["events"], good["per_class"]) == (1.0, 0.0, 120, {"0": 60, "1": 60})
    assert good["log_loss"] < bad["log_loss"]
    assert score(_ByMet(1.0), Reservoir(capacity=10)) is None


ENOUGH = {"per_class": {"0": 500, "1": 500}}


@pytest.mark.parametrize(("candidate", "served", "version", "max_regression", "promoted", "words"), [
    ({"auc": 0.70, **ENOUGH}, {"auc": 0.90}, 4, None, True, "gate off"),
    ({"auc": 0.70, **ENOUGH}, None, None, 0.01, True, "first version"),
    ({"auc": 0.70, **ENOUGH}, {"auc": 0.90}, 4, 0.01, False, "0.2000 below served version 4's 0.9000"),
    ({"auc": 0.895, **ENOUGH}, {"auc": 0.90}, 4, 0.01, True, "against served version 4's"),
    ({"auc": 0.95, **ENOUGH}, {"auc": 0.90}, 4, 0.0, True, "against served version 4's"),
    ({"auc": 0.70, **ENOUGH}, {"auc": 0.90}, 4, 0.25, True, "against served version 4's"),
    ({"auc": None, "per_class": {"1": 500}}, {"auc": None}, 4, 0.01, True, "not judged"),
    ({"auc": 0.10, "per_class": {"0": 3, "1": 500}}, {"auc": 0.90}, 4, 0.01, True, "not judged"),
    (None, None, 4, 0.01, True, "not judged"),
])
def test_gate_decisions(candidate, served, version, max_regression, promoted, words):
    decision = decide(candidate, served, version, max_regression)
    assert decision.promoted is promoted and words in decision.reason


@pytest.mark.parametrize("warm_up", ["judged", "settled"])
@pytest.mark.parametrize(("candidate", "version", "promoted", "words"), [
    ({"auc": 0.60, "per_class": {"1": 500}}, None, False, "held back: the validation slice holds {'1': 500}"),
    ({"auc": 0.10, "per_class": {"0": 3, "1": 500}}, 4, False, "(serve.warm_up: "),
    (None, None, False, "held back"),
])
def test_with_a_warm_up_no_unjudged_version_is_served(candidate, version, promoted, words, warm_up):
    decision = decide(candidate, {"auc": 0.9}, version, 0.01, warm_up=warm_up)
    assert decision.promoted is promoted and words in decision.reason


def test_a_judged_warm_up_serves_the_first_judged_version():
    decision = decide({"auc": 0.60, **ENOUGH}, None, None, 0.01, warm_up="judged")
    assert decision == Decision(True, "first version judged: validation AUC 0.6000 on 1000 events")


@pytest.mark.parametrize(("halfway_auc", "promoted", "words"), [
    (None, False, "warming up (serve.warm_up: settled): compared with the version trained on 40000 events once"),
    (0.85, False, "still learning (serve.warm_up: settled): validation AUC 0.9000 is 0.0500 above the version "
                  "trained on 40000 events, half as many or fewer, on the same 1000 events (serve.settle_gain 0.01)"),
    (0.891, True, "settled: validation AUC 0.9000, +0.0090 against the version trained on 40000 events"),
    (0.905, True, "settled: validation AUC 0.9000, -0.0050 against"),
])
def test_a_settled_warm_up_waits_for_a_flat_learning_curve(halfway_auc, promoted, words):
    halfway = Halfway(40_000, None if halfway_auc is None else {"auc": halfway_auc})
    decision = decide({"auc": 0.90, **ENOUGH}, None, None, 0.01, warm_up="settled", halfway=halfway,
                      settle_gain=0.01, peak=Peak(7, {"auc": 0.905}))
    assert decision.promoted is promoted and words in decision.reason, decision
    assert decision.promote_instead is None
    fallen = decide({"auc": 0.90, **ENOUGH}, None, None, 0.01, warm_up="settled", halfway=halfway,
                    peak=Peak(7, {"auc": 0.92}))  # more than max_regression below the best: past the peak
    assert (fallen.promoted, fallen.promote_instead) == (False, 7)
    assert fallen.reason.endswith("is 0.0200 below version 7's 0.9200 on the same 1000 events: past its peak, "
                                  "version 7 is served")
    served = decide({"auc": 0.90, **ENOUGH}, {"auc": 0.90}, 3, 0.01, warm_up="settled", halfway=halfway)
    assert served.promoted and "against served version 3's" in served.reason  # only the first version warms up


class _Curve:
    """A version whose validation AUC follows a learning curve, 0.92 - 0.3 / sqrt(thousands of events): each
    doubling of the events gains less (0.028, 0.020, 0.014, then 0.0098 from 80k to 160k)."""

    def __init__(self, name, version, meta, model_state):
        self.version, self.meta = version, meta

    @property
    def auc(self) -> float:
        return 0.92 - 0.3 / np.sqrt(self.meta.events_seen / 1000)


def test_the_gate_compares_each_version_with_one_trained_on_half_as_many_events(tmp_path, monkeypatch):
    from hepstream.models import gate as gate_module
    from hepstream.models.store import ModelStore
    from hepstream.models.version_meta import VersionMeta

    monkeypatch.setattr(gate_module, "LoadedModel", _Curve)
    monkeypatch.setattr(gate_module, "score", lambda model, reservoir: {"auc": model.auc, **ENOUGH})
    reservoir = Reservoir(capacity=10)
    reservoir.add(*_chunk(2, 1, 0.0))
    gate = Gate(ModelStore(tmp_path / "store", "m"), 0.01, capacity=5000, warm_up="settled", settle_gain=0.01)
    reasons, held = {}, []
    for thousands in range(10, 400, 10):
        meta = VersionMeta(features={}, feature_state={}, model={}, events_seen=thousands * 1000)
        reviewed, _ = gate.review(meta, {}, reservoir)
        reasons[thousands] = (reviewed.promoted, reviewed.promotion_reason)
        held.append(len(gate.earlier))
    assert reasons[10] == (False, "warming up (serve.warm_up: settled): compared with the version trained on 10000 "
                                  "events once twice as many are learned")
    assert "0.0105 above the version trained on 70000 events" in reasons[140][1]  # the newest one at half or less
    assert "0.0114 above the version trained on 70000 events" in reasons[150][1]
    assert reasons[160] == (True, "settled: validation AUC 0.8963, +0.0098 against the version trained on 80000 "
                                  "events, half as many or fewer, on the same 1000 events")
    assert [k for k, (promoted, _) in reasons.items() if promoted][0] == 160  # the first doubling gaining <= 0.01
    assert max(held) <= 9  # versions between the half and now, 10 % apart: bounded however often it checkpoints


class _Turning(_Curve):
    """A curve that rises to 0.85 at 100k events, then falls twice as fast (a stream that ends with one class)."""

    @property
    def auc(self) -> float:
        thousands = self.meta.events_seen / 1000
        return 0.85 - (0.001 if thousands < 100 else 0.002) * abs(thousands - 100)


def test_a_settled_warm_up_serves_the_peak_once_the_curve_turns_down(tmp_path, monkeypatch):
    from hepstream.models import gate as gate_module
    from hepstream.models.store import ModelStore
    from hepstream.models.version_meta import VersionMeta

    monkeypatch.setattr(gate_module, "LoadedModel", _Turning)
    monkeypatch.setattr(gate_module, "score", lambda model, reservoir: {"auc": model.auc, "log_loss": 0.4, **ENOUGH})
    reservoir = Reservoir(capacity=10)
    reservoir.add(*_chunk(2, 1, 0.0))
    store = ModelStore(tmp_path / "store", "m")
    promoted = []
    monkeypatch.setattr(store, "promote", lambda version, reason: promoted.append((version, reason)))
    published = {}  # version: meta, as the store would read them back
    monkeypatch.setattr(store, "read_meta", published.get)
    monkeypatch.setattr(store, "latest_servable", lambda: promoted[-1][0] if promoted else None)
    gate = Gate(store, 0.01, capacity=5000, warm_up="settled", settle_gain=0.001)
    reviewed = {}
    for version, thousands in enumerate(range(10, 200, 10), start=1):
        meta, candidate = gate.review(VersionMeta(features={}, feature_state={}, model={},
                                                  events_seen=thousands * 1000), {}, reservoir)
        published[version] = meta
        gate.published(version, meta, candidate)
        reviewed[thousands] = meta
    # Rising 0.001 per 1k events, it never gains as little as 0.001 over its half; at 110k it has fallen 0.02
    # below the 100k version, version 10: that one is served, and the gate compares with it from then on.
    assert [version for version, _ in promoted] == [10], promoted
    assert promoted[0][1].startswith("settled at its peak (serve.warm_up: settled): validation AUC 0.8500, the "
                                     "best of the warm-up; then held back (serve.warm_up: settled): validation "
                                     "AUC 0.8300 is 0.0200 below version 10's 0.8500"), promoted
    assert reviewed[110].promotion_reason.endswith("past its peak, version 10 is served"), reviewed[110]
    assert not any(reviewed[k].promoted for k in range(10, 120, 10))
    assert gate.served.version == 10 and "below served version 10's 0.8500" in reviewed[120].promotion_reason
    assert not any(reviewed[k].promoted for k in range(120, 200, 10))  # all worse than the peak served


class _SignalFirst(_Curve):
    """A label-ordered stream: 0.45 for every version up to 110k events (signal only so far), then rising."""

    @property
    def auc(self) -> float:
        return 0.45 + max(0.0, self.meta.events_seen / 1000 - 110) * 0.001


def test_versions_from_before_the_slice_could_judge_are_never_the_reference(tmp_path, monkeypatch):
    from hepstream.models import gate as gate_module
    from hepstream.models.store import ModelStore
    from hepstream.models.version_meta import VersionMeta

    slice_holds = {}
    monkeypatch.setattr(gate_module, "LoadedModel", _SignalFirst)
    monkeypatch.setattr(gate_module, "score", lambda model, reservoir: {"auc": model.auc, "per_class": slice_holds})
    reservoir = Reservoir(capacity=10)
    reservoir.add(*_chunk(2, 1, 0.0))
    gate = Gate(ModelStore(tmp_path / "store", "m"), 0.01, capacity=5000, warm_up="settled", settle_gain=0.01)
    reasons = {}
    for thousands in range(10, 250, 10):
        slice_holds.update({"1": 500} if thousands < 110 else ENOUGH["per_class"])  # background from 110k on
        meta = VersionMeta(features={}, feature_state={}, model={}, events_seen=thousands * 1000)
        reviewed, _ = gate.review(meta, {}, reservoir)
        reasons[thousands] = reviewed.promotion_reason
    # At 110k the first judged version and those at half its events all score 0.45: a flat curve, but at the
    # bottom. Only judged versions are references, so the first comparison is at 220k, against 110k.
    assert reasons[110].startswith("warming up") and reasons[210].startswith("warming up"), reasons
    assert "0.1100 above the version trained on 110000 events" in reasons[220], reasons


def test_holding_back_unjudged_versions_needs_a_slice_that_can_judge():
    from hepstream.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="serve.warm_up.*validation_fraction is 0"):
        config_from_dict({"serve": {"warm_up": "settled"}, "training": {"validation_fraction": 0}}, "p.yaml")
    config = config_from_dict({"serve": {"warm_up": "judged"}}, "p.yaml")
    assert config.training.validation_fraction == 0.03 and config.serve.warm_up == "judged"
    assert config_from_dict({}, "p.yaml").serve.warm_up == "none"
    with pytest.warns(FutureWarning, match="serve.promote_unjudged is deprecated: write serve.warm_up: judged"):
        assert config_from_dict({"serve": {"promote_unjudged": False}}, "p.yaml").serve.warm_up == "judged"
    with pytest.raises(ConfigError, match="serve.promote_unjudged and serve.warm_up are the same setting"):
        config_from_dict({"serve": {"promote_unjudged": False, "warm_up": "settled"}}, "p.yaml")
