import numpy as np
import pyarrow as pa
import pytest

from hepstream import wire
from hepstream.models.features import FeatureError
from hepstream.models.labels import chunk_labels


def _chunk(columns, label=None):
    return wire.Chunk(wire.ChunkId("u", "Events", 0, 3), "d", "s", pa.record_batch(columns), label)


def test_a_label_branch_gives_each_event_its_class_as_int64():
    labels = chunk_labels(_chunk({"x": [1.0, 2.0, 3.0], "is_signal": [True, False, True]}), "is_signal")
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0, 1]


def test_a_per_file_label_is_every_events_class():
    assert chunk_labels(_chunk({"x": [1.0, 2.0, 3.0]}, label=2), None).tolist() == [2, 2, 2]


@pytest.mark.parametrize("branch, field", [("is_signal", "is_signal"), (None, "label")])
def test_a_missing_label_names_what_is_missing(branch, field):
    with pytest.raises(FeatureError) as error:
        chunk_labels(_chunk({"x": [1.0, 2.0, 3.0]}), branch)
    assert field in str(error.value)
