"""``hepstream models list | show | export``: what the model store holds, and standalone copies of a version."""

from __future__ import annotations

import json
from pathlib import Path

from hepstream.cli.jobs import config_argument
from hepstream.config import ConfigError, load_config


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list, show or export the versions in the model store")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("list", "versions with events seen and metrics"), ("show", "one version's metadata"),
                       ("export", "a version as TorchScript or ONNX, for Triton-style servers")):
        action = actions.add_parser(name, help=text)
        config_argument(action)
        action.add_argument("--model", help="model name (default: model.name of the config)")
        if name != "list":
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
                         "auc": meta.metrics.get("auc"), "log_loss": meta.metrics.get("log_loss")})
        print(json.dumps({"model": store.model, "store": str(store.root), "versions": rows}, indent=1))
    elif args.action == "show":
        print(store.read_meta(chosen_version(store, args)).to_json())
    else:
        from hepstream.models.export import export

        version = chosen_version(store, args)
        target = export(store.load(version), args.output, args.format)
        print(json.dumps({"model": store.model, "version": version, "format": args.format, "file": str(target)}))
    return 0
