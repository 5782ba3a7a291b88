import errno
from pathlib import Path

import pytest

from hepstream.models.checkpoint_health import LONGEST_RETRY_WAIT_S, CheckpointHealth
from hepstream.models.store_errors import StoreWriteError


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FlakyStore:
    """Refuses versions while ``full``; numbers the ones it takes."""

    def __init__(self):
        self.full, self.versions = False, 0

    def publish(self, *parts) -> int:
        if self.full:
            raise StoreWriteError(Path("/s"), Path("/s/m/v000002"), "no space left on device (ENOSPC)", errno.ENOSPC)
        self.versions += 1
        return self.versions


def _next_try_after(health: CheckpointHealth, clock: Clock) -> float:
    """Seconds from now until ``due()``, to the quarter second."""
    start = clock.now
    while not health.due():
        clock.now += 0.25  # exact in binary: no drift
    return clock.now - start


def test_refused_checkpoints_back_off_doubling_and_the_first_success_resets_the_schedule():
    clock, store = Clock(), FlakyStore()
    health = CheckpointHealth(every_s=2.0, clock=clock)
    assert not health.due() and _next_try_after(health, clock) == 2.0
    assert health.publish(store) == 1 and health.status_fields() == {
        "store_error": None, "checkpoint_failures": 0, "checkpoint_age_s": 0.0}

    store.full = True
    waits = []
    for _ in range(7):
        clock.now += 0.5
        with pytest.raises(StoreWriteError):
            health.publish(store)
        waits.append(_next_try_after(health, clock))
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, LONGEST_RETRY_WAIT_S, LONGEST_RETRY_WAIT_S]
    fields = health.status_fields()
    assert fields["checkpoint_failures"] == 7 and "no space left on device (ENOSPC)" in fields["store_error"]
    assert fields["checkpoint_age_s"] == pytest.approx(sum(waits) + 7 * 0.5, abs=0.01)

    store.full = False
    assert health.publish(store) == 2
    assert health.status_fields() == {"store_error": None, "checkpoint_failures": 7, "checkpoint_age_s": 0.0}
    store.full = True
    with pytest.raises(StoreWriteError):
        health.publish(store)
    assert _next_try_after(health, clock) == 2.0  # a new run of refusals starts from the first wait again
