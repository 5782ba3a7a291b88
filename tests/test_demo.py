"""The README's demo command, run as a user runs it, on the real broker, XRootD, Ray and Serve."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import noise_in

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir():
    # Not tmp_path: pytest's base folder is 0700 and the XRootD server reads as user xrootd.
    folder = Path(tempfile.mkdtemp(prefix="hepstream-demo-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_demo_pipeline_end_to_end(workdir):
    result = subprocess.run(
        [sys.executable, "-m", "hepstream", "demo", "--json", "--events", "80000", "--holdout", "4000",
         "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert noise_in(result.stderr) == [], result.stderr[-4000:]
    assert " INFO " not in result.stderr  # the demo says each step itself; Serve's lines only repeated them
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["events_produced"] == 160_000
    # Every event learned exactly once, or held in the validation slice and never learned.
    assert summary["events_trained"] + summary["events_validation"] == summary["events_produced"]
    assert summary["duplicate_chunks"] == 0 and summary["bad_messages"] == 0
    assert summary["model_versions_served"] >= 2
    assert summary["failed_requests"] == 0 and summary["requests"] > 0
    assert summary["holdout_events"] == 8000
    assert summary["holdout_auc"] >= 0.85
    assert summary["read_via"] == "root"
    for name in ("broker_pid", "xrootd_pid"):
        with pytest.raises(ProcessLookupError):
            os.kill(summary[name], 0)  # the demo stopped what it started
    versions = sorted(p.name for p in (workdir / "store" / "demo").iterdir())
    assert len(versions) == summary["model_versions_published"] >= 2
