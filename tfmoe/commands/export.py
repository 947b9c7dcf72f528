"""``tfmoe export``: write a trained model as a TF Serving model version (``<base-path>/<version>/``).

The model is a ``.keras`` file or a trainer output directory (its ``model.keras``, the best
model). Its serving inputs and task come from the model (:func:`tfmoe.serving.model_specs.spec_for_model`):
next-item models get ``serving_default`` (``tf.Example``), ``predict_raw`` and ``top_k``; CTR models
``serving_default``, ``predict_raw`` and ``classify``. Warmup requests go to
``assets.extra/tf_serving_warmup_requests``; the version is verified against the in-memory model
and published atomically, so a polling server never sees half of it.

Example:
    $ tfmoe export runs/sasrec --base-path /srv/models/recs --top-k 20
    $ tfmoe export runs/sasrec/model.keras --base-path /srv/models/recs --version 7 --no-warmup
    $ tfmoe serve --model_name=recs --model_base_path=/srv/models/recs
"""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a trained model as a TF Serving model version",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .keras file or a trainer output directory (holding model.keras)")
    parser.add_argument("--base-path", required=True,
                        help="the model's directory of integer versions, e.g. /srv/models/recs")
    parser.add_argument("--version", type=int, help="version number (default: one more than the largest)")
    parser.add_argument("--model-name", help="model name in the warmup requests (default: the base path's name)")
    parser.add_argument("--top-k", type=int, default=10, help="items returned by top_k (default: %(default)s)")
    parser.add_argument("--min-history", type=int, default=1,
                        help="non-padding history ids a request needs; 0 allows empty histories (default: 1)")
    parser.add_argument("--features", help="CTR model inputs, comma separated (default: from the model)")
    parser.add_argument("--warmup-batch-sizes", default="1",
                        help="one warmup request per signature and batch size, comma separated (default: 1)")
    parser.add_argument("--no-warmup", action="store_true", help="write no tf_serving_warmup_requests")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip reloading the SavedModel and comparing every signature with the model")
    parser.add_argument("--xla", action="store_true",
                        help="compile the model with XLA (faster on CPU; the server binary must include XLA)")
    parser.set_defaults(func=run)


def _int_list(text: str, flag: str) -> tuple:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} must list at least one integer")
    return values


def run(args) -> int:
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    from tfmoe.serving import model_specs
    from tfmoe.serving.export import ExportVerificationError, export_model

    base_path = os.path.abspath(args.base_path)
    name = args.model_name or os.path.basename(base_path.rstrip(os.sep))
    try:
        batch_sizes = _int_list(args.warmup_batch_sizes, "--warmup-batch-sizes")
        model = model_specs.load_model(args.model)
        features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
        spec = model_specs.spec_for_model(model, top_k=args.top_k, features=features, min_history=args.min_history)
        result = export_model(model, base_path, spec, version=args.version, model_name=name,
                              warmup_batch_sizes=batch_sizes, verify_export=not args.no_verify,
                              warmup_requests=not args.no_warmup, jit_compile=args.xla)
    except (ValueError, OSError, ExportVerificationError) as err:
        print(f"tfmoe export: {err}", file=sys.stderr)
        return 2
    inputs = ", ".join(f"{f.name} (tf.Example key {f.key!r})" for f in spec.features)
    print(f"exported {type(model).__name__} ({spec.task}) as version {result.version} of {name!r}: {result.path}")
    print(f"  signatures: {', '.join(result.signatures)}; inputs: {inputs}; warmup requests: {result.warmup_records}")
    print(f"  serve it:   tfmoe serve --model_name={name} --model_base_path={base_path}")
    return 0
