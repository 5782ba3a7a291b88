"""A permutation-invariant set model (Deep Sets) over the jagged collections, plus the flat features.

The MLP sees slot 0 of the muons as a different input from slot 1, so it must
learn the same thing once per slot and depends on the sort order. Here one
small network (phi) embeds each object of a collection, whatever its slot;
the embeddings of real objects are averaged (padded slots are masked out, so
neither their values nor their number matters), and a second network (rho)
reads the pooled embeddings with the flat features and the object counts.
Zaheer et al., "Deep Sets", NeurIPS 2017.
"""

from __future__ import annotations

import torch
from torch import nn

from hepstream.models.features import FeatureLayout
from hepstream.models.mlp import dense_layers, squeeze_binary


class DeepSets(nn.Module):
    """
    >>> layout = FeatureLayout(flat=1, collections=((2, 3),))
    >>> DeepSets(layout, [8], [8])(torch.zeros(4, layout.n_features)).shape
    torch.Size([4])
    """

    def __init__(self, layout: FeatureLayout, set_hidden: list[int], hidden: list[int],
                 dropout: float = 0.0, outputs: int = 1):
        super().__init__()
        self.blocks = [(start, mask_start, branches, length) for start, mask_start, branches, length in layout.blocks()]
        self.flat = layout.flat
        self.phis = nn.ModuleList(dense_layers([branches, *set_hidden], last_activation=True)
                                  for _, _, branches, _ in self.blocks)
        pooled = sum(set_hidden[-1] + 1 for _ in self.blocks)  # mean embedding and object count per collection
        self.rho = dense_layers([layout.flat + pooled, *hidden, outputs], dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[:, : self.flat]]
        n = x.shape[0]
        for (start, mask_start, branches, length), phi in zip(self.blocks, self.phis):
            objects = x[:, start : start + branches * length].reshape(n, branches, length).transpose(1, 2)
            mask = x[:, mask_start : mask_start + length].unsqueeze(-1)
            count = mask.sum(dim=1)
            pooled = (phi(objects) * mask).sum(dim=1) / count.clamp(min=1.0)
            parts += [pooled, count]
        return squeeze_binary(self.rho(torch.cat(parts, dim=1)))
