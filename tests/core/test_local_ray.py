"""``init_ray`` keeps the command's own stop: a SIGTERM during or after ``ray.init`` reaches its handler."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SCRIPT = """
import os, signal, sys
from hepstream.local_ray import init_ray
import ray

received = []
signal.signal(signal.SIGTERM, lambda number, frame: received.append(number))
init_ray(num_cpus=1)
try:
    os.kill(os.getpid(), signal.SIGTERM)  # Ray's driver handler would end the process here
    print("kept", received == [signal.SIGTERM], flush=True)
finally:
    ray.shutdown()
"""


def test_a_sigterm_after_ray_init_reaches_the_commands_own_handler():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("kept True"), done.stdout
