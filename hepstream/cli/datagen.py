"""``hepstream datagen``: labelled NanoAOD-like signal and background files for trying things out."""

from __future__ import annotations

import json
import time
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("datagen", help="write labelled H->ZZ*->4mu signal and background ROOT files")
    parser.add_argument("--out", type=Path, default=Path("hepstream-data"), help="output folder (default hepstream-data)")
    parser.add_argument("--events", type=int, default=100_000, help="training events per class")
    parser.add_argument("--holdout", type=int, default=10_000, help="held-out events per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args) -> int:
    from hepstream.streaming.datagen import generate_demo

    started = time.monotonic()
    files = generate_demo(args.out, args.events, args.holdout, args.seed)
    seconds = time.monotonic() - started
    print(json.dumps({
        "train": [{"url": str(path), "label": label} for path, label in files.train],
        "holdout": [{"url": str(path), "label": label} for path, label in files.holdout],
        "events": 2 * (args.events + args.holdout),
        "seconds": round(seconds, 2),
    }, indent=1))
    return 0
