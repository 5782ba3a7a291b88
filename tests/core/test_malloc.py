"""glibc tuned for megabyte buffers freed and made again from threads: they come back without page faults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_WORKLOAD = """
import json, resource, sys, threading
import numpy as np
from hepstream.malloc import tune_malloc
tune_malloc(arenas=4, mmap_threshold=32 << 20, trim_threshold=64 << 20)
faults = []
def work():
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(50):  # three 2.5 MB buffers, 1,920 pages, as a forward pass over 10k events makes
        a = np.ones((10_000, 64), np.float32); b = a * 2; c = np.maximum(b, 0); del a, b, c
    faults.append((resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) / 50)
for _ in range(3):
    thread = threading.Thread(target=work); thread.start(); thread.join()
print(json.dumps(faults))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator; RUSAGE_THREAD is Linux's")
def test_buffers_freed_in_a_thread_are_reused_not_faulted_in_again():
    """With glibc's defaults each round trip faulted in nearly every page again: 1,843 per 1,920 pages
    (Debian 12, Python 3.11). A process of its own, since the setting is process-wide."""
    result = subprocess.run([sys.executable, "-c", _WORKLOAD], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    faults = json.loads(result.stdout)
    assert len(faults) == 3
    assert max(faults) < 200, faults
