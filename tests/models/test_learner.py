"""The learner without Kafka: scoring inside the learning pass, and groups prepared ahead of learning."""

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch

from hepstream.config import FeaturesConfig, JaggedFeature, TrainingConfig
from hepstream.model_kinds import MLPConfig
from hepstream.models.learner import Learner


def _learner(averaging_events: int = 20_000, **model) -> Learner:
    features = FeaturesConfig(flat=["MET_pt"], jagged=[JaggedFeature(branches=["Muon_pt"], length=2)])
    training = TrainingConfig(device="cpu", batch_size=16, seed=3, averaging_events=averaging_events)
    return Learner(features, MLPConfig(name="t", **model), training)


def _batch(seed: int, events: int = 40) -> tuple[pa.RecordBatch, np.ndarray]:
    rng = np.random.default_rng(seed)
    muons = [list(rng.exponential(30, rng.integers(0, 4))) for _ in range(events)]
    batch = pa.record_batch({"MET_pt": rng.exponential(40, events), "Muon_pt": muons})
    return batch, rng.integers(0, 2, events)


def test_learning_pass_gives_each_event_the_score_it_had_before_its_step():
    learner = _learner(averaging_events=0)  # the trained weights score: as the learning pass does
    estimator = learner.estimator
    assert estimator.scores_while_learning
    x = np.random.default_rng(0).normal(size=(40, learner.features.n_features)).astype(np.float32)
    y = np.arange(40) % 2
    expected, shadow = [], copy.deepcopy(estimator)
    for start in range(0, 40, 16):  # the same steps, scoring each minibatch first
        part = slice(start, start + 16)
        expected.append(shadow.predict_proba(x[part]))
        shadow.learn(x[part], y[part], None)
    scores = estimator.learn(x, y, None)
    np.testing.assert_allclose(scores, np.concatenate(expected), rtol=1e-5, atol=1e-6)
    assert not np.allclose(scores, estimator.predict_proba(x))  # it did learn after scoring


def test_the_averaged_weights_score_a_mean_of_the_steps_then_an_exponential_average():
    learner = _learner(averaging_events=32)  # batches of 16: a mean of the first two steps, then rate 1/2
    estimator = learner.estimator
    x = np.random.default_rng(1).normal(size=(64, learner.features.n_features)).astype(np.float32)
    y = np.arange(64) % 2
    trained, first = [], [p.detach().clone() for p in estimator.module.parameters()]
    for start in range(0, 64, 16):
        estimator.learn(x[start : start + 16], y[start : start + 16], None)
        trained.append([p.detach().clone() for p in estimator.module.parameters()])
    # step 1: rate 1 (the trained weights), step 2: 1/2 (the mean of two), steps 3 and 4: 32 events' rate, 1/2
    expected = [0.5 * (0.5 * (0.5 * (a + b) + c) + d) for a, b, c, d in zip(*trained)]
    for average, wanted, start in zip(estimator.averaged.parameters(), expected, first):
        torch.testing.assert_close(average, wanted)
        assert not torch.equal(average, start)
    scored = estimator.predict_proba(x)
    with torch.no_grad():
        by_average = torch.sigmoid(estimator.averaged(torch.from_numpy(x))).reshape(-1).numpy()
    np.testing.assert_allclose(scored, by_average, rtol=1e-5)  # what scores, and so what is served
    again = type(estimator)(copy.deepcopy(estimator.module), 2, TrainingConfig(device="cpu", batch_size=16,
                                                                               averaging_events=32))
    again.load_state_dict(estimator.state_dict())  # a checkpoint keeps the average and where it stands
    np.testing.assert_allclose(again.predict_proba(x), scored, rtol=1e-6)
    assert again.averaged_steps == 4


def test_models_with_dropout_are_scored_by_a_pass_of_their_own(monkeypatch):
    learner = _learner(dropout=0.5)
    assert not learner.estimator.scores_while_learning
    calls = []
    predict = learner.estimator.predict_proba
    monkeypatch.setattr(learner.estimator, "predict_proba", lambda x: calls.append(len(x)) or predict(x))
    batch, labels = _batch(1)
    learner.learn_many([learner.prepare(batch, labels)])
    assert calls == [40]
    assert learner.metrics.summary()["events"] == 40


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_groups_prepared_ahead_learn_as_groups_prepared_in_place(dropout):
    """The read-ahead path (prepare on a copy, adopt its state when learned) equals the plain one."""
    torch.manual_seed(0)
    plain = _learner(dropout=dropout)
    torch.manual_seed(0)
    ahead_learner = _learner(dropout=dropout)
    chunks = [_batch(seed) for seed in range(4)]
    ahead = ahead_learner.read_ahead()
    groups = [ahead_learner.prepare_group([ahead_learner.prepare(b, y)], ahead) for b, y in chunks]
    assert ahead_learner.features.moments.count.sum() == 0  # nothing adopted before it is learned
    for (batch, labels), group in zip(chunks, groups):
        torch.manual_seed(1)
        plain.learn_many([plain.prepare(batch, labels)])
        torch.manual_seed(1)
        ahead_learner.learn_group(group)
        assert ahead_learner.features.state_dict() == plain.features.state_dict()
    assert ahead_learner.state_dict()["rng"] == plain.state_dict()["rng"]
    assert ahead_learner.metrics.summary() == plain.metrics.summary()
    for mine, theirs in zip(ahead_learner.estimator.module.parameters(), plain.estimator.module.parameters()):
        torch.testing.assert_close(mine, theirs)
