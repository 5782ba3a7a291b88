"""Builds the estimator of a configuration's ``model.kind``, by the builder its registry entry names.

The kinds, their options and their builders' import paths are listed once,
in :data:`hepstream.model_kinds.MODEL_KINDS`; every kind there gets the
contract suite in ``tests/models/test_contract.py``.
"""

from __future__ import annotations

import importlib

from hepstream.config import ModelConfig, TrainingConfig
from hepstream.model_kinds import MODEL_KINDS, MLPConfig
from hepstream.models.base import Estimator
from hepstream.models.features import FeaturePipeline
from hepstream.models.kinds import logits_width


def build_estimator(config: ModelConfig, features: FeaturePipeline, training: TrainingConfig) -> Estimator:
    """A fresh, seeded estimator for ``config`` over ``features``' columns."""
    import torch

    torch.manual_seed(training.seed)
    module_name, _, function = MODEL_KINDS[config.kind].builder.partition(":")
    return getattr(importlib.import_module(module_name), function)(config, features, training)


def build_model(config: MLPConfig, n_features: int):
    """The bare torch network of an ``mlp`` config, for callers that publish weights themselves (tests/serve)."""
    from hepstream.models.mlp import MLP

    if config.kind != "mlp":
        raise ValueError(f"build_model builds mlp networks only, not {config.kind!r}; use build_estimator")
    return MLP(n_features, config.hidden, config.dropout, logits_width(config.classes))
