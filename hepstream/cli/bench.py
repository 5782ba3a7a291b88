"""``hepstream bench produce|train|core|serve``: each stage against its own baseline, in the same run.

Every benchmark prints one JSON object (``--json``) whose ratios compare the
stage with a baseline measured moments before on the same machine, so the
figures mean something on a noisy, shared box. The stages live with their
layers (``hepstream.streaming.bench``, ``hepstream.models.bench``,
``hepstream.serve.bench``), each exposing ``add_arguments(parser)`` and
``run(args) -> dict``.
"""

from __future__ import annotations

import importlib
import json

STAGES = {
    "produce": "hepstream.streaming.bench",
    "train": "hepstream.models.bench",
    "core": "hepstream.models.bench_core",
    "serve": "hepstream.serve.bench",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="measure a stage against its baseline and print JSON")
    stages = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage, module_name in STAGES.items():
        stage_parser = stages.add_parser(stage, help=f"benchmark of {module_name}")
        stage_parser.add_argument("--json", action="store_true", help="print only the JSON object")
        stage_parser.set_defaults(run=run, bench_module=module_name)
        try:
            importlib.import_module(module_name).add_arguments(stage_parser)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise


def run(args) -> int:
    try:
        module = importlib.import_module(args.bench_module)
    except ModuleNotFoundError as error:
        if error.name != args.bench_module:
            raise
        print(f"hepstream bench {args.stage}: not available yet ({args.bench_module} is missing)")
        return 2
    print(json.dumps(module.run(args), indent=None if args.json else 1))
    return 0
