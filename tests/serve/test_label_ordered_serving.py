"""A label-ordered dataset through produce -> train -> serve on the real services, scored over HTTP at every swap.

Every signal file is published before any background file would be, by two
Ray producer actors to the embedded broker; two trainer workers learn it with
a validation slice and the quality gate on (serve.warm_up: judged), and the FastAPI app answers from
the store over HTTP while a client scores held-out events with each version it
swaps to (the machinery of ``hepstream bench quality``, on small files).
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import pytest

from hepstream.benchmarks import quality
from hepstream.streaming.datagen import generate_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_for_two_producers_and_two_workers():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_served_versions_never_fall_behind_and_the_last_is_the_best(broker, unique_topic, tmp_path,
                                                                     ray_for_two_producers_and_two_workers):
    events = 15_000  # 15 chunks a file: a slice of 30 % of the chunks holds 500 events of each class (P > 0.999)
    files = [(generate_file(tmp_path / f"signal-{i}.root", "signal", events, 41 + i), 1) for i in range(2)]
    files += [(generate_file(tmp_path / f"background-{i}.root", "background", events, 43 + i), 0) for i in range(2)]
    holdout = quality._holdout(Path(tmp_path), 2_000, 50)
    args = Namespace(validation_fraction=0.3, interleave=True, warm_up="judged")
    result = quality._one_run(Path(tmp_path), unique_topic, files, holdout, broker.bootstrap, 0.01, args)

    assert result["events_trained"] + result["events_validation"] == 4 * events
    assert 0 < result["events_validation"] < 4 * events * 0.65  # the slice: about 30 % of 40 chunks, never learned
    assert result["versions_published"] >= 2 and result["first_judged_version"] is not None, result
    # Mixed on the way in, the stream does not end with one class: the last version is (nearly) the best one.
    assert result["final_served_auc"] >= result["best_holdout_auc"] - 0.02, result
    assert result["final_served_auc"] > 0.75, result
    # serve.warm_up: judged, so the first version served is one the slice judged, and from it on no swap
    # serves a version worse than one served before it.
    assert result["served"][0][0] == result["first_judged_version"], result
    served = [auc for _, auc in result["served"]]
    for i, auc in enumerate(served):
        assert auc >= max(served[: i + 1]) - 0.02, result
