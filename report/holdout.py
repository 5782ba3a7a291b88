"""A version scored on events it has not trained on: the data of the ROC and score-distribution panels.

The prequential metrics measure each version on events before it learned
them, but a held-out set answers a physicist's question directly: how does
*this* version separate signal from background on files the stream never
carried. hepstream cannot know which files those are, so the caller names
them (``hepstream report --holdout``), each as one line of a file list:
``URL_OR_GLOB [LABEL]``. They are read as the producer reads the dataset
(same tree, new branches and cuts, with the branches the version reads), and
labelled as the trainer labels (``dataset.label_branch``, else each file's
label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hepstream.config import Config, ConfigError, FeaturesConfig, FileSpec
from hepstream.models.features import FeatureError
from hepstream.models.labels import chunk_labels
from hepstream.models.store import LoadedModel
from hepstream.streaming.producer import read_plan
from hepstream.streaming.reader import FileReader
from hepstream.streaming.selection import Selection
from hepstream.streaming.sources import Source, resolve


@dataclass(frozen=True, eq=False)
class HoldoutScores:
    """Scores of one version on held-out events: ``(n,)`` for binary models, ``(n, classes)`` otherwise."""

    version: int
    scores: np.ndarray
    labels: np.ndarray
    files: tuple[str, ...]


def holdout_sources(config: Config, specs: Sequence[str]) -> list[Source]:
    """The files that ``specs`` (``URL_OR_GLOB [LABEL]`` each) name, in the dataset's tree."""
    files = []
    for spec in specs:
        fields = spec.split()
        if len(fields) not in (1, 2) or (len(fields) == 2 and not fields[1].isdigit()):
            raise ConfigError(f"--holdout {spec!r}: expected 'URL_OR_GLOB [LABEL]' with a label 0, 1, ...")
        files.append(FileSpec(url=fields[0], label=int(fields[1]) if len(fields) == 2 else None))
    dataset = config.dataset.model_copy(update={"file_list": None, "samples": []})
    sources, problems = resolve(dataset, files)
    if problems:
        raise ConfigError("; ".join(f"--holdout {pattern!r}: {reason}" for pattern, reason in problems))
    return sources


def score_holdout(model: LoadedModel, config: Config, sources: Sequence[Source], max_events: int) -> HoldoutScores:
    """``model``'s scores on the first ``max_events`` events of ``sources``, read in turn."""
    branches = FeaturesConfig.model_validate(model.meta.features).branches
    plan = read_plan(config, Selection.from_config(config.dataset, branches))
    scores, labels, events = [], [], 0
    for source in sources:
        for read in FileReader(source, plan) if events < max_events else ():
            scores.append(model.predict(read.chunk.batch))
            try:
                labels.append(chunk_labels(read.chunk, config.dataset.label_branch))
            except FeatureError as error:
                raise ConfigError(f"{read.chunk.source}: {error}; label it ('{read.chunk.source} LABEL') "
                                  "or set dataset.label_branch") from None
            events += read.chunk.events
            if events >= max_events:
                break
    if not scores:
        raise ConfigError(f"--holdout: no events in {[s.url for s in sources]} after dataset.cuts")
    return HoldoutScores(model.version, np.concatenate(scores)[:max_events], np.concatenate(labels)[:max_events],
                         tuple(source.url for source in sources))
