"""A native crash in any command leaves the stacks of its threads on stderr (faulthandler), not silence."""

import subprocess
import sys
import textwrap

_CRASHING_COMMAND = textwrap.dedent("""
    import argparse, ctypes
    import hepstream.cli as cli

    class Parser:  # a command whose run() dereferences a null pointer, as a native library bug would
        def parse_args(self, argv):
            return argparse.Namespace(verbose=False, run=lambda args: ctypes.string_at(0))

    cli.build_parser = Parser
    cli.main([])
""")


def test_a_segfault_in_a_command_prints_a_python_stack():
    done = subprocess.run([sys.executable, "-c", _CRASHING_COMMAND], capture_output=True, text=True, timeout=60)
    assert done.returncode == -11
    assert "Fatal Python error: Segmentation fault" in done.stderr
    assert "in main" in done.stderr  # the stack names the frame that was running
