"""``hepstream models list | show | export | promote``: what the model store holds, standalone copies of a
version, and an operator's promotion of a version the quality gate held back."""

from __future__ import annotations

import getpass
import json
import logging
import time
from pathlib import Path

from hepstream.cli.jobs import config_argument
from hepstream.config import ConfigError, load_config

log = logging.getLogger(__name__)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list, show or export the versions in the model store")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("list", "versions with events seen and metrics"), ("show", "one version's metadata"),
                       ("export", "a version as TorchScript or ONNX, for Triton-style servers"),
                       ("promote", "force a version the quality gate rejected into service (logged)")):
        action = actions.add_parser(name, help=text)
        config_argument(action)
        action.add_argument("--model", help="model name (default: model.name of the config)")
        if name == "promote":
            action.add_argument("version", type=int, metavar="VERSION", help="the version to serve")
        elif name != "list":
            action.add_argument("--version", type=int, help="version (default: the newest)")
        if name == "export":
            action.add_argument("--format", choices=("torchscript", "onnx"), default="onnx")
            action.add_argument("--output", type=Path, required=True, help="folder to write into")
        action.set_defaults(run=run, action=name)


def _store(args):
    from hepstream.models.store import ModelStore

    config = load_config(args.config)
    return ModelStore(config.store.path, args.model or config.model.name, config.store.keep)


def chosen_version(store, args) -> int:
    version = args.version if args.version is not None else store.latest()
    if version is None or version not in store.versions():
        raise ConfigError(f"model {store.model!r} in {store.root} has no version {version} "
                          f"(versions: {store.versions()[-10:]})")
    return version


def run(args) -> int:
    store = _store(args)
    if args.action == "list":
        rows = []
        for version in store.versions():
            meta = store.read_meta(version)
            rows.append({"version": version, "parent": meta.parent, "created": meta.created,
                         "kind": meta.model.get("kind"), "events_seen": meta.events_seen,
                         "auc": meta.metrics.get("auc"), "log_loss": meta.metrics.get("log_loss"),
                         "validation_auc": (meta.validation or {}).get("auc"), "promoted": meta.promoted,
                         "promotion_reason": meta.promotion_reason})
        print(json.dumps({"model": store.model, "store": str(store.root), "served": store.latest_servable(),
                          "versions": rows}, indent=1))
    elif args.action == "promote":
        version = chosen_version(store, args)
        before = store.read_meta(version)
        reason = (f"forced by {getpass.getuser()} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
                  f" (was: {before.promotion_reason or 'promoted'})")
        store.promote(version, reason)
        log.warning("model %s version %d promoted by an operator: %s", store.model, version, reason)
        print(json.dumps({"model": store.model, "version": version, "promoted": True, "promotion_reason": reason,
                          "served": store.latest_servable()}))
    elif args.action == "show":
        print(store.read_meta(chosen_version(store, args)).to_json())
    else:
        from hepstream.models.export import export

        version = chosen_version(store, args)
        target = export(store.load(version), args.output, args.format)
        print(json.dumps({"model": store.model, "version": version, "format": args.format, "file": str(target)}))
    return 0
