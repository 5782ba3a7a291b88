"""Fixtures of the trainer tests that start Ray."""

import pytest


@pytest.fixture(scope="module")
def ray_session():
    """Local Ray with two CPUs, started once per module and shut down after it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
