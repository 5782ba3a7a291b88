"""Bearer tokens from a file and from the environment; health stays open to probes."""

from __future__ import annotations

import pytest
import requests

EVENTS = {"events": [{"MET_pt": 1.0, "Muon_pt": []}]}


@pytest.fixture
def served(serve_standin, store, standins, tmp_path, monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\nfile-token-1\n\nfile-token-2  # the batch farm\n")
    monkeypatch.setenv("TEST_TOKENS", "env-token, other-env-token")
    served = serve_standin(auth={"tokens_file": tokens, "tokens_env": "TEST_TOKENS"})
    standins.serve_version(served, store, 1)
    return served


@pytest.mark.parametrize("path", ["/v1/models/demo/predict", "/v2/models/demo/infer", "/json"])
def test_no_token_is_401_and_a_wrong_one_403(served, path):
    none = requests.post(served.url + path, json=EVENTS, timeout=10)
    assert (none.status_code, none.json()["field"]) == (401, "Authorization")
    assert none.headers["WWW-Authenticate"].startswith("Bearer")
    for header in ("Bearer wrong", "Bearer file-token-1x", "Basic file-token-1", "Bearer "):
        wrong = requests.post(served.url + path, json=EVENTS, headers={"Authorization": header}, timeout=10)
        assert wrong.status_code == 403, header


@pytest.mark.parametrize("token", ["file-token-1", "file-token-2", "env-token", "other-env-token"])
def test_every_configured_token_is_accepted(served, token):
    answer = requests.post(f"{served.url}/v1/models/demo/predict", json=EVENTS,
                           headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200


def test_health_is_open_and_everything_else_is_not(served):
    for path in ("/v1/health/live", "/v1/health/ready", "/v2/health/live", "/v2/health/ready"):
        assert requests.get(served.url + path, timeout=10).status_code == 200, path
    for path in ("/v1/models", "/v1/models/demo", "/metrics", "/openapi.json", "/v2/models/demo", "/nowhere"):
        assert requests.get(served.url + path, timeout=10).status_code == 401, path


def test_a_tokens_file_that_cannot_be_read_stops_the_server_from_starting(serve_standin, tmp_path):
    with pytest.raises(RuntimeError, match="serve.auth.tokens_file"):
        serve_standin(auth={"tokens_file": tmp_path / "absent"})
