"""What the trainer and its preparation workers say to each other, and where a group's rows lie in a block.

Messages are a JSON header and raw byte parts over a pipe: never pickle, in either direction (the workers
read untrusted Kafka bytes; nothing they send back is executed). Kafka records travel as their key, value
and header bytes; statistics and row orders as the raw bytes of their numpy arrays. A group's matrix,
labels and weights never travel: the worker writes them into a shared memory block that the trainer
reads in place (:func:`block_rows`).
"""

from __future__ import annotations

import json
from multiprocessing.connection import Connection

import numpy as np

from hepstream.models.preparation import Rows

_ALIGN = 64


def send(conn: Connection, header: dict, parts: list[bytes] = ()) -> None:
    """One message: the header, then each part as it is."""
    conn.send_bytes(json.dumps({**header, "parts": len(parts)}).encode())
    for part in parts:
        conn.send_bytes(part)


def receive(conn: Connection) -> tuple[dict, list[bytes]]:
    """The next message's header and parts; EOFError once the other side has gone."""
    header = json.loads(conn.recv_bytes())
    return header, [conn.recv_bytes() for _ in range(header.pop("parts"))]


def records_message(records) -> tuple[list, list[bytes]]:
    """Kafka records as (what each holds, their byte parts): key, value and header values, None kept apart."""
    described, parts = [], []
    for record in records:
        headers = list(record.headers or ())
        fields = [record.key, record.value, *(value for _, value in headers)]
        described.append({"headers": [name for name, _ in headers], "present": [f is not None for f in fields]})
        parts += [bytes(f) for f in fields if f is not None]
    return described, parts


def message_records(described: list, parts: list[bytes]) -> list[tuple]:
    """(key, value, headers) of each record of :func:`records_message`, as ``wire.decode`` takes them."""
    records, taken = [], iter(parts)
    for record in described:
        fields = [next(taken) if present else None for present in record["present"]]
        records.append((fields[0], fields[1], list(zip(record["headers"], fields[2:]))))
    return records


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def block_bytes(rows: int, width: int, weights: bool) -> int:
    """The size of a block holding a group's matrix, labels and (when it has them) weights."""
    return _aligned(rows * width * 4) + _aligned(rows * 8) + (rows * 4 if weights else 0)


def block_rows(buffer, rows: int, width: int, weights: bool) -> Rows:
    """The arrays of a group in ``buffer`` (a shared memory block's, or any array built on it): views, no copy."""
    base = buffer if isinstance(buffer, np.ndarray) else np.frombuffer(buffer, np.uint8)
    x_end = _aligned(rows * width * 4)
    y_end = x_end + _aligned(rows * 8)
    return Rows(base[: rows * width * 4].view(np.float32).reshape(rows, width),
                base[x_end : x_end + rows * 8].view(np.int64),
                base[y_end : y_end + rows * 4].view(np.float32) if weights else None)
