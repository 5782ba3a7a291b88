"""Publishing from Ray actors on a local Ray: the same topic, keys, partitions and report as one process gives."""

import argparse
import json

import pytest
import ray
import yaml

from hepstream import wire
from hepstream.cli.jobs import run_produce
from hepstream.streaming.datagen import generate_file
from hepstream.streaming.distributed import produce_on_ray
from hepstream.streaming.progress import Progress
from tests.helpers import pipeline_config, produce, read_topic

pytestmark = pytest.mark.integration

EVENTS = (3000, 2000, 2500, 1500)
CHUNK = 700  # pipeline_config's max_chunk_events; its step_size is larger than any chunk here


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    return [(generate_file(folder / f"f{i}.root", ("background", "signal")[i % 2], n, seed=40 + i), i % 2)
            for i, n in enumerate(EVENTS)]


class _Counting(Progress):
    def __init__(self):
        super().__init__()
        self.finished = []

    def file_done(self, url, error):
        super().file_done(url, error)
        self.finished.append((url, error))


def _spans_by_source(records) -> dict[str, list[tuple[int, int, int]]]:
    spans = {}
    for record in records:
        chunk = wire.decode(record.key, record.value, record.headers)
        spans.setdefault(chunk.source, []).append((chunk.id.entry_start, chunk.id.entry_stop, record.partition))
    return {source: sorted(found) for source, found in spans.items()}


def test_every_event_arrives_once_on_the_partitions_one_process_would_use(broker, unique_topic, files, tmp_path):
    config = pipeline_config(unique_topic, files, tmp_path, producer={"ray_tasks": 2, "files_in_flight": 1})
    progress = _Counting()
    report = produce_on_ray(config, broker.bootstrap, progress=progress)

    records = read_topic(broker.bootstrap, config.dataset.topic)
    assert len({r.key for r in records}) == len(records)  # each chunk once
    spans = _spans_by_source(records)
    for index, (path, _) in enumerate(files):
        found = spans[str(path)]
        assert [(start, stop) for start, stop, _ in found] == [
            (start, min(start + CHUNK, EVENTS[index])) for start in range(0, EVENTS[index], CHUNK)]
        assert [partition for start, _, partition in found] == [(index + start // CHUNK) % 3 for start, _, _ in found]

    summary = report.as_dict()
    assert summary["files_ok"] == 4 and summary["files_failed"] == 0
    assert summary["events"] == sum(EVENTS) and summary["chunks"] == len(records)
    assert summary["bytes"] == sum(len(r.value) for r in records)
    assert [(f.url, f.events) for f in report.files] == [(str(path), n) for (path, _), n in zip(files, EVENTS)]
    assert sorted(progress.finished) == sorted((str(path), None) for path, _ in files)
    assert (progress.events, progress.bytes) == (sum(EVENTS), summary["bytes"])


def test_a_corrupt_file_is_reported_and_the_others_go_on(broker, unique_topic, files, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.root"
    corrupt.write_bytes(files[0][0].read_bytes()[:5000])
    inputs = [files[1], (corrupt, 1), files[2], files[3], (tmp_path / "none-*.root", 0)]
    config = pipeline_config(unique_topic, inputs, tmp_path, producer={"ray_tasks": 2})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))

    assert run_produce(argparse.Namespace(config=path, bootstrap=broker.bootstrap)) == 1  # joins the running Ray

    summary = json.loads(capsys.readouterr().out)
    assert summary["files_ok"] == 3 and summary["files_failed"] == 2
    assert summary["events"] == sum(EVENTS[1:])
    assert set(summary["failures"]) == {str(corrupt), str(tmp_path / "none-*.root")}
    assert summary["failures"][str(tmp_path / "none-*.root")] == "no file matches this pattern"
    assert summary["failures"][str(corrupt)].startswith(("cannot open", "cannot read tree", "reading failed"))
    spans = _spans_by_source(read_topic(broker.bootstrap, config.dataset.topic))
    assert set(spans) == {str(p) for p, _ in files[1:]}


def test_a_resumed_run_resends_nothing_acknowledged_whatever_the_task_count(broker, unique_topic, files, tmp_path):
    manifest = tmp_path / "run.manifest.jsonl"
    first = produce_on_ray(pipeline_config(unique_topic, files[:2], tmp_path,
                                           producer={"ray_tasks": 2, "files_in_flight": 1, "manifest": str(manifest)}),
                           broker.bootstrap)
    assert not manifest.exists()  # each actor keeps a manifest of its own beside it
    written = {p.name for p in tmp_path.glob("run.manifest.jsonl.task-*")}  # one or both, as the actors started
    assert written and written <= {"run.manifest.jsonl.task-0", "run.manifest.jsonl.task-1"}

    config = pipeline_config(unique_topic, files, tmp_path, producer={"ray_tasks": 1, "manifest": str(manifest)})
    second = produce_on_ray(config, broker.bootstrap)
    assert second.as_dict()["chunks_skipped"] == first.as_dict()["chunks"] > 0
    assert second.events == sum(EVENTS[2:]) and not second.failed

    again = produce(config, broker.bootstrap)  # one process, same manifest family: nothing left to send
    assert again.as_dict()["chunks"] == 0
    assert again.as_dict()["chunks_skipped"] == first.as_dict()["chunks"] + second.as_dict()["chunks"]

    records = read_topic(broker.bootstrap, config.dataset.topic)
    assert len({r.key for r in records}) == len(records) == again.as_dict()["chunks_skipped"]
    assert sum(int(dict(r.headers)["events"]) for r in records) == sum(EVENTS)
