"""Can another user read a folder? Answered from mode bits, before a server finds out.

xrootd refuses to run as root, so as root the stack hands it to the
``xrootd`` user; :func:`os.access` answers for the caller, not for that user.
A folder it cannot reach makes every remote read fail with a bare
"permission denied" far from the cause (pytest's 0700 base folder is the usual
one), so the stack checks up front and names the paths to fix.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

_READ, _EXECUTE = 4, 1


@dataclass(frozen=True)
class Account:
    """A user as the kernel checks it: one uid and the set of its group ids."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def named(cls, name: str) -> Account:
        """Look a user up; :class:`KeyError` when there is no such user."""
        entry = pwd.getpwnam(name)
        groups = {group.gr_gid for group in grp.getgrall() if name in group.gr_mem}
        return cls(name, entry.pw_uid, frozenset(groups | {entry.pw_gid}))

    @classmethod
    def current(cls) -> Account:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, frozenset(os.getgroups()) | {os.getegid()})


@dataclass(frozen=True)
class Blocked:
    """A path the account cannot use, and what it lacks there (``"r-x"``, ``"--x"`` or ``"r--"``)."""

    path: Path
    mode: int
    owner: int
    needs: str

    def __str__(self) -> str:
        try:
            owner = pwd.getpwuid(self.owner).pw_name
        except KeyError:
            owner = f"uid {self.owner}"
        return f"{self.path} (mode {stat.S_IMODE(self.mode):04o}, owner {owner}) needs {self.needs}"


def blocked_paths(root: Path, account: Account) -> list[Blocked]:
    """Paths that stop ``account`` from reading every file under ``root``.

    Each parent of ``root`` must be searchable (x), ``root`` and the folders
    under it readable and searchable (r-x), the files readable (r). ACLs are
    not consulted, so a folder opened only through an ACL is reported too.
    """
    if account.uid == 0:
        return []
    root = root.resolve()
    blocked = [_check(parent, account, _EXECUTE) for parent in reversed(root.parents)]
    for folder, _, files in os.walk(root):
        blocked.append(_check(Path(folder), account, _READ | _EXECUTE))
        blocked.extend(_check(Path(folder) / name, account, _READ) for name in files)
    return [entry for entry in blocked if entry is not None]


def _check(path: Path, account: Account, need: int) -> Blocked | None:
    try:
        info = path.stat()
    except FileNotFoundError:  # a dangling link: missing, not forbidden
        return None
    if info.st_uid == account.uid:
        granted = info.st_mode >> 6
    elif info.st_gid in account.gids:
        granted = info.st_mode >> 3
    else:
        granted = info.st_mode
    if granted & need == need:
        return None
    needs = ("r" if need & _READ else "-") + "-" + ("x" if need & _EXECUTE else "-")
    return Blocked(path, info.st_mode, info.st_uid, needs)
