"""A stored version as a standalone TorchScript or ONNX file, for Triton-style servers.

The exported graph takes the *unnormalised* feature matrix (float32, ``(n,
n_features)``: what :meth:`FeaturePipeline.raw` gives, padding zero, masks
0/1), applies the version's normalisation itself (constants in the graph,
padding kept at zero) and returns probabilities: ``(n,)`` for two classes,
``(n, classes)`` otherwise. ``features.json`` beside it names every column,
so a C++ or Go client can build the matrix without hepstream. River and JSON
user models have no graph to export and are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hepstream.models.store import LoadedModel


class ExportError(RuntimeError):
    """A version that cannot be exported in the asked format."""


class _Standalone(nn.Module):
    def __init__(self, loaded: LoadedModel):
        super().__init__()
        features = loaded.features
        layout = features.layout
        scale = features.moments.scale if features.spec.normalize else np.ones(layout.value_columns, np.float32)
        mean = features.moments.mean if features.spec.normalize else np.zeros(layout.value_columns)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        validity = np.full(layout.value_columns, -1, dtype=np.int64)  # column of the mask that covers each value
        for start, mask_start, branches, length in layout.blocks():
            validity[start : start + branches * length] = np.tile(np.arange(mask_start, mask_start + length), branches)
        self.register_buffer("covered", torch.tensor(validity >= 0))
        self.register_buffer("mask_column", torch.tensor(np.maximum(validity, 0)))
        self.values = layout.value_columns
        self.network = loaded.estimator.scoring_module
        self.binary = loaded.classes == 2

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        values = (raw[:, : self.values] - self.mean) / self.scale
        real = torch.where(self.covered, raw[:, self.mask_column], torch.ones_like(values))
        logits = self.network(torch.cat([values * real, raw[:, self.values :]], dim=1))
        return torch.sigmoid(logits) if self.binary else torch.softmax(logits, dim=-1)


def export(loaded: LoadedModel, folder: Path, fmt: str) -> Path:
    """Write ``model.pt`` (TorchScript) or ``model.onnx`` and ``features.json`` into ``folder``; returns the model file."""
    if loaded.meta.checkpoint != "torch":
        raise ExportError(f"model {loaded.name!r} version {loaded.version} is a {loaded.config.kind} model: "
                          "only torch models export to TorchScript or ONNX")
    folder.mkdir(parents=True, exist_ok=True)
    module = _Standalone(loaded).eval()
    example = torch.zeros(2, loaded.features.n_features)
    if fmt == "torchscript":
        target = folder / "model.pt"
        torch.jit.trace(module, example).save(str(target))
    elif fmt == "onnx":
        target = folder / "model.onnx"
        torch.onnx.export(module, (example,), str(target), input_names=["features"], output_names=["probabilities"],
                          dynamic_shapes={"raw": {0: torch.export.Dim("events")}}, dynamo=True)
    else:
        raise ExportError(f"unknown export format {fmt!r}: torchscript or onnx")
    (folder / "features.json").write_text(json.dumps({
        "model": loaded.name, "version": loaded.version, "input": "features", "dtype": "float32",
        "columns": loaded.features.feature_names, "layout": {"flat": loaded.features.layout.flat,
                                                              "collections": loaded.features.layout.collections},
        "spec": loaded.meta.features, "output": "probability of class 1" if loaded.classes == 2 else
        f"probabilities of classes 0..{loaded.classes - 1}",
    }, indent=1))
    return target
