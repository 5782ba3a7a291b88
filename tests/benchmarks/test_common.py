"""What the benchmark stages share: timed loops and child processes that get their environment passed."""

import os
import subprocess
import sys
import time

import pytest

from hepstream.benchmarks.common import call_python, run_for, start_python


def print_environment(names: list[str]) -> None:
    """Run in a child by the tests below: print the named variables as the child sees them."""
    import json

    print(json.dumps({name: os.environ.get(name) for name in names}))


def test_run_for_counts_every_step_when_there_is_time():
    events, seconds = run_for(n for n in (3, 4, 5))
    assert events == 12
    assert seconds >= 0


def test_run_for_stops_after_the_step_that_passes_the_time_and_times_the_clean_up():
    closed = []

    def steps():
        try:
            for _ in range(100):
                time.sleep(0.02)
                yield 10
        finally:
            time.sleep(0.1)  # as a read-ahead thread's last group, waited for on closing
            closed.append(True)

    events, seconds = run_for(steps(), seconds=0.05)
    assert events in (30, 40)  # stops at the first step ending past 0.05 s, not at the hundredth
    assert closed == [True]
    assert seconds >= 0.15


def test_call_python_returns_the_last_json_line_the_child_prints():
    assert call_python(print_environment, ["HEPSTREAM_BENCH_NOT_SET"]) == {"HEPSTREAM_BENCH_NOT_SET": None}


def test_start_python_passes_the_environment_to_the_child_and_leaves_its_own_alone():
    assert "HEPSTREAM_BENCH_PASSED" not in os.environ
    child = start_python(print_environment, ["HEPSTREAM_BENCH_PASSED"], env={"HEPSTREAM_BENCH_PASSED": "yes"},
                         stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert out.strip() == '{"HEPSTREAM_BENCH_PASSED": "yes"}'
    assert "HEPSTREAM_BENCH_PASSED" not in os.environ


def test_call_python_reports_a_failing_child_with_its_stderr():
    with pytest.raises(subprocess.CalledProcessError) as raised:
        call_python(sys.exit, "the child failed")
    assert "the child failed" in raised.value.stderr
