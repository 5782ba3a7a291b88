"""The model store's errors, and the words an operator needs when a filesystem refuses a version.

A full disk once surfaced as torch's ``basic_ios::clear: iostream error``,
naming neither the store nor the cause. :class:`StoreWriteError` names the
store's root, the version folder being written, the cause in words with its
errno name, and the free space where space is the cause.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class StoreError(RuntimeError):
    """A version that is missing, unreadable or could not be written; names the folder."""


class StoreWriteError(StoreError):
    """A version could not be written; nothing of it is visible and the earlier versions are untouched.

    ``cause`` is the reason in words and ``errno`` the OS error number (None when
    the error carried none), so a caller can tell a full disk from a refusal.
    """

    def __init__(self, root: Path, version_folder: Path, cause: str, errno: int | None):
        super().__init__(f"model store {root}: could not write version {version_folder}: {cause}")
        self.root = root
        self.version_folder = version_folder
        self.cause = cause
        self.errno = errno


_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only filesystem",
}
_SPACE = (errno.ENOSPC, errno.EDQUOT)


def describe_os_error(error: OSError, root: Path, writing_bytes: int) -> str:
    """The cause in words: ``no space left on device (ENOSPC) on /store: 12 KiB free of 1.0 MiB, ...``.

    >>> describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/s/m/x"), Path("/nowhere"), 0)
    'permission denied (EACCES) at /s/m/x'
    """
    code = error.errno
    if code is None:
        return str(error)
    words = _CAUSES.get(code) or os.strerror(code).lower()
    cause = f"{words} ({errno.errorcode.get(code, code)})"
    if error.filename is not None:
        cause += f" at {error.filename}"
    if code in _SPACE:
        cause += f"; {_free_space(root)}, the version needs {_size(writing_bytes)}"
    return cause


def _free_space(root: Path) -> str:
    """Free space on the filesystem holding ``root`` (or its nearest existing parent)."""
    folder = root
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        usage = shutil.disk_usage(folder)
    except OSError as error:
        return f"free space unknown ({error})"
    return f"{_size(usage.free)} free of {_size(usage.total)} on {folder}"


def _size(count: int) -> str:
    """Bytes in binary units, as ``df -h`` prints them.

    >>> _size(512), _size(390_912), _size(3 * 2**30), _size(5 * 2**50)
    ('512 B', '381.8 KiB', '3.0 GiB', '5120.0 TiB')
    """
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while power < len(units) - 1 and count >= 1024 ** (power + 1):
        power += 1
    return f"{count} B" if power == 0 else f"{count / 1024**power:.1f} {units[power]}"
