"""``hepstream report``: the model's plots as PNG files and one self-contained HTML page.

Everything but the held-out panels comes from the model store alone. The ROC
and score distributions need events the model has not trained on, which
only the user can name: ``--holdout 'FILE_OR_GLOB [LABEL]'``, repeated (the
newest version, or ``--version``, scores them). The lag needs the topic's
end offsets: asked of the brokers when ``kafka.bootstrap`` (or
``--bootstrap``) is set; a broker that does not answer leaves the lag out
with a warning, not the report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hepstream.cli.jobs import config_argument
from hepstream.cli.models import chosen_version
from hepstream.config import load_config

END_OFFSETS_TIMEOUT_S = 10.0


def add_parser(subparsers) -> None:
    from hepstream.report import STYLES

    parser = subparsers.add_parser("report", help="plots of the model (ROC, scores, prequential curves, rate, lag) "
                                                  "as PNG files and one HTML page")
    config_argument(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder to write the PNGs and report.html into")
    parser.add_argument("--model", help="model name (default: model.name of the config)")
    parser.add_argument("--version", type=int, help="version that scores the held-out events (default: the newest)")
    parser.add_argument("--holdout", action="append", default=[], metavar="'FILE_OR_GLOB [LABEL]'",
                        help="held-out ROOT files for the ROC and score panels, one file-list line each; "
                             "repeat for more (no label: dataset.label_branch labels the events)")
    parser.add_argument("--holdout-events", type=int, default=200_000,
                        help="held-out events scored at most (default: 200000)")
    parser.add_argument("--style", choices=STYLES, default="CMS", help="mplhep style (default: CMS)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from hepstream.models.store import ModelStore
    from hepstream.report.history import read_history
    from hepstream.report.page import build_report, write_report

    config = load_config(args.config)
    store = ModelStore(config.store.path, args.model or config.model.name, config.store.keep)
    history = read_history(store)
    holdout = _holdout(args, config, store) if args.holdout else None
    report = build_report(history, holdout, _end_offsets(config, args.bootstrap or config.kafka.bootstrap),
                          args.style)
    written = write_report(report, args.out)
    print(json.dumps({"model": store.model, "versions": len(history.points), "files": [str(p) for p in written]}))
    return 0


def _holdout(args, config, store):
    from hepstream.report.holdout import holdout_sources, score_holdout

    model = store.load(chosen_version(store, args))
    return score_holdout(model, config, holdout_sources(config, args.holdout), args.holdout_events)


def _end_offsets(config, bootstrap: str | None) -> dict[int, int] | None:
    if not bootstrap:
        return None
    from hepstream.kafka import BrokerUnavailable, end_offsets

    try:
        return end_offsets(bootstrap, config.kafka, config.dataset.topic, timeout_s=END_OFFSETS_TIMEOUT_S)
    except (BrokerUnavailable, TimeoutError) as error:
        print(f"hepstream report: no lag in the report: {error}", file=sys.stderr)
        return None
