"""The report's panels, PNGs and page, drawn from a synthetic history: what each panel shows, and that the page
needs nothing beyond itself."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from hepstream.models.metrics import roc_auc
from hepstream.models.version_meta import VersionMeta
from hepstream.report.figures import TITLES, panels, roc_curve
from hepstream.report.history import DriftAlarm, history_of
from hepstream.report.holdout import HoldoutScores
from hepstream.report.page import DPI, build_report, report_html, write_report

START = 1.8e9


def meta(version: int, **metrics) -> VersionMeta:
    return VersionMeta(version=version, created=START + 10 * version, events_seen=1000 * version,
                       offsets={"0": 2 * version, "1": 3 * version}, features={}, feature_state={}, model={},
                       metrics={"auc": 0.6 + 0.02 * version, "log_loss": 0.7 - 0.03 * version, **metrics})


def history(versions: int = 6):
    alarm = {"time": START + 33, "events": 3100, "loss": 0.6}
    # Each version keeps the latest alarms: the same alarm in several versions is one alarm.
    return history_of("demo", [meta(v, drift={"latest": [alarm] if v >= 4 else []}) for v in range(1, versions + 1)])


def holdout(classes: int = 2) -> HoldoutScores:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, classes, 4000)
    if classes == 2:
        scores = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.2, len(labels)), 0, 1)
    else:
        scores = rng.dirichlet(np.ones(classes), len(labels))
    return HoldoutScores(7, scores, labels, ("holdout_signal.root", "holdout_background.root"))


def texts(figure) -> str:
    return " ".join(t.get_text() for ax in figure.axes for t in [*ax.texts, ax.title]
                    ) + " ".join(ax.get_legend().get_title().get_text() + " ".join(t.get_text() for t in
                                 ax.get_legend().get_texts()) for ax in figure.axes if ax.get_legend())


def test_history_gathers_points_and_each_drift_alarm_once():
    drawn = history_of("demo", [meta(2), meta(1, auc=float("nan"), drift={"latest": [{"time": 5, "events": 9}]})])
    assert [(p.version, p.events_seen, p.messages, p.auc) for p in drawn.points] == [(1, 1000, 5, None),
                                                                                     (2, 2000, 10, 0.64)]
    assert drawn.drift == (DriftAlarm(5.0, 9),)
    assert history().drift == (DriftAlarm(START + 33, 3100),)


def test_roc_curve_steps_through_every_threshold():
    background, signal = roc_curve(np.array([0.9, 0.8, 0.8, 0.1]), np.array([True, True, False, False]))
    assert background.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert signal.tolist() == [0.0, 0.5, 1.0, 1.0]


def test_each_panel_has_its_title_and_data():
    held_out = holdout()
    figures = panels(history(), held_out, {0: 20, 1: 30})
    assert list(figures) == ["roc", "scores", "prequential", "throughput"]
    for name, figure in figures.items():
        assert figure.axes[0].get_title() == TITLES[name]
    auc = roc_auc(held_out.scores, held_out.labels)
    assert auc > 0.8 and f"signal vs background: AUC = {auc:.3f}" in texts(figures["roc"])
    assert figures["roc"].axes[0].lines[0].get_xdata()[[0, -1]].tolist() == [0.0, 1.0]
    assert "signal (class 1)" in texts(figures["scores"]) and "background (class 0)" in texts(figures["scores"])
    auc_ax, loss_ax = figures["prequential"].axes
    assert auc_ax.lines[0].get_xdata().tolist() == [1000 * v for v in range(1, 7)]
    assert loss_ax.lines[0].get_ydata() == pytest.approx([0.7 - 0.03 * v for v in range(1, 7)])
    drift_lines = [line for line in auc_ax.lines if line.get_linestyle() == "--" and len(line.get_xdata())]
    assert [line.get_xdata()[0] for line in drift_lines] == [3100]
    assert "v6" in texts(figures["prequential"]) and "drift alarm (1)" in texts(figures["prequential"])
    rate_ax, lag_ax = figures["throughput"].axes
    assert rate_ax.lines[0].get_ydata()[1:] == pytest.approx([100.0] * 5)  # 1000 events per 10 s
    assert lag_ax.get_title() == "Lag now: 20 messages"  # 50 at the end, 2*6 + 3*6 consumed


def test_panels_without_data_say_why():
    figures = panels(history_of("demo", []), None, None)
    assert "No held-out events given" in texts(figures["roc"]) and "No held-out events" in texts(figures["scores"])
    assert "has no version yet" in texts(figures["prequential"])
    assert "A rate needs two versions" in texts(figures["throughput"])
    one_class = HoldoutScores(3, np.array([0.2, 0.7]), np.array([1, 1]), ("a.root",))
    assert "one class only ([1])" in texts(panels(history(), one_class, None)["roc"])


def test_multiclass_holdout_draws_one_curve_per_class():
    figures = panels(history(), holdout(classes=3), None)
    assert texts(figures["roc"]).count("vs rest: AUC") == 3
    assert texts(figures["scores"]).count("class ") == 3


@pytest.mark.parametrize("style", ["CMS", "ATLAS", "LHCb2"])
def test_pngs_decode_at_the_figure_size(tmp_path, style):
    written = write_report(build_report(history(), holdout(), {0: 20, 1: 30}, style), tmp_path)
    assert [p.name for p in written] == ["roc.png", "scores.png", "prequential.png", "throughput.png", "report.html"]
    sizes = {p.stem: Image.open(p).size for p in written[:4]}
    assert sizes == {"roc": (8 * DPI, 6 * DPI), "scores": (8 * DPI, 6 * DPI), "prequential": (8 * DPI, 8 * DPI),
                     "throughput": (8 * DPI, 8 * DPI)}
    for path in written[:4]:
        pixels = np.asarray(Image.open(path).convert("L"))
        assert pixels.std() > 10, f"{path.name} is blank"


def test_the_page_is_self_contained():
    report = build_report(history(), holdout(), None)
    page = report_html(report)
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith("data:") for link in links)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    images = re.findall(r'<img id="(\w+)" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert [name for name, _ in images] == list(TITLES)
    for name, data in images:
        assert base64.b64decode(data) == report.pngs[name]
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    assert "<th>held-out events</th><td>4,000 from 2 file(s)</td>" in page
    assert 'http-equiv="refresh"' not in page
    assert '<meta http-equiv="refresh" content="7">' in report_html(report, refresh_s=7)


def test_unknown_style_names_the_choices():
    with pytest.raises(ValueError, match="style 'Belle'.*CMS, ATLAS"):
        build_report(history(), style="Belle")
