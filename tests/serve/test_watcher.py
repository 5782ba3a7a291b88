"""Hot swap: newer versions load beside the current one; failures never cost the current one."""

from __future__ import annotations

import gc
import logging
import threading
import time

import pytest

from hepstream.serve.watcher import ModelWatcher, write_pin


@pytest.fixture
def watcher_of():
    started = []

    def make(store, poll_interval_s=0.02):
        watcher = ModelWatcher(store, poll_interval_s=poll_interval_s)
        watcher.start()
        started.append(watcher)
        return watcher

    yield make
    for watcher in started:
        watcher.stop()
        assert not watcher._thread.is_alive()


def version_of(watcher):
    model = watcher.current
    return model.version if model is not None else None


def test_nothing_is_served_until_a_version_is_published_then_each_newer_one_is_swapped_in(store, watcher_of, standins):
    watcher = watcher_of(store)
    time.sleep(0.1)
    assert watcher.current is None and watcher.swaps == 0 and watcher.last_error is None
    store.publish(1, weight=0.5)
    standins.wait_for(lambda: version_of(watcher) == 1, what="version 1")
    first = watcher.current
    store.publish(2)
    store.publish(3, weight=1.5)
    standins.wait_for(lambda: version_of(watcher) == 3, what="version 3")
    assert watcher.current.spec == {"weight": 1.5}
    assert watcher.swaps in (2, 3)  # 2 and 3 may land between two polls
    assert first.version == 1  # a request holding the old model keeps it intact


def test_a_corrupt_version_is_retried_and_the_current_model_keeps_serving(store, watcher_of, standins, caplog):
    store.publish(1)
    watcher = watcher_of(store)
    standins.wait_for(lambda: version_of(watcher) == 1, what="version 1")
    caplog.set_level(logging.WARNING, logger="hepstream.serve.watcher")
    store.publish_corrupt(2)
    standins.wait_for(lambda: store.loads.count(2) >= 3, what="three tries of version 2")
    assert version_of(watcher) == 1
    assert watcher.failures >= 3
    assert "loading version 2 failed: JSONDecodeError" in watcher.last_error
    assert any("loading version 2 failed" in record.getMessage() for record in caplog.records)
    assert sum(bool(record.exc_info) for record in caplog.records) == 1  # one traceback, not one per retry

    store.publish(2, weight=2.0)  # the trainer finishes writing it
    standins.wait_for(lambda: version_of(watcher) == 2, what="version 2 once it is whole")
    assert watcher.last_error is None


def test_retries_of_a_bad_version_back_off_but_a_newer_version_is_tried_at_once(store):
    watcher = ModelWatcher(store, poll_interval_s=10.0)  # not started: each poll() is one step
    store.publish(1)
    store.publish_corrupt(2)
    assert watcher.poll() is False
    assert watcher.poll() is False
    assert store.loads == [2]  # the second poll waits out the back-off instead of reloading
    store.publish(3)
    assert watcher.poll() is True
    assert (version_of(watcher), store.loads) == (3, [2, 3])


def test_a_store_that_cannot_be_read_is_retried_without_killing_the_thread(store, watcher_of, standins):
    class FlakyStore(type(store)):
        fails = 2

        def latest(self):
            if self.fails:
                self.fails -= 1
                raise OSError("stale NFS handle")
            return super().latest()

    flaky = FlakyStore(store.folder.parent, "demo")
    flaky.publish(1)
    watcher = watcher_of(flaky)
    standins.wait_for(lambda: version_of(watcher) == 1, what="version 1 after the store recovers")
    assert watcher.failures == 2 and watcher.last_error is None


def test_a_version_older_than_the_current_one_is_never_swapped_in(store):
    watcher = ModelWatcher(store)
    store.publish(5)
    assert watcher.poll() is True
    (store.folder / "5.json").unlink()
    store.publish(4)
    assert watcher.poll() is False
    assert version_of(watcher) == 5 and store.loads == [5]


def test_readers_get_the_old_version_at_once_while_a_slow_load_runs(store, watcher_of, standins):
    store.publish(1)
    watcher = watcher_of(store)
    standins.wait_for(lambda: version_of(watcher) == 1, what="version 1")
    store.publish(2, load_delay_s=1.0)
    standins.wait_for(lambda: 2 in store.loads, what="the load of version 2 to begin")
    started = time.perf_counter()
    seen = {version_of(watcher) for _ in range(10_000)}
    assert seen == {1}
    assert time.perf_counter() - started < 0.5  # well under the 1 s load: nobody waited on it
    standins.wait_for(lambda: version_of(watcher) == 2, what="version 2 after its slow load")


def test_an_unexpected_error_in_a_poll_does_not_end_the_thread(store, watcher_of, standins):
    store.publish(1)
    watcher = ModelWatcher(store, poll_interval_s=0.02)
    real_poll, calls = watcher.poll, []

    def poll_with_a_bug():
        calls.append(1)
        if len(calls) == 1:
            raise AttributeError("a bug")
        return real_poll()

    watcher.poll = poll_with_a_bug
    watcher.start()
    try:
        standins.wait_for(lambda: version_of(watcher) == 1, what="version 1 after the bug")
    finally:
        watcher.stop()


def test_start_twice_is_an_error_and_stop_ends_polling(store, standins):
    watcher = ModelWatcher(store, poll_interval_s=0.02)
    watcher.start()
    with pytest.raises(RuntimeError, match="already started"):
        watcher.start()
    watcher.stop()
    assert not watcher._thread.is_alive()
    store.publish(1)
    time.sleep(0.1)
    assert watcher.current is None


def test_replicas_hold_a_new_version_until_its_swap_time_and_then_swap_together(store):
    """Two watchers (two replicas) that load a version at different moments serve it from one instant on."""
    store.publish(1)  # published long ago (created 1.7e9 + 1): swapped in at once
    early, late = (ModelWatcher(store, swap_delay_s=0.3) for _ in range(2))
    assert early.poll() and late.poll()
    created = time.time()
    store.publish(2, created=created)
    assert early.poll()  # loads at once, then holds it until created + 0.3
    swapped_early = time.time()
    time.sleep(0.05)
    assert late.poll()
    swapped_late = time.time()
    assert early.current.version == late.current.version == 2
    assert swapped_early >= created + 0.3 and swapped_late >= created + 0.3


def test_a_pinned_version_is_not_held(store, tmp_path):
    store.publish(1)
    store.publish(2, created=time.time())
    pin = tmp_path / "demo.pinned.json"
    watcher = ModelWatcher(store, swap_delay_s=3600.0, pin_file=pin)
    write_pin(pin, 2)
    polling = threading.Thread(target=watcher.poll, daemon=True)
    polling.start()
    polling.join(30)  # a held version would keep this poll for an hour
    assert not polling.is_alive()
    assert watcher.current.version == 2
    watcher.stop()


def test_the_first_swap_leaves_what_exists_then_out_of_later_collections(store):
    from hepstream.serve import watcher as watcher_module

    def collected(thing) -> bool:  # still walked by the collector, not frozen
        return any(candidate is thing for candidate in gc.get_objects())

    watcher_module._freeze_long_lived_objects.cache_clear()
    gc.unfreeze()
    try:
        built_before = [[]]  # as a first load's imports and model would be
        assert collected(built_before)
        watcher = ModelWatcher(store)
        store.publish(1)
        assert watcher.poll() is True
        assert not collected(built_before)

        built_later = [[]]
        store.publish(2)
        assert watcher.poll() is True
        assert collected(built_later)  # once per process
    finally:
        gc.unfreeze()
