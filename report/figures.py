"""The report's panels as matplotlib figures, one per question an operator or a physicist asks.

Figures are built with matplotlib's object API (no pyplot state), so the
server can draw them from a worker thread; the HEP look (mplhep's
experiment styles) is applied around the drawing by ``page.py``. A panel
without data says so in words on the canvas instead of drawing an empty or
misleading plot: no held-out files, one class only, a single version.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure

from hepstream.models.metrics import roc_auc
from hepstream.report.history import History

if TYPE_CHECKING:  # holdout.py reads ROOT files: the server draws without it
    from hepstream.report.holdout import HoldoutScores

TITLES = {
    "roc": "ROC on held-out events",
    "scores": "Score distributions on held-out events",
    "prequential": "Prequential AUC and log-loss",
    "throughput": "Events/s and lag",
}
_SIZE = (8, 6)
_TALL = (8, 8)
_DRIFT = {"color": "tab:red", "linestyle": "--", "linewidth": 1.2}
_MOST_VERSION_LABELS = 10
_NO_HOLDOUT = "No held-out events given\n(hepstream report\n--holdout 'FILE_OR_GLOB LABEL')"


def panels(history: History, holdout: HoldoutScores | None, end_offsets: Mapping[int, int] | None
           ) -> dict[str, Figure]:
    """Every panel, by the name of its PNG file; ``end_offsets``: the topic's end per partition, for the lag."""
    return {"roc": roc_figure(holdout), "scores": scores_figure(holdout),
            "prequential": prequential_figure(history), "throughput": throughput_figure(history, end_offsets)}


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(background efficiency, signal efficiency) at every distinct threshold, from (0, 0) to (1, 1).

    >>> roc_curve(np.array([0.9, 0.8, 0.3, 0.1]), np.array([True, False, True, False]))
    (array([0. , 0. , 0.5, 0.5, 1. ]), array([0. , 0.5, 0.5, 1. , 1. ]))
    """
    order = np.argsort(-scores, kind="mergesort")
    ordered, hits = scores[order], positive[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
    true_positives = np.cumsum(hits)[last_of_each]
    false_positives = last_of_each + 1 - true_positives
    return (np.r_[0.0, false_positives / false_positives[-1]], np.r_[0.0, true_positives / true_positives[-1]])


def _one_vs_rest(holdout: HoldoutScores) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, score, is-of-the-class) per curve: signal vs background, or each class against the others."""
    if holdout.scores.ndim == 1:
        return [("signal vs background", holdout.scores, holdout.labels == 1)]
    return [(f"class {k} vs rest", holdout.scores[:, k], holdout.labels == k) for k in range(holdout.scores.shape[1])]


def roc_figure(holdout: HoldoutScores | None) -> Figure:
    figure, ax = _figure("roc", _SIZE)
    if holdout is None:
        return _say(figure, ax, _NO_HOLDOUT)
    drawn = 0
    for name, score, positive in _one_vs_rest(holdout):
        auc = roc_auc(score, positive)
        if auc is not None:
            background, signal = roc_curve(score, positive)
            ax.plot(background, signal, label=f"{name}: AUC = {auc:.3f}")
            drawn += 1
    if not drawn:
        return _say(figure, ax, f"The held-out events hold one class only ({np.unique(holdout.labels).tolist()})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    ax.set(xlabel="Background efficiency", ylabel="Signal efficiency", xlim=(0, 1), ylim=(0, 1.05))
    ax.legend(loc="lower right", title=f"v{holdout.version}, {len(holdout.labels):,} events")
    return figure


def scores_figure(holdout: HoldoutScores | None) -> Figure:
    figure, ax = _figure("scores", _SIZE)
    if holdout is None:
        return _say(figure, ax, _NO_HOLDOUT)
    import mplhep

    edges = np.linspace(0, 1, 41)
    for k in np.unique(holdout.labels):
        of_class = holdout.labels == k
        if holdout.scores.ndim == 1:
            score, name = holdout.scores[of_class], {1: "signal (class 1)", 0: "background (class 0)"}.get(k)
        else:
            score, name = holdout.scores[of_class, k], None
        counts, _ = np.histogram(score, edges)
        mplhep.histplot(counts, edges, density=True, histtype="step", linewidth=1.5, ax=ax,
                        label=f"{name or f'class {k}'}, {int(of_class.sum()):,} events")
    xlabel = "Score P(class 1)" if holdout.scores.ndim == 1 else "Score P(own class)"
    ax.set(xlabel=xlabel, ylabel="Normalised events", xlim=(0, 1))
    ax.legend(title=f"v{holdout.version}")
    return figure


def prequential_figure(history: History) -> Figure:
    figure = Figure(figsize=_TALL, layout="constrained")
    auc_ax, loss_ax = figure.subplots(2, 1, sharex=True)
    auc_ax.set_title(TITLES["prequential"])
    if not history.points:
        return _say(figure, auc_ax, f"Model {history.model!r} has no version yet")
    events = [p.events_seen for p in history.points]
    for ax, values, label, legend in ((auc_ax, [p.auc for p in history.points], "AUC", "versions, sliding window"),
                                      (loss_ax, [p.log_loss for p in history.points], "Log-loss", "versions")):
        ax.plot(events, [np.nan if v is None else v for v in values], marker="o", markersize=4, label=legend)
        ax.set_ylabel(label)
        for alarm in history.drift:
            ax.axvline(alarm.events, **_DRIFT)
    _label_versions(auc_ax, events, [p.auc for p in history.points], [p.version for p in history.points])
    loss_ax.set_xlabel("Events seen")
    figure.align_ylabels()
    _legend(auc_ax, history)
    return figure


def throughput_figure(history: History, end_offsets: Mapping[int, int] | None) -> Figure:
    figure = Figure(figsize=_TALL, layout="constrained")
    rate_ax, lag_ax = figure.subplots(2, 1, sharex=True)
    rate_ax.set_title(TITLES["throughput"])
    if len(history.points) < 2:
        return _say(figure, rate_ax, "A rate needs two versions; "
                                     f"model {history.model!r} has {len(history.points)}")
    times = [_utc(p.created) for p in history.points]
    rates = [np.nan] + [(b.events_seen - a.events_seen) / (b.created - a.created) if b.created > a.created else np.nan
                        for a, b in zip(history.points, history.points[1:])]
    rate_ax.plot(times, rates, marker="o", markersize=4, label="versions")
    rate_ax.set_ylabel("Events/s learned")
    lag_ax.plot(times, [p.messages for p in history.points], marker="o", markersize=4, label="messages consumed")
    if end_offsets is not None:
        end = sum(end_offsets.values())
        lag_ax.axhline(end, color="black", linestyle=":", label="topic end now")
        lag_ax.set_title(f"Lag now: {end - history.points[-1].messages:,} messages", fontsize="medium")
    else:
        lag_ax.set_title("Lag: topic end unknown (no broker asked)", fontsize="medium")
    lag_ax.set(xlabel=f"Time (UTC), from {times[0]:%Y-%m-%d}", ylabel="Messages")
    figure.align_ylabels()
    for ax in (rate_ax, lag_ax):
        for alarm in history.drift:
            ax.axvline(_utc(alarm.time), **_DRIFT)
    lag_ax.legend(loc="lower right")
    lag_ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
    _legend(rate_ax, history)
    return figure


def _figure(panel: str, size: tuple[float, float]) -> tuple[Figure, Axes]:
    figure = Figure(figsize=size, layout="constrained")
    ax = figure.subplots()
    ax.set_title(TITLES[panel])
    return figure, ax


def _say(figure: Figure, ax: Axes, text: str) -> Figure:
    """A panel without data: the reason, in words, where the plot would be."""
    for other in figure.axes:
        other.set_xticks([])
        other.set_yticks([])
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize="medium")
    return figure


def _label_versions(ax: Axes, xs: list, ys: list, versions: list[int]) -> None:
    """Version numbers beside their points, at most ten of them, the newest always."""
    step = -(-len(versions) // _MOST_VERSION_LABELS)
    for i in sorted({*range(0, len(versions), step), len(versions) - 1}):
        if ys[i] is not None:
            ax.annotate(f"v{versions[i]}", (xs[i], ys[i]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize="x-small")


def _legend(ax: Axes, history: History) -> None:
    if history.drift:
        ax.plot([], [], **_DRIFT, label=f"drift alarm ({len(history.drift)})")
    ax.legend(loc="best")


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
