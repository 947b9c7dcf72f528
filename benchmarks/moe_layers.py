"""Benchmark: sparse top-k-of-E MoE vs all E experts dense vs one FFN of the same expert size.

For each ``[tokens, d]`` shape of the variant (inner size h = ``inner_multiplier`` x d; the default variant: E = 8
experts, k = 2, capacity factor 1.25) this times a full training step (forward, backward including the gradient
w.r.t. the layer input, as inside a model, and an SGD update of every trainable variable, under ``tf.function``) of:

* ``sparse_top2_of_8``: ``MixtureOfExperts(routing="top_k", k=2)`` (sort-based dispatch into [E, C, d]
  buffers, C = ceil(1.25 * 2 * T / 8), Switch load-balance loss, routing statistics on);
* ``dense_8``: ``MixtureOfExperts(routing="dense")``, every expert on every token;
* ``one_ffn``: ``FeedForward(h)``, the same size as one expert.

Each layer is timed with and without ``jit_compile=True``; the step used for a layer is its faster mode (reported
per row). Layers are timed in alternating rounds and the median is taken, so that load from other processes
affects all of them alike: ratios within one run are what count.

FLOPs are counted analytically (forward pass; one multiply-add = 2 FLOPs; a training step is counted as 3x the
forward matmul FLOPs) and cross-checked with the TF profiler on the forward concrete function's graph (it counts
MatMul / BatchMatMul FLOPs plus element-wise ops).

Settings: ``benchmarks/settings/moe_layers.yaml`` (variants ``default`` and ``quick``). One record per run
(:mod:`benchmarks.records`), ``benchmarks/results/records/moe_layers/<variant>/seed<k>-<hash>.json``, written after
every shape (all but the last ``partial``): its metrics hold ``sparse_top2_of_8_over_dense_8_time`` and
``sparse_top2_of_8_over_one_ffn_time`` (time ratios at the largest shape measured) and the full table.
Goals: sparse <= 0.4x dense 8, and <= 3x one FFN.

Usage:
    .venv/bin/python benchmarks/moe_layers.py [--variant quick] [--rounds N] [--out-records DIR]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml

from benchmarks import _paths as paths
from benchmarks import records
from benchmarks._timing import time_interleaved

BENCHMARK = "moe_layers"
SETTINGS_FILE = os.path.join(paths.BENCHMARKS, "settings", "moe_layers.yaml")
with open(SETTINGS_FILE, encoding="utf-8") as _f:
    SETTINGS = yaml.safe_load(_f)
STEP = ("forward + backward (weights and input) + SGD update under tf.function; per layer the faster of "
        "jit_compile=True (xla) and plain graph mode")
FLOPS = ("analytic forward matmul FLOPs (2 per multiply-add), train step = 3x; profiler = tf.compat.v1.profiler "
         "float_operation on the forward graph")


def variant_config(name: str) -> dict:
    """The complete config of variant ``name`` of the settings file (a copy)."""
    if name not in SETTINGS["variants"]:
        raise ValueError(f"moe_layers: no variant {name!r} in {SETTINGS_FILE} (have {sorted(SETTINGS['variants'])})")
    return copy.deepcopy(SETTINGS["variants"][name])


def layer_names(config: dict) -> tuple[str, str, str]:
    """``(sparse, dense, one FFN)``: ``("sparse_top2_of_8", "dense_8", "one_ffn")`` for k 2 of E 8."""
    return f"sparse_top{config['top_k']}_of_{config['num_experts']}", f"dense_{config['num_experts']}", "one_ffn"


def make_layer(name: str, model_dim: int, config: dict):
    from tfmoe.layers.experts import FeedForward
    from tfmoe.layers.moe import MixtureOfExperts

    hidden = config["inner_multiplier"] * model_dim
    sparse, dense, _ = layer_names(config)
    if name == sparse:
        return MixtureOfExperts(config["num_experts"], hidden, k=config["top_k"],
                                capacity_factor=config["capacity_factor"], activation=config["activation"])
    if name == dense:
        return MixtureOfExperts(config["num_experts"], hidden, routing="dense", activation=config["activation"])
    return FeedForward(hidden, activation=config["activation"])


def analytic_forward_flops(name: str, tokens: int, model_dim: int, config: dict) -> dict:
    """Matmul FLOPs of one forward pass (2 per multiply-add), split into router and experts."""
    from tfmoe.utils.flops import moe_ffn_forward_flops

    return moe_ffn_forward_flops(name, tokens, model_dim, config["inner_multiplier"] * model_dim,
                                 config["num_experts"], config["top_k"], config["capacity_factor"])


def profiler_forward_flops(layer, shape) -> int | None:
    """FLOPs the TF profiler counts on the forward graph (non-XLA); None if the profiler fails."""
    import tensorflow as tf

    from tfmoe.utils.flops import profile_function_flops

    try:
        return profile_function_flops(lambda x: layer(x), tf.TensorSpec(shape, tf.float32))
    except Exception as error:  # the profiler is a cross-check only
        print(f"  profiler failed: {error}", file=sys.stderr)
        return None


def make_train_step(layer, x, jit: bool, learning_rate: float):
    import tensorflow as tf

    variables = layer.trainable_variables

    @tf.function(jit_compile=jit)
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)  # in a real model the layer input is trainable upstream
            outputs = layer(inputs, training=True)
            loss = tf.reduce_mean(tf.square(tf.cast(outputs, tf.float32)))
            if layer.losses:
                loss = loss + tf.add_n(layer.losses)
        *grads, input_grad = tape.gradient(loss, [*variables, inputs])
        for variable, grad in zip(variables, grads):
            variable.assign_sub(learning_rate * grad)
        return loss + tf.reduce_sum(input_grad) * 0.0

    return lambda: step(x).numpy()


def run_shape(tokens: int, model_dim: int, config: dict) -> list[dict]:
    """The rows of one ``[tokens, d]`` shape: one per layer."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config["seed"])
    shape = (tokens // config["sequence_length"], config["sequence_length"], model_dim)
    x = tf.random.normal(shape)
    sparse, dense, one_ffn = layer_names(config)
    experts_run = {sparse: config["top_k"], dense: config["num_experts"], one_ffn: 1}
    steps, rows = {}, {}
    for name in (sparse, dense, one_ffn):
        layer = make_layer(name, model_dim, config)
        layer.build(shape)
        for jit in (True, False):
            steps[(name, jit)] = make_train_step(layer, x, jit, config["learning_rate"])
        flops = analytic_forward_flops(name, tokens, model_dim, config)
        profiled = profiler_forward_flops(layer, shape) if config["profile"] else None
        rows[name] = {
            "variant": name,
            "tokens": tokens,
            "d": model_dim,
            "inner": config["inner_multiplier"] * model_dim,
            "experts_run_per_token": experts_run[name],
            "rows_through_experts": flops["rows_through_experts"],
            "analytic_forward_gflops": (flops["router"] + flops["experts"]) / 1e9,
            "analytic_train_step_gflops": 3 * (flops["router"] + flops["experts"]) / 1e9,
            "profiler_forward_gflops": None if profiled is None else profiled / 1e9,
        }
    timings = time_interleaved(
        {f"{name}|{'xla' if jit else 'graph'}": fn for (name, jit), fn in steps.items()},
        warmup=config["warmup"], rounds=config["rounds"])
    for name, row in rows.items():
        xla, graph = timings[f"{name}|xla"], timings[f"{name}|graph"]
        row.update(
            train_step_ms_xla=1e3 * xla["median_s"],
            train_step_ms_graph=1e3 * graph["median_s"],
            mode_used="xla" if xla["median_s"] <= graph["median_s"] else "graph",
            train_step_ms=1e3 * min(xla["median_s"], graph["median_s"]),
            times_s={"xla": xla["times_s"], "graph": graph["times_s"]},
        )
    for row in rows.values():
        row["time_over_one_ffn"] = row["train_step_ms"] / rows[one_ffn]["train_step_ms"]
        row[f"time_over_{dense}"] = row["train_step_ms"] / rows[dense]["train_step_ms"]
        row["flops_over_one_ffn"] = row["analytic_forward_gflops"] / rows[one_ffn]["analytic_forward_gflops"]
    return list(rows.values())


def metrics_of(table: list[dict], config: dict) -> dict:
    """The record's metrics from the rows measured so far: the time ratios at the largest shape among them."""
    sparse, dense, one_ffn = layer_names(config)
    largest = max((row["tokens"], row["d"]) for row in table)
    at_largest = {row["variant"]: row for row in table if (row["tokens"], row["d"]) == largest}
    step = at_largest[sparse]["train_step_ms"]
    return {f"{sparse}_over_{dense}_time": step / at_largest[dense]["train_step_ms"],
            f"{sparse}_over_{one_ffn}_time": step / at_largest[one_ffn]["train_step_ms"],
            "largest_setting": {"tokens": largest[0], "d": largest[1],
                                "inner": config["inner_multiplier"] * largest[1]},
            "table": table}


def resolved_config(config: dict) -> dict:
    """The variant's config with what the step and the FLOP counts are."""
    return {**config, "step": STEP, "flops": FLOPS}


def run(variant: str = "default", overrides: dict | None = None, out_records: str | None = None,
        command=None) -> dict:
    """Times every shape of ``variant`` (its config updated by ``overrides``) and writes the record after each
    shape; returns the last one (with its ``"path"``)."""
    config = {**variant_config(variant), **(overrides or {})}
    table, record = [], None
    for index, (tokens, model_dim) in enumerate(config["shapes"]):
        print(f"timing tokens={tokens} d={model_dim} ...", file=sys.stderr, flush=True)
        table.extend(run_shape(tokens, model_dim, config))
        record = records.make_record(BENCHMARK, variant, resolved_config(config), metrics_of(table, config),
                                     epochs=None, seed=config["seed"], partial=index < len(config["shapes"]) - 1,
                                     data_files=[], command=command)
        record["path"] = records.write_record(record, out_records or records.ROOT)
    return record


def print_table(table: list[dict]) -> None:
    header = (f"{'tokens':>6} {'d':>4} {'layer':<17} {'fwd GFLOP':>9} {'prof GFLOP':>10} {'xla ms':>9} "
              f"{'graph ms':>9} {'used':>5} {'/1 FFN':>7}")
    print(header)
    print("-" * len(header))
    for row in table:
        prof = row["profiler_forward_gflops"]
        print(f"{row['tokens']:>6} {row['d']:>4} {row['variant']:<17} {row['analytic_forward_gflops']:>9.2f} "
              f"{(f'{prof:.2f}' if prof else '-'):>10} {row['train_step_ms_xla']:>9.1f} "
              f"{row['train_step_ms_graph']:>9.1f} {row['mode_used']:>5} {row['time_over_one_ffn']:>7.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--variant", default="default", choices=sorted(SETTINGS["variants"]))
    parser.add_argument("--quick", action="store_const", const="quick", dest="variant",
                        help="the quick variant (a smoke run)")
    parser.add_argument("--rounds", type=int, help="timed rounds per layer (default: the variant's)")
    parser.add_argument("--out-records", help="where the record is written (default: benchmarks/results/records; "
                                              "quick: a temporary folder)")
    args = parser.parse_args(argv)
    out = args.out_records or (tempfile.mkdtemp(prefix="moe-layers-") if args.variant == "quick" else records.ROOT)
    record = run(args.variant, {"rounds": args.rounds} if args.rounds else None, out,
                 command=sys.argv if argv is None else ["benchmarks/moe_layers.py", *argv])
    metrics, goals = record["metrics"], record["config"]["goals"]
    sparse, dense, one_ffn = layer_names(record["config"])
    print_table(metrics["table"])
    print(f"\n{sparse} / {dense} = {metrics[f'{sparse}_over_{dense}_time']:.3f} (goal <= "
          f"{goals['sparse_over_dense_max']}), / {one_ffn} = {metrics[f'{sparse}_over_{one_ffn}_time']:.3f} (goal <= "
          f"{goals['sparse_over_one_ffn_max']}) at tokens={metrics['largest_setting']['tokens']}, "
          f"d={metrics['largest_setting']['d']}; record: {record['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
