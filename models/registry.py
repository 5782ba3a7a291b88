"""Which estimator a configuration's ``model.kind`` builds; explicit, so Ray workers need no import tricks.

Every kind here gets the contract suite in ``tests/models/test_contract.py``
by being listed in :data:`KINDS`.
"""

from __future__ import annotations

from hepstream.config import ModelConfig, TrainingConfig
from hepstream.models.base import Estimator
from hepstream.models.features import FeaturePipeline

KINDS = ("mlp", "deepsets", "logistic", "hoeffding_tree", "arf", "user")


def build_estimator(config: ModelConfig, features: FeaturePipeline, training: TrainingConfig) -> Estimator:
    """A fresh, seeded estimator for ``config`` over ``features``' columns."""
    import torch

    from hepstream.models.torch_estimator import TorchEstimator

    torch.manual_seed(training.seed)
    outputs = 1 if config.classes == 2 else config.classes
    if config.kind == "mlp":
        from hepstream.models.mlp import MLP

        return TorchEstimator(MLP(features.n_features, config.hidden, config.dropout, outputs), config.classes, training)
    if config.kind == "deepsets":
        from hepstream.models.deepsets import DeepSets

        module = DeepSets(features.layout, config.set_hidden, config.hidden, config.dropout, outputs)
        return TorchEstimator(module, config.classes, training)
    if config.kind in ("logistic", "hoeffding_tree", "arf"):
        from hepstream.models.river_models import RiverEstimator, build_river

        model = build_river(config.kind, config.classes, config.options, training.seed)
        return RiverEstimator(model, features.feature_names, config.classes)
    if config.kind == "user":
        from hepstream.models.user import build_user

        return build_user(config.factory, features.layout, config.classes, config.options, training)
    raise ValueError(f"model.kind {config.kind!r} is not known; known kinds: {KINDS}")

