"""Every Kafka client hepstream makes, and the few things done with them everywhere.

One place builds producers, consumers and admin clients, so connection
settings are decided once (:func:`client_options`), reaching the brokers is
retried on one budget (:func:`with_broker`), a topic is created and awaited
one way (:func:`ensure_topic`, :func:`wait_for_topic`), and offsets are
committed one way (:func:`commit`). Higher layers ask for a client here and
never import kafka-python's client classes themselves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from hepstream.backoff import Backoff
from hepstream.config import KafkaConfig
from hepstream.kafka_access import BrokerRefused, BrokerUnavailable, check_access  # noqa: F401 (callers import the errors from here)
from hepstream.kafka_security import security_options
from hepstream.waiting import poll_until

log = logging.getLogger(__name__)

T = TypeVar("T")


class TopicMissing(TimeoutError):
    """A topic still absent from the brokers after the wait allowed for it: its producer has not run."""

    def __init__(self, topic: str, bootstrap: str, waited_s: float):
        super().__init__(topic, bootstrap, waited_s)  # the arguments, so that it pickles across Ray
        self.topic, self.bootstrap, self.waited_s = topic, bootstrap, waited_s

    def __str__(self) -> str:
        return f"topic {self.topic!r} does not exist on {self.bootstrap} after {self.waited_s:g} s"


def client_options(bootstrap: str, kafka: KafkaConfig) -> dict:
    """The connection options every client gets, whatever its role: where the brokers are, how long to wait, and
    how to get in (``kafka.security``: SASL mechanism and credentials, TLS certificates).

    Every factory here goes through this function, so every client is secured
    alike. With security on, each call also proves the credentials
    (:func:`~hepstream.kafka_access.check_access`): a refusal is a
    :class:`BrokerRefused` at once, not a client's silent retries.
    """
    check_access(bootstrap, kafka)
    return {"bootstrap_servers": bootstrap, "bootstrap_timeout_ms": int(kafka.connect_timeout_s * 1000),
            **security_options(kafka.security)}


def new_producer(bootstrap: str, kafka: KafkaConfig, **overrides) -> KafkaProducer:
    """A producer whose sends wait for every in-sync replica and may be as large as a topic's message limit."""
    return KafkaProducer(**{**client_options(bootstrap, kafka), "acks": "all",
                            "max_request_size": kafka.max_message_bytes, **overrides})


def new_consumer(bootstrap: str, kafka: KafkaConfig, **overrides) -> KafkaConsumer:
    """A consumer that never commits by itself: hepstream's offsets live in its checkpoints."""
    return KafkaConsumer(**{**client_options(bootstrap, kafka), "enable_auto_commit": False, **overrides})


def new_admin(bootstrap: str, kafka: KafkaConfig, **overrides) -> KafkaAdminClient:
    return KafkaAdminClient(**{**client_options(bootstrap, kafka), "client_id": "hepstream-admin", **overrides})


def with_broker(bootstrap: str, kafka: KafkaConfig, what: str, attempt: Callable[[], T]) -> T:
    """Run a broker call with bounded retries; past the budget, one error naming the brokers and the cause.

    A :class:`BrokerRefused` (credentials or certificate refused) is not a
    KafkaError, so it is never retried.
    """
    backoff = Backoff(kafka.connect_retries, first_s=1.0, max_s=10.0)
    try:
        return backoff.call(attempt, retry_on=lambda e: isinstance(e, KafkaError), on_retry=lambda e, wait:
                            log.warning("%s on %s: %s; retrying in %.0f s", what, bootstrap, e, wait))
    except KafkaError as error:
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap} ({what}) after {kafka.connect_retries + 1} "
                                f"attempt(s) of {kafka.connect_timeout_s:g} s: {error}") from None


def ensure_topic(bootstrap: str, topic: str, partitions: int, kafka: KafkaConfig) -> None:
    """Create the topic with ``kafka.max_message_bytes`` as its message size limit, unless it exists already."""

    def create():
        client = new_admin(bootstrap, kafka)
        try:
            config = {"max.message.bytes": str(kafka.max_message_bytes)}
            client.create_topics([NewTopic(topic, partitions, 1, topic_configs=config)])
        except TopicAlreadyExistsError:
            pass
        finally:
            client.close()

    with_broker(bootstrap, kafka, f"creating topic {topic!r}", create)


def drop_topic(bootstrap: str, topic: str, kafka: KafkaConfig) -> None:
    """Delete the topic if the broker lets us; a topic already gone, or a refusal, is not an error."""
    client = new_admin(bootstrap, kafka)
    try:
        client.delete_topics([topic])
    except KafkaError:
        pass
    finally:
        client.close()


def wait_for_topic(client: KafkaConsumer, topic: str, *, timeout_s: float,
                   stop: threading.Event | None = None) -> list[int]:
    """The topic's partitions, sorted, once it exists: a trainer may start before the producer creates it.

    Raises :class:`TopicMissing` past ``timeout_s``, or as soon as ``stop``
    is set.
    """
    where = client.config["bootstrap_servers"]
    try:
        found = poll_until(lambda: client.partitions_for_topic(topic), timeout_s=timeout_s, stop=stop,
                           what=f"topic {topic!r} does not exist on {where}")
    except TimeoutError:
        raise TopicMissing(topic, where, timeout_s) from None
    return sorted(found)


def topic_partitions(bootstrap: str, kafka: KafkaConfig, topic: str, *, timeout_s: float,
                     stop: threading.Event | None = None) -> list[int]:
    """:func:`wait_for_topic` on a consumer of its own, for a caller that consumes nothing yet.

    Reaching the brokers is retried as :func:`with_broker` does, so that brokers
    that never answer are a :class:`BrokerUnavailable`, not a client's timeout.
    """
    client = with_broker(bootstrap, kafka, "connecting", lambda: new_consumer(bootstrap, kafka))
    try:
        return wait_for_topic(client, topic, timeout_s=timeout_s, stop=stop)
    finally:
        client.close()


def end_offsets(bootstrap: str, kafka: KafkaConfig, topic: str, *, timeout_s: float) -> dict[int, int]:
    """Each partition's next offset to be written: beside a trainer's offsets, how far it lags."""

    def attempt() -> dict[int, int]:
        client = new_consumer(bootstrap, kafka)
        try:
            partitions = wait_for_topic(client, topic, timeout_s=timeout_s)
            ends = client.end_offsets([TopicPartition(topic, partition) for partition in partitions])
            return {tp.partition: offset for tp, offset in ends.items()}
        finally:
            client.close()

    return with_broker(bootstrap, kafka, f"reading the end offsets of {topic!r}", attempt)


def commit_request(topic: str, offsets: dict[int, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    """Partition -> next offset to read, as kafka-python's ``commit`` takes it."""
    return {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}


def commit(client: KafkaConsumer, request: dict[TopicPartition, OffsetAndMetadata], checkpoint: int | None) -> None:
    """Commit offsets for monitoring only: a failure is logged, never raised, as the checkpoint is the truth."""
    try:
        client.commit(request)
    except Exception as error:
        log.warning("Kafka offset commit failed (checkpoint %s is still valid): %s", checkpoint, error)
