"""``hepstream predict``: a ROOT file scored through a running server, written as a friend tree."""

from __future__ import annotations

import awkward as ak
import numpy as np
import uproot

from hepstream.cli import main
from hepstream.models.store import ModelStore
from hepstream.serve.app import create_app
from hepstream.serve.arrow_io import parse_arrow, write_stream


def write_events(path, n=2500):
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 4, n)
    with uproot.recreate(path) as file:
        file.mktree("Events", {"run": np.uint32, "event": np.uint64, "MET_pt": np.float32,
                               "Muon_pt": "var * float32"})
        file["Events"].extend({
            "run": np.full(n, 7, np.uint32), "event": rng.permutation(n).astype(np.uint64) + 1000,
            "MET_pt": rng.exponential(40, n).astype(np.float32),
            "Muon_pt": ak.unflatten(rng.exponential(30, counts.sum()).astype(np.float32), counts)})


def test_scores_are_a_friend_tree_aligned_by_run_and_event(tmp_path, standins):
    root = tmp_path / "store"
    version = standins.publish_real_version(root, "demo", seed=4)
    write_events(tmp_path / "events.root")
    app = create_app(ModelStore(root, "demo"), model_name="demo", settings=standins.quick_settings())
    with standins.ServedApp(app) as server:
        standins.wait_for(lambda: app.state.watcher.current is not None, what="the first version")
        status = main(["predict", "--url", server.url, str(tmp_path / "events.root"),
                       "--out", str(tmp_path / "scores.root"), "--batch", "1000"])
    assert status == 0
    events = uproot.open(tmp_path / "events.root")["Events"].arrays(library="ak")
    scores = uproot.open(tmp_path / "scores.root")["scores"].arrays(library="np")
    assert len(scores["score"]) == len(events) == 2500
    np.testing.assert_array_equal(scores["run"], ak.to_numpy(events["run"]))
    np.testing.assert_array_equal(scores["event"], ak.to_numpy(events["event"]))
    assert set(scores["model_version"]) == {version}
    model = ModelStore(root, "demo").load(version)
    batch = parse_arrow(write_stream(ak.to_arrow_table(events, extensionarray=False)), model.inputs, len(events))
    np.testing.assert_allclose(scores["score"], model.predict(batch), rtol=1e-6)
