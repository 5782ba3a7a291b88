"""Request size limits: 413 before a large body fills memory, declared or chunked."""

from __future__ import annotations

import pytest
import requests


@pytest.fixture
def served(serve_standin, store, standins):
    served = serve_standin(http={"max_request_bytes": 1000})
    standins.serve_version(served, store, 1)
    return served


def test_a_declared_body_over_the_limit_is_413(served):
    events = {"events": [{"MET_pt": 1.0, "Muon_pt": [1.0] * 300}]}
    answer = requests.post(f"{served.url}/v1/models/demo/predict", json=events, timeout=10)
    assert (answer.status_code, answer.json()["field"]) == (413, "body")
    small = {"events": [{"MET_pt": 1.0, "Muon_pt": [1.0] * 10}]}
    assert requests.post(f"{served.url}/v1/models/demo/predict", json=small, timeout=10).status_code == 200


@pytest.mark.parametrize("path", ["/v1/models/demo/predict", "/v2/models/demo/infer", "/json"])
def test_a_chunked_body_is_cut_off_at_the_limit(served, path):
    chunks = iter([b'{"events": [', b" " * 600, b" " * 600, b"]}"])  # no Content-Length: chunked
    answer = requests.post(served.url + path, data=chunks, timeout=10)
    assert answer.status_code == 413
