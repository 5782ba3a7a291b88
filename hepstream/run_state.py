"""The state file of a running ``hepstream run``: how ``hepstream status`` finds what the service started.

The supervisor rewrites it on every change (atomically: a reader sees the old
file or the new one, never half of one) and removes it at a clean exit, so
its absence means no service runs. A file whose supervisor PID is gone was
left by a killed supervisor: :meth:`RunState.read` treats that as no service.
It lives beside the model store, under ``<store.path>/.hepstream-run/``, with
the children's logs and the configuration they were given.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> state = RunState(pid=os.getpid(), started=0.0, config="p.yaml", bootstrap="127.0.0.1:9092", broker_pid=None,
...                  topic="t.events", model="m", store="s", manifest="s/m.jsonl", serve_url="http://127.0.0.1:8000",
...                  trainer_metrics_url="http://127.0.0.1:9100/metrics",
...                  stages=(StageState("trainer", 7, "running", 0.0, 0, None, (), "trainer.log"),))
>>> state.write(folder / "state.json")
>>> RunState.read(folder / "state.json") == state
True
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

STATE_DIR_NAME = ".hepstream-run"


def state_dir(store_path: str | Path) -> Path:
    """Where ``run`` keeps its state file, the children's logs and configuration, for a store at ``store_path``."""
    return Path(store_path) / STATE_DIR_NAME


def state_path(store_path: str | Path) -> Path:
    return state_dir(store_path) / "state.json"


def write_json_atomically(path: Path, data) -> None:
    """A reader sees the old file or the new one, never half of one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's: not ours, though it exists
        return True
    return True


@dataclass(frozen=True)
class StageState:
    """One supervised child: ``state`` is starting, running, waiting (to restart), finished, failed or stopped."""

    name: str
    pid: int | None
    state: str
    started: float | None  # Unix time the current (or last) process started
    restarts: int
    last_exit: str | None  # "exit code 3", "killed by SIGKILL"
    last_error: tuple[str, ...]  # the last lines the process wrote to stderr before it exited
    log: str  # its stderr, appended over restarts
    output: str | None = None  # its stdout of the latest start (the producer's report)


@dataclass(frozen=True)
class RunState:
    pid: int  # the supervisor's
    started: float
    config: str  # the pipeline file the user gave
    bootstrap: str
    broker_pid: int | None  # the embedded broker's, when run started one
    topic: str
    model: str
    store: str
    manifest: str
    serve_url: str
    trainer_metrics_url: str
    stages: tuple[StageState, ...]

    def stage(self, name: str) -> StageState | None:
        return next((s for s in self.stages if s.name == name), None)

    def write(self, path: Path) -> None:
        write_json_atomically(path, dataclasses.asdict(self))

    @classmethod
    def read(cls, path: Path) -> RunState | None:
        """The state of the service that runs now; ``None`` when none does (no file, or its supervisor is gone)."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise ValueError(f"{path}: not a hepstream run state file ({error})") from None
        stages = tuple(StageState(**{**s, "last_error": tuple(s["last_error"])}) for s in data.pop("stages"))
        state = cls(**data, stages=stages)
        return state if pid_alive(state.pid) else None
