"""A real multi-node Ray cluster on this machine: ``ray start --head`` and worker nodes, token auth on.

Each node is its own ``ray start --block`` process with its own ports and
temporary folder, as on separate hosts; ``--block`` keeps the node's processes
under one PID, so the test stops them by that PID (never by name) and can kill
one node's raylet to lose the node the hard way, as a crashed host would.
The cluster's token is made here and passed to the nodes and to clients
through ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``, as an operator would.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from hepstream.stack.ports import free_port, port_is_free
from hepstream.waiting import poll_until

RAY = str(Path(sys.executable).with_name("ray"))
WORKER_PORTS = 40
# The GCS declares a node dead after this many failed health checks this far apart (Ray's defaults: 5 every 3 s,
# 15 s of waiting at each node the tests lose). A check of a lost node fails at once (its port is closed); a
# live one fails only past health_check_timeout_ms, left at Ray's default, so a busy machine loses no node.
HEALTH_CHECKS = '{"health_check_period_ms": 1000, "health_check_failure_threshold": 3}'


def worker_port_range(count: int, taken: set[int]) -> int:
    """The first of ``count`` free ports in 10000-19999, below the kernel's ephemeral range that
    :func:`free_port` draws the node's other ports from, so the two never overlap; not a range in ``taken``
    (another node's, whose workers may not have bound theirs yet). The range is added to ``taken``."""
    for first in random.sample(range(10000, 20000 - count, count), 50):
        if first not in taken and all(port_is_free("127.0.0.1", port) for port in range(first, first + count)):
            taken.add(first)
            return first
    raise RuntimeError(f"no {count} free ports in a row in 10000-19999")


class RayNode:
    """One ``ray start --block`` process and the Ray processes under it."""

    def __init__(self, process: subprocess.Popen, temp_dir: Path, log: Path, node_manager_port: int):
        self.process = process
        self.temp_dir = temp_dir
        self.log = log
        self.node_manager_port = node_manager_port  # how the head's node list names this node

    def raylet_pid(self) -> int:
        for pid in descendants(self.process.pid):
            if _name(pid) == "raylet":
                return pid
        raise RuntimeError(f"no raylet under ray start PID {self.process.pid}; its log: {self.log.read_text()[-2000:]}")

    def kill_raylet(self) -> None:
        """Lose the node as a crashed host would: SIGKILL its raylet, no clean stop."""
        os.kill(self.raylet_pid(), signal.SIGKILL)

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to ``ray start --block``, which stops its node's processes; whatever is left then is killed."""
        if self.process.poll() is not None:
            return
        children = descendants(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        deadline = time.monotonic() + 10
        for pid in children:
            while _name(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if _name(pid) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (children of each thread, recursively)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def _name(pid: int) -> str | None:
    """The process's command name, or None once it is gone (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
    return None if state == "Z" else name


class RayCluster:
    """A head node (dashboard and job server on 127.0.0.1) and any number of worker nodes."""

    def __init__(self, cpus_per_node: int = 2):
        # Short: Ray's socket paths under it must stay within AF_UNIX's 107 bytes (pytest's tmp_path is too long).
        self.root = Path(tempfile.mkdtemp(prefix="hs-ray-"))
        self.cpus_per_node = cpus_per_node
        self.token = secrets.token_hex(16)
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []
        self.worker_ranges: set[int] = set()

    @property
    def address(self) -> str:
        """What ``RAY_ADDRESS`` names for drivers on this machine: the GCS."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The job server's address, for ``JobSubmissionClient`` and ``hepstream submit --address``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """What a client needs in its environment to be let in: the auth mode and the token."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def _start(self, name: str, options: list[str], environment: dict[str, str] | None = None) -> RayNode:
        temp_dir = self.root / name
        temp_dir.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        ports = [free_port() for _ in range(7)]
        first_worker_port = worker_port_range(WORKER_PORTS, self.worker_ranges)
        command = [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                   "--temp-dir", str(temp_dir), "--num-cpus", str(self.cpus_per_node),
                   "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
                   "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
                   "--metrics-export-port", str(ports[4]), "--runtime-env-agent-port", str(ports[5]),
                   "--min-worker-port", str(first_worker_port),
                   "--max-worker-port", str(first_worker_port + WORKER_PORTS - 1), *options]
        env = {**os.environ, **self.client_env(), **(environment or {})}
        env.pop("RAY_ADDRESS", None)
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        return RayNode(process, temp_dir, log, ports[0])

    def start_head(self) -> RayCluster:
        self.head = self._start("head", ["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                                         "--dashboard-port", str(self.dashboard_port),
                                         "--ray-client-server-port", str(free_port()),
                                         "--system-config", HEALTH_CHECKS])
        self._wait(self._jobs_answer, f"the Ray head's job server on {self.dashboard_url} answering", self.head)
        return self

    def add_worker(self, options: list[str] = (), environment: dict[str, str] | None = None) -> RayNode:
        """One more node joining the head; ``options`` go to its ``ray start`` (say ``--resources``), and
        ``environment`` to its processes' environment (settings Ray and Serve read there)."""
        node = self._start(f"worker-{len(self.workers) + 1}", ["--address", self.address, *options], environment)
        self.workers.append(node)
        self._wait(lambda: self.alive_nodes() == 1 + len(self.workers), f"{node.temp_dir.name} joining", node)
        return node

    @staticmethod
    def _wait(probe, what: str, node: RayNode) -> None:
        def ready() -> bool:
            if node.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {node.process.returncode}")
            return probe()

        try:
            poll_until(ready, timeout_s=90, interval_s=0.5, what=f"no sign of {what}")
        except (TimeoutError, RuntimeError) as error:
            raise RuntimeError(f"{error}; the end of {node.log}:\n{node.log.read_text()[-3000:]}") from None

    def _jobs_answer(self) -> bool:
        try:
            answer = requests.get(f"{self.dashboard_url}/api/jobs/", timeout=2,
                                  headers={"Authorization": f"Bearer {self.token}"})
        except requests.RequestException:
            return False
        return answer.status_code == 200

    def _summary(self) -> list[dict]:
        answer = requests.get(f"{self.dashboard_url}/nodes?view=summary", timeout=5,
                              headers={"Authorization": f"Bearer {self.token}"})
        return answer.json()["data"]["summary"] if answer.status_code == 200 else []

    def alive_nodes(self) -> int:
        return sum(1 for node in self._summary() if node["raylet"]["state"] == "ALIVE")

    def listed(self, what: str, key: str, value: str) -> list[dict]:
        """Ray's state API: the ``what`` (actors, tasks, ...) whose ``key`` is ``value``, in any state."""
        answer = requests.get(f"{self.dashboard_url}/api/v0/{what}", timeout=10,
                              params={"detail": "true", "limit": 1000, "filter_keys": key, "filter_predicates": "=",
                                      "filter_values": value},
                              headers={"Authorization": f"Bearer {self.token}"})
        answer.raise_for_status()
        return answer.json()["data"]["result"]["result"]

    def node_id(self, node: RayNode) -> str:
        """Ray's ID of ``node`` (what ``ray.get_runtime_context().get_node_id()`` answers on it)."""
        for found in self._summary():
            if found["raylet"]["nodeManagerPort"] == node.node_manager_port:
                return found["raylet"]["nodeId"]
        raise LookupError(f"no Ray node with node manager port {node.node_manager_port}")

    def stop(self) -> None:
        for node in [*self.workers, *([self.head] if self.head else [])]:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for_nodes(cluster: RayCluster, count: int, timeout_s: float = 90) -> None:
    """Until the head counts ``count`` live nodes (a killed raylet is noticed within Ray's health-check period)."""
    poll_until(lambda: cluster.alive_nodes() == count, timeout_s=timeout_s, interval_s=0.5,
               what=f"not {count} Ray nodes alive")
