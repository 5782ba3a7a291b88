"""hepstream's three jobs on a Ray cluster's job server: the token we show, what we send, how the job ended.

Ray 2.60 clusters want a token on every job-server request. It is looked up
as Ray's own clients do (``RAY_AUTH_TOKEN``, then the file
``RAY_AUTH_TOKEN_PATH`` names, then ``~/.ray/auth_token``) but here, so that
a missing or unreadable token is one clear line rather than a crash inside
Ray's loader, and sent as ``Authorization: Bearer``. Every answer the job
server refuses becomes a :class:`ClusterError` naming the address and what to
do, never a traceback.

What a job gets (:func:`job_spec`): its configuration with every local path
absolute (:mod:`hepstream.job_paths`) as the working dir's only file,
the user's model module when it sits beside the configuration (hepstream
itself is installed on the nodes), the variables of ``submit.env`` and
``--env``, ``RAY_JOB_STOP_WAIT_TIME_S`` from ``submit.stop_grace_s`` so that
a stop leaves the job time for its final checkpoint, and the CPUs and GPUs
its own process uses.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from hepstream.config import Config

CONFIG_NAME = "pipeline.yaml"
# What a job prints on stderr when a stop signal ended it the way it should (hepstream/cli/jobs.py).
CLEAN_STOP = "stopped cleanly on"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class ClusterError(Exception):
    """The job server cannot be reached, refused us, or knows no such job: one line for the user."""


def cluster_token(environ: dict[str, str] | None = None) -> tuple[str | None, str]:
    """The cluster's token and where it came from, or ``(None, "")`` when none is set anywhere."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    named = environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else Path(environ.get("HOME", "~")).expanduser() / ".ray" / "auth_token"
    if not named and not path.exists():
        return None, ""
    source = f"RAY_AUTH_TOKEN_PATH {path}" if named else str(path)
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise ClusterError(f"cannot read the Ray token file ({source}): {error.strerror or error}") from None
    if not token:
        raise ClusterError(f"the Ray token file ({source}) is empty: copy the cluster's token into it "
                           "(`ray get-auth-token` on the head node prints it)")
    return token, source


def job_server_address(address: str | None, environ: dict[str, str] | None = None) -> str:
    """``--address``, else ``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS``, as ``ray job`` takes them."""
    environ = os.environ if environ is None else environ
    found = address or environ.get("RAY_API_SERVER_ADDRESS") or environ.get("RAY_ADDRESS")
    if not found:
        raise ClusterError("no Ray job server named: give --address http://HEAD:8265 (or set RAY_ADDRESS)")
    return found


@dataclass(frozen=True)
class JobSpec:
    """One ``submit_job`` call: what runs, with which files and variables, on how many CPUs and GPUs."""

    entrypoint: str
    runtime_env: dict[str, Any]
    num_cpus: float = 0
    num_gpus: float = 0
    metadata: dict[str, str] = field(default_factory=dict)


def job_spec(job: str, config: Config, config_folder: Path, staging: Path, env: dict[str, str]) -> JobSpec:
    """Write ``config`` into ``staging`` (the job's working dir) and say how to run ``hepstream <job>`` on it."""
    (staging / CONFIG_NAME).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    runtime_env: dict[str, Any] = {
        "working_dir": str(staging),
        "env_vars": {**config.submit.env, **env, "RAY_JOB_STOP_WAIT_TIME_S": str(config.submit.stop_grace_s)},
    }
    user_module = _user_module(config, config_folder)
    if user_module is not None:
        runtime_env["py_modules"] = [str(user_module)]
    cpus, gpus = _entrypoint_resources(job, config)
    entrypoint = f"{shlex.quote(config.submit.python)} -m hepstream {job} --config {CONFIG_NAME}"
    return JobSpec(entrypoint, runtime_env, cpus, gpus, {"hepstream_job": job, "dataset": config.dataset.name})


def _user_module(config: Config, folder: Path) -> Path | None:
    """The module or package of a ``user`` model's factory, when it lies beside the configuration."""
    if config.model.kind != "user":
        return None
    top = config.model.factory.split(":")[0].split(".")[0]
    for candidate in (folder / top, folder / f"{top}.py"):
        if candidate.exists():
            return candidate
    return None


def _entrypoint_resources(job: str, config: Config) -> tuple[float, float]:
    """The job process's own CPUs and GPUs. A single trainer learns in it (its threads, and its GPU), a producer
    without ``ray_tasks`` reads in it; Ray actors (``producer.ray_tasks``, ``training.workers``, Serve's
    replicas) ask for their own, and the process that only coordinates them holds nothing back from them."""
    if job == "train" and config.training.workers == 1:
        return config.training.threads, 1 if config.training.device == "cuda" else 0
    return (1, 0) if job == "produce" and not config.producer.ray_tasks else (0, 0)


class JobServer:
    """A Ray job server, every refusal turned into a :class:`ClusterError`."""

    def __init__(self, address: str):
        self.address = address
        token, self.token_source = cluster_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        from ray.job_submission import JobSubmissionClient

        self.client = self._call(lambda: JobSubmissionClient(address, headers=headers))

    def _call(self, request: Callable[[], Any]) -> Any:
        from ray.exceptions import AuthenticationError

        try:
            return request()
        except AuthenticationError as error:
            raise ClusterError(self._refusal(str(error))) from None
        except ConnectionError as error:
            raise ClusterError(f"no Ray job server answers at {self.address}: {error}") from None
        except RuntimeError as error:  # the job server's own answers: no such job, a bad runtime_env, ...
            raise ClusterError(f"the Ray job server at {self.address}: {str(error).splitlines()[0]}") from None

    def _refusal(self, message: str) -> str:
        if not self.token_source:
            return (f"the Ray job server at {self.address} wants a token and none was found (RAY_AUTH_TOKEN, "
                    "RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token): `ray get-auth-token` on the cluster's head node "
                    "prints it")
        first = message.splitlines()[0]
        return (f"the Ray job server at {self.address} refused the token from {self.token_source} ({first}): "
                "it is not this cluster's; `ray get-auth-token` on the head node prints the right one")

    def submit(self, spec: JobSpec) -> str:
        return self._call(lambda: self.client.submit_job(
            entrypoint=spec.entrypoint, runtime_env=spec.runtime_env, metadata=spec.metadata,
            entrypoint_num_cpus=spec.num_cpus or None, entrypoint_num_gpus=spec.num_gpus or None))

    def list(self) -> list:
        return self._call(self.client.list_jobs)

    def info(self, job_id: str):
        return self._call(lambda: self.client.get_job_info(job_id))

    def logs(self, job_id: str) -> str:
        return self._call(lambda: self.client.get_job_logs(job_id))

    def follow(self, job_id: str, out=None) -> str:
        """Print the job's log as it grows (to ``out``, else to whatever ``sys.stdout`` is now) until the job
        ends; its final status."""
        out = out or sys.stdout

        async def tail() -> None:
            async for lines in self.client.tail_job_logs(job_id):
                out.write(lines)
                out.flush()

        self._call(lambda: asyncio.run(tail()))
        return self.wait(job_id, timeout_s=30)

    def wait(self, job_id: str, timeout_s: float) -> str:
        """The job's status once it has ended; raises :class:`ClusterError` after ``timeout_s``."""
        from hepstream.waiting import poll_until

        def ended() -> str | None:
            status = str(self.info(job_id).status)
            return status if status in TERMINAL else None

        try:
            return poll_until(ended, timeout_s=timeout_s, interval_s=0.5, what=f"job {job_id} still running")
        except TimeoutError as error:
            raise ClusterError(str(error)) from None

    def stop(self, job_id: str, grace_s: float) -> tuple[str, bool]:
        """Ask the job to stop (SIGTERM, then SIGKILL after its grace); its final status and whether its log
        says it stopped cleanly, i.e. before any SIGKILL."""
        self._call(lambda: self.client.stop_job(job_id))
        status = self.wait(job_id, timeout_s=grace_s + 30)
        return status, CLEAN_STOP in self.logs(job_id)

    def grace_s(self, job_id: str) -> float:
        """The stop grace the job was submitted with (Ray's default, 3 s, when it set none)."""
        env = (self.info(job_id).runtime_env or {}).get("env_vars") or {}
        return float(env.get("RAY_JOB_STOP_WAIT_TIME_S", 3))
