"""A preparation worker process: decodes, checks and extracts a group's messages, then lays out its rows.

Run as ``python -m hepstream.models.prepare_worker`` by :mod:`~hepstream.models.prepare_pool`, with the
two pipe ends it reads requests from and writes answers to. It works in two turns per group, because the
normaliser's statistics are sequential and the worker cannot know them alone:

1. ``extract``: every message decoded and checked (``wire.decode``), its features extracted, and the
   batch's own moments computed (:meth:`FeaturePipeline.batch_moments`); the answer names each message's
   key or the error refusing it, and carries the moments as raw bytes. The extracted arrays stay here.
2. ``layout``: once the trainer has merged the moments of every earlier group in message order, it sends
   the statistics after this group, the chunks kept (duplicates and held chunks dropped), the shuffled
   row order and, with ``training.class_weights``, each class's weight (the answer to ``extract`` counts
   each chunk's events per class for it); the worker writes the matrix, labels and weights into the
   shared memory block named, and says so.

It says ``ready`` once started. A third request, ``probe``, extracts one message and forgets it: after a worker died on a group, the
trainer has its messages probed one by one to find the one that kills.

It ends when the trainer closes its pipe, and with the trainer: on Linux it asks for SIGTERM when the
trainer dies (even by SIGKILL), so a worker busy with a long group does not outlive it.

``HEPSTREAM_TEST_CRASH_ON_KEY``, set only by tests (tests/models/test_prepare_pool.py), makes the worker
exit at once when it decodes a message of that key: a message that kills its worker, on demand.
"""

from __future__ import annotations

import os
import sys
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from hepstream import wire
from hepstream.config import FeaturesConfig
from hepstream.models.features import FeaturePipeline
from hepstream.models.labels import chunk_labels
from hepstream.models.prepare_protocol import block_rows, message_records, receive, send
from hepstream.models.preparation import class_counts, lay_out, prepare_chunk, weighted
from hepstream.supervisor import terminate_with_parent

_ATTACHED = 8  # blocks kept mapped; the trainer reuses a handful
_CRASH_ON_KEY = os.environ.get("HEPSTREAM_TEST_CRASH_ON_KEY", "").encode() or None


def refusal(error: Exception) -> dict:
    """An error as the trainer reports it: its type's name and its message."""
    return {"kind": type(error).__name__, "message": str(error)}


class Worker:
    def __init__(self, features: FeaturesConfig, classes: int, label_branch: str | None):
        self.features = FeaturePipeline(features)
        self.classes = classes
        self.label_branch = label_branch
        self.extracted: dict[int, list] = {}
        self.blocks: dict[str, SharedMemory] = {}

    def extract(self, task: int, records: list[tuple]) -> tuple[dict, list[bytes]]:
        answers, parts, prepared = [], [], []
        for key, value, headers in records:
            if key == _CRASH_ON_KEY:
                os._exit(70)
            answer = {"key": None}
            try:
                chunk = wire.decode(key, value, headers)
                answer["key"] = chunk.id.key().decode()
                kept = prepare_chunk(self.features, self.classes, chunk.batch, chunk_labels(chunk, self.label_branch))
            except Exception as error:  # noqa: BLE001 - refuses this message alone, as the trainer's own thread does
                answers.append({**answer, "error": refusal(error)})
                prepared.append(None)
                continue
            moments = self.features.batch_moments(kept.features)
            answers.append({**answer, "events": kept.features.events, "weights": kept.weights is not None,
                            "jagged": sorted(kept.features.jagged_inputs),
                            "classes": class_counts(kept.labels, self.classes).tolist()})
            parts.append(b"" if moments is None else np.concatenate(moments).tobytes())
            prepared.append(kept)
        self.extracted[task] = prepared
        return {"op": "extracted", "task": task, "messages": answers}, parts

    def layout(self, header: dict, statistics: bytes, order: bytes, per_class: bytes) -> dict:
        task = header["task"]
        prepared = [self.extracted[task][i] for i in header["keep"]]
        if per_class:
            prepared = weighted(prepared, np.frombuffer(per_class, np.float32))
        if statistics:
            moments = self.features.moments
            moments.count, moments.mean, moments.m2 = np.frombuffer(statistics, np.float64).reshape(3, -1).copy()
        order = np.frombuffer(order, np.int64)
        rows = block_rows(self._block(header["block"]).buf, len(order), self.features.n_features, header["weights"])
        lay_out(self.features, prepared, order, out=rows)
        del self.extracted[task]
        return {"op": "done", "task": task}

    def _block(self, name: str) -> SharedMemory:
        if name not in self.blocks:
            if len(self.blocks) >= _ATTACHED:
                self.blocks.pop(next(iter(self.blocks))).close()
            block = SharedMemory(name)
            # The trainer owns the block and unlinks it; without this, this process's resource tracker would
            # unlink it too when the worker ends (CPython issue 82300; Python 3.13 has track=False).
            resource_tracker.unregister(f"/{name}", "shared_memory")
            self.blocks[name] = block
        return self.blocks[name]

    def serve(self, requests: Connection, answers: Connection) -> None:
        while True:
            try:
                header, parts = receive(requests)
            except EOFError:  # the trainer closed the pipe, or died
                return
            if header["op"] == "extract":
                send(answers, *self.extract(header["task"], message_records(header["records"], parts)))
            elif header["op"] == "probe":
                self.extract(-1, message_records(header["records"], parts))
                del self.extracted[-1]
                send(answers, {"op": "probed", "task": header["task"]})
            else:
                send(answers, self.layout(header, *parts))


def main(argv: list[str]) -> None:
    requests, answers, trainer, features, classes, label_branch = argv
    if sys.platform == "linux":
        terminate_with_parent()
    if os.getppid() != int(trainer):  # the trainer died before the line above
        return
    worker = Worker(FeaturesConfig.model_validate_json(features), int(classes), label_branch or None)
    answering = Connection(int(answers), readable=False)
    send(answering, {"op": "ready"})  # imports done: the trainer may stop preparing groups itself
    worker.serve(Connection(int(requests), writable=False), answering)


if __name__ == "__main__":
    main(sys.argv[1:])
