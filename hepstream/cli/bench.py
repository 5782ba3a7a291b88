"""``hepstream bench produce|train|core|serve|freshness|quality``: each stage against its own baseline, in the same run.

Every benchmark prints one JSON object (``--json``) whose ratios compare the
stage with a baseline measured moments before on the same machine, so the
figures mean something on a noisy, shared box. The stages live beside the
layers, in ``hepstream.benchmarks`` (top-level ``benchmarks/``), one module
per stage, each exposing ``add_arguments(parser)`` and ``run(args) -> dict``.
"""

from __future__ import annotations

import json

from hepstream.benchmarks import core, freshness, produce, quality, serve, train

STAGES = {"produce": produce, "train": train, "core": core, "serve": serve, "freshness": freshness,
          "quality": quality}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="measure a stage against its baseline and print JSON")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage, module in STAGES.items():
        stage_parser = stages.add_parser(stage, help=f"benchmark of {module.__name__}")
        stage_parser.add_argument("--json", action="store_true", help="print only the JSON object")
        stage_parser.set_defaults(run=run)
        module.add_arguments(stage_parser)


def run(args) -> int:
    print(json.dumps(STAGES[args.stage].run(args), indent=None if args.json else 1))
    return 0
