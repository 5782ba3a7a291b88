"""The preparation pool: worker processes give the trainer exactly what its own thread gives, in order."""

import os
import signal
import subprocess
import sys
from contextlib import suppress
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from kafka.consumer.fetcher import ConsumerRecord

from hepstream import wire
from hepstream.benchmarks.core import core_trainer, kafka_records
from hepstream.models.checks import FEATURES, synthetic_events
from hepstream.models.prepare_pool import (InThread, PreparePool, block_names_of, prepare_workers, preparation,
                                           sweep_blocks)
from hepstream.models.prepare_worker import Worker
from hepstream.models.store import ModelStore
from hepstream.models.position import Replay
from hepstream.models.verdicts import Held, Refused
from hepstream.waiting import poll_until
from tests.helpers import labelled_pair, pipeline_config, process_gone, produce


def _records() -> list:
    """Good chunks of both classes, a re-sent one, bytes that are no wire message, and a chunk whose features
    are refused (no Muon branch)."""
    rng = np.random.default_rng(3)
    batches, labels = [], []
    for _ in range(10):
        batch, y = synthetic_events(rng, 400)
        batches.append(batch)
        labels.append(y)
    records = kafka_records(batches, labels)
    key, value, headers = wire.encode(wire.Chunk(wire.ChunkId("odd", "Events", 0, 2), "d", "s",
                                                 pa.record_batch({"MET_pt": [1.0, 2.0]}), 1), "lz4")
    poison = ConsumerRecord("bench", 0, -1, 11, 0, 0, b"not a key", b"not arrow", [], None, 9, 9, -1)
    refused = ConsumerRecord("bench", 0, -1, 12, 0, 0, key, bytes(value), headers, None, len(key), len(value), -1)
    resent = records[2]._replace(offset=13)
    return [*records[:4], poison, *records[4:7], resent, refused, *records[7:]]


def _groups(records: list) -> list[list]:
    return [records[i : i + 3] for i in range(0, len(records), 3)]


def _trainer(folder: Path, workers: int, **training):
    return core_trainer(folder, {"device": "cpu", "batch_size": 64, "learning_rate": 0.01, "seed": 7,
                                 "prepare_workers": workers, **training}, feature_spec=FEATURES)


def _learn(trainer, groups: list, kill_after: int | None = None, ready: bool = True) -> list:
    """Learn every group through the trainer's preparation, as its run() does; the verdicts seen, in order.
    With ``ready``, the groups are submitted once the workers have started (else the first ones may be
    prepared in this thread, as a trainer does before its workers are ready)."""
    preparer = trainer.preparation()
    try:
        if ready:
            assert preparer.wait_ready(120)
        pending = [preparer.submit(group) for group in groups]
        if kill_after is not None:
            pending[kill_after].result(60)
            os.kill(preparer.pids[0], signal.SIGKILL)
        verdicts = []
        for item in pending:
            step = item if isinstance(preparer, InThread) else item.result(120)
            trainer.learn_step(step)
            verdicts += [(type(v).__name__, v.record.offset, getattr(v, "key", None), _detail(v))
                         for v in step.verdicts]
        return verdicts
    finally:
        preparer.close()


def _detail(verdict):
    """Why a message was refused; what a held one keeps for validation."""
    if isinstance(verdict, Refused):
        return f"{type(verdict.error).__name__}: {verdict.error}"
    if isinstance(verdict, Held):
        return verdict.batch.to_pydict(), verdict.labels.dtype.name, verdict.labels.tolist()
    return None


def _state(trainer) -> tuple:
    model, meta, state, _ = trainer.checkpoint_parts()
    tensors = {k: v for k, v in model.items() if isinstance(v, torch.Tensor)}
    return tensors, state, meta.counters


def _same_state(left, right) -> None:
    (left_tensors, left_state, left_counters), (right_tensors, right_state, right_counters) = left, right
    assert left_tensors.keys() == right_tensors.keys()
    assert all(torch.equal(left_tensors[k], right_tensors[k]) for k in left_tensors)
    assert left_state == right_state and left_counters == right_counters


@pytest.mark.parametrize("training", [{"validation_fraction": 0.3}, {"class_weights": "balanced"},
                                      {"validation_fraction": 0.3, "class_weights": "balanced"}])
def test_held_chunks_and_class_weights_are_what_the_trainer_thread_gives(tmp_path, training):
    groups = _groups(_records())
    alone, pooled = _trainer(tmp_path / "thread", 0, **training), _trainer(tmp_path / "pool", 2, **training)
    verdicts = _learn(alone, groups)
    assert _learn(pooled, groups) == verdicts
    _same_state(_state(alone), _state(pooled))
    assert alone.validation.to_bytes() == pooled.validation.to_bytes()
    held = [v for v in verdicts if v[0] == "Held"]
    assert bool(held) == ("validation_fraction" in training)
    assert pooled.counters["events_validation"] == 400 * len(held)


def test_records_replayed_after_a_restart_are_skipped_and_never_reach_a_worker(tmp_path, monkeypatch):
    records = _records()
    # Were offset 1 sent to a worker, the worker would die on it and the message be refused.
    monkeypatch.setenv("HEPSTREAM_TEST_CRASH_ON_KEY", records[1].key.decode())
    trainers = _trainer(tmp_path / "thread", 0), _trainer(tmp_path / "pool", 2)
    for trainer in trainers:  # checkpointed past offset 4 while offset 2 waited in a shuffle buffer
        trainer.position.start_at({0: 0})
        trainer.position.advance(0, 4)
        trainer.position.hold(0, 2)
        trainer.replay = Replay(trainer.position)
    alone, pooled = (_learn(trainer, _groups(records)) for trainer in trainers)
    assert alone == pooled
    assert [offset for kind, offset, _, _ in pooled if kind == "Replayed"] == [0, 1, 3, 4]
    _same_state(*(_state(trainer) for trainer in trainers))


def test_with_a_shuffle_buffer_groups_are_prepared_in_the_trainer_thread(tmp_path):
    assert isinstance(_trainer(tmp_path, 2, shuffle_chunks=8).preparation(), InThread)


def test_the_pool_learns_what_the_trainer_thread_learns_bit_for_bit(tmp_path):
    groups = _groups(_records())
    alone, pooled = _trainer(tmp_path / "thread", 0), _trainer(tmp_path / "pool", 2)
    assert _learn(alone, groups) == _learn(pooled, groups)
    _same_state(_state(alone), _state(pooled))
    assert pooled.counters["duplicate_chunks"] == 1 and pooled.counters["bad_messages"] == 2
    assert pooled.counters["events_trained"] == 10 * 400


def test_groups_prepared_in_the_trainer_thread_until_the_workers_start_change_nothing(tmp_path):
    groups = _groups(_records())
    alone, pooled = _trainer(tmp_path / "thread", 0), _trainer(tmp_path / "pool", 2)
    assert _learn(alone, groups) == _learn(pooled, groups, ready=False)
    _same_state(_state(alone), _state(pooled))


def test_the_verdicts_name_what_was_refused_and_why(tmp_path):
    verdicts = _learn(_trainer(tmp_path, 2), _groups(_records()))
    kinds = {offset: (kind, reason) for kind, offset, _, reason in verdicts}
    assert kinds[11][0] == "Refused" and kinds[11][1].startswith("WireError: ")
    assert kinds[12] == ("Refused", "FeatureError: branch 'Muon_pt': missing; the batch has ['MET_pt']")
    assert kinds[13] == ("Duplicate", None)
    assert [offset for _, offset, _, _ in verdicts] == [*range(4), 11, 4, 5, 6, 13, 12, 7, 8, 9]


def test_a_killed_worker_is_replaced_and_its_groups_are_prepared_once(tmp_path):
    groups = _groups(_records()) * 1
    alone, pooled = _trainer(tmp_path / "thread", 0), _trainer(tmp_path / "pool", 2)
    assert _learn(alone, groups) == _learn(pooled, groups, kill_after=0)
    _same_state(_state(alone), _state(pooled))


def test_a_message_that_kills_workers_is_refused_alone_and_training_goes_on(tmp_path, monkeypatch):
    # HEPSTREAM_TEST_CRASH_ON_KEY: a worker started now exits (code 70) when it decodes this key.
    records = _records()
    killer = next(r for r in records if r.offset == 5)
    monkeypatch.setenv("HEPSTREAM_TEST_CRASH_ON_KEY", killer.key.decode())
    alone, pooled = _trainer(tmp_path / "thread", 0), _trainer(tmp_path / "pool", 2)
    expected = [(kind, offset, key, reason) if offset != 5 else
                ("Refused", 5, None, "WorkerCrash: preparing message bench[0]@5 killed a preparation worker "
                 "process (exit code 70)") for kind, offset, key, reason in _learn(alone, _groups(records))]
    assert _learn(pooled, _groups(records)) == expected
    assert pooled.counters["bad_messages"] == 3 and pooled.counters["events_trained"] == 9 * 400


def _worker_pids(trainer_pid: int) -> list[int]:
    """The trainer's children that are preparation workers, read from /proc."""
    children = [int(pid) for path in Path(f"/proc/{trainer_pid}/task").glob("*/children")
                for pid in path.read_text().split()]
    return [pid for pid in children if b"prepare_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]


@pytest.mark.integration
def test_a_trainer_killed_by_sigkill_leaves_no_worker_and_no_block(broker, unique_topic, tmp_path):
    config = pipeline_config(unique_topic, labelled_pair(tmp_path, 3000, 3000, seed=4), tmp_path / "store",
                             producer={"max_chunk_events": 100},
                             training={"prepare_workers": 2, "chunks_per_step": 2, "group_wait_s": 0.0,
                                       "epochs": 1000})  # work until killed, once the workers are ready too
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    produce(config, broker.bootstrap)
    trainer = subprocess.Popen([sys.executable, "-m", "hepstream", "train", "--config", str(config_path),
                                "--bootstrap", broker.bootstrap], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll_until(ModelStore(config.store.path, config.model.name).latest, timeout_s=120, what="no checkpoint")
        workers = poll_until(lambda: _worker_pids(trainer.pid), timeout_s=10, what="no preparation worker")
        poll_until(lambda: block_names_of(trainer.pid), timeout_s=60, what="no block named after the trainer")
        assert len(workers) == 2
    finally:
        trainer.kill()
        trainer.wait()
    assert all(process_gone(pid, timeout_s=10) for pid in workers)
    poll_until(lambda: not block_names_of(trainer.pid), timeout_s=10, what=f"blocks of {trainer.pid} in /dev/shm")


def test_a_new_pool_unlinks_the_blocks_of_trainers_no_longer_running():
    ended = subprocess.Popen(["true"])
    ended.wait()
    left, alive = (SharedMemory(f"hepstream-prepare-{pid}-test", create=True, size=8) for pid in (ended.pid, os.getpid()))
    try:
        sweep_blocks()
        assert block_names_of(ended.pid) == [] and alive.name in block_names_of(os.getpid())
    finally:
        alive.unlink()
        with suppress(FileNotFoundError):
            left.unlink()


def test_shared_memory_blocks_are_unlinked_when_the_pool_closes(tmp_path):
    trainer = _trainer(tmp_path, 2)
    pool = trainer.preparation()
    assert isinstance(pool, PreparePool) and pool.wait_ready(120)
    steps = [pool.submit(group).result(120) for group in _groups(_records())]
    names = pool.block_names
    assert names and all(Path("/dev/shm", name).exists() for name in names)
    pool.close()
    assert not any(Path("/dev/shm", name).exists() for name in names)
    assert sum(len(step.group.labels) for step in steps if step.group is not None) == 10 * 400  # still readable


def test_any_error_preparing_a_message_in_a_worker_refuses_it_under_its_own_name(monkeypatch):
    import hepstream.models.prepare_worker as worker_module

    def explodes(*args):
        raise RuntimeError("repeats may not contain negative values")

    monkeypatch.setattr(worker_module, "prepare_chunk", explodes)
    record = _records()[0]
    answer, parts = Worker(FEATURES, 2, None).extract(0, [(record.key, record.value, record.headers)])
    assert answer["messages"] == [{"key": record.key.decode(), "error": {
        "kind": "RuntimeError", "message": "repeats may not contain negative values"}}]
    assert parts == []


def test_prepare_workers_is_the_cores_left_by_default_and_zero_is_the_trainer_thread(tmp_path):
    assert prepare_workers(None) == max(1, len(os.sched_getaffinity(0)) - 1)
    assert prepare_workers(3) == 3
    trainer = _trainer(tmp_path, 0)
    assert isinstance(preparation(trainer.config, set(), None, print, trainer.replay, trainer.class_weights),
                      InThread)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_pool_learns_what_the_trainer_thread_learns(tmp_path):
    groups = _groups(_records())
    alone = core_trainer(tmp_path / "thread", {"device": "cuda", "prepare_workers": 0, "seed": 7}, feature_spec=FEATURES)
    pooled = core_trainer(tmp_path / "pool", {"device": "cuda", "prepare_workers": 2, "seed": 7}, feature_spec=FEATURES)
    assert _learn(alone, groups) == _learn(pooled, groups)
    assert _state(alone)[1] == _state(pooled)[1]
