"""The ``hepstream`` command: one sub-command per job, each in its own module.

Every sub-command that talks to services takes ``--config FILE`` (YAML, see
docs/configuration.md); ``HEPSTREAM_CONFIG`` sets it from the environment.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import sys
import warnings

from hepstream import __version__
from hepstream.cli import bench, datagen, demo, jobs, models, predict, report, run, status, submit
from hepstream.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hepstream", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hepstream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, datagen, jobs, submit, bench, models, predict, report, run, status):
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A native crash (a segfault inside torch, Arrow or a client library) leaves no Python traceback;
    # with the fault handler on, every command's stderr gets the stacks of all threads at the fault.
    faulthandler.enable(all_threads=True)
    args = build_parser().parse_args(argv)
    # XRootD's exit hook inspects every live object, tripping a torch deprecation notice on the way.
    warnings.filterwarnings("ignore", message=r"`torch.distributed.reduce_op` is deprecated")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"hepstream: configuration error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hepstream: interrupted", file=sys.stderr)
        return 130
