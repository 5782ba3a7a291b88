"""Which model class a configuration's ``model.kind`` builds; explicit, so Ray workers need no import tricks."""

from __future__ import annotations

from torch import nn

from hepstream.config import ModelConfig
from hepstream.models.mlp import MLP


def build_model(config: ModelConfig, n_features: int) -> nn.Module:
    if config.kind == "mlp":
        return MLP(n_features, config.hidden, config.dropout)
    raise ValueError(f"model.kind {config.kind!r} is not known")
