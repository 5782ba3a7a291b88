"""Serve a local folder read-only over ``root://`` on loopback, the way sites serve ROOT files.

Reading through a real XRootD server exercises the same remote path as a
grid site: uproot's ``root://`` handler, vector reads, server errors. The
server has no bind-address option and listens on all interfaces, so the
configuration admits only clients on this machine (``xrd.allow``).

xrootd refuses to run as root. As root it is started with ``-R xrootd`` and
reads as that user, so the served folder and all its parents must be open to
it; that is checked before the server starts (:mod:`hepstream.stack.access`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hepstream.stack.access import Account, blocked_paths
from hepstream.stack.errors import StackError
from hepstream.stack.service import LocalService

XROOTD_BIN_ENV = "HEPSTREAM_XROOTD_BIN"
SERVICE_USER = "xrootd"  # the account xrootd runs as when started by root; Debian's package creates it
_INSTALL_HINT = (
    "install it with `apt-get install xrootd-server` (Debian/Ubuntu), `dnf install xrootd-server` "
    f"or `conda install -c conda-forge xrootd`, or set {XROOTD_BIN_ENV} to an xrootd binary"
)


def resolve_xrootd_bin() -> str:
    """Path of the xrootd binary: ``$HEPSTREAM_XROOTD_BIN`` if set, else ``xrootd`` on PATH."""
    override = os.environ.get(XROOTD_BIN_ENV)
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise StackError(
                f"{XROOTD_BIN_ENV}={override!r} is not an executable file: "
                "point it at an xrootd binary, or unset it to use xrootd from PATH"
            )
        return override
    found = shutil.which("xrootd")
    if found is None:
        raise StackError(f"no XRootD server on PATH: {_INSTALL_HINT}")
    return found


class XRootDServer(LocalService):
    """An XRootD server exporting ``root_dir`` read-only at ``root://127.0.0.1:port/``."""

    name = "xrootd"
    what = "XRootD server"

    def __init__(self, root_dir: str | os.PathLike, port: int | None = None, start_timeout_s: float = 10.0):
        super().__init__(port, start_timeout_s)
        self.root_dir = Path(root_dir).resolve()

    @staticmethod
    def available() -> bool:
        """Whether an xrootd binary is configured or on PATH: tests skip, rather than fail, without one."""
        return bool(os.environ.get(XROOTD_BIN_ENV)) or shutil.which("xrootd") is not None

    @property
    def url(self) -> str:
        return f"root://{self.host}:{self.port}/"

    def url_for(self, path: str | os.PathLike) -> str:
        """The ``root://`` URL of a file under ``root_dir`` (absolute, or relative to ``root_dir``).

        The URL has a double slash after the port, an absolute path on the
        server: the form uproot and fsspec-xrootd open.
        """
        joined = self.root_dir / path
        for candidate in (Path(os.path.abspath(joined)), joined.resolve()):
            if candidate.is_relative_to(self.root_dir):
                return self.url + "/" + candidate.relative_to(self.root_dir).as_posix()
        raise ValueError(f"{path} is not under the served folder {self.root_dir}")

    def _prepare(self, run_dir: Path) -> list[str]:
        binary = resolve_xrootd_bin()
        if not self.root_dir.is_dir():
            raise StackError(f"{self.what}: {self.root_dir} is not a folder")
        as_root = os.geteuid() == 0
        account = self._service_account() if as_root else Account.current()
        self._refuse_unreadable(account)
        log_path, pid_path, config_path = self.log_path, run_dir / "xrootd.pid", run_dir / "xrootd.cfg"
        config_path.write_text(
            f"xrd.port {self.port}\n"
            f"oss.localroot {self.root_dir}\n"
            "all.export / r/o\n"
            "xrd.allow host localhost\n"
            f"xrd.allow host {self.host}\n"
            f"all.adminpath {run_dir}\n"
            f"all.pidpath {run_dir}\n"
        )
        log_path.touch()
        if as_root:  # the server writes its admin files and log as the service user
            for path in (run_dir, log_path):
                os.chown(path, account.uid, -1)
        # Foreground (no -b), so the Popen PID is the server's. -s keeps the
        # xrootd.<name>.env file it writes beside the pid file out of /tmp.
        user = ["-R", account.name] if as_root else []
        return [binary, *user, "-c", str(config_path), "-l", str(log_path), "-s", str(pid_path)]

    def _service_account(self) -> Account:
        try:
            return Account.named(SERVICE_USER)
        except KeyError:
            raise StackError(
                f"{self.what}: xrootd refuses to run as root and there is no user {SERVICE_USER!r} "
                f"to run it as; create one (`useradd --system {SERVICE_USER}`) or run as another user"
            ) from None

    def _refuse_unreadable(self, account: Account) -> None:
        blocked = blocked_paths(self.root_dir, account)
        if not blocked:
            return
        listed = "\n".join(f"  {entry}" for entry in blocked[:10])
        if len(blocked) > 10:
            listed += f"\n  ... and {len(blocked) - 10} more"
        above = set(self.root_dir.parents)
        parents = [str(entry.path) for entry in blocked if entry.path in above]
        fixes = [f"chmod o+x {' '.join(parents)}"] if parents else []
        if len(parents) < len(blocked):
            fixes.append(f"chmod -R o+rX {self.root_dir}")
        raise StackError(
            f"{self.what}: user {account.name!r}, which the server runs as, cannot read everything "
            f"under {self.root_dir}:\n{listed}\n"
            f"fix: {' and '.join(fixes)}, or serve a folder that user can reach"
        )

    def _check_ready(self, timeout_s: float) -> None:
        try:
            from XRootD import client  # the bindings fsspec-xrootd is built on
        except ImportError as err:
            raise StackError(f"{self.what}: checking it needs the XRootD client: `pip install xrootd`") from err

        status, _ = client.FileSystem(self.url).stat("/", timeout=max(int(timeout_s), 1))
        if not status.ok:
            raise self.failure(f"listens on port {self.port} but cannot stat its root: {status.message}")
