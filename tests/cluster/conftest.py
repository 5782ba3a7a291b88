"""The multi-node Ray cluster of the cluster tests: a head and one worker node, started once per session."""

from __future__ import annotations

import pytest

from tests.ray_cluster import RayCluster


@pytest.fixture(scope="package")
def ray_cluster():
    """Started once for this folder and stopped when it is done (its nodes bind beyond loopback, which
    tests/faults/test_listeners.py forbids of the service). Head + one worker node with token auth (tests/ray_cluster.py); a test that loses a node adds its own."""
    cluster = RayCluster()
    try:
        cluster.start_head()
        cluster.add_worker()
        yield cluster
    finally:
        cluster.stop()
