"""The producer's features end to end against the embedded broker: selections, the example consumer, failures."""

import json
import subprocess
import sys
import time
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from hepstream import wire
from hepstream.config import ConfigError, FileSpec
from hepstream.kafka import BrokerUnavailable, new_admin
from hepstream.stack.ports import free_port
from hepstream.streaming.producer import Producer
from tests.helpers import labelled_pair, pipeline_config, produce, read_topic

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "consume.py"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return labelled_pair(tmp_path_factory.mktemp("features"), 2000, 1500, seed=11)



def test_cuts_and_definitions_match_a_plain_awkward_computation(broker, unique_topic, files, tmp_path):
    dataset = {"branches": ["MET_pt", "/^Muon_(pt|eta)$/"], "exclude": ["Muon_eta"],
               "define": {"ht": "sum(Jet_pt)", "lead_mu": "max(Muon_pt)", "met2": "log(MET_pt**2)"},
               "cuts": ["1 <= nMuon <= 4", "any(Muon_pt > 20)", "all(abs(Jet_eta) < 4.7)"]}
    config = pipeline_config(unique_topic, files, tmp_path, dataset=dataset,
                             producer={"max_chunk_events": 1000, "step_size": 30_000},
                             kafka={"max_message_bytes": 30_000, "compression": "none"})  # splits chunks
    report = produce(config, broker.bootstrap)
    assert not report.failed
    chunks = [wire.decode(r.key, r.value, r.headers) for r in read_topic(broker.bootstrap, config.dataset.topic)]
    for path, _ in files:
        mine = sorted((c for c in chunks if c.source == str(path)), key=lambda c: c.id.entry_start)
        assert [c.id.entry_stop for c in mine[:-1]] == [c.id.entry_start for c in mine[1:]]  # contiguous
        got = ak.concatenate([ak.from_arrow(c.batch) for c in mine])
        e = uproot.open(str(path))["Events"].arrays()
        keep = (e.nMuon >= 1) & (e.nMuon <= 4) & ak.any(e.Muon_pt > 20, axis=1) & ak.all(abs(e.Jet_eta) < 4.7, axis=1)
        e = e[keep]
        assert got.fields == ["MET_pt", "Muon_pt", "ht", "lead_mu", "met2"]
        assert ak.to_list(got.Muon_pt) == ak.to_list(e.Muon_pt)
        np.testing.assert_allclose(got.ht, ak.sum(e.Jet_pt, axis=1), rtol=1e-6)
        np.testing.assert_allclose(got.met2, np.log(e.MET_pt**2), rtol=1e-6)
        assert 0 < len(got) < uproot.open(str(path))["Events"].num_entries
        assert report.files[[f.url for f in report.files].index(str(path))].events == len(got)


@pytest.mark.parametrize("dataset, message", [
    ({"cuts": ["any(Muon_ptt > 20)"]}, r"cut 'any\(Muon_ptt > 20\)' reads unknown branch\(es\) \['Muon_ptt'\].*'Muon_pt'"),
    ({"cuts": ["Muon_pt > 20"]}, r"Muon_pt > 20.*wrap it in any"),
])
def test_a_bad_selection_fails_before_anything_is_published(broker, unique_topic, files, tmp_path, dataset, message):
    config = pipeline_config(unique_topic, files, tmp_path, dataset=dataset)
    with pytest.raises(ConfigError, match=message):
        produce(config, broker.bootstrap)
    admin = new_admin(broker.bootstrap, config.kafka)
    try:
        assert config.dataset.topic not in admin.list_topics()  # not even created
    finally:
        admin.close()


def test_the_example_consumer_reads_a_produced_topic(broker, unique_topic, files, tmp_path):
    config = pipeline_config(unique_topic, files, tmp_path)
    report = produce(config, broker.bootstrap)
    produce(config, broker.bootstrap, [FileSpec(url=str(files[0][0]), label=1)])  # a re-sent file: same keys
    out = subprocess.run([sys.executable, str(EXAMPLE), broker.bootstrap, config.dataset.topic],
                         capture_output=True, text=True, timeout=60, check=True)
    summary = json.loads(out.stdout)
    assert summary["events"] == report.events == 3500
    assert summary["events_per_label"] == {"1": 2000, "0": 1500}
    assert summary["duplicates"] == report.files[0].chunks
    assert summary["columns"]["Muon_pt"] == "list<item: float not null>"


def test_unreachable_broker_is_a_clear_error_after_bounded_retries(files, tmp_path):
    port = free_port()
    config = pipeline_config("x", files, tmp_path, kafka={"connect_retries": 1, "connect_timeout_s": 0.5})
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=rf"cannot reach Kafka at 127.0.0.1:{port} .*after 2 attempt"):
        Producer(config, f"127.0.0.1:{port}")
    assert time.monotonic() - started < 10


def test_cli_reports_and_exits_non_zero_when_a_file_failed(broker, unique_topic, files, tmp_path):
    config = pipeline_config(unique_topic, [*files, (tmp_path / "gone.root", 0)], tmp_path)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    out = subprocess.run([sys.executable, "-m", "hepstream", "produce", "--config", str(path), "--bootstrap",
                          broker.bootstrap], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["files_ok"] == 2 and report["files_failed"] == 1 and report["events"] == 3500
    assert report["failures"] == {str(tmp_path / "gone.root"): "no such file"}
    assert "produce: done" in out.stderr and f"FAILED {tmp_path / 'gone.root'}: no such file" in out.stderr
