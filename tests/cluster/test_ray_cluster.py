"""The cluster the cluster tests run on is what they claim: two live nodes, tokens required, a node can be lost."""

from __future__ import annotations

import requests

from tests.ray_cluster import wait_for_nodes


def test_the_job_server_wants_the_token(ray_cluster):
    assert requests.get(f"{ray_cluster.dashboard_url}/api/jobs/", timeout=5).status_code in (401, 403)
    wait_for_nodes(ray_cluster, 2)  # the session's head and worker; a node another test lost is dead within ~20 s


def test_a_killed_raylet_loses_its_node(ray_cluster):
    node = ray_cluster.add_worker()
    assert ray_cluster.alive_nodes() == 3
    node.kill_raylet()
    wait_for_nodes(ray_cluster, 2)
    node.stop()
    ray_cluster.workers.remove(node)
