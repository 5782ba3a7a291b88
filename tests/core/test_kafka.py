"""The Kafka module against the embedded broker: topics created once, awaited, and a wait that names its topic."""

import pickle
import threading

import pytest

from hepstream.config import KafkaConfig
from hepstream.kafka import (
    TopicMissing, client_options, end_offsets, ensure_topic, new_admin, new_consumer, new_producer, topic_partitions,
    wait_for_topic,
)

pytestmark = pytest.mark.integration


def test_every_client_gets_the_brokers_and_the_configured_timeout():
    assert client_options("h:9092", KafkaConfig(connect_timeout_s=2.5)) == {
        "bootstrap_servers": "h:9092", "bootstrap_timeout_ms": 2500}


def test_a_topic_is_created_once_with_its_message_limit_and_then_found(broker, unique_topic):
    kafka = KafkaConfig(max_message_bytes=123_456)
    ensure_topic(broker.bootstrap, unique_topic, 3, kafka)
    ensure_topic(broker.bootstrap, unique_topic, 3, kafka)  # exists already: not an error
    assert topic_partitions(broker.bootstrap, kafka, unique_topic, timeout_s=10.0) == [0, 1, 2]
    admin = new_admin(broker.bootstrap, kafka)
    try:
        assert unique_topic in admin.list_topics()
    finally:
        admin.close()


def test_end_offsets_count_the_messages_of_each_partition(broker, unique_topic):
    kafka = KafkaConfig()
    ensure_topic(broker.bootstrap, unique_topic, 2, kafka)
    producer = new_producer(broker.bootstrap, kafka)
    for partition in (0, 1, 1, 1):
        producer.send(unique_topic, b"event", partition=partition).get(timeout=10)  # one record per batch
    producer.close()
    assert end_offsets(broker.bootstrap, kafka, unique_topic, timeout_s=10.0) == {0: 1, 1: 3}


def test_waiting_for_a_missing_topic_names_it_and_the_brokers(broker, unique_topic):
    consumer = new_consumer(broker.bootstrap, KafkaConfig())
    try:
        missing = rf"topic '{unique_topic}' does not exist on {broker.bootstrap} after 0.3 s"
        with pytest.raises(TopicMissing, match=missing) as caught:
            wait_for_topic(consumer, unique_topic, timeout_s=0.3)
        missed = caught.value
        assert (missed.topic, missed.bootstrap, missed.waited_s) == (unique_topic, broker.bootstrap, 0.3)
        stop = threading.Event()
        stop.set()
        with pytest.raises(TimeoutError, match="does not exist"):
            wait_for_topic(consumer, unique_topic, timeout_s=60.0, stop=stop)
    finally:
        consumer.close()


def test_a_missing_topic_crosses_processes_with_its_message():
    missing = pickle.loads(pickle.dumps(TopicMissing("demo.events", "h:9092", 60.0)))
    assert isinstance(missing, TimeoutError)
    assert str(missing) == "topic 'demo.events' does not exist on h:9092 after 60 s"
