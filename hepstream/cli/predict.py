"""``hepstream predict``: score a ROOT file through a running server, scores written as a friend tree.

The file's events go to the server as Arrow batches in the branch space the
model reads (``GET /v1/models/{name}`` says which branches); the scores come
back in order and are written, with each event's ``run`` and ``event``
numbers and the version that scored it, as a TTree of the same length and
order. In ROOT, ``events->AddFriend("scores", "scores.root")`` then lines them
up entry by entry, and ``BuildIndex("run", "event")`` by event number; in
uproot, read both trees and join on ``run`` and ``event``.
"""

from __future__ import annotations

import os
import sys

ID_BRANCHES = ("run", "event")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="score a ROOT file through a hepstream server")
    parser.add_argument("file", help="ROOT file (local path, root:// or https:// URL)")
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--out", required=True, help="ROOT file to write the scores to (replaced)")
    parser.add_argument("--tree", default="Events", help="tree to read (default: Events)")
    parser.add_argument("--out-tree", default="scores", help="tree to write (default: scores)")
    parser.add_argument("--model", help="model name (default: the one the server serves)")
    parser.add_argument("--version", type=int, help="pin this model version instead of the newest")
    parser.add_argument("--batch", type=int, default=20_000, help="events per request (default: 20000)")
    parser.add_argument("--token", default=os.environ.get("HEPSTREAM_TOKEN"),
                        help="bearer token, if the server needs one (env HEPSTREAM_TOKEN)")
    parser.set_defaults(run=run)


def run(args) -> int:
    import awkward as ak
    import numpy as np
    import uproot

    from hepstream.serve.client import Client, ClientError

    client = Client(args.url, token=args.token)
    try:
        model = args.model or client.models()[0]["name"]
        inputs = [branch["name"] for branch in client.model(model)["inputs"]]
    except ClientError as error:
        print(f"hepstream predict: {error}", file=sys.stderr)
        return 1
    with uproot.open(args.file) as source:
        tree = source[args.tree]
        missing = [name for name in (*inputs, *ID_BRANCHES) if name not in tree.keys()]
        if missing:
            print(f"hepstream predict: {args.file}:{args.tree} lacks {', '.join(missing)}", file=sys.stderr)
            return 1
        with uproot.recreate(args.out) as sink:
            scores_tree = sink.mktree(args.out_tree, {"run": np.uint32, "event": np.uint64, "score": np.float32,
                                                      "model_version": np.int32})
            events = 0
            for arrays in tree.iterate([*inputs, *ID_BRANCHES], step_size=args.batch, library="ak"):
                table = ak.to_arrow_table(arrays[inputs], extensionarray=False)
                try:
                    scores, version = client.predict_arrow(model, table, args.version)
                except ClientError as error:
                    print(f"hepstream predict: events {events}-{events + len(arrays)}: {error}", file=sys.stderr)
                    return 1
                scores_tree.extend({"run": ak.to_numpy(arrays["run"]).astype(np.uint32),
                                    "event": ak.to_numpy(arrays["event"]).astype(np.uint64),
                                    "score": scores, "model_version": np.full(len(scores), version, np.int32)})
                events += len(arrays)
    print(f"{events} events of {args.file} scored by {model}; scores in {args.out}:{args.out_tree}", file=sys.stderr)
    return 0
