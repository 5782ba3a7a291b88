"""What ``hepstream submit`` sends, built without a cluster: the token it shows, the paths, the job's spec."""

from __future__ import annotations

import pytest
import yaml

from hepstream.config import config_from_dict
from hepstream.job_paths import absolute_paths
from hepstream.ray_jobs import ClusterError, cluster_token, job_server_address, job_spec


def test_the_token_is_looked_up_as_ray_does(tmp_path):
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "named").write_text("from-path")
    assert cluster_token({"RAY_AUTH_TOKEN": "from-env", "HOME": str(tmp_path)}) == ("from-env", "RAY_AUTH_TOKEN")
    assert cluster_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "named"), "HOME": str(tmp_path)}) == (
        "from-path", f"RAY_AUTH_TOKEN_PATH {tmp_path}/named")
    assert cluster_token({"HOME": str(tmp_path)}) == ("from-home", f"{tmp_path}/.ray/auth_token")
    assert cluster_token({"HOME": str(tmp_path / "nobody")}) == (None, "")
    with pytest.raises(ClusterError, match=r"cannot read the Ray token file \(RAY_AUTH_TOKEN_PATH .*/gone\): No such"):
        cluster_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "gone")})


def test_the_address_comes_from_the_flag_or_rays_variables():
    assert job_server_address(None, {"RAY_ADDRESS": "http://head:8265"}) == "http://head:8265"
    assert job_server_address("http://a:1", {"RAY_API_SERVER_ADDRESS": "http://b:2"}) == "http://a:1"
    with pytest.raises(ClusterError, match="give --address http://HEAD:8265"):
        job_server_address(None, {})


def test_every_relative_local_path_becomes_absolute_and_is_named(tmp_path):
    config = config_from_dict({
        "dataset": {"files": [{"url": "data/a.root"}, {"url": "root://eos//b.root"}, {"url": "/abs/c.root"}],
                    "samples": [{"name": "s", "file_list": "lists/s.txt"}]},
        "producer": {"manifest": "manifest.jsonl"},
        "serve": {"auth": {"tokens_file": "/etc/tokens"}},
    })
    config, changes = absolute_paths(config, tmp_path)
    assert changes == [
        ("dataset.files.0.url", "data/a.root", f"{tmp_path}/data/a.root"),
        ("dataset.samples.0.file_list", "lists/s.txt", f"{tmp_path}/lists/s.txt"),
        ("producer.manifest", "manifest.jsonl", f"{tmp_path}/manifest.jsonl"),
        ("store.path", "hepstream-store", f"{tmp_path}/hepstream-store"),
    ]
    assert [f.url for f in config.dataset.files] == [f"{tmp_path}/data/a.root", "root://eos//b.root", "/abs/c.root"]


def test_the_job_gets_its_config_its_grace_and_the_users_model_module(tmp_path):
    (tmp_path / "mymodels.py").write_text("def build(config, features, training): ...\n")
    (tmp_path / "staging").mkdir()
    config = config_from_dict({"model": {"kind": "user", "factory": "mymodels:build"},
                               "training": {"threads": 2, "device": "cuda"},
                               "submit": {"python": "/opt/venv/bin/python", "stop_grace_s": 45, "env": {"A": "1"}}})
    spec = job_spec("train", config, tmp_path, tmp_path / "staging", {"B": "2"})
    assert spec.entrypoint == "/opt/venv/bin/python -m hepstream train --config pipeline.yaml"
    assert spec.runtime_env == {"working_dir": str(tmp_path / "staging"), "py_modules": [str(tmp_path / "mymodels.py")],
                                "env_vars": {"A": "1", "B": "2", "RAY_JOB_STOP_WAIT_TIME_S": "45"}}
    assert (spec.num_cpus, spec.num_gpus) == (2, 1)  # a single trainer learns in the job's own process
    shipped = config_from_dict(yaml.safe_load((tmp_path / "staging" / "pipeline.yaml").read_text()))
    assert shipped == config  # the file the job reads is the configuration, key for key
    coordinating = config_from_dict({"training": {"workers": 2}, "producer": {"ray_tasks": 2}})
    assert [job_spec(job, each, tmp_path, tmp_path / "staging", {}).num_cpus
            for job in ("produce", "train", "serve") for each in (config, coordinating)] == [1, 0, 2, 0, 0, 0]
