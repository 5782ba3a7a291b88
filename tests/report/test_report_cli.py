"""``hepstream report`` on a real store and real held-out ROOT files: PNGs that decode, a page, honest errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from hepstream.cli import main
from hepstream.config import ConfigError, config_from_dict
from hepstream.models.store import ModelStore
from hepstream.report.holdout import holdout_sources, score_holdout
from hepstream.streaming.datagen import generate_demo
from tests.serve.conftest import publish_real_version


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    files = generate_demo(folder / "data", 200, 300)
    raw = {"dataset": {"files": [{"url": str(p), "label": y} for p, y in files.train]},
           "features": {"flat": ["MET_pt"], "jagged": [{"branches": ["Muon_pt"], "length": 2}]},
           "model": {"kind": "mlp", "name": "demo", "hidden": [8]}, "store": {"path": str(folder / "store")}}
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    for seed in (1, 2, 3):
        publish_real_version(folder / "store", "demo", seed)
    return folder, files, config_from_dict(raw)


def test_holdout_is_scored_by_the_chosen_version_with_file_labels(demo):
    folder, files, config = demo
    sources = holdout_sources(config, [f"{files.holdout[0][0]} 1", f"{folder / 'data'}/holdout_back*.root 0"])
    assert [(s.url, s.label) for s in sources] == [(str(p), y) for p, y in files.holdout]
    scored = score_holdout(ModelStore(config.store.path, "demo").load(2), config, sources, max_events=500)
    assert scored.version == 2 and scored.scores.shape == (500,)
    assert scored.labels.tolist() == [1] * 300 + [0] * 200
    assert np.all((scored.scores >= 0) & (scored.scores <= 1))


@pytest.mark.parametrize("spec, error", [("a.root x", "expected 'URL_OR_GLOB \\[LABEL\\]'"),
                                         ("/nowhere/*.root 1", "'/nowhere/\\*.root': no file matches")])
def test_bad_holdout_specs_are_named(demo, spec, error):
    with pytest.raises(ConfigError, match=error):
        holdout_sources(demo[2], [spec])


def test_report_writes_pngs_and_one_page(demo, tmp_path, capfd):
    folder, files, _ = demo
    holdout = [f"{path} {label}" for path, label in files.holdout]
    argv = ["report", "--config", str(folder / "pipeline.yaml"), "--out", str(tmp_path / "out"), "--style", "ATLAS"]
    assert main([*argv, *[a for spec in holdout for a in ("--holdout", spec)]]) == 0
    summary = json.loads(capfd.readouterr().out)
    assert summary["model"] == "demo" and summary["versions"] == 3
    names = sorted(p.rsplit("/", 1)[1] for p in summary["files"])
    assert names == ["prequential.png", "report.html", "roc.png", "scores.png", "throughput.png"]
    for name in [n for n in names if n.endswith(".png")]:
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "PNG" and image.size[0] == 800
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<th>held-out events</th><td>600 from 2 file(s)</td>" in page and page.count("<img ") == 4


def test_report_of_a_missing_version_is_a_configuration_error(demo, tmp_path, capfd):
    folder, files, _ = demo
    argv = ["report", "--config", str(folder / "pipeline.yaml"), "--out", str(tmp_path), "--version", "9",
            "--holdout", f"{files.holdout[0][0]} 1"]
    assert main(argv) == 2
    assert "has no version 9" in capfd.readouterr().err
