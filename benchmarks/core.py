"""``hepstream bench core``: the trainer core, without broker or Ray, on the CPU and on CUDA, in one run.

What a GPU adds to online training is measured on the GPU node itself, where
no broker or Ray may run: NanoAOD-like events are generated there and encoded
as Kafka records of wire messages in memory, which a :class:`StreamTrainer`
learns with its own methods, as :meth:`StreamTrainer.run` does once records
are polled: each group of ``chunks_per_step`` messages is submitted from a
second thread, as :mod:`hepstream.models.read_ahead` does, to the trainer's
preparation (decode, check, extract features, lay out a shuffled group: the
pool of ``training.prepare_workers`` processes, :mod:`hepstream.models.prepare_pool`),
while ``learn_step`` runs the test-then-train step on the groups in order. Each run is also measured on the
same events as feature matrices already in memory, the ceiling of its device.

A run is one model kind on one device: the CPU with the trainer's default
single torch thread (``cpu``), the CPU with one thread per core
(``cpu_all``), CUDA, CUDA with mixed precision (``cuda_amp``), and CUDA
replaying captured steps (``cuda_graphs``), at each batch size asked for.
JSON keys: ``runs`` (one object per run: ``core_events_per_s``,
``inmemory_events_per_s``, ``ratio_vs_inmemory``), ``prepare_events_per_s``
(preparation alone, one thread: the in-thread path's ceiling whatever the device),
``prepare_events_per_s_by_workers`` (preparation alone in a pool of 1, 2 and, where
there are the cores, 4, 8 or 16 worker processes), ``prepare_scaling`` (the best
pool over the pool of one), and
per model kind ``<kind>_cuda_speedup``: the best CUDA run's core rate over
the best CPU run's.
"""

from __future__ import annotations

import collections
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hepstream.benchmarks.common import rate, run_for, scratch_folder
from hepstream.benchmarks.workload import CHUNK_EVENTS, features, labelled_batches, learn_in_memory, shuffled_matrix

_KINDS = ("mlp", "deepsets")
_CHUNKS_PER_STEP = 4


def add_arguments(parser) -> None:
    parser.add_argument("--events", type=int, default=200_000, help="events per class (default 200000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="longest timed stretch of each measurement (default 4)")
    parser.add_argument("--batch-sizes", default="512,4096", help="comma-separated minibatch sizes (default 512,4096)")


def run(args) -> dict:
    import torch

    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    with scratch_folder("core") as tmp:
        folder = Path(tmp)
        batches, labels = _mixed_batches(folder, args)
        groups = _record_groups(batches, labels, args.events)
        result = {
            "events": 2 * args.events, "torch": torch.__version__, "cpu_cores": os.cpu_count(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "prepare_events_per_s": _measure_prepare(core_trainer(folder / "prepare", {"device": "cpu"}), groups,
                                                     args.seconds),
            "prepare_events_per_s_by_workers": {
                workers: _measure_pool(core_trainer(folder / f"pool-{workers}", {"device": "cpu"}), workers, groups,
                                       args.seconds)
                for workers in _pool_sizes()},
            "runs": [],
        }
        by_workers = result["prepare_events_per_s_by_workers"]
        result["prepare_scaling"] = round(max(by_workers.values()) / by_workers[1], 2)
        for run_index, (kind, batch_size, (name, settings)) in enumerate(
                itertools.product(_KINDS, batch_sizes, _devices())):
            trainer = core_trainer(folder / f"run-{run_index}", {**settings, "batch_size": batch_size}, kind)
            result["runs"].append(_measure_run(trainer, name, groups, batches, labels, args.seconds))
    torch.set_num_threads(1)
    for kind in _KINDS:
        result[f"{kind}_cuda_speedup"] = _cuda_speedup(result["runs"], kind)
    return result


def _mixed_batches(folder: Path, args) -> tuple[list, list]:
    """The workload's batches in a seeded random order, which mixes the two classes in every group."""
    import numpy as np

    _, batches, labels = labelled_batches(folder, args.events, args.seed)
    order = np.random.default_rng(args.seed).permutation(len(batches))
    return [batches[i] for i in order], [labels[i] for i in order]


def _record_groups(batches, labels, events: int) -> list[list]:
    """The batches as Kafka records, in groups of ``chunks_per_step``; at least the 3 :func:`learn_records` needs."""
    records = kafka_records(batches, labels)
    groups = [records[i : i + _CHUNKS_PER_STEP] for i in range(0, len(records), _CHUNKS_PER_STEP)]
    if len(groups) < 3:  # one warm-up group, one prepared in place, one ahead
        least = 3 * _CHUNKS_PER_STEP * CHUNK_EVENTS // 2
        raise SystemExit(f"hepstream bench core: --events {events} gives {len(groups)} groups of "
                         f"{_CHUNKS_PER_STEP} x {CHUNK_EVENTS} events; 3 are needed (--events {least} or more)")
    return groups


def _devices() -> list[tuple[str, dict]]:
    """(run name, training settings) of every device this machine has."""
    import torch

    cores = os.cpu_count() or 1
    devices = [("cpu", {"device": "cpu", "threads": 1})]
    if cores > 1:
        devices.append(("cpu_all", {"device": "cpu", "threads": cores}))
    if torch.cuda.is_available():
        devices += [("cuda", {"device": "cuda"}), ("cuda_amp", {"device": "cuda", "mixed_precision": True}),
                    ("cuda_graphs", {"device": "cuda", "cuda_graphs": True})]
    return devices


def kafka_records(batches, labels) -> list:
    """Each batch as the Kafka record of its wire message (lz4 inside IPC, as the producer sends it)."""
    from kafka.consumer.fetcher import ConsumerRecord

    from hepstream import wire

    records = []
    for offset, (batch, label) in enumerate(zip(batches, labels)):
        chunk = wire.Chunk(wire.ChunkId(f"bench-{offset}", "Events", 0, batch.num_rows), "bench", "memory", batch,
                           int(label[0]))
        key, value, headers = wire.encode(chunk, "lz4")
        records.append(ConsumerRecord("bench", 0, -1, offset, 0, 0, key, bytes(value), headers, None,
                                      len(key), len(value), -1))
    return records


def core_trainer(folder: Path, training: dict, kind: str = "mlp", feature_spec=None):
    """A :class:`StreamTrainer` (of the workload's features unless given), never connected: it is fed
    records directly."""
    from hepstream.config import config_from_dict
    from hepstream.models.trainer import StreamTrainer

    config = config_from_dict({
        "dataset": {"name": "bench"}, "features": (feature_spec or features()).model_dump(mode="json"),
        "model": {"name": "bench", "kind": kind}, "store": {"path": str(folder)},
        # No validation slice: every record is learned, so the figures are learning throughput alone.
        "training": {"chunks_per_step": _CHUNKS_PER_STEP, "dead_letter": False, "validation_fraction": 0, **training},
    })
    return StreamTrainer(config, "127.0.0.1:9")


def learn_records(trainer, groups: list, seconds: float) -> tuple[int, float]:
    """Learn groups of records as :meth:`StreamTrainer.run` does once they are polled: each group submitted
    to the trainer's preparation from a second thread while earlier ones learn (``learn_step``), in order.
    The first group warms up, untimed; stops early after ``seconds``. Returns (events learned, seconds)."""
    from hepstream.models.prepare_pool import Pending

    preparer = trainer.preparation()
    preparer.wait_ready()  # untimed, as the first group: the workers start, the allocator and kernels warm up
    first = preparer.submit(groups[0])
    trainer.learn_step(first.result(None) if isinstance(first, Pending) else first)
    return run_for(_learned_with_read_ahead(trainer, groups[1:], preparer), seconds)


def _learned_with_read_ahead(trainer, groups: list, preparer):
    """Learn each group while the next ones are prepared; yields the events of each step."""
    try:
        for step in _prepared(preparer, groups):
            trainer.learn_step(step)
            yield len(step.group.labels)
    finally:
        preparer.close()


def _prepared(preparer, groups):
    """The groups' steps in order, ``preparer.depth`` groups submitted ahead from a thread of its own; a None
    among ``groups`` ends an epoch there (``preparer.rewind()``, in submission order)."""
    from hepstream.models.prepare_pool import Pending

    groups = iter(groups)

    def submit(group):
        if group is None:
            preparer.rewind()
            group = next(groups)
        return preparer.submit(group)

    with ThreadPoolExecutor(1, thread_name_prefix="bench-read-ahead") as reader:
        submitted = collections.deque(reader.submit(submit, group) for group in itertools.islice(groups, preparer.depth))
        while submitted:
            item = submitted.popleft().result()
            following = next(groups, _END)
            if following is not _END:
                submitted.append(reader.submit(submit, following))
            yield item.result(None) if isinstance(item, Pending) else item


_END = object()


def _epochs(groups: list):
    """The groups again and again, each pass an epoch (None between passes), so no chunk is a duplicate."""
    while True:
        yield from groups
        yield None


def _pool_sizes() -> list[int]:
    cores = os.cpu_count() or 1
    return [1, 2, *(n for n in (4, 8, 16) if n <= cores)]


def _measure_pool(trainer, workers: int, groups, seconds: float) -> float:
    """Preparation alone in a pool of ``workers`` processes, for ``seconds`` of epochs over ``groups``, after
    one untimed group per worker (each worker started and warmed up)."""
    pool = trainer.preparation(workers)
    try:
        pool.wait_ready()
        for _ in _prepared(pool, groups[:workers]):
            pass
        pool.rewind()
        return rate(*run_for((len(step.group.labels) for step in _prepared(pool, _epochs(groups))), seconds))
    finally:
        pool.close()


def _measure_prepare(trainer, groups, seconds: float) -> float:
    """Preparation alone, on one thread: the core's ceiling whatever the device."""
    prepared = (len(trainer.prepare_messages(group, set()).group.labels) for group in groups)
    return rate(*run_for(prepared, seconds))


def _measure_run(trainer, name: str, groups, batches, labels, seconds: float) -> dict:
    """One model kind on one device: the trainer core, then the same model learning from memory."""
    from hepstream.models.learner import Learner

    core_events, core_s = learn_records(trainer, groups, seconds)
    _synchronize()
    learner = Learner(trainer.config.features, trainer.config.model, trainer.config.training)
    x, y = shuffled_matrix(learner, batches, labels)
    memory_events, memory_s = learn_in_memory(learner, x, y, _CHUNKS_PER_STEP * CHUNK_EVENTS, seconds)
    _synchronize()
    core, memory = rate(core_events, core_s), rate(memory_events, memory_s)
    training = trainer.config.training
    return {"model": trainer.config.model.kind, "device": name, "threads": training.threads,
            "batch_size": training.batch_size, "mixed_precision": training.mixed_precision,
            "core_events_per_s": core, "inmemory_events_per_s": memory, "ratio_vs_inmemory": round(core / memory, 3)}


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _cuda_speedup(runs: list[dict], kind: str) -> float | None:
    """The best CUDA run's core rate over the best CPU run's, for one model kind; None without CUDA."""
    best = {}
    for entry in runs:
        if entry["model"] == kind:
            side = "cuda" if entry["device"].startswith("cuda") else "cpu"
            best[side] = max(best.get(side, 0.0), entry["core_events_per_s"])
    return round(best["cuda"] / best["cpu"], 2) if "cuda" in best else None
