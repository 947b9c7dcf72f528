"""``tfmoe quickstart``: the whole production flow on built-in synthetic data, in one command.

Steps (each prints what it did and how long it took):

1. The TFX pipeline (``pipelines/moe_pipeline.py``, run in-process by TFX's ``LocalDagRunner``):
   synthetic session-hopping logs -> tfmoe's Beam preparation job -> StatisticsGen ->
   ImportSchemaGen -> ExampleValidator -> Trainer (tfmoe's trainer, MirroredStrategy) ->
   Evaluator (TFMA HR@10, gated) -> Pusher (``<workdir>/serving/<model name>/<version>``).
2. A model server on 127.0.0.1 over the pushed versions (the real ``tensorflow_model_server`` when
   installed, else tfmoe's local server with the same gRPC API).
3. One gRPC ``top_k`` request: the top-10 recommendations of a few test users.

A rerun reuses every unchanged component from the pipeline's cache (it then re-evaluates against
the last blessed model and pushes again only if the new evaluation blesses it).

Example:
    $ tfmoe quickstart --workdir /tmp/tfmoe-quickstart
    $ tfmoe quickstart --model fame --epochs 5 --preset tiny
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

# The Evaluator's gate on the quickstart's data (synthetic `small`: 800 items): HR@10 over the whole catalogue,
# seen items not filtered (TFMA's top-k accuracy). Random scores hit 10 / 800 = 0.0125; an untrained model and
# a popularity scorer stay below 0.05, and the quickstart's trained SASRec reaches about three times it
# (tests/test_quickstart_gate.py checks both sides).
HR_THRESHOLD = 0.05


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="run the whole flow on built-in data: TFX pipeline -> model server -> gRPC query",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", default="runs/quickstart", help="where all outputs go (default: %(default)s)")
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "medium"),
                        help="synthetic data size preset (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--model", default="sasrec", help="model registry name (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default: %(default)s)")
    parser.add_argument("--max-len", type=int, default=50, help="history length (default: %(default)s)")
    parser.add_argument("--hidden-dim", type=int, default=32, help="model width (default: %(default)s)")
    parser.add_argument("--users", type=int, default=3, help="users to recommend for (default: %(default)s)")
    parser.add_argument("--hr-threshold", type=float, default=HR_THRESHOLD,
                        help="HR@10 (TFMA, full catalogue) the Evaluator requires before pushing "
                             "(default: %(default)s)")
    parser.set_defaults(func=run)


def _step(title: str):
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(started: float) -> None:
    print(f"   done in {time.perf_counter() - started:.1f} s", flush=True)


def run(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\..*")
    import importlib.util

    missing = [name for name in ("tfx", "tensorflow_serving") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"tfmoe quickstart: {', '.join(missing)} not installed; the quickstart runs the TFX pipeline and "
              "serves its model: pip install 'tfmoe[tfx,serving]' (Python 3.10)")
        return 2
    from tfmoe.tfx.config import PipelineConfig

    total = time.perf_counter()
    workdir = pathlib.Path(args.workdir).resolve()
    config = PipelineConfig(home=str(workdir), synthetic_preset=args.preset, seed=args.seed, model=args.model,
                            epochs=args.epochs, max_len=args.max_len, hr_threshold=args.hr_threshold,
                            model_args={"hidden_dim": args.hidden_dim}, pipeline_name="tfmoe_quickstart",
                            train_overrides=("training.verbose=0",))

    t = _step(f"1/3 TFX pipeline {config.pipeline_name!r} ({args.model}, {args.epochs} epochs, "
              f"synthetic preset {args.preset!r}) -> {config.pipeline_root}")
    print("   PrepareExamples -> StatisticsGen -> ImportSchemaGen -> ExampleValidator -> AnomaliesGate -> Trainer "
          "-> Evaluator -> Pusher (loading TFX takes ~30-60 s)", flush=True)
    from tfmoe.tfx.pipeline import quiet_logs, run_local
    from tfmoe.tfx.run_report import is_blessed, latest_artifact_uri, run_states, tfma_metrics

    quiet_logs()
    run_local(config)
    states = run_states(config.metadata_path)
    print("   components: " + ", ".join(f"{node} {state}" for node, state in states.items()))
    root = config.pipeline_root
    evaluation = latest_artifact_uri(root, "Evaluator", "evaluation")
    blessed = is_blessed(latest_artifact_uri(root, "Evaluator", "blessing"))
    hr = tfma_metrics(evaluation).get("sparse_top_k_categorical_accuracy")
    from tfmoe.tfx.serving_export import read_metrics

    recorded = read_metrics(os.path.join(latest_artifact_uri(root, "Trainer", "model"), "Format-Serving"))
    test = recorded["metrics"].get("test", {})
    print(f"   TFMA HR@10 (full catalogue) = {hr:.4f}; tfmoe test NDCG@10 = {test.get('NDCG@10', float('nan')):.4f}, "
          f"HR@10 = {test.get('HR@10', float('nan')):.4f} (seen items filtered); "
          f"{'BLESSED' if blessed else 'NOT blessed'}: HR@10 {hr:.4f} against the gate's {config.hr_threshold}")
    from tfmoe.serving import layout

    versions = layout.complete_versions(config.serving_model_dir)
    if not versions:
        print(f"   nothing was pushed to {config.serving_model_dir}: the model did not pass the Evaluator's gate")
        return 1
    print(f"   pushed versions in {config.serving_model_dir}: {versions}")
    _done(t)

    t = _step("2/3 start a model server on 127.0.0.1 and 3/3 ask it for top-10 recommendations over gRPC")
    from tfmoe.tfx.demo import read_vocab, sample_users, serve_and_recommend

    examples = latest_artifact_uri(root, "PrepareExamples", "examples")
    users = sample_users(examples, args.users)
    raw_items, raw_users = read_vocab(examples, "items"), read_vocab(examples, "users")
    served = serve_and_recommend(config.serving_dir, config.serving_model_name, [u["history"] for u in users])
    print(f"   {served['kind']} model server at {served['target']}, model {config.serving_model_name!r} "
          f"version {served['version']}")
    for user, items in zip(users, served["item_ids"]):
        recent = " ".join(raw_items[i] for i in user["history"][-5:])
        recs = " ".join(raw_items[i] for i in items if i > 0)
        print(f"   user {raw_users[user['user_id']]}: last items [{recent}] -> top-10 [{recs}]")
    _done(t)

    print(f"\nquickstart finished in {time.perf_counter() - total:.0f} s: outputs in {workdir}")
    print(f"   serve:  .venv/bin/tfmoe serve --model_name={config.serving_model_name} "
          f"--model_base_path={config.serving_model_dir} --port=8500")
    print(f"   query:  .venv/bin/tfmoe query top-k --model {config.serving_model_name} --history "
          + ",".join(str(i) for i in users[0]["history"][-5:]) + "   (item indices of vocab/items.txt)")
    return 0
