"""The validation slice and the gate's rule, without services: which chunks are held, what the reservoir keeps."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from hepstream.models.gate import decide
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


@pytest.mark.parametrize(("candidate", "version", "promoted", "words"), [
    ({"auc": 0.60, "per_class": {"1": 500}}, None, False, "held back: the validation slice holds {'1': 500}"),
    ({"auc": 0.10, "per_class": {"0": 3, "1": 500}}, 4, False, "serve.promote_unjudged: false"),
    (None, None, False, "held back"),
    ({"auc": 0.60, **ENOUGH}, None, True, "first version judged: validation AUC 0.6000 on 1000 events"),
])
def test_without_unjudged_promotions_the_first_version_served_is_a_judged_one(candidate, version, promoted, words):
    decision = decide(candidate, {"auc": 0.9}, version, 0.01, promote_unjudged=False)
    assert decision.promoted is promoted and words in decision.reason


def test_holding_back_unjudged_versions_needs_a_slice_that_can_judge():
    from hepstream.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="serve.promote_unjudged.*validation_fraction is 0"):
        config_from_dict({"serve": {"promote_unjudged": False}, "training": {"validation_fraction": 0}}, "p.yaml")
    config = config_from_dict({"serve": {"promote_unjudged": False}}, "p.yaml")
    assert config.training.validation_fraction == 0.03 and not config.serve.promote_unjudged
