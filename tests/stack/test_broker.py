"""The embedded broker: a real Kafka client round-trips through it, and it never outlives its owner."""

from __future__ import annotations

import stat
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from hepstream.stack.broker import TANSU_BIN_ENV, EmbeddedBroker
from hepstream.stack.errors import StackError
from tests.helpers import is_running

pytestmark = pytest.mark.integration


def _becomes_frozen(pid: int, frozen: bool = True) -> bool:
    """Whether /proc shows the process stopped by a signal (state ``T``), or not, within 2 s.

    Signals land asynchronously, so the state is polled rather than read once.
    """
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as proc_stat:
            if (proc_stat.read().rsplit(")", 1)[1].split()[0] == "T") == frozen:
                return True
        time.sleep(0.005)
    return False


def test_bootstrap_is_loopback_and_process_runs(broker):
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert is_running(broker.pid)
    assert "listening on: tcp://127.0.0.1" in broker.log_path.read_text()


def test_message_with_headers_round_trips(broker, unique_topic):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(unique_topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    try:
        headers = [("schema", b"v1"), ("source", b"root://host//a.root")]
        producer.send(unique_topic, b"payload", key=b"key", headers=headers).get(timeout=10)
    finally:
        producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition(unique_topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        records = consumer.poll(timeout_ms=10_000).get(partition, [])
    finally:
        consumer.close()
    assert [(r.key, r.value, r.headers) for r in records] == [(b"key", b"payload", headers)]


def test_stop_ends_the_process_and_removes_its_log():
    broker = EmbeddedBroker().start()
    pid, log_path = broker.pid, broker.log_path
    broker.stop()
    assert not is_running(pid)
    assert not log_path.exists()
    assert broker.pid is None
    broker.stop()  # idempotent


def test_paused_broker_is_frozen_and_stops_without_being_killed():
    with EmbeddedBroker() as broker:
        pid = broker.pid
        broker.pause()
        assert _becomes_frozen(pid)
        broker.resume()
        assert _becomes_frozen(pid, frozen=False)
        broker.pause()
        started_stopping = time.monotonic()
    # tansu ignores SIGTERM while frozen; stop() must wake it rather than wait 5 s and kill it.
    assert time.monotonic() - started_stopping < 2.0
    assert not is_running(pid)


def test_bad_binary_override_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv(TANSU_BIN_ENV, str(tmp_path / "no-such-tansu"))
    with pytest.raises(StackError, match=TANSU_BIN_ENV):
        EmbeddedBroker().start()


def test_early_exit_reports_command_exit_code_and_log(monkeypatch, tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'cannot open storage: disk on fire' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(TANSU_BIN_ENV, str(fake))
    broker = EmbeddedBroker()
    with pytest.raises(StackError) as raised:
        broker.start()
    message = str(raised.value)
    assert "Kafka broker (tansu)" in message
    assert str(fake) in message
    assert "exit code: 3" in message
    assert "disk on fire" in message
    assert broker.pid is None and broker.log_path is None
