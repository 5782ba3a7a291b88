"""The builders the registry of kinds names (``hepstream.model_kinds``), one per kind.

Each is called as ``builder(config, features, training)`` with the kind's own
``model`` section and returns a fresh estimator; torch is seeded before.
Imports stay inside the builders, so a river model never imports torch's
modules and the reverse.
"""

from __future__ import annotations

from hepstream.config import TrainingConfig
from hepstream.model_kinds import DeepSetsConfig, MLPConfig, RiverConfig, UserConfig
from hepstream.models.base import Estimator
from hepstream.models.features import FeaturePipeline


def logits_width(classes: int) -> int:
    """One logit for two classes (a sigmoid), one per class otherwise (a softmax)."""
    return 1 if classes == 2 else classes


def mlp(config: MLPConfig, features: FeaturePipeline, training: TrainingConfig) -> Estimator:
    from hepstream.models.mlp import MLP
    from hepstream.models.torch_estimator import TorchEstimator

    module = MLP(features.n_features, config.hidden, config.dropout, logits_width(config.classes))
    return TorchEstimator(module, config.classes, training)


def deepsets(config: DeepSetsConfig, features: FeaturePipeline, training: TrainingConfig) -> Estimator:
    from hepstream.models.deepsets import DeepSets
    from hepstream.models.torch_estimator import TorchEstimator

    module = DeepSets(features.layout, config.set_hidden, config.hidden, config.dropout, logits_width(config.classes))
    return TorchEstimator(module, config.classes, training)


def river(config: RiverConfig, features: FeaturePipeline, training: TrainingConfig) -> Estimator:
    from hepstream.models.river_models import RiverEstimator, build_river

    model = build_river(config.kind, config.classes, config.options, training.seed)
    return RiverEstimator(model, features.feature_names, config.classes)


def user(config: UserConfig, features: FeaturePipeline, training: TrainingConfig) -> Estimator:
    from hepstream.models.user import build_user

    return build_user(config.factory, features.layout, config.classes, config.options, training)
