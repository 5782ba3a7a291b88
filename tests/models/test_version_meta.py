"""A version's meta.json: one schema, read back as written, old files still read, bad fields named."""

import dataclasses
import doctest
import json
import re
from pathlib import Path

import jsonschema
import pytest

from hepstream.models import version_meta
from hepstream.models.store import ModelStore, StoreError
from hepstream.models.trainer_status import TrainerStatus
from hepstream.models.version_meta import VersionMeta, VersionMetaError, version_meta_schema
from tests.serve.conftest import publish_real_version

DOCS = Path(__file__).parents[2] / "docs" / "training.md"


@pytest.fixture
def store(tmp_path) -> ModelStore:
    publish_real_version(tmp_path, "m", seed=3)
    return ModelStore(tmp_path, "m")


def _rewrite(store: ModelStore, version: int, change) -> Path:
    path = store.path(version) / "meta.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return path


def test_doctest_examples_run():
    assert doctest.testmod(version_meta).failed == 0


def test_publish_fills_the_identity_and_reads_back_equal(tmp_path):
    store = ModelStore(tmp_path, "m")
    meta = VersionMeta(name="ignored", version=99, parent=4, events_seen=12, metrics={"auc": 0.75},
                       features={"flat": ["MET_pt"]}, feature_state={"count": [12]}, model={"kind": "mlp"},
                       offsets={"0": 7, "1": 5}, counters={"events_trained": 12}, workers=[{"partitions": [0]}])
    version = store.publish({"weights": [1.0]}, meta, {}, checkpoint="json")
    read = store.read_meta(version)
    assert (read.name, read.version, read.checkpoint, read.schema_version) == ("m", 1, "json", 1)
    assert read.created > 1.7e9
    assert read == dataclasses.replace(meta, name="m", version=1, created=read.created, checkpoint="json")
    assert VersionMeta.from_json(read.to_json()) == read


def test_a_file_written_before_schema_version_loads_as_version_1(store):
    def as_old_trainers_wrote(document):  # no schema_version; older still: no training or version_metrics
        for key in ("schema_version", "training", "version_metrics", "workers", "epoch", "topic"):
            del document[key]

    _rewrite(store, 1, as_old_trainers_wrote)
    meta = store.read_meta(1)
    assert (meta.schema_version, meta.version, meta.events_seen, meta.training, meta.workers) == (1, 1, 300, {}, None)
    assert store.load(1).inputs[0].name == "MET_pt"  # and it still serves


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d.update(events_seen="many"), "field 'events_seen': Input should be a valid integer, got 'many'"),
    (lambda d: d["offsets"].update({"0": 1.5}), "field 'offsets.0': Input should be a valid integer, got 1.5"),
    (lambda d: d.pop("feature_state"), "field 'feature_state': missing"),
    (lambda d: d.update(event_seen=3), "field 'event_seen': not a field of meta.json (did you mean 'events_seen'?)"),
    (lambda d: d.update(schema_version=2), "field 'schema_version': 2, but this hepstream reads version 1"),
])
def test_a_bad_meta_json_is_refused_naming_the_file_and_the_field(store, change, words):
    path = _rewrite(store, 1, change)
    with pytest.raises(StoreError) as caught:
        store.read_meta(1)
    assert str(caught.value).startswith(f"{path}: ")
    assert words in str(caught.value)


def test_every_problem_is_named_at_once():
    with pytest.raises(VersionMetaError, match=r"^field 'parent': .* got 'v1'; field 'model': missing$"):
        VersionMeta.from_json('{"features": {}, "feature_state": {}, "parent": "v1"}')


def test_the_json_schema_describes_what_the_store_writes(store):
    schema = version_meta_schema()
    assert list(schema["properties"]) == [f.name for f in dataclasses.fields(VersionMeta)]
    assert schema["required"] == ["features", "feature_state", "model"]
    assert schema["additionalProperties"] is False
    written = json.loads((store.path(1) / "meta.json").read_text())
    jsonschema.validate(written, schema)
    with pytest.raises(jsonschema.ValidationError, match="'many' is not of type 'integer'"):
        jsonschema.validate({**written, "events_seen": "many"}, schema)


def test_docs_describe_every_field():
    section = DOCS.read_text().split("### What meta.json holds")[1].split("\n#")[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)
    assert documented == [f.name for f in dataclasses.fields(VersionMeta)]


def test_trainer_status_as_dict_is_the_status_json():
    single = TrainerStatus(events_trained=10, chunks=2, duplicate_chunks=1, bad_messages=0, dead_letters=0,
                           version=3, epoch=1, offsets={0: 5}, metrics={"auc": 0.5}, last_error=None)
    assert single.as_dict() == {"events_trained": 10, "chunks": 2, "duplicate_chunks": 1, "bad_messages": 0,
                                "dead_letters": 0, "version": 3, "epoch": 1, "offsets": {0: 5},
                                "metrics": {"auc": 0.5}, "last_error": None, "store_error": None,
                                "checkpoint_failures": 0, "checkpoint_age_s": None, "events_validation": 0,
                                "validation_chunks": 0, "versions_rejected": 0}
    workers = [{"partitions": [0], "events_trained": 10}]
    assert dataclasses.replace(single, workers=workers).as_dict()["workers"] == workers
