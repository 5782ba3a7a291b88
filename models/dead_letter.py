"""Messages the trainer cannot use go to ``<dataset>.dead-letter``, untouched, with the reason attached.

Skipping a poison message keeps training alive; keeping it lets an operator
see what broke and replay it once fixed. The dead-letter record carries the
original key, value and headers, plus ``dead_letter_reason`` (the error, which
names the header, byte range or branch at fault) and ``dead_letter_source``
(``topic[partition]@offset``). Records are flushed before each checkpoint, so
a checkpoint never says a message was consumed before its copy is stored;
after a crash the messages since the last checkpoint may be sent again, so
readers should deduplicate on ``dead_letter_source``.
"""

from __future__ import annotations

import logging

from hepstream.config import KafkaConfig
from hepstream.kafka import ensure_topic, new_producer

log = logging.getLogger(__name__)

REASON_HEADER = "dead_letter_reason"
SOURCE_HEADER = "dead_letter_source"


def dead_letter_topic(dataset: str) -> str:
    return f"{dataset}.dead-letter"


class DeadLetters:
    def __init__(self, bootstrap: str, topic: str, kafka: KafkaConfig):
        self.bootstrap = bootstrap
        self.topic = topic
        self.kafka = kafka
        self._producer = None
        self.sent = 0

    def _open(self):
        ensure_topic(self.bootstrap, self.topic, 1, self.kafka)
        return new_producer(self.bootstrap, self.kafka, client_id="hepstream-dead-letter")

    def send(self, record, reason: str) -> None:
        """Forward a consumed record (kafka-python ConsumerRecord) with why it was refused."""
        if self._producer is None:
            self._producer = self._open()
        headers = [(name, value) for name, value in (record.headers or [])
                   if name not in (REASON_HEADER, SOURCE_HEADER)]
        headers += [(REASON_HEADER, reason.encode()),
                    (SOURCE_HEADER, f"{record.topic}[{record.partition}]@{record.offset}".encode())]
        self._producer.send(self.topic, key=record.key, value=record.value, headers=headers)
        self.sent += 1

    def flush(self) -> None:
        if self._producer is not None:
            self._producer.flush()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush()
            self._producer.close()
            self._producer = None
