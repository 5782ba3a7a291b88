"""The panels as PNG files and as one HTML page that needs nothing else: no network, no files beside it.

A report is mailed, attached to an e-log, opened on a laptop without the
cluster: so the page inlines its PNGs as data URIs and carries no external
stylesheet or script. The server's ``/ui`` answers the same page with a
``<meta http-equiv="refresh">``, so an open browser tab follows the
training without any JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING
from dataclasses import dataclass
from pathlib import Path

from hepstream.report import STYLES
from hepstream.report.figures import TITLES, panels
from hepstream.report.history import History

if TYPE_CHECKING:  # holdout.py reads ROOT files: the server draws without it
    from hepstream.report.holdout import HoldoutScores


DPI = 100
# matplotlib's style context edits the process-wide rcParams: one drawing at a time.
_DRAWING = threading.Lock()


@dataclass(frozen=True)
class Report:
    model: str
    generated: float  # Unix time
    summary: tuple[tuple[str, str], ...]  # (what, value) lines above the plots
    pngs: Mapping[str, bytes]  # panel name -> PNG, in the order of the page


def build_report(history: History, holdout: HoldoutScores | None = None,
                 end_offsets: Mapping[int, int] | None = None, style: str = "CMS") -> Report:
    """Draw every panel in mplhep's ``style`` (one of :data:`STYLES`) and encode it as PNG."""
    import matplotlib
    import mplhep

    if style not in STYLES:
        raise ValueError(f"report style {style!r}: expected one of {', '.join(STYLES)}")
    # Fixed-size PNGs whatever the style says: a page lays them out, tests know their size.
    with _DRAWING, matplotlib.style.context([getattr(mplhep.style, style), {"savefig.bbox": "standard"}]):
        pngs = {name: _png(figure) for name, figure in panels(history, holdout, end_offsets).items()}
    return Report(history.model, time.time(), _summary(history, holdout, end_offsets), pngs)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _summary(history: History, holdout: HoldoutScores | None, end_offsets: Mapping[int, int] | None
             ) -> tuple[tuple[str, str], ...]:
    lines = [("model", history.model), ("versions", str(len(history.points)))]
    if history.points:
        newest = history.points[-1]
        lines += [("newest version", f"v{newest.version}"), ("events seen", f"{newest.events_seen:,}")]
        if end_offsets is not None:
            lines.append(("lag", f"{sum(end_offsets.values()) - newest.messages:,} messages"))
    lines.append(("drift alarms", str(len(history.drift))))
    if holdout is not None:
        lines.append(("held-out events", f"{len(holdout.labels):,} from {len(holdout.files)} file(s)"))
    return tuple(lines)


def report_html(report: Report, refresh_s: float | None = None) -> str:
    """One self-contained page; ``refresh_s``: reload that often (the live ``/ui``), None: a static report."""
    refresh = f'<meta http-equiv="refresh" content="{refresh_s:g}">' if refresh_s else ""
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.generated))
    rows = "".join(f"<tr><th>{html.escape(what)}</th><td>{html.escape(value)}</td></tr>"
                   for what, value in report.summary)
    figures = "".join(
        f'<figure><img id="{name}" alt="{html.escape(TITLES[name])}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}"></figure>' for name, png in report.pngs.items())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f'<link rel="icon" href="data:,"><title>hepstream: {html.escape(report.model)}</title>'
            f"<style>{_CSS}</style></head><body><h1>hepstream: {html.escape(report.model)}</h1>"
            f"<p>Generated {generated}</p><table>{rows}</table><main>{figures}</main></body></html>")


_CSS = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin-bottom:1em}"
        "th,td{text-align:left;padding:.15em 1em .15em 0}main{display:flex;flex-wrap:wrap;gap:1em}"
        "figure{margin:0}img{max-width:100%;width:640px;border:1px solid #ddd}")


def write_report(report: Report, out: Path) -> list[Path]:
    """``<panel>.png`` for each panel and ``report.html`` in ``out`` (created); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, png in report.pngs.items():
        (out / f"{name}.png").write_bytes(png)
        written.append(out / f"{name}.png")
    (out / "report.html").write_text(report_html(report))
    return [*written, out / "report.html"]
