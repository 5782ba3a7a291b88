"""``hepstream bench produce``: the full read -> encode -> publish path against a raw uproot read, in one run.

The baseline is what any analysis does first: ``uproot.iterate`` over the
same branches with the same step, to awkward, nothing else. The producer runs
in a child process against the embedded broker, so its peak RSS is its own
(``ru_maxrss``), at 1x and at 10x the input: bounded memory means the two are
about equal. Each IPC compression is measured end to end, since the cheaper
codec can win even though it sends more bytes.

Top-level imports stay light: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from hepstream.benchmarks.common import call_python


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=2_000_000, help="events at 1x (default 2,000,000)")
    parser.add_argument("--files", type=int, default=4, help="files the events are split into (default 4)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hepstream-bench-produce",
                        help="where the generated files are kept between runs")
    parser.add_argument("--compressions", default="zstd,lz4", help="IPC compressions to compare (default zstd,lz4)")
    parser.add_argument("--files-in-flight", type=int, default=2, help="reader threads of the producer (default 2)")
    parser.add_argument("--step-size", default="4 MB", help="chunk size in memory (default 4 MB)")


def _inputs(args) -> list[str]:
    from hepstream.streaming.datagen import generate_file

    args.workdir.mkdir(parents=True, exist_ok=True)
    per_file = args.events // args.files
    paths = []
    for i in range(args.files):
        path = args.workdir / f"{'signal' if i % 2 else 'background'}-{per_file}-{i}.root"
        if not path.exists():
            generate_file(path, "signal" if i % 2 else "background", per_file, seed=100 + i)
        paths.append(str(path))
    return paths


def _raw_read(paths: list[str], config) -> tuple[int, float, int]:
    import uproot

    from hepstream.streaming.reader import entries_per_step

    events, started = 0, time.perf_counter()
    for path in paths:
        tree = uproot.open(path)["Events"]
        branches = tree.keys()
        step = min(entries_per_step(tree, branches, config.producer.step_size), config.producer.max_chunk_events)
        for arrays in tree.iterate(branches, step_size=step):
            events += len(arrays)
    return events, time.perf_counter() - started, len(branches)


def publish_in_child(config: dict, bootstrap: str, repeat: int) -> None:
    """Publish the input ``repeat`` times in one process and print the figures and its own peak RSS.

    Repeating the run, rather than listing the files ten times, is what
    makes 10x the input: within one run a file listed twice is the same file
    (same UUID, same chunk keys) and is published once.
    """
    import resource

    from hepstream.config import config_from_dict
    from hepstream.streaming.producer import Producer, tune_malloc_for_chunks

    tune_malloc_for_chunks()  # as `hepstream produce` does
    producer = Producer(config_from_dict(config), bootstrap)
    reports = [producer.run() for _ in range(repeat)]
    producer.close()
    print(json.dumps({"events": sum(r.events for r in reports), "bytes": sum(r.bytes for r in reports),
                      "elapsed_s": sum(r.elapsed_s for r in reports), "failed": sum(len(r.failed) for r in reports),
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _produce(bootstrap: str, name: str, urls: list[str], compression: str, args, repeat: int = 1) -> dict:
    from hepstream.config import KafkaConfig
    from hepstream.kafka import drop_topic

    data = {
        "dataset": {"name": name, "files": [{"url": u} for u in urls], "branches": ["*"]},
        "kafka": {"compression": compression, "partitions": 4, "max_message_bytes": "8 MB", "linger_ms": 5},
        "producer": {"step_size": args.step_size, "max_chunk_events": 1_000_000, "files_in_flight": args.files_in_flight},
    }
    figures = call_python(publish_in_child, data, bootstrap, repeat)
    drop_topic(bootstrap, f"{name}.events", KafkaConfig())  # the embedded broker keeps topics in memory
    return figures


def run(args) -> dict:
    from hepstream.stack.broker import EmbeddedBroker

    paths = _inputs(args)
    result = _raw_read_figures(paths, args)
    with EmbeddedBroker() as broker:
        by_codec = {codec: _codec_figures(_produce(broker.bootstrap, f"bench-{codec}", paths, codec, args))
                    for codec in args.compressions.split(",")}
        best = max(by_codec, key=lambda c: by_codec[c]["events_per_s"])
        ten_x = _produce(broker.bootstrap, "bench-10x", paths, best, args, repeat=10)
    result.update(_headline(by_codec, best, ten_x, result["raw_read_events_per_s"]))
    return result


def _raw_read_figures(paths: list[str], args) -> dict:
    from hepstream.config import config_from_dict

    config = config_from_dict({"producer": {"step_size": args.step_size, "max_chunk_events": 1_000_000},
                               "kafka": {"max_message_bytes": "8 MB"}})
    for path in paths:  # both sides read from the page cache, so neither pays the disk for the other
        Path(path).read_bytes()
    raw_events, raw_s, branches = _raw_read(paths, config)
    return {"events": raw_events, "branches": branches, "files": len(paths), "cpus": os.cpu_count(),
            "raw_read_events_per_s": round(raw_events / raw_s)}


def _codec_figures(figures: dict) -> dict:
    return {"events_per_s": round(figures["events"] / figures["elapsed_s"]),
            "mb_per_s": round(figures["bytes"] / figures["elapsed_s"] / 1e6, 1),
            "mb_sent": round(figures["bytes"] / 1e6, 1), "rss_mb": round(figures["rss_mb"], 1),
            "failed_files": figures["failed"]}


def _headline(by_codec: dict, best: str, ten_x: dict, raw_read_events_per_s: int) -> dict:
    """The fastest compression's figures, against the raw read and against 10x the input."""
    rss_1x = by_codec[best]["rss_mb"]
    return {
        "compression": best,
        "produce_events_per_s": by_codec[best]["events_per_s"],
        "produce_mb_per_s": by_codec[best]["mb_per_s"],
        "ratio_vs_raw_read": round(by_codec[best]["events_per_s"] / raw_read_events_per_s, 3),
        "rss_mb_1x": rss_1x,
        "rss_mb_10x": round(ten_x["rss_mb"], 1),
        "rss_ratio_10x_vs_1x": round(ten_x["rss_mb"] / rss_1x, 3),
        "events_10x": ten_x["events"],
        "by_compression": by_codec,
    }
