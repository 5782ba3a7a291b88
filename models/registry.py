"""Builds the estimator of a configuration's ``model.kind``, by the builder its registry entry names.

The kinds, their options and their builders' import paths are listed once,
in :data:`hepstream.model_kinds.MODEL_KINDS`; every kind there gets the
contract suite in ``tests/models/test_contract.py``.
"""

from __future__ import annotations

import importlib

from hepstream.config import ModelConfig, TrainingConfig
from hepstream.model_kinds import MODEL_KINDS
from hepstream.models.base import Estimator
from hepstream.models.features import FeaturePipeline


def build_estimator(config: ModelConfig, features: FeaturePipeline, training: TrainingConfig) -> Estimator:
    """A fresh, seeded estimator for ``config`` over ``features``' columns."""
    import torch

    torch.manual_seed(training.seed)
    module_name, _, function = MODEL_KINDS[config.kind].builder.partition(":")
    return getattr(importlib.import_module(module_name), function)(config, features, training)
