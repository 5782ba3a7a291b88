"""Offline checks of Kubernetes manifests: the kustomization rendered, each object held against its schema.

No cluster and no kubectl here, so this does what the API server would do at
``kubectl apply --validate=strict``, as far as a schema says: custom resources
against the ``openAPIV3Schema`` of their CRD (kept in ``schemas/``, see its
README), built-in kinds against the Kubernetes schemas bundled with
``kubernetes-validate``. Like the API server, defaults are filled in before
validation (KubeRay requires ``minReplicas`` but defaults it) and an unknown
field is an error unless the schema keeps unknown fields. CEL rules
(``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = Path(__file__).parent / "schemas"
KUBERNETES_VERSION = "1.32.0"  # the oldest release the manifests are meant for: KubeRay 1.7 and Strimzi 1.2 run on it
_RENDERED_KEYS = {"apiVersion", "kind", "resources"}


@dataclass(frozen=True)
class Manifest:
    """One object of the rendered kustomization, with the file (and document) it came from."""

    source: str
    body: dict

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]


def render(folder: Path) -> list[Manifest]:
    """The objects ``kubectl apply -k folder`` would send, for a kustomization that only lists ``resources``.

    Any other kustomization feature (patches, generators, images) would change
    the objects, so it is refused rather than ignored.
    """
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = sorted(kustomization.keys() - _RENDERED_KEYS)
    if unknown:
        raise ValueError(f"{folder / 'kustomization.yaml'}: {unknown} not rendered by this test; teach render() them")
    manifests = []
    for resource in kustomization["resources"]:
        documents = [body for body in yaml.safe_load_all((folder / resource).read_text()) if body is not None]
        manifests += [Manifest(f"{resource}#{index}", body) for index, body in enumerate(documents)]
    return manifests


def problems(body: dict) -> list[str]:
    """What the API server would refuse in this object, each naming the field at fault; empty: none."""
    schema = crd_schema(body.get("apiVersion", ""), body.get("kind", ""))
    if schema is None:
        return _builtin_problems(body)
    filled = copy.deepcopy(body)
    fill_defaults(schema, filled)
    errors = jsonschema.Draft4Validator(schema).iter_errors(filled)
    return sorted(f"{'.'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}" for error in errors)


def _builtin_problems(body: dict) -> list[str]:
    try:
        kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {body.get('apiVersion')} {body.get('kind')}: neither a CRD in {SCHEMAS} "
                f"nor a built-in kind of Kubernetes {KUBERNETES_VERSION}"]
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}"]
    return []


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict | None:
    """The JSON Schema of a custom resource, from its CRD's ``openAPIV3Schema``; None for other kinds."""
    group, _, version = api_version.rpartition("/")
    path = SCHEMAS / f"{group}_{version}_{kind}.json"
    return _as_json_schema(json.loads(path.read_text())) if group and path.is_file() else None


def _as_json_schema(node: Any) -> Any:
    """An OpenAPI v3 schema of Kubernetes as JSON Schema: ``x-kubernetes-*`` keys dropped, objects closed.

    An object whose schema lists its properties takes no others, unless it is
    marked ``x-kubernetes-preserve-unknown-fields`` (the API server's strict
    field validation).
    """
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _as_json_schema(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        converted["additionalProperties"] = False
    return converted


def fill_defaults(schema: dict, instance: Any) -> None:
    """Set the schema's defaults for fields ``instance`` leaves out, at every depth, as the API server does."""
    if isinstance(instance, dict):
        for name, field in schema.get("properties", {}).items():
            if name not in instance and "default" in field:
                instance[name] = copy.deepcopy(field["default"])
            if name in instance:
                fill_defaults(field, instance[name])
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            fill_defaults(schema["items"], item)
