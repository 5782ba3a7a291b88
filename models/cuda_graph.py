"""One training step of a torch model captured as a CUDA graph, replayed for every full minibatch.

A step of a small model on a GPU costs far more in kernel launches and Python
than in GPU work: at small batches the GPU idles through most of the [64, 64]
MLP's step (figures in ``docs/training.md``). Replaying a captured graph
launches the whole step (forward, loss, backward, fused Adam) as one unit.

The graph reads its inputs from buffers of its own and updates the model's
parameters and the optimiser's state in place, so eager steps (a group's last,
shorter minibatch) and checkpoints see the same tensors. Capturing needs a few
warm-up steps, which would train on the buffers' zeros: the parameters and
optimiser state are put back afterwards, so capturing leaves the model as it
was. Loading a state replaces the optimiser's tensors; the caller then drops
its graphs and captures again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_WARM_UP_STEPS = 3  # as torch's whole-network capture example: allocations and kernel choices settle

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


class GraphedStep:
    """The step ``loss(module(inputs), targets, weights).backward(); optimizer.step()`` for ``batch_size`` events.

    ``optimizer`` must be capturable (``capturable=True``), and ``weighted``
    says whether the loss takes per-event weights.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, loss: Loss, batch_size: int,
                 n_features: int, target_dtype: torch.dtype, weighted: bool):
        device = next(module.parameters()).device
        self.inputs = torch.zeros(batch_size, n_features, device=device)
        self.targets = torch.zeros(batch_size, dtype=target_dtype, device=device)
        self.weights = torch.ones(batch_size, device=device) if weighted else None
        saved = _snapshot(module, optimizer)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(_WARM_UP_STEPS):
                optimizer.zero_grad(set_to_none=True)
                loss(module(self.inputs), self.targets, self.weights).backward()
                optimizer.step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)  # backward in the graph then writes gradients, never adds to them
        with torch.cuda.graph(self.graph):
            self.logits = module(self.inputs)
            loss(self.logits, self.targets, self.weights).backward()
            optimizer.step()
        _restore(module, optimizer, saved)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Learn one full minibatch; returns the logits it had before the step (the graph's own buffer)."""
        self.inputs.copy_(inputs)
        self.targets.copy_(targets)
        if self.weights is not None:
            self.weights.copy_(weights)
        self.graph.replay()
        return self.logits


def _snapshot(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, torch.Tensor]:
    tensors = list(module.parameters()) + [value for state in optimizer.state.values()
                                           for value in state.values() if isinstance(value, torch.Tensor)]
    return {id(tensor): tensor.detach().clone() for tensor in tensors}


def _restore(module: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[int, torch.Tensor]) -> None:
    """Parameters and optimiser state as before the warm-up, in place; state the warm-up created (a fresh
    optimiser's moments and step counts) back to zero, as a fresh optimiser holds it."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(saved[id(parameter)])
        for state in optimizer.state.values():
            for value in state.values():
                if not isinstance(value, torch.Tensor):
                    continue
                if id(value) in saved:
                    value.copy_(saved[id(value)])
                else:
                    value.zero_()
