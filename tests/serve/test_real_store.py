"""The app with hepstream.models' real store and feature pipeline, on uvicorn: what the stand-ins stand for."""

from __future__ import annotations

import json

import numpy as np
import requests

from hepstream.models.store import ModelStore
from hepstream.serve.app import create_app
from hepstream.serve.events import parse_events

EVENTS = [
    {"MET_pt": 41.2, "Muon_pt": [51.0, 33.2, 8.1]},
    {"MET_pt": 7, "Muon_pt": []},
    {"MET_pt": 120.5, "Muon_pt": [12]},
]


def local_scores(root, version):
    loaded = ModelStore(root, "demo").load(version)
    return loaded.predict(parse_events(json.dumps({"events": EVENTS}), loaded.inputs, 100)).tolist()


def test_real_versions_are_served_swapped_and_checked(tmp_path, standins):
    root = tmp_path / "store"
    standins.publish_real_version(root, "demo", seed=1)
    app = create_app(ModelStore(root, "demo"), model_name="demo", settings=standins.quick_settings())
    with standins.ServedApp(app) as server:
        predict = f"{server.url}/v1/models/demo/predict"
        standins.wait_for(lambda: requests.get(f"{server.url}/v1/health/ready", timeout=5).ok, what="version 1")
        answer = requests.post(predict, json={"events": EVENTS}, timeout=10)
        assert answer.json() == {"model": "demo", "version": 1, "scores": local_scores(root, 1)}
        described = requests.get(f"{server.url}/v1/models/demo", timeout=5).json()
        assert [(i["name"], i["jagged"]) for i in described["inputs"]] == [("MET_pt", False), ("Muon_pt", True)]
        assert (described["events_trained"], described["metrics"]) == (100, {"auc": 0.5})

        # Finite in JSON, infinite in the pipeline's float32: refused by the features (naming the branch) or,
        # if they let it through, by the server's check of the scores (naming the event); a 422 either way.
        overflow = requests.post(predict, json={"events": [{"MET_pt": 1e300, "Muon_pt": []}]}, timeout=10)
        assert (overflow.status_code, overflow.json()["field"]) in ((422, "MET_pt"), (422, "events[0].MET_pt"))

        standins.publish_real_version(root, "demo", seed=2)
        standins.wait_for(lambda: requests.post(predict, json={"events": EVENTS}, timeout=10).json()["version"] == 2,
                          what="version 2")
        assert requests.post(predict, json={"events": EVENTS}, timeout=10).json()["scores"] == local_scores(root, 2)
        assert local_scores(root, 1) != local_scores(root, 2)

        (root / "demo" / "v000003").mkdir()  # a version folder without its files
        standins.wait_for(lambda: app.state.watcher.failures, what="the broken version 3 to be tried")
        assert "version 3" in app.state.watcher.last_error
        assert requests.post(predict, json={"events": EVENTS}, timeout=10).json()["version"] == 2


def test_multi_class_models_answer_one_probability_per_class(tmp_path, standins):
    from hepstream.serve.arrow_io import ARROW_STREAM, read_scores, write_stream
    from hepstream.serve.events import parse_events

    root = tmp_path / "store"
    standins.publish_real_version(root, "tri", seed=3, classes=3)
    model = ModelStore(root, "tri").load(1)
    expected = model.predict(parse_events(json.dumps({"events": EVENTS}), model.inputs, 10))
    assert expected.shape == (3, 3)
    app = create_app(ModelStore(root, "tri"), model_name="tri", settings=standins.quick_settings())
    with standins.ServedApp(app) as server:
        standins.wait_for(lambda: requests.get(f"{server.url}/v1/health/ready", timeout=5).ok, what="version 1")
        answer = requests.post(f"{server.url}/v1/models/tri/predict", json={"events": EVENTS}, timeout=10).json()
        np.testing.assert_allclose(answer["scores"], expected, rtol=1e-6)
        np.testing.assert_allclose(np.sum(answer["scores"], axis=1), 1.0, rtol=1e-5)

        body = write_stream(parse_events(json.dumps({"events": EVENTS}), model.inputs, 10))
        arrow = requests.post(f"{server.url}/v1/models/tri/predict", data=body, timeout=10,
                              headers={"Content-Type": ARROW_STREAM})
        scores, name, version = read_scores(arrow.content)
        assert (name, version, scores.shape) == ("tri", 1, (3, 3))
        np.testing.assert_allclose(scores, expected, rtol=1e-6)

        v2 = requests.post(f"{server.url}/v2/models/tri/infer", timeout=10, json={"inputs": [
            {"name": "MET_pt", "shape": [3], "datatype": "FP64", "data": [41.2, 7.0, 120.5]},
            {"name": "Muon_pt", "shape": [3, 3], "datatype": "FP64",
             "data": [51.0, 33.2, 8.1, None, None, None, 12.0, None, None]},
        ]}).json()
        assert v2["outputs"][0]["shape"] == [3, 3], v2
        np.testing.assert_allclose(np.reshape(v2["outputs"][0]["data"], (3, 3)), expected, rtol=1e-6)
