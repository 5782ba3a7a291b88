"""The embedded XRootD server: uproot reads through it what it reads locally, and errors say where."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import uproot

from hepstream.stack.errors import StackError
from hepstream.stack.xrootd import XRootDServer
from tests.helpers import is_running

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not XRootDServer.available(), reason="no xrootd binary: install xrootd-server"),
]


def test_remote_read_equals_local_read(xrootd_server):
    path = xrootd_server.root_dir / "small.root"
    with uproot.recreate(path) as out:
        tree = out.mktree("Events", {"pt": np.float32, "n": np.int32})
        tree.extend({"pt": np.linspace(0, 100, 1000, dtype=np.float32), "n": np.arange(1000, dtype=np.int32)})
    url = xrootd_server.url_for(path)
    assert url == f"root://127.0.0.1:{xrootd_server.port}//small.root"
    with uproot.open(path) as local, uproot.open(url) as remote:
        expected = local["Events"].arrays(library="np")
        received = remote["Events"].arrays(library="np")
    assert expected.keys() == received.keys()
    for name in expected:
        np.testing.assert_array_equal(received[name], expected[name])


def test_missing_file_error_names_the_path(xrootd_server):
    url = xrootd_server.url_for("nested/missing.root")
    with pytest.raises(OSError, match="/nested/missing.root"):
        uproot.open(url)


def test_url_for_refuses_paths_outside_the_folder(xrootd_server):
    with pytest.raises(ValueError, match="not under the served folder"):
        xrootd_server.url_for("/etc/passwd")


def test_stop_ends_the_process():
    root_dir = tempfile.mkdtemp(prefix="hepstream-xrootd-test-")
    os.chmod(root_dir, 0o755)
    try:
        server = XRootDServer(root_dir).start()
        pid = server.pid
        server.stop()
        assert not is_running(pid)
        server.stop()  # idempotent
    finally:
        os.rmdir(root_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_folder_the_xrootd_user_cannot_reach_is_refused():
    # A 0700 parent, like pytest's base folder under /tmp/pytest-of-root: the usual trap.
    locked = Path(tempfile.mkdtemp(prefix="hepstream-xrootd-test-"))
    served = locked / "data"
    served.mkdir()
    served.chmod(0o755)
    try:
        with pytest.raises(StackError) as raised:
            XRootDServer(served).start()
    finally:
        served.rmdir()
        locked.rmdir()
    message = str(raised.value)
    assert "user 'xrootd'" in message
    assert f"{locked} (mode 0700, owner root) needs --x" in message
    assert f"fix: chmod o+x {locked}," in message


def test_unreadable_file_is_refused():
    root_dir = Path(tempfile.mkdtemp(prefix="hepstream-xrootd-test-"))
    root_dir.chmod(0o755)
    hidden = root_dir / "hidden.root"
    hidden.write_bytes(b"")
    hidden.chmod(0o000)
    try:
        with pytest.raises(StackError, match=re.escape(f"{hidden} (mode 0000, ") + r".*\) needs r--"):
            XRootDServer(root_dir).start()
    finally:
        hidden.unlink()
        root_dir.rmdir()
