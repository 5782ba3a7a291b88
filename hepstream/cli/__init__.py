"""The ``hepstream`` command."""
import sys


def main(argv=None) -> int:
    print("hepstream: no commands yet", file=sys.stderr)
    return 2
