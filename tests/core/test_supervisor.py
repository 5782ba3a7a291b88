"""The supervisor on plain Python children: exits reported with their reason, restarts with backoff, clean stops."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from hepstream.supervisor import RestartPolicy, Stage, StageSpec, Supervisor
from hepstream.waiting import poll_until
from tests.helpers import process_gone

FAST = RestartPolicy(max_restarts=2, window_s=60.0, first_wait_s=0.05, max_wait_s=0.1)


def _stage(tmp_path, name: str, code: str, policy: RestartPolicy = FAST, finished=frozenset()) -> Stage:
    return Stage(StageSpec(name, (sys.executable, "-c", code), finished), tmp_path, policy)


def _supervise(stages, until, timeout_s: float = 20.0) -> tuple[int, list[str]]:
    """Run a supervisor until ``until(stages)`` holds (then stop it) or it gives up; its exit code and reports."""
    lines: list[str] = []
    stop = threading.Event()
    supervisor = Supervisor(stages, lines.append, lambda: None, stop_timeout_s=5.0)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", supervisor.run(stop, tick_s=0.02)))
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and not until(stages) and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    thread.join(timeout_s)
    return result["code"], lines


def test_a_dying_stage_is_reported_with_its_reason_and_restarted(tmp_path):
    flag = tmp_path / "crashed-once"
    code = (f"import os, sys, time\nif not os.path.exists({str(flag)!r}):\n"
            f"    open({str(flag)!r}, 'w').close(); print('segfault in the reader', file=sys.stderr); sys.exit(3)\n"
            "time.sleep(60)")
    stage = _stage(tmp_path, "trainer", code)
    rc, lines = _supervise([stage], lambda s: s[0].restarts == 1 and s[0].state == "running")
    assert rc == 0
    assert stage.restarts == 1 and stage.state == "stopped"
    assert stage.last_exit == "exit code 3" and stage.last_error == ("segfault in the reader",)
    assert any("trainer died (exit code 3)" in line and "segfault in the reader" in line for line in lines)


def test_a_killed_stage_names_the_signal(tmp_path):
    stage = _stage(tmp_path, "server", "import time; time.sleep(60)")
    killed = {}

    def kill_once(stages):
        if not killed and stages[0].pid:
            killed["pid"] = stages[0].pid
            os.kill(stages[0].pid, 9)
        return stages[0].restarts == 1 and stages[0].state == "running"

    rc, lines = _supervise([stage], kill_once)
    assert rc == 0
    assert any(line.startswith("server died (killed by SIGKILL)") for line in lines)
    assert stage.pid != killed["pid"] and process_gone(stage.pid)


def test_a_stage_that_finishes_is_not_restarted(tmp_path):
    stage = _stage(tmp_path, "producer", "print('{}')", finished=frozenset({0, 1}))
    rc, lines = _supervise([stage], lambda s: s[0].state == "finished")
    assert rc == 0 and stage.restarts == 0 and stage.state == "finished"
    assert lines[-1] == "producer: finished (exit code 0)"
    assert stage.output.read_text() == "{}\n"


def test_a_stage_that_keeps_dying_makes_the_supervisor_give_up(tmp_path):
    stage = _stage(tmp_path, "trainer", "import sys; sys.exit(7)")
    rc, lines = _supervise([stage], lambda s: False)
    assert rc == 1
    assert stage.state == "failed" and stage.restarts == FAST.max_restarts
    assert "2 restarts within 60 s, giving up" in lines[-1]


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_stop_leaves_no_child_nor_grandchild(tmp_path, ignores_sigterm):
    grandchild_pid = tmp_path / "grandchild.pid"
    code = ("import signal, subprocess, sys, time\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignores_sigterm else "")
            + "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(grandchild_pid)!r}, 'w').write(str(p.pid))\ntime.sleep(60)")
    stage = _stage(tmp_path, "server", code)
    rc, _ = _supervise([stage], lambda s: grandchild_pid.exists() and grandchild_pid.read_text())
    grandchild = int(grandchild_pid.read_text())
    assert rc == 0 and stage.state == "stopped"
    assert process_gone(stage.pid) and process_gone(grandchild)


def test_children_are_stopped_when_the_supervisor_is_killed(tmp_path):
    children = tmp_path / "children"
    code = ("import sys, threading\n"
            "from pathlib import Path\n"
            "from hepstream.supervisor import RestartPolicy, Stage, StageSpec, Supervisor\n"
            f"stage = Stage(StageSpec('s', (sys.executable, '-c', 'import time; time.sleep(60)')), Path({str(tmp_path)!r}),"
            " RestartPolicy())\n"
            f"Supervisor([stage], print, lambda: Path({str(children)!r}).write_text(str(stage.pid))).run(threading.Event())\n")
    supervisor = subprocess.Popen([sys.executable, "-c", code])
    try:
        child = int(poll_until(lambda: children.exists() and children.read_text(), timeout_s=20, what="no child"))
        supervisor.kill()
        supervisor.wait()
        assert process_gone(child)
    finally:
        supervisor.kill()
