"""``tfmoe query``: ask a model server (real or local) for recommendations, scores, metadata or status.

Histories are item ids, oldest first: ``--history 5,6,7`` (repeat for more users) or ``--file``
with one user per line (ids separated by spaces or commas, a JSON list, or a JSON object of
``tf.Example`` features such as ``{"items": [5, 6], "target_item": 9}``).

Example:
    $ tfmoe query status   --model recs
    $ tfmoe query metadata --model recs --version 3
    $ tfmoe query top-k    --model recs --history 5,6,7 --history 9,2 --label canary
    $ tfmoe query predict  --model recs --history 5,6,7 --show 5
    $ tfmoe query classify --model ctr  --history 5,6,7 --target-item 12
"""

from __future__ import annotations

import argparse
import json
import re
import sys


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default="127.0.0.1:8500", help="server host:port (default: %(default)s)")
    common.add_argument("--model", required=True, help="model name")
    choice = common.add_mutually_exclusive_group()
    choice.add_argument("--version", type=int, help="a specific version (default: the latest)")
    choice.add_argument("--label", help="a version label, e.g. stable or canary")
    common.add_argument("--timeout", type=float, default=10.0, help="deadline per call in seconds (default: 10)")
    common.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE (default: %(default)s)")

    users = argparse.ArgumentParser(add_help=False)
    users.add_argument("--history", action="append", default=[], metavar="IDS",
                       help="one user's item ids, oldest first, comma separated (repeat for more users)")
    users.add_argument("--file", help="one user per line: ids, a JSON list, or a JSON object of tf.Example features")
    users.add_argument("--history-key", default="items", help="tf.Example key of the history (default: items)")

    parser = subparsers.add_parser("query", help="query a model server over gRPC",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    status = actions.add_parser("status", parents=[common], help="versions and their states (GetModelStatus)")
    status.set_defaults(func=run_status)
    metadata = actions.add_parser("metadata", parents=[common], help="signatures (GetModelMetadata)")
    metadata.set_defaults(func=run_metadata)

    top_k = actions.add_parser("top-k", parents=[common, users], help="top-k items per user (top_k signature)")
    top_k.add_argument("--include-seen", action="store_true", help="allow items already in the history")
    top_k.add_argument("--signature", default="top_k")
    top_k.add_argument("--max-len", type=int, help="history length of the model (default: from metadata)")
    top_k.set_defaults(func=run_top_k)

    predict = actions.add_parser("predict", parents=[common, users], help="Predict on tf.Examples")
    predict.add_argument("--signature", default="serving_default")
    predict.add_argument("--target-item", type=int, action="append", default=[],
                         help="candidate item per user, for CTR models (repeat per user)")
    predict.add_argument("--target-key", default="target_item")
    predict.add_argument("--show", type=int, default=10, help="items shown per user for score outputs")
    predict.set_defaults(func=run_predict)

    classify = actions.add_parser("classify", parents=[common, users], help="Classify tf.Examples (CTR models)")
    classify.add_argument("--signature", default="classify")
    classify.add_argument("--target-item", type=int, action="append", default=[])
    classify.add_argument("--target-key", default="target_item")
    classify.set_defaults(func=run_classify)


def parse_line(line: str):
    """A history (list of ids) or a feature dict from one input line; ``ValueError`` if neither."""
    line = line.strip()
    if line.startswith(("[", "{")):
        value = json.loads(line)
        if isinstance(value, dict) or (isinstance(value, list) and all(isinstance(i, int) for i in value)):
            return value
        raise ValueError(f"expected a JSON list of ids or an object of features, got {line!r}")
    return [int(token) for token in re.split(r"[\s,]+", line) if token]


def read_users(args) -> list:
    """Histories / feature dicts from ``--history`` and ``--file``."""
    users = [parse_line(text) for text in args.history]
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            users += [parse_line(line) for line in f if line.strip()]
    if not users:
        raise ValueError("give at least one --history or a --file")
    return users


def _examples(args, users) -> list:
    targets = getattr(args, "target_item", [])
    if targets and len(targets) != len(users):
        raise ValueError(f"got {len(targets)} --target-item for {len(users)} users; give one per user")
    examples = []
    for row, user in enumerate(users):
        features = dict(user) if isinstance(user, dict) else {args.history_key: user}
        if targets:
            features[args.target_key] = targets[row]
        examples.append(features)
    return examples


def _client(args):
    from tfmoe.serving.client import ServingClient

    return ServingClient(args.target, timeout=args.timeout, retries=args.retries)


def _run(args, body) -> int:
    """Runs ``body(client)``, printing serving errors and bad inputs as one readable line."""
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()  # before TensorFlow loads: no C++ start-up chatter around the results
    try:
        from tfmoe.serving.errors import ServingError
    except ImportError as err:
        print(f"tfmoe query: tfmoe.serving cannot be imported ({err}); install the serving extra: "
              "pip install 'tfmoe[serving]'",
              file=sys.stderr)
        return 2

    try:
        with _client(args) as client:
            body(client)
    except ServingError as err:
        print(f"tfmoe query: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"tfmoe query: {err}", file=sys.stderr)
        return 2
    return 0


def run_status(args) -> int:
    def body(client):
        for s in client.status(args.model, args.version, args.label):
            detail = "" if s.error_code == "OK" else f"  {s.error_code}: {s.error_message}"
            print(f"{args.model}  version {s.version}  {s.state}{detail}")

    return _run(args, body)


def _spec_text(info) -> str:
    shape = "?" if info.shape is None else "[" + ",".join("?" if d < 0 else str(d) for d in info.shape) + "]"
    return f"{info.dtype.replace('DT_', '').lower()}{shape}"


def run_metadata(args) -> int:
    def body(client):
        meta = client.metadata(args.model, args.version, args.label)
        print(f"model {meta.model} version {meta.version}")
        for name, sig in sorted(meta.signatures.items()):
            if name.startswith("__"):
                continue
            inputs = ", ".join(f"{a}: {_spec_text(i)}" for a, i in sorted(sig.inputs.items()))
            outputs = ", ".join(f"{a}: {_spec_text(i)}" for a, i in sorted(sig.outputs.items()))
            print(f"  {name} ({sig.method_name})\n    inputs:  {inputs}\n    outputs: {outputs}")

    return _run(args, body)


def _history_text(user) -> str:
    return " ".join(str(i) for i in user) if isinstance(user, list) else json.dumps(user)


def run_top_k(args) -> int:
    def body(client):
        users = read_users(args)
        if any(not isinstance(u, list) for u in users):
            raise ValueError("top-k takes histories (id lists), not feature objects")
        top = client.top_k(args.model, users, exclude_seen=not args.include_seen, max_len=args.max_len,
                           signature=args.signature, version=args.version, label=args.label)
        print(f"model {args.model} version {top.version}")
        for row, user in enumerate(users):
            items = ", ".join(f"{int(i)} ({s:.4f})" for i, s in zip(top.item_ids[row], top.scores[row]) if i >= 0)
            print(f"user {row} (history {_history_text(user)}): {items}")

    return _run(args, body)


def run_predict(args) -> int:
    import numpy as np

    def body(client):
        users = read_users(args)
        result = client.predict_examples(args.model, _examples(args, users), signature=args.signature,
                                         version=args.version, label=args.label)
        print(f"model {result.model} version {result.version} signature {result.signature}")
        for alias, value in sorted(result.outputs.items()):
            for row, user in enumerate(users):
                head = f"user {row} (history {_history_text(user)}) {alias}"
                if value.ndim == 2 and value.shape[1] > 1:
                    best = np.argsort(-value[row], kind="stable")[:args.show]
                    print(f"{head}: " + ", ".join(f"{int(i)} ({value[row, i]:.4f})" for i in best))
                else:
                    print(f"{head}: {np.array2string(np.asarray(value[row]), precision=4)}")

    return _run(args, body)


def run_classify(args) -> int:
    def body(client):
        users = read_users(args)
        result = client.classify(args.model, _examples(args, users), signature=args.signature,
                                 version=args.version, label=args.label)
        print(f"model {args.model} version {result.version}")
        for row, user in enumerate(users):
            classes = ", ".join(f"{label}: {score:.4f}" for label, score in zip(result.labels[row], result.scores[row]))
            print(f"row {row} ({_history_text(user)}): {classes}")

    return _run(args, body)
