"""The fully connected network, the first model a physicist reaches for on flat features."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Hidden layers of ReLU units, one logit out (binary classification).

    >>> MLP(5, [8, 8])(torch.zeros(3, 5)).shape
    torch.Size([3])
    """

    def __init__(self, n_features: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
