"""Read a hepstream topic with plain kafka-python and pyarrow: no hepstream import.

Follows docs/wire-format.md: refuses unknown format versions, decodes each
value as an Arrow IPC stream of one record batch, skips chunks whose key it
has already seen (a producer restarted after a crash may send a chunk twice),
and prints one JSON summary when the topic has nothing more to give.

    python consume.py 127.0.0.1:9092 demo.events
"""

import json
import sys

import pyarrow as pa
from kafka import KafkaConsumer, TopicPartition


def consume(bootstrap: str, topic: str, idle_s: float = 3.0) -> dict:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=int(idle_s * 1000))
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    seen, events, duplicates, labels, columns = set(), 0, 0, {}, None
    for message in consumer:  # stops after idle_s without a message
        headers = {name: value.decode() for name, value in message.headers}
        if headers.get("format_version") != "1":
            raise ValueError(f"{topic}[{message.partition}]@{message.offset}: unknown format {headers.get('format_version')!r}")
        if message.key in seen:
            duplicates += 1
            continue
        seen.add(message.key)
        batch = pa.ipc.open_stream(message.value).read_next_batch()
        if batch.num_rows != int(headers["events"]):
            raise ValueError(f"{message.key.decode()}: header says {headers['events']} events, batch has {batch.num_rows}")
        events += batch.num_rows
        label = headers.get("label", "none")
        labels[label] = labels.get(label, 0) + batch.num_rows
        columns = columns or {field.name: str(field.type) for field in batch.schema}
    consumer.close()
    return {"chunks": len(seen), "duplicates": duplicates, "events": events, "events_per_label": labels,
            "columns": columns}


if __name__ == "__main__":
    print(json.dumps(consume(sys.argv[1], sys.argv[2])))
