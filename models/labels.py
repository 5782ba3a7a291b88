"""Each event's class in a chunk, read as the trainer reads it, so held-out scoring labels events the same way."""

from __future__ import annotations

import numpy as np

from hepstream import wire
from hepstream.models.features import FeatureError


def chunk_labels(chunk: wire.Chunk, label_branch: str | None) -> np.ndarray:
    """The label branch's values when the dataset has one, else the chunk's per-file ``label`` header, as int64."""
    if label_branch is not None:
        index = chunk.batch.schema.get_field_index(label_branch)
        if index < 0:
            raise FeatureError(label_branch, "label branch missing from the chunk")
        return chunk.batch.column(index).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if chunk.label is None:
        raise FeatureError("label", "the chunk has no 'label' header and dataset.label_branch is not set")
    return np.full(chunk.events, chunk.label, dtype=np.int64)
