"""The plain network: every feature in, hidden ReLU layers, one logit (binary) or one per class out."""

from __future__ import annotations

import functools

import torch
from torch import nn


FUSED_MIN_ROWS = 4096  # below this torch's own kernels are faster (figures in docs/http-api.md)


@functools.cache  # a property of the torch build; asked on every big forward pass
def fused_linear_available() -> bool:
    """Whether this torch build has oneDNN's fused linear kernel, which CPU builds with oneDNN have."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class DenseStack(nn.Sequential):
    """Linear layers with ReLU (and dropout) between them; scores big CPU batches with fused kernels.

    To score a big batch, each linear layer and the ReLU after it run as one
    oneDNN kernel that adds the bias and applies the ReLU while the product is
    still in cache, instead of a matrix product and then two more passes over
    activations too big for the cache, which shortens a server's forward
    pass over a big batch (figures in ``docs/http-api.md``).

    Only scoring takes that path: no gradient, weights on the CPU in float32,
    at least ``FUSED_MIN_ROWS`` rows, no autocast, not while tracing or
    exporting. Training and small batches run the layers one by one, as
    before; the weights are read as they are at each call (nothing is packed
    ahead), so a model scored between training steps scores with its newest
    weights. The parameters are those of ``nn.Sequential``, so checkpoints do
    not change. The kernel is ``torch.ops.mkldnn._linear_pointwise``, the one
    torch.compile's CPU backend calls: not a public API, hence the check that
    this build has it, and ``tests/models/test_dense.py`` comparing its scores
    with the layers run one by one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.scores_fused(x):
            return super().forward(x)
        layers = [layer for layer in self if not isinstance(layer, nn.Dropout)]  # dropout is off when scoring
        i = 0
        while i < len(layers):
            if isinstance(layers[i], nn.Linear):
                relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
                x = torch.ops.mkldnn._linear_pointwise(x, layers[i].weight, layers[i].bias, "relu" if relu else "none",
                                                       [], "")
                i += 2 if relu else 1
            else:
                x = layers[i](x)
                i += 1
        return x

    def scores_fused(self, x: torch.Tensor) -> bool:
        """Whether a forward pass over ``x`` runs the fused kernels."""
        if (self.training or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling()):
            return False  # before looking at x: a tracer would record the size checks in its graph
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() >= 2
                and x.numel() >= FUSED_MIN_ROWS * x.shape[-1] and not torch.is_autocast_enabled("cpu")
                and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in self.parameters())
                and fused_linear_available())


def dense_layers(widths: list[int], dropout: float = 0.0, last_activation: bool = False) -> DenseStack:
    """Linear layers through ``widths`` with ReLU (and dropout) between them; shared by every torch model.

    The ReLUs work in place: each overwrites the activations the linear layer
    before it has just made, which nothing else reads (backward needs a linear
    layer's input, not its output), instead of writing a copy, which makes
    the server's forward pass faster (figures in ``docs/http-api.md``).

    >>> dense_layers([4, 8, 1])
    DenseStack(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU(inplace=True)
      (2): Linear(in_features=8, out_features=1, bias=True)
    )
    """
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(width_in, width_out))
        if i < len(widths) - 2 or last_activation:
            layers.append(nn.ReLU(inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
    return DenseStack(*layers)


def squeeze_binary(logits: torch.Tensor) -> torch.Tensor:
    """One logit per event for binary models, ``(n, classes)`` otherwise."""
    return logits.squeeze(-1) if logits.shape[-1] == 1 else logits


class MLP(nn.Module):
    """Hidden layers of ReLU units over the whole feature matrix.

    >>> MLP(5, [8, 8])(torch.zeros(3, 5)).shape, MLP(5, [8], outputs=3)(torch.zeros(3, 5)).shape
    (torch.Size([3]), torch.Size([3, 3]))
    """

    def __init__(self, n_features: int, hidden: list[int], dropout: float = 0.0, outputs: int = 1):
        super().__init__()
        self.net = dense_layers([n_features, *hidden, outputs], dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squeeze_binary(self.net(x))
