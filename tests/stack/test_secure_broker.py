"""Every client hepstream makes, over TLS and SCRAM: produce, train, dead-letter, admin, with exact counts.

The broker is tansu behind tests/secure_proxy.py (tansu 0.6.0 serves no TLS
and keeps no SCRAM users itself); the clients are kafka-python's, unchanged.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from hepstream.config import config_from_dict
from hepstream.kafka import new_admin, new_producer
from hepstream.models.trainer import StreamTrainer
from tests.helpers import labelled_pair, pipeline_config, produce, read_topic

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
PASSWORD_ENV = "HEPSTREAM_TEST_KAFKA_PASSWORD"


@pytest.fixture
def alice(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def test_produce_train_and_dead_letters_go_through_tls_and_scram(secure_broker, alice, unique_topic, tmp_path,
                                                                   caplog):
    caplog.set_level(logging.DEBUG)
    refused_before = len(secure_broker.proxy.refused)
    files = labelled_pair(tmp_path, 1500, 1500, seed=5)
    config = pipeline_config(unique_topic, files, tmp_path / "store",
                             kafka={"security": secure_broker.security(PASSWORD_ENV)})
    report = produce(config, secure_broker.bootstrap)
    assert report.events == 3000 and not report.failed

    poison = new_producer(secure_broker.bootstrap, config.kafka)
    poison.send(config.dataset.topic, key=b"not-a-key", value=b"\x00garbage", partition=0).get(10)
    poison.close()
    trainer = StreamTrainer(config, secure_broker.bootstrap)
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 60
    while (trainer.counters["events_trained"] < 3000 or trainer.counters["dead_letters"] < 1) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(30)

    status = trainer.status()
    assert status.events_trained == report.events == 3000
    assert status.duplicate_chunks == 0
    assert trainer.counters["dead_letters"] == 1
    dead = read_topic(secure_broker.bootstrap, f"{config.dataset.name}.dead-letter", kafka=config.kafka)
    assert [record.value for record in dead] == [b"\x00garbage"]
    admin = new_admin(secure_broker.bootstrap, config.kafka)
    try:
        assert {config.dataset.topic, f"{config.dataset.name}.dead-letter"} <= set(admin.list_topics())
    finally:
        admin.close()
    assert len(secure_broker.proxy.refused) == refused_before
    assert PASSWORD not in caplog.text
    assert "'sasl_plain_password': '<hidden>'" in caplog.text  # the admin client's logged configuration


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_the_other_mechanisms_get_in_too(secure_broker, alice, unique_topic, mechanism):
    kafka = config_from_dict({"kafka": {"security": secure_broker.security(PASSWORD_ENV, mechanism=mechanism)}}).kafka
    producer = new_producer(secure_broker.bootstrap, kafka)
    producer.send(unique_topic, value=mechanism.encode()).get(10)
    producer.close()
    assert [record.value for record in read_topic(secure_broker.bootstrap, unique_topic, kafka=kafka)] == \
        [mechanism.encode()]


def test_the_password_stays_out_of_reprs_and_dumps(secure_broker, alice):
    config = config_from_dict({"kafka": {"security": secure_broker.security(PASSWORD_ENV)}})
    for text in (repr(config), str(config.model_dump()), config.model_dump_json()):
        assert PASSWORD not in text and PASSWORD_ENV in text
