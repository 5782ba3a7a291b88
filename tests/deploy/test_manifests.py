"""deploy/: every manifest valid for its schema, and the manifests, pipeline.yaml and the image agreeing.

Offline: no cluster, no kubectl, no Docker (tests/deploy/kube.py does the
validation). The RayService's application is built as Serve builds it, from
its ``import_path`` and ``args``, without starting Ray.
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml
from ray._common.utils import import_attr
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

from hepstream.cli import build_parser
from hepstream.config import Config, ServeConfig, config_from_dict
from hepstream.serve.deployment import ray_environment
from tests.deploy.kube import Manifest, problems, render

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = render(DEPLOY)
SCRIPTS = "/usr/local/bin"  # where pip in the python image puts hepstream's console scripts
KAFKA_PASSWORD_ENV = "HEPSTREAM_KAFKA_PASSWORD"


def one(kind: str) -> dict:
    (found,) = [manifest.body for manifest in MANIFESTS if manifest.kind == kind]
    return found


def every(kind: str) -> list[dict]:
    return [manifest.body for manifest in MANIFESTS if manifest.kind == kind]


def ray_clusters() -> dict[str, dict]:
    """Each RayJob's and RayService's Ray cluster spec, by the object's name."""
    return {body["metadata"]["name"]: body["spec"].get("rayClusterSpec") or body["spec"]["rayClusterConfig"]
            for body in every("RayJob") + every("RayService")}


def pod_specs(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]]


def containers() -> list[dict]:
    return [container for cluster in ray_clusters().values() for pod in pod_specs(cluster)
            for container in pod["containers"]]


def mount_path(pod: dict, kind: str, name: str) -> str:
    """Where ``pod`` mounts the volume made of the ``kind`` object named ``name`` (one container per pod)."""
    key = {"ConfigMap": ("configMap", "name"), "PersistentVolumeClaim": ("persistentVolumeClaim", "claimName"),
           "Secret": ("secret", "secretName")}[kind]
    (volume,) = [volume["name"] for volume in pod["volumes"] if volume.get(key[0], {}).get(key[1]) == name]
    (container,) = pod["containers"]
    (path,) = [mount["mountPath"] for mount in container["volumeMounts"] if mount["name"] == volume]
    return path


def pipeline() -> Config:
    configmap = one("ConfigMap")
    return config_from_dict(yaml.safe_load(configmap["data"]["pipeline.yaml"]), "deploy/pipeline-configmap.yaml")


def serve_application() -> tuple[ServeDeploySchema, dict]:
    """The RayService's Serve config as Serve reads it, and its one application."""
    deploy = ServeDeploySchema.model_validate(yaml.safe_load(one("RayService")["spec"]["serveConfigV2"]))
    (application,) = deploy.applications
    return deploy, application


# Schemas


def test_the_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {path.name for path in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(manifest.kind for manifest in MANIFESTS) == sorted([
        "ConfigMap", "PersistentVolumeClaim", "KafkaNodePool", "Kafka", "KafkaTopic", "KafkaUser",
        "RayJob", "RayJob", "RayService"])


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda manifest: f"{manifest.source}-{manifest.kind}")
def test_every_manifest_matches_its_schema(manifest: Manifest):
    assert problems(manifest.body) == []


def _set(body: dict, dotted: str, value) -> dict:
    broken = copy.deepcopy(body)
    *parents, last = dotted.split(".")
    node = broken
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    return broken


@pytest.mark.parametrize(("kind", "dotted", "value", "expected"), [
    ("RayService", "spec.rayClusterConfig.headGroupSpec.rayStartParam", {}, "Additional properties"),
    ("RayService", "spec.rayClusterConfig.authOptions.mode", "password", "'password' is not one of"),
    ("RayJob", "spec.rayClusterSpec.workerGroupSpecs.0.replicas", "two", "'two' is not of type 'integer'"),
    ("KafkaTopic", "spec.partitions", "eight", "'eight' is not of type 'integer'"),
    ("KafkaUser", "spec.authentication.type", "scram-sha-256", "'scram-sha-256' is not one of"),
    ("KafkaNodePool", "spec.roles", ["leader"], "'leader' is not one of"),
    ("Kafka", "spec.kafka.listener", [], "Additional properties"),
    ("PersistentVolumeClaim", "spec.accessModes", "ReadWriteMany", "is not of type 'array'"),
    ("ConfigMap", "data", {"pipeline.yaml": 3}, "3 is not of type 'string'"),
])
def test_a_broken_copy_is_refused(kind, dotted, value, expected):
    found = problems(_set(every(kind)[0], dotted, value))
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith(dotted.rsplit(".", 1)[0] if expected == "Additional properties" else dotted)


def test_an_unknown_kind_is_refused():
    assert problems({"apiVersion": "ray.io/v1", "kind": "RayCronJob", "metadata": {"name": "x"}}) == [
        "no schema for ray.io/v1 RayCronJob: neither a CRD in "
        f"{Path(__file__).parent / 'schemas'} nor a built-in kind of Kubernetes 1.32.0"]


# pipeline.yaml and the Kafka objects


def test_pipeline_reaches_the_strimzi_cluster_over_its_scram_listener():
    kafka, config = one("Kafka"), pipeline()
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["authentication"]["type"] == "scram-sha-512" and listener["tls"] is True
    assert config.kafka.bootstrap == f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    for body in every("KafkaNodePool") + every("KafkaTopic") + every("KafkaUser"):
        assert body["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]


def test_the_topic_is_the_one_the_pipeline_produces_to():
    topic, config = one("KafkaTopic")["spec"], pipeline()
    assert topic["topicName"] == config.dataset.topic
    assert topic["partitions"] == config.kafka.partitions >= config.training.workers
    assert topic["config"]["max.message.bytes"] == config.kafka.max_message_bytes
    assert one("Kafka")["spec"]["kafka"]["config"]["message.max.bytes"] >= config.kafka.max_message_bytes


def test_the_kafka_user_may_use_the_dataset_topics():
    acls, config = one("KafkaUser")["spec"]["authorization"]["acls"], pipeline()
    (topics,) = [acl for acl in acls if acl["resource"]["type"] == "topic"]
    assert topics["resource"]["patternType"] == "prefix"
    assert config.dataset.topic.startswith(topics["resource"]["name"])
    assert {"Read", "Write", "Create"} <= set(topics["operations"])


def test_kafka_clients_get_the_users_password_and_the_cluster_ca():
    user, kafka = one("KafkaUser")["metadata"]["name"], one("Kafka")["metadata"]["name"]
    for body in every("RayJob"):
        for pod in pod_specs(body["spec"]["rayClusterSpec"]):
            (container,) = pod["containers"]
            (password,) = [env for env in container["env"] if env["name"] == KAFKA_PASSWORD_ENV]
            assert password["valueFrom"]["secretKeyRef"] == {"name": user, "key": "password"}
            assert mount_path(pod, "Secret", f"{kafka}-cluster-ca-cert") == "/etc/kafka-ca"


# Ray clusters, jobs and the served application


def test_ray_clusters_run_the_pinned_ray_with_token_auth():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "ray[serve]==2.60.0" in pins and ray.__version__ == "2.60.0"
    for name, cluster in ray_clusters().items():
        assert (name, cluster["rayVersion"], cluster["authOptions"]) == (name, "2.60.0", {"mode": "token"})


def test_jobs_run_hepstream_on_the_mounted_pipeline():
    configmap = one("ConfigMap")["metadata"]["name"]
    commands = {}
    for body in every("RayJob"):
        argv = shlex.split(body["spec"]["entrypoint"])
        for pod in pod_specs(body["spec"]["rayClusterSpec"]):
            assert argv[-2:] == ["--config", f"{mount_path(pod, 'ConfigMap', configmap)}/pipeline.yaml"]
        parsed = build_parser().parse_args(argv[1:])
        commands[parsed.command] = argv[0]
    assert commands == {"produce": "hepstream", "train": "hepstream"}


def test_the_store_is_the_claim_where_pipeline_yaml_says():
    claim, config = one("PersistentVolumeClaim"), pipeline()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    trainer = [body for body in every("RayJob") if "train" in body["spec"]["entrypoint"]][0]
    for cluster in [trainer["spec"]["rayClusterSpec"], ray_clusters()["hepstream-serve"]]:
        for pod in pod_specs(cluster):
            assert mount_path(pod, "PersistentVolumeClaim", claim["metadata"]["name"]) == str(config.store.path)


def test_the_served_application_builds_from_its_import_path_and_args():
    deploy, application = serve_application()
    app = call_user_app_builder_with_args_if_necessary(import_attr(application.import_path), application.args)
    assert isinstance(app, Application)
    config, args = pipeline(), application.args
    assert (args["store"], args["model"]) == (str(config.store.path), config.model.name)
    served = ServeConfig.model_validate({key: value for key, value in args.items() if key not in ("store", "model")})
    assert served == config.serve
    assert (deploy.http_options.host, deploy.http_options.port) == (config.serve.http.host, config.serve.http.port)


def test_the_served_application_refuses_args_it_cannot_build():
    _, application = serve_application()
    with pytest.raises(ValueError, match="1000 exceeds serve.scaling.max_ongoing_requests"):
        call_user_app_builder_with_args_if_necessary(import_attr(application.import_path),
                                                     {**application.args, "batching": {"max_size": 1000}})


def test_ray_pods_start_with_the_environment_hepstream_serve_would_set():
    expected = ray_environment(pipeline().serve)
    expected["RAY_SERVE_HAPROXY_BINARY_PATH"] = f"{SCRIPTS}/hepstream-haproxy"
    assert expected["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    for pod in pod_specs(ray_clusters()["hepstream-serve"]):
        (container,) = pod["containers"]
        ray_variables = {env["name"]: env["value"] for env in container["env"] if env["name"] in expected}
        assert ray_variables == expected
        assert not {env["name"] for env in container["env"] if env["name"].startswith("RAY_")} - expected.keys()


# The image


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (keyword, arguments), continuation lines joined, comments left out."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in lines]


def test_the_dockerfile_parses_into_known_instructions():
    instructions = dockerfile()
    known = {"FROM", "RUN", "ENV", "ARG", "WORKDIR", "COPY", "USER", "LABEL"}
    assert {keyword for keyword, _ in instructions} <= known
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert instructions[-2:] == [("USER", "1000"), ("WORKDIR", "/home/ray")]


def test_the_image_the_dockerfile_builds_is_the_one_every_pod_runs():
    (tag,) = re.findall(r"docker build -f deploy/Dockerfile -t (\S+) \.", (DEPLOY / "Dockerfile").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert tag.endswith(f"/hepstream:{version}")
    assert {container["image"] for container in containers()} == {tag}


def test_the_image_installs_every_package_folder_and_dev_shs_torch():
    instructions = dockerfile()
    copied = {arguments.split()[0].rstrip("/") for keyword, arguments in instructions if keyword == "COPY"}
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    assert {folder.split("/")[0] for folder in folders} <= copied
    (dev_torch,) = re.findall(r"TORCH=\$\{HEPSTREAM_TORCH:-(\S+)\}", (ROOT / "dev.sh").read_text())
    assert ("ARG", f"TORCH={dev_torch}") in instructions
    assert ("RUN", "pip install .") in instructions
