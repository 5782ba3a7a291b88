"""User models, named in the configuration as ``model.factory: package.module:function``.

The contract (docs/training.md has it in full): the function is called as
``factory(layout=FeatureLayout, classes=int, **model.options)`` and returns
either

* a ``torch.nn.Module`` mapping a float32 ``(n, n_features)`` tensor to logits
  (``(n,)`` for two classes, ``(n, classes)`` otherwise); hepstream adds the
  optimiser, loss, device and mixed precision, and checkpoints its
  ``state_dict`` (tensors only, read back with ``weights_only=True``); or
* any object meeting :class:`~hepstream.models.base.Estimator` with
  ``checkpoint = "json"``, whose ``state_dict()`` is plain JSON.

The import path comes from the operator's configuration, not from the data,
and nothing the model writes is ever unpickled. The same factory must be
importable where the model is served.
"""

from __future__ import annotations

import importlib

from torch import nn

from hepstream.config import TrainingConfig
from hepstream.models.base import Estimator
from hepstream.models.features import FeatureLayout
from hepstream.models.torch_estimator import TorchEstimator


class UserModelError(RuntimeError):
    """A user factory that cannot be imported, or returns something that is not a model."""


def load_factory(path: str):
    module_name, _, function = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserModelError(f"model.factory {path!r}: cannot import {module_name!r} ({error})") from None
    try:
        return getattr(module, function)
    except AttributeError:
        raise UserModelError(f"model.factory {path!r}: module {module_name!r} has no {function!r}") from None


def build_user(path: str, layout: FeatureLayout, classes: int, options: dict, training: TrainingConfig) -> Estimator:
    made = load_factory(path)(layout=layout, classes=classes, **options)
    if isinstance(made, nn.Module):
        return TorchEstimator(made, classes, training)
    if isinstance(made, Estimator) and made.checkpoint == "json":
        return made
    raise UserModelError(f"model.factory {path!r} returned {type(made).__name__}: expected a torch.nn.Module "
                         "or an estimator with predict_proba, learn, state_dict, load_state_dict and "
                         "checkpoint = 'json'")
