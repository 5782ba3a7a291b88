"""A torch module with its optimiser, loss and device: the estimator of every torch model family.

Mixed precision is optional (``training.mixed_precision``): bfloat16 autocast
on CPU, float16 autocast with a gradient scaler on CUDA (float16 gradients
underflow without one). Parameters and optimiser state stay float32.

What scores (and so what is served) is an average of the weights over the
last ``training.averaging_events`` events of steps (exponential; a plain mean
of every step before that many): a stream is learned once with a rate high
enough to learn fast, and the average takes out the step-to-step noise such a
rate brings, which would otherwise show as versions a little worse than the
one before (Polyak averaging; figures in docs/training.md).
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
from torch import nn

from hepstream.config import TrainingConfig
from hepstream.models.cuda_graph import GraphedStep


_TRAIN_ONLY = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)  # score otherwise when training


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but torch sees no CUDA device")
    return torch.device(choice)


class TorchEstimator:
    checkpoint = "torch"

    def __init__(self, module: nn.Module, classes: int, training: TrainingConfig):
        self.device = pick_device(training.device)
        self.module = module.to(self.device)
        self.classes = classes
        self.batch_size = training.batch_size
        # Fused Adam: one kernel per step instead of a Python loop over the parameters, faster on one CPU thread
        # too (figures in docs/training.md).
        self.mixed_precision = training.mixed_precision
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.mixed_precision and self.device.type == "cuda")
        # Without dropout or batch norm the training forward pass scores as predict_proba would, so learn()
        # can hand back the scores each event had just before its step: test-then-train without a second
        # forward pass (a share of each training step worth saving; figures in docs/training.md).
        self.scores_while_learning = not any(isinstance(m, _TRAIN_ONLY) for m in self.module.modules())
        # Full minibatches replay a captured step (models/cuda_graph.py): on CUDA, for models scored while
        # learning, in full precision (the gradient scaler's checks would stop the graph). Elsewhere ignored.
        self.cuda_graphs = (training.cuda_graphs and self.device.type == "cuda" and not self.mixed_precision
                            and self.scores_while_learning)
        self._graphs: dict[bool, GraphedStep] = {}  # by whether the loss is weighted
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=training.learning_rate,
                                          fused=self.device.type in ("cpu", "cuda"), capturable=self.cuda_graphs)
        self.averaged = None  # the scoring copy of the module, when training.averaging_events is set
        self.averaged_steps = 0
        if training.averaging_events:
            self.averaged = copy.deepcopy(self.module).requires_grad_(False)
            self.average_rate = min(1.0, training.batch_size / training.averaging_events)

    @property
    def scoring_module(self) -> nn.Module:
        """The module that scores events: the averaged weights, or the trained ones without averaging."""
        return self.module if self.averaged is None else self.averaged

    def _average(self) -> None:
        """Move the averaged weights towards the trained ones after a step: a mean of every step so far until
        that is more than ``averaging_events`` of them, then an exponential average over that many."""
        if self.averaged is None:
            return
        self.averaged_steps += 1
        rate = max(self.average_rate, 1.0 / self.averaged_steps)
        with torch.no_grad():
            for average, trained in zip(self.averaged.parameters(), self.module.parameters()):
                average.lerp_(trained, rate)
            for average, trained in zip(self.averaged.buffers(), self.module.buffers()):
                average.copy_(trained)

    def _autocast(self):
        if not self.mixed_precision:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.classes == 2 else torch.softmax(logits, dim=-1)

    def _losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.classes == 2:
            return nn.functional.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
        return nn.functional.cross_entropy(logits, targets.long(), reduction="none")

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        losses = self._losses(logits, targets)
        if weights is None:
            return losses.mean()
        return (losses * weights).sum() / weights.sum().clamp(min=1e-12)

    def _graphed(self, inputs: torch.Tensor, targets: torch.Tensor, weighted: bool) -> GraphedStep:
        if weighted not in self._graphs:
            self._graphs[weighted] = GraphedStep(self.module, self.optimizer, self._loss, self.batch_size,
                                                 inputs.shape[1], targets.dtype, weighted)
        return self._graphs[weighted]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        module = self.scoring_module.eval()
        with torch.no_grad(), self._autocast():
            logits = module(torch.from_numpy(x).to(self.device))
        return self._probabilities(logits).cpu().numpy()

    def learn(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None) -> np.ndarray | None:
        """One pass in minibatches; with ``scores_while_learning``, the probabilities each event had just
        before the step that learned it, else None."""
        self.module.train()
        scores = [] if self.scores_while_learning else None
        inputs = torch.from_numpy(x).to(self.device, non_blocking=True)
        targets = torch.from_numpy(np.asarray(y)).to(self.device, non_blocking=True)
        event_weights = None if weights is None else torch.from_numpy(weights).to(self.device, non_blocking=True)
        for start in range(0, len(x), self.batch_size):
            part = slice(start, start + self.batch_size)
            weights_part = None if event_weights is None else event_weights[part]
            if self.cuda_graphs and start + self.batch_size <= len(x):
                step = self._graphed(inputs, targets, event_weights is not None)
                scores.append(self._probabilities(step(inputs[part], targets[part], weights_part).detach()))
                self._average()
                continue
            with self._autocast():
                logits = self.module(inputs[part])
                loss = self._loss(logits, targets[part], weights_part)
            if scores is not None:
                scores.append(self._probabilities(logits.detach()))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self._average()
        return None if scores is None else torch.cat(scores).cpu().numpy()

    def state_dict(self) -> dict:
        state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict()}
        if self.averaged is not None:
            state.update(averaged=self.averaged.state_dict(), averaged_steps=self.averaged_steps)
        return state

    def load_state_dict(self, state: dict) -> None:
        self._graphs.clear()  # the optimiser's state tensors are replaced: capture again on the next step
        self.module.load_state_dict(state["model"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            for group in self.optimizer.param_groups:  # as this estimator steps, whoever saved the state
                group["capturable"] = self.cuda_graphs
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.averaged is not None:  # a state saved without averaging scores with its trained weights
            self.averaged.load_state_dict(state.get("averaged", state["model"]))
            self.averaged_steps = int(state.get("averaged_steps", 0))
