"""MoS's session grid: a left-padded history's chunks as a reshape against the general gather, in one run.

:class:`~tfmoe.layers.SessionGrouper` cuts chunk sessions of a left-padded batch with
:func:`~tfmoe.layers.sessions.chunk_grid_left_padded` (the last ``M * P`` positions reshaped to ``[M, P]``) and of any
other batch with :func:`~tfmoe.layers.sessions.chunk_grid_gathered` (a stable sort and a gather, whose gradient is a
scatter into ``[B, L, d]``). Both give the same grid. This benchmark times MoS-DIN's training step
(:mod:`benchmarks.train_speed`'s ``mos_din_length_groups``: length 1,000, 8 themes of 7 chunk sessions of 20 items,
batch 1,024, ML-1M histories) with each, on the same model and batches, the two arms taking turns step by step so
that drifting load hits both alike; it checks that both arms give the same loss and gradients.

    reshape_speedup = median step time (gather) / median step time (reshape)

One record per run (:mod:`benchmarks.records`): ``benchmarks/results/records/session_grid/<data>/seed<k>-<hash>.json``.

    .venv/bin/python benchmarks/session_grid.py
    .venv/bin/python benchmarks/session_grid.py --users 512 --steps 4     # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from benchmarks import records
from benchmarks import train_speed as speed

BENCHMARK = "session_grid"
MODEL = "mos_din_length_groups"
ARMS = ("reshape", "gather")


def use_gathered_grid(grouper) -> None:
    """Makes ``grouper`` (chunk mode) cut every batch with the general gather, as it does a batch that is not
    left-padded."""
    from tfmoe.layers import sessions

    def gathered(values, mask, num_sessions):
        return sessions.chunk_grid_gathered(values, mask, num_sessions=num_sessions,
                                            session_length=grouper.session_length)

    grouper._chunk_grid = gathered


def step_functions(model, batch: dict) -> dict:
    """``{arm: compiled step}``: the loss and the gradients of ``model`` on ``batch`` with the arm's session grid, in
    training mode; ``{arm}_inference``: the same without dropout (the two arms' numbers agree there)."""
    import tensorflow as tf

    features = {k: tf.constant(v) for k, v in batch.items() if k != "labels"}
    labels = tf.constant(batch["labels"])
    reshape_grid = model.grouper._chunk_grid

    def step(training=True):
        with tf.GradientTape() as tape:
            logits = model(features, training=training)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits)) + tf.add_n(
                model.losses or [tf.zeros([])])
        grads = tape.gradient(loss, model.trainable_variables)
        return loss, [tf.convert_to_tensor(g) for g in grads if g is not None]  # embeddings: IndexedSlices

    out = {}
    for arm in ARMS:
        if arm == "gather":
            use_gathered_grid(model.grouper)
        else:
            model.grouper._chunk_grid = reshape_grid
        out[arm] = tf.function(step)
        out[arm].get_concrete_function()  # traced now, with this arm's grid
        out[f"{arm}_inference"] = tf.function(lambda: step(training=False))  # no dropout: the arms' numbers agree
        out[f"{arm}_inference"].get_concrete_function()
    model.grouper._chunk_grid = reshape_grid
    return out


def run(users: int | None, steps: int, seed: int, synthetic: bool = False, overrides: dict | None = None) -> dict:
    """The record of one run: ``users`` (default all) of ML-1M, or of the synthetic log with ``synthetic``;
    ``overrides`` as :func:`benchmarks.train_speed.model_configs` takes them (tests: a short length)."""
    import keras

    if synthetic:
        sequences, num_items = speed.synthetic_sequences(users or 1000, seed)
        data, files = "synthetic", []
    else:
        sequences, num_items, data, files = speed.read_sequences(users, seed)
    config = speed.model_configs(num_items, overrides)[MODEL]
    arrays = speed.model_arrays(MODEL, config, sequences, num_items, seed)
    batch_size = config["batch_size"]
    keras.utils.set_random_seed(seed)
    model = speed.build(MODEL, config, seed)
    batch = {k: v[:batch_size] for k, v in arrays.items()}
    steps_of = step_functions(model, batch)
    for arm in ARMS:
        steps_of[arm]()  # warm-up
    results = {arm: steps_of[f"{arm}_inference"]() for arm in ARMS}  # the same loss and gradients
    (loss_r, grads_r), (loss_g, grads_g) = results["reshape"], results["gather"]
    max_grad_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                        for a, b in zip(grads_r, grads_g))
    times = {arm: [] for arm in ARMS}
    for _ in range(steps):
        for arm in ARMS:
            start = time.perf_counter()
            loss, _ = steps_of[arm]()
            float(loss)
            times[arm].append(time.perf_counter() - start)
    median = {arm: float(np.median(t)) for arm, t in times.items()}
    metrics = {"step_s": median, "times_s": times, "reshape_speedup": median["gather"] / median["reshape"],
               "loss_diff": abs(float(loss_r) - float(loss_g)), "max_gradient_diff": max_grad_diff,
               "rows_left_padded": True, "load_average": list(os.getloadavg())}
    cfg = {"model": MODEL, "max_len": config["max_len"], "batch_size": batch_size, "options": config["options"],
           "steps": steps, "users": users, "dataset": data}
    return records.make_record(BENCHMARK, data, cfg, metrics, epochs=None, seed=seed, partial=False,
                               data_files=files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=None, help="the first N users (default: all)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records", default=records.ROOT, help="where the record goes")
    args = parser.parse_args(argv)
    record = run(args.users, args.steps, args.seed)
    path = records.write_record(record, args.records)
    m = record["metrics"]
    print(f"session grid: reshape {m['step_s']['reshape']:.3f} s, gather {m['step_s']['gather']:.3f} s per step: "
          f"reshape_speedup {m['reshape_speedup']:.3f} (loss diff {m['loss_diff']:.2e}, gradient diff "
          f"{m['max_gradient_diff']:.2e}) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
