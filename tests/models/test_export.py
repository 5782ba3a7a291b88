"""Exported graphs (TorchScript, ONNX) score like the stored version they came from."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from hepstream.models.export import ExportError, export
from hepstream.models.store import ModelStore
from hepstream.serve.events import parse_events
from tests.serve.conftest import publish_real_version

EVENTS = {"events": [{"MET_pt": 41.2, "Muon_pt": [51.0, 33.2, 8.1]}, {"MET_pt": 7, "Muon_pt": []},
                     {"MET_pt": 120.5, "Muon_pt": [12]}]}


@pytest.fixture(params=[2, 3], ids=["binary", "three-class"])
def stored(tmp_path, request):
    publish_real_version(tmp_path / "store", "m", seed=5, classes=request.param)
    loaded = ModelStore(tmp_path / "store", "m").load(1)
    batch = parse_events(json.dumps(EVENTS), loaded.inputs, 10)
    return loaded, loaded.features.raw(batch), loaded.predict(batch)


def test_torchscript_matches_the_stored_version(stored, tmp_path):
    loaded, raw, expected = stored
    path = export(loaded, tmp_path / "ts", "torchscript")
    scripted = torch.jit.load(str(path))
    got = scripted(torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    columns = json.loads((tmp_path / "ts" / "features.json").read_text())["columns"]
    assert len(columns) == raw.shape[1] and columns[0] == "MET_pt"


def test_onnx_matches_the_stored_version(stored, tmp_path):
    loaded, raw, expected = stored
    path = export(loaded, tmp_path / "onnx", "onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    (got,) = ReferenceEvaluator(model).run(None, {"features": np.ascontiguousarray(raw, dtype=np.float32)})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_unknown_format_is_refused(stored, tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'pb'"):
        export(stored[0], tmp_path / "x", "pb")
