"""``hepstream bench freshness``: a ROOT file lands in a followed folder; how soon does a version that learned
its events answer HTTP?

The service is the real one: ``hepstream run`` on the embedded stack (broker,
local Ray, Ray Serve), with the pipeline's defaults for every setting that
sets the pace (``producer.poll_s``/``settle_s``, ``training.group_wait_s``/
``checkpoint_every_s``, ``serve.versions.poll_interval_s``/``swap_delay_s``),
following a folder. Each landing copies one more file into that folder and
asks ``GET /v1/models/<name>`` until the version answering there reports
every event so far learned (the topic carries nothing else, so that count
covers the file only once its events are in).

* ``file_to_served_s``: median of the landings (``_min_s``, ``_max_s``), from
  the copy's end to the first such answer;
* its breakdown, medians: ``landed_to_published_s`` (to the broker's
  acknowledgement of the file's last chunk, from the producer's status file),
  ``published_to_checkpointed_s`` (to the creation time of the first version
  that learned it, from its ``meta.json``), ``checkpointed_to_served_s`` (to
  the HTTP answer).

Top-level imports stay in the standard library: the CLI imports this module
to build its parser.
"""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hepstream.benchmarks.common import child_environment, scratch_folder

MODEL = "fresh"
START_TIMEOUT_S = 300.0
LANDING_TIMEOUT_S = 120.0
STEPS = ("landed_to_published_s", "published_to_checkpointed_s", "checkpointed_to_served_s")


def add_arguments(parser) -> None:
    parser.add_argument("--landings", type=int, default=3, help="files landed one after the other (default 3)")
    parser.add_argument("--events", type=int, default=2_000, help="events per landed file (default 2000)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> dict:
    from hepstream.config import config_from_dict
    from hepstream.stack.ports import free_port
    from hepstream.streaming.datagen import generate_file

    with scratch_folder("freshness") as tmp:
        folder = Path(tmp)
        watched, incoming = folder / "data", folder / "incoming"
        first = [generate_file(watched / f"{p}_0.root", p, 5_000, args.seed + i)
                 for i, p in enumerate(("signal", "background"))]
        landing = [generate_file(incoming / f"{p}_{i + 1}.root", p, args.events, args.seed + 10 + i)
                   for i, p in ((i, ("signal", "background")[i % 2]) for i in range(args.landings))]
        settings = {
            "dataset": {"name": MODEL, "files": [{"url": str(watched / "signal_*.root"), "label": 1},
                                                 {"url": str(watched / "background_*.root"), "label": 0}]},
            "model": {"name": MODEL},
            "store": {"path": str(folder / "store")},
            # The replicas' own ports too: Serve's default, 30000, may be another Serve's on a shared machine.
            "serve": {"http": {"port": free_port()}, "ray": {"direct_ingress_port": free_port()}},
        }
        pipeline = folder / "pipeline.yaml"
        pipeline.write_text(json.dumps(settings))  # JSON is YAML
        config = config_from_dict(settings, str(pipeline))
        with _service(pipeline, folder / "run.log") as client:
            events = _events(first)
            _served_with(client, events, START_TIMEOUT_S, "the first files trained and served")
            landings = []
            for path in landing:
                events += _events([path])
                landings.append(_land(client, config, path, watched / path.name, events))
    return _summary(landings, config)


class _service:
    """``hepstream run --config pipeline`` as a child process, its output in ``log``; stopped by SIGTERM."""

    def __init__(self, pipeline: Path, log: Path):
        self.pipeline, self.log = pipeline, log

    def __enter__(self):
        from hepstream.serve.client import Client

        settings = json.loads(self.pipeline.read_text())
        self.output = self.log.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "hepstream", "run", "--config", str(self.pipeline)],
                                        stdout=self.output, stderr=subprocess.STDOUT,
                                        env=child_environment({"PYTHONUNBUFFERED": "1"}))
        return _Probe(Client(f"http://127.0.0.1:{settings['serve']['http']['port']}", timeout_s=5), self)

    def failed(self) -> str | None:
        """Why the service is gone, with the end of its output; None while it runs."""
        if self.process.poll() is None:
            return None
        return f"hepstream run exited with status {self.process.returncode}:\n{self.log.read_text()[-3000:]}"

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.output.close()


class _Probe:
    """What the served version says over HTTP: its number and the events it learned; None before it answers."""

    def __init__(self, client, service: _service):
        self.client, self.service = client, service

    def __call__(self) -> tuple[int, int] | None:
        from hepstream.serve.client import ClientError

        if (why := self.service.failed()) is not None:
            raise RuntimeError(why)
        try:
            answer = self.client.model(MODEL)
        except ClientError:
            return None
        return answer["version"], answer["events_trained"]


def _events(paths) -> int:
    import uproot

    return sum(uproot.open(path)["Events"].num_entries for path in paths)


def _served_with(probe: _Probe, events: int, timeout_s: float, what: str, interval_s: float = 0.02) -> int:
    """Wait until the answering version learned ``events``; returns its number."""
    from hepstream.waiting import poll_until

    answer = poll_until(lambda: (a := probe()) is not None and a[1] >= events and a, timeout_s=timeout_s,
                        what=f"{what}: no version with {events} events answered", interval_s=interval_s)
    return answer[0]


def _land(probe: _Probe, config, source: Path, target: Path, events: int) -> dict:
    """Copy ``source`` into the watched folder; the seconds to the answer and their breakdown."""
    from hepstream.models.store import ModelStore
    from hepstream.run_state import state_dir

    shutil.copyfile(source, target)
    landed = time.time()
    version = _served_with(probe, events, LANDING_TIMEOUT_S, f"{target.name} landed")
    served = time.time()
    store = ModelStore(config.store.path, MODEL)
    checkpointed = min(store.read_meta(v).created for v in store.versions()
                       if v <= version and store.read_meta(v).events_seen >= events)
    published = _published_at(state_dir(config.store.path) / "producer.status.json", str(target))
    return {"file_to_served_s": served - landed, "landed_to_published_s": published - landed,
            "published_to_checkpointed_s": checkpointed - published, "checkpointed_to_served_s": served - checkpointed}


def _published_at(status_file: Path, url: str) -> float:
    """When the broker acknowledged the file's last chunk, as the following producer wrote down."""
    from hepstream.waiting import poll_until

    def read():  # rewritten every producer.poll_s, atomically
        files = {f["url"]: f for f in json.loads(status_file.read_text())["files"]} if status_file.exists() else {}
        return files.get(url, {}).get("published_at")

    return poll_until(read, timeout_s=30, what=f"{status_file} does not say when {url} was published")


def _summary(landings: list[dict], config) -> dict:
    totals = [landing["file_to_served_s"] for landing in landings]
    return {
        "landings": len(landings),
        "file_to_served_s": round(statistics.median(totals), 2),
        "file_to_served_min_s": round(min(totals), 2),
        "file_to_served_max_s": round(max(totals), 2),
        **{step: round(statistics.median(landing[step] for landing in landings), 2) for step in STEPS},
        "each": [{key: round(value, 2) for key, value in landing.items()} for landing in landings],
        "settings": {"producer.poll_s": config.producer.poll_s, "producer.settle_s": config.producer.settle_s,
                     "training.group_wait_s": config.training.group_wait_s,
                     "training.checkpoint_every_s": config.training.checkpoint_every_s,
                     "serve.versions.poll_interval_s": config.serve.versions.poll_interval_s,
                     "serve.versions.swap_delay_s": config.serve.versions.swap_delay_s},
    }
