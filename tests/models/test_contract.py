"""The contract every model kind meets (river's habit): register a kind in MODEL_KINDS and it is tested here.

The checks are ``hepstream.models.checks``, shipped for users to run on their
own models; here they run over every registered kind and the user models of
``tests/models/user_models.py``, and are shown to catch models that break them.
"""

import numpy as np
import pytest

from hepstream.config import TrainingConfig
from hepstream.model_kinds import MODEL_KINDS, model_config
from hepstream.models.checks import FEATURES, check_estimator, synthetic_events, yield_checks
from hepstream.models.learner import Learner
from tests.models.user_models import CentroidModel

FACTORIES = {"user": "tests.models.user_models:linear", "user-json": "tests.models.user_models:centroid"}
# Smaller or quicker than the defaults; a kind not named here is checked with its defaults.
SMALL = {"mlp": {"hidden": [16]}, "deepsets": {"hidden": [16], "set_hidden": [8]},
         "hoeffding_tree": {"options": {"grace_period": 50}}, "arf": {"options": {"n_models": 3}}}
MODELS = {
    case: model_config({"name": "c", "kind": "user", "factory": FACTORIES[case]} if case in FACTORIES
                       else {"name": "c", "kind": case, **SMALL.get(case, {})})
    for case in [k for k in MODEL_KINDS if k != "user"] + list(FACTORIES)
}


@pytest.mark.parametrize("check", [pytest.param(check, id=f"{case}-{check.name}")
                                   for case, model in MODELS.items() for check in yield_checks(model)])
def test_every_kind_meets_the_contract(check):
    check()


class InPlaceScaling(CentroidModel):
    """Divides the matrix it is given instead of a copy of it."""

    def predict_proba(self, x):
        x /= 2
        return super().predict_proba(x)


class Forgetful(CentroidModel):
    """Checkpoints nothing it learned."""

    def state_dict(self):
        return {"sums": np.zeros_like(self.sums).tolist(), "counts": np.zeros_like(self.counts).tolist()}


def in_place_scaling(layout, classes):
    return InPlaceScaling(layout, classes)


def forgetful(layout, classes):
    return Forgetful(layout, classes)


@pytest.mark.parametrize(("factory", "failure"), [
    ("in_place_scaling", "'input_unchanged': .*predict_proba changed its input"),
    ("forgetful", "'state_round_trips': .*the model loaded from the store predicts otherwise"),
], ids=["in_place_scaling", "forgetful"])
def test_the_checks_name_what_a_broken_model_breaks(factory, failure):
    path = f"tests.models.test_contract:{factory}"
    with pytest.raises(AssertionError, match=f"(?s){path} fails the estimator check {failure}"):
        check_estimator(path)


def test_event_weights_change_what_a_torch_model_learns():
    learner = Learner(FEATURES, MODELS["mlp"], TrainingConfig(device="cpu"))
    batch, y = synthetic_events(np.random.default_rng(5), 300)
    x = learner.features.transform(batch)
    state = {k: v.clone() for k, v in learner.estimator.module.state_dict().items()}
    learner.estimator.learn(x, y, np.ones(len(y), np.float32))
    unweighted = learner.estimator.predict_proba(x)
    learner.estimator.module.load_state_dict(state)
    learner.estimator.optimizer.state.clear()
    learner.estimator.learn(x, y, np.where(y == 1, 5.0, 0.1).astype(np.float32))
    assert learner.estimator.predict_proba(x).mean() > unweighted.mean()
