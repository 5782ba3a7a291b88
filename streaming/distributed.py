"""Publish a dataset from several Ray worker processes, so a cluster's nodes read its files side by side.

Threads in one process share its GIL and its network link; on a cluster the
files are spread over ``producer.ray_tasks`` Ray actors instead, each a
:class:`~hepstream.streaming.producer.Producer` in a worker process of its
own, reading ``producer.files_in_flight`` files at once. The driver hands out
one file at a time to whichever actor has room: grid files differ in size by
orders of magnitude, and a share fixed in advance would leave most workers
idle behind the one that drew the largest. Each finished file comes back as
its :class:`~hepstream.streaming.producer.FileReport`, so the driver shows
progress per file and merges the reports into one. When the run mixes classes
(``producer.interleave`` and files of several labels or samples), each actor
is handed one share of the files instead, holding every class, whose chunks
it interleaves (:func:`work_units`).

Everything that depends on the files' order is decided as in one process:
the driver resolves the inputs once and the run's ``index``-th file keeps its
partitions (``(index + k) % partitions``) and its chunk keys, whichever actor
publishes it and however many there are. Actor ``k`` appends to its own
manifest, ``<producer.manifest>.task-<k>``, and skips what any manifest of the
family holds, so a restart with another task count, or in one process,
re-sends nothing that was acknowledged.

A file (or share) whose actor is lost (its node gone, its process killed) is retaken:
it goes back to the head of the queue for the actors left, and a replacement
actor (with a manifest of its own) is asked of Ray; while none runs and work
waits, again every second for :data:`REPLACE_WITHIN_S` after the loss, since
Ray cancels those it placed on the dying node. The actor that retakes it
first reads the family's manifests again, so the chunks the lost actor had
acknowledged are skipped, not sent twice; only those in flight when it was
lost are sent again, under their keys, which trainers skip as duplicates
(with no ``producer.manifest``, or one on a disk the nodes do not share, the
whole file is sent again). A file whose actors are lost twice is reported
failed: a file that crashes its reader would otherwise take every actor down
in turn.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque

from hepstream.config import Config, ConfigError, FileSpec
from hepstream.local_ray import init_ray
from hepstream.streaming.interleave import classes
from hepstream.streaming.producer import (FileReport, ProduceReport, Producer, prepare, read_plan,
                                          tune_malloc_for_chunks)
from hepstream.streaming.progress import Progress
from hepstream.streaming.sources import Source

try:
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError
except ImportError:  # pragma: no cover - ray is a dependency; the message is for trimmed installs
    raise ConfigError("producer.ray_tasks > 0 publishes from Ray actors and Ray is not installed "
                      "(pip install 'ray[serve]'), or set producer.ray_tasks: 0") from None

log = logging.getLogger(__name__)

# A file is retaken once after its actor is lost; lost again, it is reported failed (see above).
RETAKES = 1
# With work waiting and no actor running, actors are asked for again (one a second) for this long after the
# start or the last loss: replacements Ray placed on the dying node are cancelled until it is declared dead.
REPLACE_WITHIN_S = 90.0


@ray.remote(num_cpus=1)
class _Publisher:
    """One worker process publishing the files it is handed; ``task`` names its manifest."""

    def __init__(self, config: Config, bootstrap: str, task: int):
        tune_malloc_for_chunks()  # the worker process is the producer's own, as under `hepstream produce`
        self._producer = Producer(config, bootstrap)
        self._manifest = self._producer.open_manifest(task)

    def ready(self) -> None:
        """Answers once the constructor has run, so the driver hands files only to actors that started."""

    def publish(self, unit: list[tuple[int, Source]], retaken: bool = False) -> list[FileReport]:
        """One file alone, or a share of the run's files interleaved: one report per file, in order."""
        if retaken:  # what the lost actor acknowledged is in its manifest now
            self._manifest.refresh()
        if len(unit) == 1:
            return [self._producer.publish_file(*unit[0], self._manifest)]
        return self._producer.publish_files(unit, self._manifest)

    def close(self) -> None:
        self._manifest.close()
        self._producer.close()


def _reason(error: RayError) -> str:
    """The cause's own message, not Ray's wrapping of it with a remote traceback."""
    cause = error.cause if isinstance(error, RayTaskError) else error
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return lines[-1] if lines else type(cause).__name__


def produce_on_ray(config: Config, bootstrap: str, files: list[FileSpec] | None = None,
                   progress: Progress | None = None) -> ProduceReport:
    """Publish every input from ``producer.ray_tasks`` Ray actors; one report, as :meth:`Producer.run` gives.

    Joins the Ray cluster already initialised, else the one ``RAY_ADDRESS``
    names (as under ``ray job submit``), else starts Ray on this machine and
    stops it at the end.
    """
    started = time.monotonic()
    progress = progress or Progress()
    sources, report = prepare(config, bootstrap, read_plan(config), files)
    progress.start(len(report.files))
    own_ray = not ray.is_initialized()
    if own_ray:
        init_ray()
    try:
        _dispatch(config, bootstrap, sources, report, progress)
    finally:
        if own_ray:
            ray.shutdown()
    for failed in report.files[len(sources):]:
        progress.file_done(failed.url, failed.error)
    report.elapsed_s = time.monotonic() - started
    return report


def work_units(config: Config, sources: list[Source]) -> list[list[tuple[int, Source]]]:
    """What actors are handed: one file at a time, or, when the run mixes classes, one share per actor.

    Mixing needs files of every class open in one process, so each class's
    files are dealt round-robin into ``ray_tasks`` shares, the count running on
    from class to class: each share holds every class that has a file for it,
    in about its proportion, and the shares differ by one file at most. Each
    actor interleaves its share's chunks. Shares are fixed in advance, so a
    share of large files finishes last.

    >>> from hepstream.config import config_from_dict
    >>> config = config_from_dict({"dataset": {"name": "d"}, "producer": {"ray_tasks": 2}})
    >>> files = [Source(f"s{i}", "t", 1) for i in range(2)] + [Source(f"b{i}", "t", 0) for i in range(4)]
    >>> [[s.url for _, s in unit] for unit in work_units(config, files)]
    [['s0', 'b0', 'b2'], ['s1', 'b1', 'b3']]
    >>> [[s.url for _, s in unit] for unit in work_units(config, files[1:4])]  # one signal file: one share lacks it
    [['s1', 'b1'], ['b0']]
    """
    items = list(enumerate(sources))
    producer = config.producer
    if not (producer.interleave and len(groups := classes(items)) > 1):
        return [[item] for item in items]
    shares: list[list[tuple[int, Source]]] = [[] for _ in range(producer.ray_tasks)]
    for dealt, item in enumerate(item for group in groups for item in group):
        shares[dealt % producer.ray_tasks].append(item)
    return [share for share in shares if share]


def _dispatch(config: Config, bootstrap: str, sources: list[Source], report: ProduceReport, progress: Progress) -> None:
    """Keep every started actor busy (``files_in_flight`` files, or one share) until no work is left; fill
    ``report`` as files finish.

    Work goes only to actors that have started: one that finds no free CPU
    (a busy or small cluster) gets none, rather than holding files it will
    never publish, and is stopped at the end.
    """
    units = work_units(config, sources)
    per_actor = config.producer.files_in_flight if all(len(unit) == 1 for unit in units) else 1
    starting = {}  # ready() ObjectRef -> actor
    tasks = itertools.count()  # each actor's manifest number, replacements' too

    def start_actor() -> None:
        options = {"max_concurrency": per_actor, "scheduling_strategy": "SPREAD",
                   "resources": dict(config.producer.ray_resources)}
        actor = _Publisher.options(**options).remote(config, bootstrap, next(tasks))
        starting[actor.ready.remote()] = actor

    for _ in range(min(config.producer.ray_tasks, len(sources))):
        start_actor()
    started, waiting, running = [], deque(enumerate(units)), {}  # running: ObjectRef -> (actor, unit number)
    retaken = dict.fromkeys(range(len(units)), 0)
    replace_until = time.monotonic() + REPLACE_WITHIN_S
    last_death = "no Ray actor started"

    def fill() -> None:
        """Hand waiting work to every started actor with room (a retaken unit may find a survivor idle)."""
        for actor in started:
            busy = sum(1 for holder, _ in running.values() if holder is actor)
            for _ in range(per_actor - busy):
                if waiting:
                    number, unit = waiting.popleft()
                    running[actor.publish.remote(unit, retaken[number] > 0)] = (actor, number)

    while running or (waiting and starting):
        (done,), _ = ray.wait([*running, *starting], num_returns=1)
        if done in starting:
            actor = starting.pop(done)
            try:
                ray.get(done)
            except RayError as error:
                last_death = f"a Ray actor could not start: {_reason(error)}"
                log.error("%s", last_death)
                if waiting and not started and not starting and time.monotonic() < replace_until:
                    time.sleep(1.0)  # a replacement placed on the node being lost is cancelled: ask again
                    start_actor()
                continue
            started.append(actor)
            fill()
            continue
        actor, number = running.pop(done)
        indices = [index for index, _ in units[number]]
        try:
            for index, published in zip(indices, ray.get(done)):
                report.files[index] = published
                published.retaken = retaken[number]
        except RayActorError as error:  # the actor is gone: its work is retaken as it comes back
            last_death = f"the Ray actor publishing it was lost: {_reason(error)}"
            replace_until = time.monotonic() + REPLACE_WITHIN_S
            if actor in started:
                started.remove(actor)
                ray.kill(actor)  # if it was only cut off, it must not go on publishing beside its successor
                start_actor()
            if retaken[number] < RETAKES:
                retaken[number] += 1
                waiting.appendleft((number, units[number]))
                log.warning("%s: %s; retaken by another actor, which skips the chunks acknowledged before",
                            ", ".join(source.url for _, source in units[number]), last_death)
                fill()
                continue
            for index in indices:
                report.files[index].error = f"{last_death} (for the second time)"
        except RayError as error:
            for index in indices:
                report.files[index].error = f"publishing failed in a Ray actor: {_reason(error)}"
        fill()
        for index in indices:
            _file_finished(report.files[index], progress)
    for _, unit in waiting:
        for index, _ in unit:
            report.files[index].error = f"not published: {last_death}"
            _file_finished(report.files[index], progress)
    try:  # each actor flushes its producer and closes its manifest: every file above is acknowledged already
        ray.get([actor.close.remote() for actor in started])
    except RayError as error:
        log.warning("a Ray actor failed while closing: %s", _reason(error))
    for actor in starting.values():
        ray.kill(actor)


def _file_finished(finished: FileReport, progress: Progress) -> None:
    if finished.error:
        log.error("skipping %s: %s", finished.url, finished.error)
    progress.advance(finished.events, finished.bytes)
    progress.file_done(finished.url, finished.error)
