"""The registry of model kinds: each ``model.kind`` with its own options and the function that builds it.

Adding a kind is one entry in :data:`MODEL_KINDS` (and, if it takes options no
other kind has, a section class here). The builder is named by its import
path, ``"package.module:function"``, and imported only when a model is built
(``hepstream.models.registry``): the core reads and checks configurations
without importing torch or river, and a Ray worker finds the builder by an
explicit name, not by import side effects.

The ``model`` section is validated by kind: its ``kind`` (``mlp`` when unset)
picks the section class, whose keys are the only ones allowed. Pydantic's own
tagged unions would put the tag in error locations (``model.mlp.hidden.0``);
dispatching in a validator keeps them the file's keys (``model.hidden.0``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args

from hepstream.config_types import Count, Name
from pydantic import BaseModel, ConfigDict, Field, WrapValidator, field_validator

DEFAULT_KIND = "mlp"


class _ModelSection(BaseModel):
    """What every kind has: the name versions are published under, and the number of classes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = "demo"
    classes: int = Field(default=2, ge=2, description="Number of classes; labels are 0 .. classes-1")


class MLPConfig(_ModelSection):
    kind: Literal["mlp"] = "mlp"
    hidden: list[Count] = Field(default_factory=lambda: [64, 64], description="Widths; none: logistic regression")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class DeepSetsConfig(_ModelSection):
    kind: Literal["deepsets"] = "deepsets"
    set_hidden: list[Count] = Field(default_factory=lambda: [32, 32], min_length=1,
                                    description="Per-object network of deepsets; its last width is what is pooled")
    hidden: list[Count] = Field(default_factory=lambda: [64, 64])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class RiverConfig(_ModelSection):
    kind: Literal["logistic", "hoeffding_tree", "arf"]
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the river model")


class UserConfig(_ModelSection):
    kind: Literal["user"] = "user"
    factory: str = Field(description="package.module:function building a user model")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the user factory")

    @field_validator("factory")
    @classmethod
    def _is_import_path(cls, factory: str) -> str:
        if not re.fullmatch(r"[\w.]+:\w+", factory):
            raise ValueError(f"{factory!r} is not 'package.module:function'")
        return factory


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """One registered kind: its section class, its builder's import path, and whether workers can average it."""

    name: str
    section: type[_ModelSection]
    builder: str  # "package.module:function", called as function(config, features, training) -> Estimator
    averageable: bool = True  # training.workers > 1 averages its parameters

    def __post_init__(self):
        if self.name not in get_args(self.section.model_fields["kind"].annotation):
            raise ValueError(f"model kind {self.name!r}: {self.section.__name__}.kind does not allow it")


MODEL_KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (
    ModelKind("mlp", MLPConfig, "hepstream.models.kinds:mlp"),
    ModelKind("deepsets", DeepSetsConfig, "hepstream.models.kinds:deepsets"),
    ModelKind("logistic", RiverConfig, "hepstream.models.kinds:river", averageable=False),
    ModelKind("hoeffding_tree", RiverConfig, "hepstream.models.kinds:river", averageable=False),
    ModelKind("arf", RiverConfig, "hepstream.models.kinds:river", averageable=False),
    ModelKind("user", UserConfig, "hepstream.models.kinds:user"),
)}


class _Kind(BaseModel):
    """Only the ``kind`` key, checked first so that an unknown kind is reported as ``model.kind``."""

    kind: Literal[tuple(MODEL_KINDS)] = DEFAULT_KIND  # type: ignore[valid-type]


def _section_of(data: Mapping[str, Any]) -> type[_ModelSection]:
    return MODEL_KINDS[_Kind.model_validate({"kind": data.get("kind", DEFAULT_KIND)}).kind].section


def model_config(data: Mapping[str, Any]) -> _ModelSection:
    """A ``model`` section from a mapping, as the YAML file's would be read (``kind`` unset: ``mlp``).

    >>> model_config({"kind": "deepsets", "set_hidden": [8]}).set_hidden
    [8]
    """
    return _section_of(data).model_validate(data)


def stored_model_config(data: Mapping[str, Any]) -> _ModelSection:
    """A ``model`` section read back from a published version's metadata.

    Versions published before each kind had its own keys recorded every kind's
    keys (``hidden`` of a river model, ``factory: null``); those its kind lacks
    are dropped.
    """
    fields = _section_of(data).model_fields
    return model_config({key: value for key, value in data.items() if key in fields})


ModelConfig = Annotated[
    Union[tuple(dict.fromkeys(kind.section for kind in MODEL_KINDS.values()))],  # noqa: UP007
    WrapValidator(lambda value, handler: model_config(value) if isinstance(value, Mapping) else handler(value)),
]
"""The ``model`` section: one of the kinds' section classes, chosen by ``kind``."""
