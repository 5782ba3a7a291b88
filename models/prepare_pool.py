"""Groups of messages prepared in worker processes, handed to the training loop in shared memory, in order.

Decoding Arrow, checking the batch and extracting features hold the GIL for much of their time, so more
threads do not make them faster (docs/training.md): ``training.prepare_workers`` processes do them
instead (:mod:`~hepstream.models.prepare_worker`). The read-ahead thread submits each polled group with
its records' bytes and gets a :class:`Pending` at once; the trainer takes the groups in submission order,
so what a step learns and which offsets a checkpoint records are what the trainer's own thread gives.

What stays sequential is decided here, in message order, by one thread: which chunk is a duplicate (the
keys learned), the normaliser's statistics (each worker sends a batch's own moments, merged here in
message order: the same numbers as the trainer's own thread, which merges the same moments), the
class weights (each worker counts a chunk's events per class) and the shuffle generator. Records a
restarted trainer reads again (:class:`~hepstream.models.position.Replay`) are told apart as they are
submitted and never sent to a worker; a chunk of the validation slice is checked by its worker and
decoded again here, the trainer keeping its batch (few are held). The worker then lays the rows out with those statistics into a shared memory block
lent by this process; no array is pickled. A worker that dies is replaced and its unfinished groups are
sent again from their bytes: nothing is lost, and nothing counts twice, since nothing is decided twice.
Until its workers have started (their imports take most of a second), the pool prepares each group in
the calling thread as ``training.prepare_workers: 0`` does, while no group is in the workers' hands:
a trainer does not wait for its workers, and the order of decisions stays the order of messages.
A worker has one request at a time, so the one it died on is known; when that was a group's extraction,
its messages are extracted again one by one (``probe``) to find the one that kills, which is refused
naming its offset, and the group goes on without it: a poison message never stops training.

Nothing outlives a trainer killed by SIGKILL: workers are started from the pool's own thread and ask the
kernel for SIGTERM when it ends (:func:`~hepstream.supervisor.terminate_with_parent`), besides ending when
their request pipe closes; blocks are named after the trainer's PID, unlinked by Python's resource tracker
when the trainer dies, and any a dead trainer left anyway (its tracker killed too) are unlinked by the
next pool that starts on the machine (:func:`sweep_blocks`).
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import subprocess
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

from hepstream import wire
from hepstream.config import Config
from hepstream.models.labels import chunk_labels
from hepstream.models.learner import Group, Preparation
from hepstream.models.position import Replay
from hepstream.models.preparation import Rows, checked_labels
from hepstream.models.prepare_protocol import block_bytes, block_rows, receive, records_message, send
from hepstream.models.shuffle import ClassWeights
from hepstream.models.validation import in_slice
from hepstream.models.verdicts import Duplicate, Held, Ok, Refused, Replayed, Step
from hepstream.supervisor import describe_exit

log = logging.getLogger(__name__)

_DEATHS = 3  # a group that killed a worker this often, no one message of it to blame, stops the trainer
_SHM = Path("/dev/shm")
_BLOCK_PREFIX = "hepstream-prepare-"
_SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def prepare_workers(setting: int | None) -> int:
    """``training.prepare_workers`` resolved: as set, or the cores this process may use minus one (at least 1),
    the one left to the training step."""
    if setting is not None:
        return setting
    return max(1, len(os.sched_getaffinity(0)) - 1)


class PreparedError(Exception):
    """An error a worker raised preparing a message; its class carries the original's name, so the
    dead-letter reason reads as it does when the trainer's own thread prepares."""


_ERROR_CLASSES: dict[str, type[PreparedError]] = {}


def prepared_error(kind: str, message: str) -> PreparedError:
    if kind not in _ERROR_CLASSES:
        _ERROR_CLASSES[kind] = type(kind, (PreparedError,), {"__module__": __name__})
    return _ERROR_CLASSES[kind](message)


class Pending:
    """A group submitted to the pool; :meth:`result` gives its :class:`Step` once its rows are laid out."""

    def __init__(self):
        self._ready = threading.Event()
        self._step: Step | None = None
        self._failure: str | None = None

    def result(self, timeout_s: float | None) -> Step | None:
        """The step, or None if not ready within ``timeout_s``; raises when the pool could not prepare it."""
        if not self._ready.wait(timeout_s):
            return None
        if self._failure is not None:
            raise RuntimeError(self._failure)
        return self._step

    def resolve(self, step: Step | None, failure: str | None = None) -> None:
        self._step, self._failure = step, failure
        self._ready.set()


class InThread:
    """``training.prepare_workers: 0``: each group prepared by ``prepare`` in the read-ahead thread itself."""

    depth = 2

    def __init__(self, prepare: Callable[[list], Step], known: set[str], replay: Replay):
        self.submit = prepare
        self._known = known
        self._replay = replay

    def rewind(self) -> None:
        """A new epoch reads every record again: none is a duplicate or replayed any more."""
        self._known.clear()
        self._replay.clear()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


_UNLINKED: list[SharedMemory] = []


def block_names_of(pid: int) -> list[str]:
    """The shared memory blocks that the trainer of process ``pid`` made and were not unlinked."""
    return sorted(path.name for path in _SHM.glob(f"{_BLOCK_PREFIX}{pid}-*"))


def sweep_blocks() -> None:
    """Unlink the blocks of trainers no longer running (killed with their resource tracker)."""
    for path in _SHM.glob(f"{_BLOCK_PREFIX}*-*"):
        pid = path.name.removeprefix(_BLOCK_PREFIX).split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            log.warning("unlinking shared memory block %s left by a trainer that ended (process %s)", path.name, pid)
            path.unlink(missing_ok=True)


class _Blocks:
    """Shared memory blocks this process creates, lends to one group at a time, and unlinks at the end.

    A block comes back when the last array on it is gone (the trainer dropped the group), so a group
    kept longer (a shuffle buffer) keeps its rows; a new block is made when none free is large enough.
    """

    def __init__(self):
        self._all: list[SharedMemory] = []
        self._free: deque[SharedMemory] = deque()  # appended to by finalizers, in whichever thread drops a group
        self._released = False

    def lend(self, rows: int, width: int, weights: bool) -> tuple[str, Rows]:
        size = block_bytes(rows, width, weights)
        block = None
        for _ in range(len(self._free)):
            candidate = self._free.popleft()
            if candidate.size >= size:
                block = candidate
                break
            self._free.append(candidate)
        if block is None:
            block = SharedMemory(f"{_BLOCK_PREFIX}{os.getpid()}-{secrets.token_hex(6)}", create=True,
                                 size=max(size, 1))
            self._all.append(block)
        base = np.frombuffer(block.buf, np.uint8)
        weakref.finalize(base, self._returned, block).atexit = False
        return block.name, block_rows(base, rows, width, weights)

    def _returned(self, block: SharedMemory) -> None:
        # Once released, the block is kept, unlinked, to the end of the process: closed here, while the last
        # array on it is still being freed, its mapping would refuse (BufferError).
        (_UNLINKED if self._released else self._free).append(block)

    @property
    def names(self) -> list[str]:
        return [block.name for block in self._all]

    def release(self) -> None:
        """Unlink every block; a block whose rows the trainer still holds stays mapped until they are gone."""
        self._released = True
        for block in self._all:
            block.unlink()
            try:
                block.close()
            except BufferError:
                pass  # arrays on it are alive: the mapping goes with them


class _Process:
    """One worker process, its requests, and a thread writing them so that the collector never waits on a pipe.

    A worker has one request at a time (``working``: the one it dies on, if it dies); the others wait here.
    An ``urgent`` one (a group's layout, once its extraction is done) goes first: it is what the trainer
    waits for, while an extraction only feeds the queue.
    """

    def __init__(self, arguments: list[str]):
        requests_read, self._requests_write = os.pipe()
        self._answers_read, answers_write = os.pipe()
        environment = {**os.environ, **_SINGLE_THREADED,
                       "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # what this process imports
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hepstream.models.prepare_worker", str(requests_read), str(answers_write),
             str(os.getpid()), *arguments], pass_fds=(requests_read, answers_write), stdin=subprocess.DEVNULL,
            env=environment)
        os.close(requests_read)
        os.close(answers_write)
        self.answers = Connection(self._answers_read, writable=False)
        self._requests = Connection(self._requests_write, readable=False)
        self.working: tuple[int, str] | None = None  # (task, op) of the request sent and not yet answered
        self._waiting: tuple[deque, deque] = deque(), deque()  # urgent, then the others; each in order
        self._outbox: queue.Queue = queue.Queue()
        self._writer = threading.Thread(target=self._write, name=f"hepstream-prepare-{self.process.pid}", daemon=True)
        self._writer.start()

    def post(self, header: dict, parts: list[bytes], urgent: bool = False) -> None:
        self._waiting[0 if urgent else 1].append((header, parts))
        if self.working is None:
            self.next()

    def next(self) -> None:
        """The worker answered (or is new): send it the next request waiting, if any."""
        self.working = None
        for waiting in self._waiting:
            if waiting:
                header, parts = waiting.popleft()
                self.working = (header["task"], header["op"])
                self._outbox.put((header, parts))
                return

    def _write(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                send(self._requests, *message)
            except OSError:  # the worker died: the collector sees its answers end and replaces it
                return

    def close(self, timeout_s: float = 10.0) -> None:
        """End the worker: its pipe closes, it returns; killed if it does not within ``timeout_s``."""
        self._outbox.put(None)
        self._writer.join(timeout_s)
        self._requests.close()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.answers.close()


@dataclass(eq=False)
class _Task:
    """A group in the pool: its records, its requests (kept to send again), and what came back."""

    id: int
    records: list
    extract: tuple[dict, list[bytes]] | None = None  # the request of the messages sent, see extract_sent
    pending: Pending = field(default_factory=Pending)
    worker: _Process | None = None
    answer: dict | None = None
    moments: list[bytes] | None = None
    layout: tuple[dict, list[bytes]] | None = None
    step: Step | None = None
    deaths: int = 0
    killers: dict[int, Exception] = field(default_factory=dict)  # index of a message that killed a worker -> why
    probing: deque[int] | None = None  # messages still to extract alone, looking for the one that kills
    replayed: frozenset[int] = frozenset()  # messages dealt with before a restart: never sent to a worker

    def sent(self) -> list[int]:
        """The indices of the messages a worker extracts, in order."""
        return [i for i in range(len(self.records)) if i not in self.killers and i not in self.replayed]

    def extract_sent(self) -> None:
        self.extract = _extract_request(self.id, [self.records[i] for i in self.sent()])


def _extract_request(task_id: int, records: list) -> tuple[dict, list[bytes]]:
    described, parts = records_message(records)
    return {"op": "extract", "task": task_id, "records": described}, parts


_REWIND = object()  # in the decision order: the epoch ended, forget the keys learned


class PreparePool:
    """``workers`` preparation processes behind :meth:`submit`, deciding in message order (see the module)."""

    def __init__(self, config: Config, workers: int, known: set[str], ahead: Preparation,
                 prepare: Callable[[list], Step], replay: Replay, class_weights: ClassWeights):
        self._prepare = prepare  # in the calling thread, until the workers are ready
        self._arguments = [config.features.model_dump_json(), str(config.model.classes),
                           config.dataset.label_branch or ""]
        self._classes, self._label_branch = config.model.classes, config.dataset.label_branch
        self._validation_fraction = config.training.validation_fraction
        self._replay = replay
        self._class_weights = class_weights
        self._workers = workers
        self.depth = workers + 1  # groups queued for the trainer, besides the one it learns
        self._known = known
        self._ahead = ahead
        self._blocks = _Blocks()
        self._lock = threading.Lock()
        self._tasks: dict[int, _Task] = {}
        self._order: deque = deque()  # tasks (and rewinds) waiting for their decision, in message order
        self._next_id = 0
        self._processes: list[_Process] = []
        self._started = threading.Event()
        self._ready = threading.Event()  # every worker started has said so
        self._readied = 0
        self._closed = threading.Event()
        # The workers are started, replaced and ended by this thread, the parent whose end they follow.
        self._collector = threading.Thread(target=self._collect, name="hepstream-prepare-collector", daemon=True)
        self._collector.start()

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (a test kills one)."""
        self._started.wait()
        with self._lock:
            return [p.process.pid for p in self._processes]

    @property
    def block_names(self) -> list[str]:
        return self._blocks.names

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until the workers have started, so that groups submitted from now on go to them."""
        return self._ready.wait(timeout_s)

    def submit(self, records: list) -> Pending:
        """Send a group's records to the least busy worker; the :class:`Pending` resolves to its step."""
        records = list(records)
        if not self._ready.is_set():
            with self._lock:
                alone = not self._order  # nothing undecided in the workers' hands: this group is next in order
            if alone:
                pending = Pending()
                pending.resolve(self._prepare(records))
                return pending
        self._started.wait()
        # Decided now, in the order of the submissions and rewinds, as the trainer's own thread decides it.
        replayed = frozenset(i for i, r in enumerate(records) if self._replay.done(r.partition, r.offset))
        with self._lock:
            task = _Task(self._next_id, records, replayed=replayed)
            task.extract_sent()
            self._next_id += 1
            self._tasks[task.id] = task
            self._order.append(task)
            self._assign(task, min(self._processes, key=self._load))
        return task.pending

    def rewind(self) -> None:
        """The epoch ended after the groups submitted so far: their keys are forgotten once they are decided,
        and no record is replayed any more."""
        self._replay.clear()
        with self._lock:
            self._order.append(_REWIND)
            self._decide()

    def close(self) -> None:
        """End the workers, fail what is still pending, and unlink every shared memory block; once."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._collector.join()
        with self._lock:
            for task in self._tasks.values():
                task.pending.resolve(None, "the preparation pool was closed")
            self._tasks.clear()
        self._blocks.release()

    def _load(self, process: _Process) -> int:
        return sum(task.worker is process for task in self._tasks.values())

    def _assign(self, task: _Task, process: _Process) -> None:
        task.worker = process
        process.post(*task.extract)
        if task.layout is not None:
            process.post(*task.layout)

    def _collect(self) -> None:
        sweep_blocks()
        with self._lock:
            self._processes = [_Process(self._arguments) for _ in range(self._workers)]
        self._started.set()
        try:
            while not self._closed.is_set():
                with self._lock:
                    answers = {p.answers: p for p in self._processes}
                for conn in wait(list(answers), timeout=0.1):
                    process = answers[conn]
                    try:
                        header, parts = receive(conn)
                    except (EOFError, OSError):
                        self._replace(process)
                        continue
                    with self._lock:
                        if header["op"] == "ready":
                            self._readied += 1
                            if self._readied >= self._workers:
                                self._ready.set()
                            continue
                        self._answered(header, parts)
                        process.next()
        finally:
            with self._lock:
                for process in self._processes:
                    process.close()

    def _answered(self, header: dict, parts: list[bytes]) -> None:
        task = self._tasks.get(header["task"])
        if task is None:
            return
        if header["op"] == "probed":  # that message alone did not kill the worker
            task.probing.popleft()
            self._probe_next(task)
        elif header["op"] == "extracted":
            if task.answer is None:  # a replacement's second answer is the same: the first one stands
                task.answer, task.moments = header, parts
                self._decide()
        else:
            del self._tasks[task.id]
            task.pending.resolve(task.step)

    def _replace(self, dead: _Process) -> None:
        """A worker died: start another and send it the dead one's unfinished groups again, from their bytes;
        the request it died on is blamed (:meth:`_blame`)."""
        how = describe_exit(dead.process.wait())
        dead.close()
        with self._lock:
            if self._closed.is_set():
                return
            process = _Process(self._arguments)
            self._processes[self._processes.index(dead)] = process
            log.warning("preparation worker %d ended (%s); started %d instead", dead.process.pid, how,
                        process.process.pid)
            culprit = dead.working
            for task in [t for t in self._tasks.values() if t.worker is dead]:
                if culprit is not None and culprit[0] == task.id:
                    self._blame(task, culprit[1], process, how)
                elif task.probing is not None:
                    task.worker = process
                    self._probe_next(task)
                else:
                    self._assign(task, process)

    def _blame(self, task: _Task, op: str, process: _Process, how: str) -> None:
        """The worker died on this task's request ``op``. Dying on a message alone refuses that message; on
        the group's extraction, its messages are extracted alone, one by one, to find the one at fault."""
        task.worker = process
        if op == "probe":
            index = task.probing.popleft()
            task.killers[index] = prepared_error(
                "WorkerCrash", f"preparing message {_where([task.records[index]])} killed a preparation worker "
                f"process ({how})")
            self._probe_next(task)
            return
        task.deaths += 1
        if task.deaths >= _DEATHS:
            del self._tasks[task.id]
            task.pending.resolve(None, f"preparing messages {_where(task.records)} killed {task.deaths} worker "
                                 f"processes, though each of them alone did not")
        elif op == "extract":
            task.probing = deque(task.sent())
            self._probe_next(task)
        else:
            self._assign(task, process)

    def _probe_next(self, task: _Task) -> None:
        """Extract the next suspect alone; with none left, extract the group again without its killers."""
        if task.probing:
            header, parts = _extract_request(task.id, [task.records[task.probing[0]]])
            task.worker.post({**header, "op": "probe"}, parts)
            return
        task.probing = None
        task.extract_sent()
        self._assign(task, task.worker)

    def _decide(self) -> None:
        """Decide every group whose answer is in, in message order (under the lock)."""
        while self._order:
            head = self._order[0]
            if head is _REWIND:
                self._known.clear()
            elif head.answer is None:
                return
            elif head.id in self._tasks:
                self._decide_group(head)
            self._order.popleft()

    def _decide_group(self, task: _Task) -> None:
        verdicts, kept, keys, moments = [], [], set(), iter(task.moments)
        answers = dict(zip(task.sent(), enumerate(task.answer["messages"])))  # index -> (place at worker, answer)
        for index, record in enumerate(task.records):
            if index in task.replayed:
                verdicts.append(Replayed(record))
                continue
            if index in task.killers:
                verdicts.append(Refused(record, task.killers[index]))
                continue
            place, answer = answers[index]
            statistics = next(moments) if "events" in answer else None
            key = answer["key"]
            if key is None:
                verdicts.append(Refused(record, prepared_error(**answer["error"])))
            elif key in self._known or key in keys:
                verdicts.append(Duplicate(record, key))
            elif "error" in answer:
                verdicts.append(Refused(record, prepared_error(**answer["error"])))
            elif in_slice(key, self._validation_fraction):
                keys.add(key)
                verdicts.append(self._held(record, key))
            else:
                keys.add(key)
                verdicts.append(Ok(record, key))
                kept.append((place, answer, statistics))
        self._known.update(keys)
        if not kept:
            del self._tasks[task.id]
            task.pending.resolve(Step(verdicts, None))
            return
        features, rng = self._ahead
        for _, answer, statistics in kept:
            features.note_jagged(frozenset(answer["jagged"]))
            if statistics:
                features.moments.merge(*np.frombuffer(statistics, np.float64).reshape(3, -1))
        order = rng.permutation(sum(answer["events"] for _, answer, _ in kept))
        state = {"features": features.state_dict(), "rng": rng.bit_generator.state}
        weights = any(answer["weights"] for _, answer, _ in kept)
        per_class = b""
        if self._class_weights.mode != "none":  # counted in message order, as ClassWeights.weigh counts
            per_class = self._class_weights.count([np.asarray(answer["classes"]) for _, answer, _ in kept]).tobytes()
            weights = True
        name, rows = self._blocks.lend(len(order), features.n_features, weights)
        moments = features.moments
        normalised = np.concatenate([moments.count, moments.mean, moments.m2]).tobytes() if features.spec.normalize else b""
        task.layout = ({"op": "layout", "task": task.id, "keep": [place for place, _, _ in kept], "block": name,
                        "weights": weights}, [normalised, order.tobytes(), per_class])
        task.step = Step(verdicts, Group(rows.x, rows.labels, rows.weights, state))
        task.worker.post(*task.layout, urgent=True)


    def _held(self, record, key: str) -> Held:
        """A chunk of the validation slice, which its worker has checked: decoded here, since what is held is the
        batch itself, and a worker hands back no object (few chunks are held: ``training.validation_fraction``)."""
        chunk = wire.decode(record.key, record.value, record.headers)
        return Held(record, key, chunk.batch, checked_labels(chunk_labels(chunk, self._label_branch), self._classes))


def _where(records: list) -> str:
    return ", ".join(f"{r.topic}[{r.partition}]@{r.offset}" for r in records)


def preparation(config: Config, known: set[str], ahead: Preparation, prepare: Callable[[list], Step],
                replay: Replay, class_weights: ClassWeights, workers: int | None = None) -> InThread | PreparePool:
    """How :meth:`StreamTrainer.run` prepares its groups: ``prepare`` in the read-ahead thread when
    ``training.prepare_workers`` (or ``workers``, when given) is 0, else a pool of that many processes.

    With a shuffle buffer (``training.shuffle_chunks``) the groups are prepared in the read-ahead thread
    whatever the setting: the buffer holds each chunk's extracted features, objects a worker cannot hand
    back without pickle, and that are only normalised when the chunk is drawn.
    """
    workers = prepare_workers(config.training.prepare_workers if workers is None else workers)
    if workers and config.training.shuffle_chunks:
        log.info("training.shuffle_chunks is set: groups are prepared in the read-ahead thread, not in %d "
                 "preparation workers (training.prepare_workers)", workers)
        workers = 0
    if workers == 0:
        return InThread(prepare, known, replay)
    return PreparePool(config, workers, known, ahead, prepare, replay, class_weights)
