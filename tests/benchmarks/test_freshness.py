"""The freshness benchmark's summary: the landings' median, spread and breakdown, as ``hepstream bench`` prints it."""

from hepstream.benchmarks.freshness import _summary
from hepstream.config import config_from_dict


def landing(total: float, published: float, checkpointed: float) -> dict:
    return {"file_to_served_s": total, "landed_to_published_s": published,
            "published_to_checkpointed_s": checkpointed, "checkpointed_to_served_s": total - published - checkpointed}


def test_the_summary_is_the_median_landing_with_its_spread_and_the_settings_that_set_the_pace():
    config = config_from_dict({"producer": {"poll_s": 0.5}}, "test")
    summary = _summary([landing(6.0, 3.0, 2.0), landing(9.0, 4.0, 2.5), landing(5.0, 2.5, 1.5)], config)
    assert (summary["file_to_served_s"], summary["file_to_served_min_s"], summary["file_to_served_max_s"]) == (6, 5, 9)
    assert summary["landed_to_published_s"] == 3.0 and summary["published_to_checkpointed_s"] == 2.0
    assert summary["checkpointed_to_served_s"] == 1.0 and summary["landings"] == len(summary["each"]) == 3
    assert summary["settings"]["producer.poll_s"] == 0.5
