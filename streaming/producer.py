"""Publish a dataset's ROOT files to its Kafka topic, chunk by chunk.

Several files are read in turn, one chunk from each, and chunk ``k`` of file
``f`` goes to partition ``(f + k) % partitions``: every partition, and so
every trainer, sees all classes of a per-file labelled dataset interleaved
instead of one file after another. A file that fails is reported with its URL
and skipped; the others continue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from hepstream import wire
from hepstream.config import Config, FileSpec
from hepstream.streaming.reader import ReadPlan, SourceError, iterate_chunks

log = logging.getLogger(__name__)

# Headers, key and the Kafka record batch framing around an IPC value.
_MESSAGE_OVERHEAD = 16_384


@dataclass
class FileReport:
    url: str
    chunks: int = 0
    events: int = 0
    bytes: int = 0
    error: str | None = None


@dataclass
class ProduceReport:
    topic: str
    files: list[FileReport] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(f.events for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def failed(self) -> list[FileReport]:
        return [f for f in self.files if f.error]

    def as_dict(self) -> dict:
        return {
            "topic": self.topic,
            "files_ok": len(self.files) - len(self.failed),
            "files_failed": len(self.failed),
            "events": self.events,
            "bytes": self.bytes,
            "failures": {f.url: f.error for f in self.failed},
        }


def ensure_topic(bootstrap: str, topic: str, partitions: int, max_message_bytes: int) -> None:
    """Create the topic with an explicit message size limit, unless it exists already."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="hepstream-admin")
    try:
        config = {"max.message.bytes": str(max_message_bytes)}
        admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def read_plan(config: Config) -> ReadPlan:
    branches = list(config.features.branches)
    if config.dataset.label_branch and config.dataset.label_branch not in branches:
        branches.append(config.dataset.label_branch)
    return ReadPlan(
        config.dataset.name,
        config.dataset.tree,
        tuple(branches),
        config.producer.step_size,
        config.producer.max_chunk_events,
    )


def split_to_fit(chunk: wire.Chunk, limit: int, compression: str) -> Iterator[tuple[wire.Chunk, bytes, bytes, list]]:
    """Encode a chunk, halving it until every piece fits in one message of ``limit`` bytes."""
    key, value, headers = wire.encode(chunk, compression)
    if len(value) + _MESSAGE_OVERHEAD <= limit:
        yield chunk, key, value, headers
        return
    if chunk.events <= 1:
        raise SourceError(chunk.source, f"one event at entry {chunk.id.entry_start} encodes to {len(value)} B, over the {limit} B message limit")
    half = chunk.events // 2
    start, stop = chunk.id.entry_start, chunk.id.entry_stop
    for lo, hi, rows in ((start, start + half, slice(0, half)), (start + half, stop, slice(half, None))):
        piece = wire.Chunk(
            wire.ChunkId(chunk.id.file_uuid, chunk.id.tree, lo, hi),
            chunk.dataset,
            chunk.source,
            chunk.batch.slice(rows.start, (rows.stop or chunk.events) - rows.start),
            chunk.label,
        )
        yield from split_to_fit(piece, limit, compression)


class Producer:
    def __init__(self, config: Config, bootstrap: str, files_in_flight: int = 4):
        self.config = config
        self.bootstrap = bootstrap
        self.files_in_flight = files_in_flight
        self.plan = read_plan(config)
        self.topic = config.dataset.topic
        self._in_flight: list = []
        kafka = config.kafka
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="hepstream-producer",
            # Compression happens inside the Arrow IPC body; compressing it again only costs CPU.
            compression_type=None,
            max_request_size=kafka.max_message_bytes,
            linger_ms=kafka.linger_ms,
            acks="all",
            retries=5,
        )

    def _send(self, report: FileReport, partition: int, chunk: wire.Chunk) -> None:
        kafka = self.config.kafka
        for piece, key, value, headers in split_to_fit(chunk, kafka.max_message_bytes, kafka.compression):
            future = self._producer.send(self.topic, key=key, value=value, headers=headers, partition=partition)
            self._in_flight.append((report, future))
            report.chunks += 1
            report.events += piece.events
            report.bytes += len(value)

    def run(self, files: list[FileSpec], on_chunk: Callable[[FileReport], None] | None = None) -> ProduceReport:
        """Publish every file; returns what was sent and which files failed and why."""
        ensure_topic(self.bootstrap, self.topic, self.config.kafka.partitions, self.config.kafka.max_message_bytes)
        partitions = self.config.kafka.partitions
        report = ProduceReport(self.topic, [FileReport(f.url) for f in files])
        pending = list(enumerate(files))
        active: list[tuple[int, Iterator[wire.Chunk], int]] = []
        while pending or active:
            while pending and len(active) < self.files_in_flight:
                index, spec = pending.pop(0)
                active.append((index, iterate_chunks(spec.url, self.plan, spec.label), 0))
            still_active = []
            for index, chunks, sent in active:
                file_report = report.files[index]
                try:
                    self._send(file_report, (index + sent) % partitions, next(chunks))
                except StopIteration:
                    continue
                except SourceError as error:
                    file_report.error = error.reason
                    log.error("skipping %s", error)
                    continue
                if on_chunk:
                    on_chunk(file_report)
                still_active.append((index, chunks, sent + 1))
            active = still_active
        self._producer.flush()
        for file_report, future in self._in_flight:
            if future.failed() and not file_report.error:
                file_report.error = f"publishing to {self.topic!r} on {self.bootstrap} failed: {future.exception}"
        self._in_flight.clear()
        return report

    def close(self) -> None:
        self._producer.close()
