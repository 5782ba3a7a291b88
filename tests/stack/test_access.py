"""Mode-bit answers to "can that user read this folder?", checked without starting a server."""

from __future__ import annotations

import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from hepstream.stack.access import Account, blocked_paths

STRANGER = Account("stranger", uid=54321, gids=frozenset({54321}))


@pytest.fixture
def tree():
    top = Path(tempfile.mkdtemp(prefix="hepstream-access-test-"))
    served = top / "served"
    (served / "sub").mkdir(parents=True)
    (served / "open.root").write_bytes(b"")
    (served / "sub" / "inner.root").write_bytes(b"")
    (served / "dangling").symlink_to(top / "gone")
    for path in (top, served, served / "sub"):
        path.chmod(0o755)
    yield top, served
    top.chmod(0o755)
    shutil.rmtree(top)


def test_open_tree_has_nothing_blocked_and_dangling_links_are_ignored(tree):
    _, served = tree
    assert blocked_paths(served, STRANGER) == []


def test_parents_folders_and_files_each_report_what_they_lack(tree):
    top, served = tree
    top.chmod(0o700)
    (served / "sub").chmod(0o711)
    (served / "open.root").chmod(0o600)
    blocked = {entry.path: entry.needs for entry in blocked_paths(served, STRANGER)}
    assert blocked == {top: "--x", served / "sub": "r-x", served / "open.root": "r--"}


def test_group_bits_apply_to_members_even_when_other_bits_allow(tree):
    _, served = tree
    target = served / "open.root"
    target.chmod(0o604)
    member = Account("member", uid=54321, gids=frozenset({target.stat().st_gid}))
    assert [entry.path for entry in blocked_paths(served, member)] == [target]


def test_root_is_never_blocked(tree):
    top, served = tree
    top.chmod(0o000)
    assert blocked_paths(served, Account("root", uid=0, gids=frozenset({0}))) == []


def test_service_account_includes_its_primary_group():
    assert pwd.getpwnam("nobody").pw_gid in Account.named("nobody").gids
    with pytest.raises(KeyError):
        Account.named("no-such-user-hepstream")
