"""Where a training step's time goes: the TensorFlow profiler's op times, by part of the model and by op type.

Trains one of :mod:`benchmarks.train_speed`'s models (same settings, same batches) for a warm-up epoch, then
profiles one epoch with ``tf.profiler.experimental`` and reads the trace (``*.xplane.pb``) back. Every executed
TensorFlow op on the host's compute and tf.data threads is attributed by its name scope to a part (embedding,
attention, dropout, feed-forward, layer norm, loss, optimizer, input pipeline, MoS's session grid, router, theme,
short-term and global experts and fusion, other), forward or backward
(``gradient_tape/...``), and by its op type (``_MklEinsum``, ``StatelessRandomUniformV2``, ...). Times are
op time summed over threads (two ops on two cores count twice), so shares, not seconds, are what to compare.

    .venv/bin/python benchmarks/profile_train_step.py --model sasrec_peer --users 1536
    .venv/bin/python benchmarks/profile_train_step.py --model keras_hub_sasrec --users 1536

One record per run (:mod:`benchmarks.records`): ``benchmarks/results/records/train_profile/<model>/...``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import records
from benchmarks import train_speed as speed

BENCHMARK = "train_profile"
# (part, name-scope fragments), first match wins; a name is lower-cased before matching
PARTS = (
    ("optimizer", ("adam", "optimizer")),
    ("input", ("iterator", "dataset", "tf_data")),
    # MoS (tfmoe.models.ctr.mixture_of_sequences): its parts' layer names, before the generic ones they contain
    ("MoS session grid", ("sessions",)),
    ("MoS router", ("theme_router",)),
    ("MoS theme experts", ("theme_experts",)),
    ("MoS short-term expert", ("short_expert",)),
    ("MoS global expert", ("global_expert",)),
    ("MoS fusion", ("fusion",)),
    ("dropout", ("dropout",)),
    ("layer norm", ("norm",)),
    ("attention", ("attention", "multi_head", "self_attention")),
    ("feed-forward", ("ffn", "feed_forward", "feedforward", "dense", "moe", "expert")),
    ("loss", ("loss", "objective", "negative", "log_softmax", "sigmoid_cross")),
    ("embedding", ("embedding",)),
)


def part_of(op_name: str) -> str:
    """The part of a profiled op name (``scope/.../op:Type``), prefixed ``"backward "`` under the gradient tape.

    Example:
        >>> part_of("StatefulPartitionedCall/gradient_tape/sas_rec/block_0/attention/einsum_3/Einsum:_MklEinsum")
        'backward attention'
        >>> part_of("StatefulPartitionedCall/adam/Sqrt:Sqrt")
        'optimizer'
        >>> part_of("StatefulPartitionedCall/gradient_tape/mo_sdin/interest/global_expert/dense/MatMul:_MklMatMul")
        'backward MoS global expert'
    """
    scope = op_name.rsplit(":", 1)[0].lower()
    backward = "gradient_tape" in scope or "gradients" in scope
    part = next((name for name, fragments in PARTS if any(f in scope for f in fragments)), "other")
    return ("backward " if backward and part not in ("optimizer", "input") else "") + part


def op_times(xplane_path: str) -> list[tuple[str, float]]:
    """``[(op name, milliseconds)]`` of every TensorFlow op the host executed in the trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    out = []
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith(("tf_Compute", "tf_data")):
                continue
            for event in line.events:
                name = names[event.metadata_id].name
                if ":" in name and not name.startswith("ExecutorState"):
                    out.append((name, event.duration_ps / 1e9))
    return out


def breakdown(times: list[tuple[str, float]], top: int = 20) -> dict:
    """``{"total_ms", "by_part": {part: share}, "by_op_type": {type: share}, "other_scopes": {scope: share}}`` (the
    ``top`` op types, and the ``top`` scopes of the ops in no part: their first three name-scope levels once
    ``StatefulPartitionedCall`` and ``gradient_tape`` are dropped, e.g. ``mo_sdin/interest/strided_slice_4``)."""
    total = sum(ms for _, ms in times) or 1.0
    parts, types, other = collections.Counter(), collections.Counter(), collections.Counter()
    for name, ms in times:
        part = part_of(name)
        parts[part] += ms
        types[name.rsplit(":", 1)[1]] += ms
        if part.endswith("other"):
            scope = [s for s in name.rsplit(":", 1)[0].split("/") if s not in ("StatefulPartitionedCall",
                                                                              "gradient_tape")]
            other["/".join(scope[:3])] += ms
    return {"total_ms": total,
            "by_part": {k: v / total for k, v in parts.most_common()},
            "by_op_type": {k: v / total for k, v in types.most_common(top)},
            "other_scopes": {k: v / total for k, v in other.most_common(top)}}


def profile(model_name: str, users: int, seed: int = 0, synthetic: bool = False, overrides: dict | None = None):
    """``(breakdown, steps)`` of one profiled epoch of ``model_name`` after a warm-up epoch."""
    import tensorflow as tf

    if synthetic:
        sequences, num_items = speed.synthetic_sequences(users, seed)
    else:
        sequences, num_items, _, _ = speed.read_sequences(users, seed)
    config = speed.model_configs(num_items, overrides)[model_name]
    arrays = speed.model_arrays(model_name, config, sequences, num_items, seed)
    ds, _ = speed.training_data(model_name, arrays, num_items, config["batch_size"], seed,
                                config.get("bucket_boundaries"))
    model = speed.build(model_name, config, seed)
    steps = sum(1 for _ in ds)
    model.fit(ds, epochs=1, verbose=0)  # traces the step
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        model.fit(ds, epochs=1, verbose=0)
        tf.profiler.experimental.stop()
        traces = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
        times = op_times(traces[-1])
    return breakdown(times), steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sasrec_peer", choices=list(speed.MODELS))
    parser.add_argument("--users", type=int, default=1536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--out-records", default=records.ROOT)
    args = parser.parse_args(argv)
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    result, steps = profile(args.model, args.users, args.seed, args.synthetic)
    print(f"{args.model}: {steps} steps, {result['total_ms']:.0f} ms of op time")
    for part, share in result["by_part"].items():
        print(f"  {part:24} {share:6.1%}")
    for title, key in (("op types", "by_op_type"), ("scopes of the other ops", "other_scopes")):
        print(f"{title}:")
        for name, share in result[key].items():
            print(f"  {name:32} {share:6.1%}")
    config = {"model": args.model, "users": args.users, "synthetic": args.synthetic}
    record = records.make_record(BENCHMARK, args.model, config, {**result, "steps": steps}, epochs=1, seed=args.seed,
                                 partial=False, data_files=[], command=sys.argv if argv is None else argv)
    print("record:", records.write_record(record, args.out_records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
