"""Nonsense in a configuration is refused before anything starts, by its dotted key, with what to write instead;
a trainer started before its producer, or without brokers, ends with one line and an exit status, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hepstream.config import ConfigError, load_config
from hepstream.stack.ports import free_port

# (YAML snippet, the dotted key at fault, a phrase of its message)
BAD_OPTIONS = [
    # sizes and counts
    ("model: {hidden: [-5]}", "model.hidden.0", "greater than or equal to 1 (got -5)"),
    ("model: {kind: deepsets, set_hidden: []}", "model.set_hidden", "at least 1 item"),
    ("model: {classes: 1}", "model.classes", "greater than or equal to 2"),
    ("kafka: {partitions: 0}", "kafka.partitions", "greater than or equal to 1 (got 0)"),
    ("features: {jagged: [{branches: [x], length: 0}]}", "features.jagged.0.length", "greater than or equal to 1"),
    ("training: {batch_size: 0}", "training.batch_size", "greater than or equal to 1"),
    ("store: {keep: 0}", "store.keep", "greater than or equal to 1"),
    ("producer: {retries: -1}", "producer.retries", "greater than or equal to 0"),
    ("producer: {max_in_flight_bytes: '0 MB'}", "producer.max_in_flight_bytes", "size must be positive"),
    ("training: {seed: -1}", "training.seed", "greater than or equal to 0"),
    # fractions and rates
    ("model: {dropout: 1.0}", "model.dropout", "less than 1"),
    ("training: {drift_delta: 1}", "training.drift_delta", "less than 1"),
    ("training: {learning_rate: 0}", "training.learning_rate", "greater than 0"),
    # timeouts and waits
    ("kafka: {connect_timeout_s: 0}", "kafka.connect_timeout_s", "greater than 0"),
    ("training: {topic_wait_s: 0}", "training.topic_wait_s", "greater than 0"),
    ("training: {group_wait_s: -1}", "training.group_wait_s", "greater than or equal to 0"),
    ("serve: {versions: {poll_interval_s: 0}}", "serve.versions.poll_interval_s", "greater than 0"),
    ("serve: {batching: {wait_timeout_s: -0.1}}", "serve.batching.wait_timeout_s", "greater than or equal to 0"),
    # ports
    ("serve: {http: {port: 0}}", "serve.http.port", "greater than or equal to 1 (got 0)"),
    ("training: {metrics_port: 70000}", "training.metrics_port", "less than or equal to 65535"),
    ("serve: {ray: {direct_ingress_port: 65535}, scaling: {replicas: 2}}", "serve.ray.direct_ingress_port",
     "past 65535: write a direct_ingress_port of at most 65532"),
    ("serve: {http: {port: 30001}, ray: {direct_ingress_port: 30000}}", "serve.http.port",
     "among the replicas' own ports 30000..30001"),
    ("serve: {http: {port: 30000}, ray: {haproxy: true}}", "serve.http.port", "among the replicas' own ports"),
    # names, hosts, paths, text
    ("dataset: {name: 'my topic'}", "dataset.name", "is not a name: use 1 to 237 letters, digits"),
    (f"dataset: {{name: {'x' * 238}}}", "dataset.name", "is not a name"),
    ("model: {name: '..'}", "model.name", "(not only dots)"),
    ("dataset: {define: {'a-b': 'MET_pt * 2'}}", "dataset.define.a-b.[key]", "is not a branch name"),
    ("features: {derived: [{name: 2x, expr: MET_pt}]}", "features.derived.0.name", "is not a branch name"),
    ("dataset: {tree: ' '}", "dataset.tree", "is empty"),
    ("dataset: {files: [{url: ''}]}", "dataset.files.0.url", "is empty"),
    ("dataset: {file_list: ''}", "dataset.file_list", "is an empty path"),
    ("store: {path: ''}", "store.path", "is an empty path"),
    ("producer: {manifest: ''}", "producer.manifest", "is an empty path"),
    ("serve: {http: {host: 'http://0.0.0.0'}}", "serve.http.host", "is not a host"),
    ("serve: {auth: {tokens_env: MY-TOKENS}}", "serve.auth.tokens_env", "is not an environment variable name"),
    ("kafka: {bootstrap: kafka-0}", "kafka.bootstrap", "'kafka-0' is not host:port"),
    ("kafka: {bootstrap: 'a:9092,b:99999'}", "kafka.bootstrap", "'b:99999' (in 'a:9092,b:99999') is not host:port"),
    ("kafka: {compression: gzip}", "kafka.compression", "'lz4', 'zstd' or 'none'"),
    ("model: {kind: user, factory: nodots}", "model.factory", "is not 'package.module:function'"),
    ("training: {start: yesterday}", "training.start", "is not earliest, latest, committed"),
    # lists that name each entry once, and are not empty where empty means nothing
    ("dataset: {samples: [{name: sig}, {name: sig}]}", "dataset.samples", "sample name 'sig' appears more than once"),
    ("dataset: {branches: [Muon_pt, Muon_pt]}", "dataset.branches", "'Muon_pt' appears more than once"),
    ("features: {flat: [MET_pt, nJet, MET_pt]}", "features.flat", "'MET_pt' appears more than once"),
    ("features: {jagged: [{branches: [x, x]}]}", "features.jagged.0.branches", "'x' appears more than once"),
    ("features: {jagged: [{branches: []}]}", "features.jagged.0.branches", "at least 1 item"),
    ("features: {derived: [{name: h, expr: MET_pt}, {name: h, expr: nJet}]}", "features.derived",
     "derived name 'h' appears more than once"),
    # keys that make sense only together
    ("dataset: {files: [{url: a.root, label: 2}]}", "dataset.files.0.label", "write model.classes: 3"),
    ("dataset: {samples: [{name: s, label: 4}]}", "dataset.samples.0.label", "labels are 0 .. 1"),
    ("features: {flat: [MET_pt], jagged: [{branches: [MET_pt]}]}", "features.jagged.0.branches",
     "also in features.flat"),
    ("producer: {step_size: '8 MB'}", "producer.step_size", "exceeds kafka.max_message_bytes"),
    ("serve: {scaling: {autoscaling: {min_replicas: 3, max_replicas: 2}}}",
     "serve.scaling.autoscaling.min_replicas", "3 exceeds max_replicas (2)"),
    ("serve: {scaling: {replicas: 2, autoscaling: {max_replicas: 4}}}", "serve.scaling.replicas", "remove one"),
    ("serve: {batching: {max_size: 128}}", "serve.batching.max_size", "exceeds serve.scaling.max_ongoing_requests"),
    ("training: {workers: 2, epochs: 2}", "training.epochs", "set training.epochs: 1"),
    ("model: {kind: logistic}\ntraining: {workers: 2}", "training.workers", "no parameters to average"),
]


def _problems(message: str) -> dict[str, str]:
    """The report's lines, dotted key -> message."""
    lines = message.splitlines()
    assert lines[0].endswith(f"{len(lines) - 1} problem(s)"), message
    return dict(line.strip().split(": ", 1) for line in lines[1:])


@pytest.mark.parametrize(("snippet", "key", "phrase"), BAD_OPTIONS, ids=[key for _, key, _ in BAD_OPTIONS])
def test_a_bad_option_is_named_by_its_key_with_what_is_wrong(tmp_path, snippet, key, phrase):
    path = tmp_path / "bad.yaml"
    path.write_text(snippet + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: 1 problem(s)")
    assert phrase in _problems(str(caught.value))[key]


def test_an_mlp_without_hidden_layers_is_a_logistic_regression_and_allowed(tmp_path):
    path = tmp_path / "linear.yaml"
    path.write_text("model: {hidden: []}\nserve: {http: {port: 30010}, ray: {direct_ingress_port: 30000}}\n")
    config = load_config(path)
    assert config.model.hidden == []
    assert config.serve.replica_ports == range(30000, 30002)


def _hepstream(*arguments: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hepstream", *arguments], capture_output=True, text=True,
                          timeout=timeout_s)


_THROUGH_THE_CLI = [next(case for case in BAD_OPTIONS if case[1] == key)
                    for key in ("model.hidden.0", "serve.ray.direct_ingress_port", "kafka.bootstrap", "training.epochs")]


@pytest.mark.parametrize(("snippet", "key", "phrase"), _THROUGH_THE_CLI,
                         ids=[key for _, key, _ in _THROUGH_THE_CLI])
def test_the_cli_refuses_a_bad_option_with_exit_2_and_no_traceback(tmp_path, snippet, key, phrase):
    path = tmp_path / "bad.yaml"
    path.write_text(snippet + "\n")
    done = _hepstream("train", "--config", str(path))
    assert done.returncode == 2, done.stderr
    assert f"hepstream: configuration error: {path}: 1 problem(s)\n  {key}: " in done.stderr
    assert phrase in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration
@pytest.mark.parametrize("workers", [1, 2])
def test_train_without_its_topic_names_it_the_brokers_and_the_producer_command(tmp_path, broker, unique_topic,
                                                                               workers):
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"dataset: {{name: {unique_topic}}}\nkafka: {{bootstrap: '{broker.bootstrap}'}}\n"
                    f"training: {{topic_wait_s: 0.5, workers: {workers}, device: cpu}}\n")
    done = _hepstream("train", "--config", str(path))
    assert done.returncode == 2, done.stderr
    assert (f"hepstream train: topic '{unique_topic}.events' does not exist on {broker.bootstrap} after 0.5 s; "
            f"publish to it first: hepstream produce --config {path}\n") in done.stderr
    assert "Traceback" not in done.stderr


def test_train_without_brokers_exits_3_naming_them(tmp_path):
    where = f"127.0.0.1:{free_port()}"
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"kafka: {{bootstrap: '{where}', connect_retries: 0, connect_timeout_s: 1}}\n")
    done = _hepstream("train", "--config", str(path))
    assert done.returncode == 3, done.stderr
    assert f"hepstream train: cannot reach Kafka at {where} (connecting) after 1 attempt(s) of 1 s" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration
def test_produce_with_a_missing_file_list_names_it_with_exit_2(tmp_path, broker, unique_topic):
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"dataset: {{name: {unique_topic}, file_list: {tmp_path / 'nope.txt'}}}\n"
                    f"kafka: {{bootstrap: '{broker.bootstrap}'}}\n")
    done = _hepstream("produce", "--config", str(path))
    assert done.returncode == 2, done.stderr
    assert f"hepstream: configuration error: file list {tmp_path / 'nope.txt'}: No such file" in done.stderr
    assert "Traceback" not in done.stderr
