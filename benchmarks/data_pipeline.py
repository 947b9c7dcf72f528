"""Benchmark of the tf.data reader: throughput, and whether it starves a training step.

Writes synthetic prepared TFRecords (``schema.encode_example``, GZIP shards, leave-one-out splits)
to a temp dir, then measures in one run:

1. reader throughput (rows/s, median of ``repeats`` chunks) at each history length for next-item and
   CTR training batches, for each reader variant (the default variant: the defaults, i.e. GZIP records
   parsed with timestamps, categories and session ids; ``cache=True``, decompressed records kept in
   memory after the first epoch; and ``cache+ids``, cache and the item history only);
2. the time of a Keras ``train_on_batch`` step fed by the reader (one persistent iterator, as
   in a long run) over the same step fed from memory (the same batches held as tensors), in
   wall time and in process CPU time. Models: next-item = item embedding 64-d + one causal
   transformer block + full softmax over the catalogue at every position; CTR = item and
   category embeddings 64-d + target attention pooling (DIN-style) + MLP + sigmoid; both
   ``jit_compile=True``. The reader parses the side features of the setting (the model's own, or
   all default side features). Rounds time both feeds back to back in ABBA order and the ratio is
   the median of the per-round ratios, which keeps it robust to other processes on shared machines.

Settings: ``benchmarks/settings/data_pipeline.yaml`` (variants ``default`` and ``quick``). One record per run
(:mod:`benchmarks.records`), ``benchmarks/results/records/data_pipeline/<variant>/seed<k>-<hash>.json``, written
after the throughput table and after every training-step setting (all but the last ``partial``), with the data hash
of the written TFRecords. ``reader_over_memory_step_time`` is the largest wall-time ratio over the measured
settings (goal <= 1.05).

Usage:
    .venv/bin/python benchmarks/data_pipeline.py [--variant quick] [--out-records DIR]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _paths as paths
from benchmarks import records

BENCHMARK = "data_pipeline"
SETTINGS_FILE = os.path.join(paths.BENCHMARKS, "settings", "data_pipeline.yaml")
with open(SETTINGS_FILE, encoding="utf-8") as _f:
    SETTINGS = yaml.safe_load(_f)
CTR_INPUTS = ("history", "history_categories", "target_item", "target_category")


def variant_config(name: str) -> dict:
    """The complete config of variant ``name`` of the settings file (a copy)."""
    if name not in SETTINGS["variants"]:
        raise ValueError(f"data_pipeline: no variant {name!r} in {SETTINGS_FILE} (have "
                         f"{sorted(SETTINGS['variants'])})")
    return copy.deepcopy(SETTINGS["variants"][name])


def write_records(root: str, num_users: int, length: int, num_items: int, num_categories: int, shards: int,
                  seed: int = 0) -> str:
    """A prepared directory of ``num_users`` users with ``length + 2`` interactions each."""
    import tensorflow as tf

    from tfmoe.data import schema

    rng = np.random.default_rng(seed)
    writers = {}
    for split in schema.SPLITS:
        os.makedirs(os.path.join(root, split), exist_ok=True)
        writers[split] = [
            tf.io.TFRecordWriter(os.path.join(root, split, schema.shard_file_name(i, shards)),
                                 options="GZIP")
            for i in range(shards)
        ]
    n = length + 2
    touched = min(n, num_items - 100)
    for user in range(1, num_users + 1):
        seq = rng.choice(np.arange(1, num_items + 1), size=touched, replace=False)
        seq = np.resize(seq, n)  # long histories revisit items, as real logs do
        times = 1_600_000_000 + np.cumsum(rng.integers(10, 5_000, size=n))
        cats = seq % num_categories + 1
        sessions = np.cumsum(np.r_[0, np.diff(times) > 1_800])
        w = writers["train"][user % shards]
        w.write(schema.encode_example(user, seq[:-2], times[:-2], cats[:-2], (), sessions[:-2]).SerializeToString())
        for split, cut in (("valid", 2), ("test", 1)):
            ex = schema.encode_example(user, seq[:-cut], times[:-cut], cats[:-cut], (), sessions[:-cut],
                                       target=int(seq[-cut]), target_timestamp=int(times[-cut]),
                                       target_category=int(cats[-cut]))
            writers[split][user % shards].write(ex.SerializeToString())
    for split_writers in writers.values():
        for w in split_writers:
            w.close()
    os.makedirs(os.path.join(root, schema.VOCAB_DIR), exist_ok=True)
    with open(os.path.join(root, schema.VOCAB_DIR, "items.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in range(1, num_items + 1)))
    return root


def rows_per_user(task: str, config: dict) -> int:
    """Training rows a user gives per epoch: 1 for next-item; CTR: positions x (1 positive + negatives)."""
    return 1 if task == "next_item" else config["ctr_samples_per_user"] * (1 + config["ctr_num_negatives"])


def reader(data_dir, task, max_len, batch_size, config, user_items=None, **kwargs):
    """The training reader (repeated, static shapes); CTR: ``ctr_samples_per_user`` random positions per user,
    ``ctr_num_negatives`` negatives each."""
    from tfmoe.data import dataset, samples

    extra = {}
    if task == "ctr":
        extra = dict(ctr=samples.CTRSampling(num_negatives=config["ctr_num_negatives"],
                                             samples_per_user=config["ctr_samples_per_user"]),
                     touched_items=user_items)
    return dataset.make_dataset(data_dir, "train", task, max_len=max_len, batch_size=batch_size, repeat=True,
                                drop_remainder=True, **extra, **kwargs)


def throughput(ds, batches: int, warmup: int, repeats: int) -> dict:
    """Rows/s and ms/batch: the median of ``repeats`` chunks of ``batches`` batches after ``warmup``."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    rates, latencies = [], []
    for _ in range(repeats):
        rows, start = 0, time.perf_counter()
        for _ in range(batches):
            _, y = next(it)
            rows += int(y.shape[0])
        seconds = time.perf_counter() - start
        rates.append(rows / seconds)
        latencies.append(1000 * seconds / batches)
    return {"rows_per_s": statistics.median(rates), "ms_per_batch": statistics.median(latencies)}


def next_item_model(max_len: int, num_items: int, num_categories: int):
    import keras

    class AddPositions(keras.layers.Layer):
        def build(self, input_shape):
            self.positions = self.add_weight(shape=tuple(input_shape[1:]), initializer="random_normal")

        def call(self, x):
            return x + self.positions

    history = keras.Input(shape=(max_len,), dtype="int32", name="history")
    mask = keras.ops.not_equal(history, 0)
    x = AddPositions()(keras.layers.Embedding(num_items + 1, 64)(history))
    pair_mask = keras.ops.logical_and(mask[:, None, :], mask[:, :, None])
    attn = keras.layers.MultiHeadAttention(num_heads=2, key_dim=32)(x, x, attention_mask=pair_mask,
                                                                   use_causal_mask=True)
    x = keras.layers.LayerNormalization()(x + attn)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(64)(keras.layers.Dense(128, activation="gelu")(x)))
    logits = keras.layers.Dense(num_items + 1)(x)
    model = keras.Model({"history": history}, logits)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
                  jit_compile=True)
    return model


def ctr_model(max_len: int, num_items: int, num_categories: int):
    import keras

    history = keras.Input(shape=(max_len,), dtype="int32", name="history")
    history_categories = keras.Input(shape=(max_len,), dtype="int32", name="history_categories")
    target_item = keras.Input(shape=(), dtype="int32", name="target_item")
    target_category = keras.Input(shape=(), dtype="int32", name="target_category")
    items = keras.layers.Embedding(num_items + 1, 64)
    cats = keras.layers.Embedding(num_categories + 1, 64)
    seq = keras.ops.concatenate([items(history), cats(history_categories)], axis=-1)  # [B, L, 128]
    query = keras.ops.concatenate([items(target_item), cats(target_category)], axis=-1)  # [B, 128]
    q = keras.ops.repeat(query[:, None, :], max_len, axis=1)
    att_in = keras.ops.concatenate([seq, q, seq * q, seq - q], axis=-1)
    scores = keras.layers.Dense(1)(keras.layers.Dense(64, activation="relu")(att_in))[..., 0]
    scores = keras.ops.where(keras.ops.not_equal(history, 0), scores, -1e9)
    pooled = keras.ops.einsum("bl,bld->bd", keras.ops.softmax(scores, axis=-1), seq)
    h = keras.layers.Dense(128, activation="relu")(keras.ops.concatenate([pooled, query, pooled * query], -1))
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(64, activation="relu")(h))[:, 0]
    inputs = {"history": history, "history_categories": history_categories, "target_item": target_item,
              "target_category": target_category}
    model = keras.Model(inputs, out)
    model.compile(optimizer="adam", loss="binary_crossentropy", jit_compile=True)
    return model


def step_ratio(ds, model, input_names, steps: int, rounds: int, warmup: int) -> dict:
    """Seconds per ``train_on_batch`` step fed by the reader vs. from memory (wall and process CPU).

    Memory = the first ``steps`` reader batches held as tensors. The reader iterator is created
    once and warmed up (its shuffle buffer filled), as in a long training run. Each round times
    ``steps`` steps of both feeds back to back, in ABBA order; the ratio is the median over rounds
    of reader/memory, so slow drifts of the load from other processes cancel.
    """
    iterator = iter(ds)

    def next_batch():
        x, y = next(iterator)
        return {k: x[k] for k in input_names}, y

    held = [next_batch() for _ in range(steps)]
    for x, y in held[:warmup]:
        model.train_on_batch(x, y)
    for _ in range(warmup):
        model.train_on_batch(*next_batch())
    wall = {"reader": [], "memory": []}
    cpu = {"reader": [], "memory": []}
    for r in range(rounds):
        for name in ("memory", "reader") if r % 2 == 0 else ("reader", "memory"):  # ABBA: cancels load drift
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(steps):
                x, y = held[i] if name == "memory" else next_batch()
                model.train_on_batch(x, y)
            wall[name].append((time.perf_counter() - start) / steps)
            cpu[name].append((time.process_time() - start_cpu) / steps)
    paired = lambda t: statistics.median(a / b for a, b in zip(t["reader"], t["memory"]))
    return {"memory_ms_per_step": 1000 * statistics.median(wall["memory"]),
            "reader_ms_per_step": 1000 * statistics.median(wall["reader"]),
            "ratio": paired(wall), "cpu_ratio": paired(cpu),
            "rounds_reader_ms": [round(1000 * t, 2) for t in wall["reader"]],
            "rounds_memory_ms": [round(1000 * t, 2) for t in wall["memory"]]}


MODELS = {"next_item_model": (next_item_model, ("history",)), "ctr_model": (ctr_model, CTR_INPUTS)}


def reader_features(setting: dict) -> tuple:
    """The side features the reader parses in a training-step setting (``all``: the reader's defaults)."""
    from tfmoe.data import samples

    side = setting["reader_features"]
    return samples.DEFAULT_SEQUENCE_FEATURES if side == "all" else tuple(side)


def metrics_of(throughput_rows: list[dict], step_rows: list[dict]) -> dict:
    """The record's metrics from what was measured so far."""
    metrics = {"reader_throughput": throughput_rows, "train_step": step_rows}
    if step_rows:
        metrics = {"reader_over_memory_step_time": max(r["ratio"] for r in step_rows), **metrics}
    return metrics


def run(variant: str = "default", overrides: dict | None = None, out_records: str | None = None,
        command=None) -> dict:
    """Writes the variant's data (its config updated by ``overrides``) to a temporary folder, measures it and
    writes the record after each phase; returns the last one (with its ``"path"``)."""
    import keras
    import tensorflow as tf

    from tfmoe.data import dataset

    config = {**variant_config(variant), **(overrides or {})}
    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(config["seed"])
    batch_size, warmup = config["batch_size"], config["warmup"]
    throughput_rows, step_rows = [], []
    phases = 1 + len(config["train_step"])
    with tempfile.TemporaryDirectory() as tmp:
        dirs, users = {}, {}
        for entry in config["histories"]:
            length, users[entry["max_len"]] = entry["max_len"], entry["users"]
            start = time.perf_counter()
            dirs[length] = write_records(os.path.join(tmp, f"len{length}"), entry["users"], length,
                                         config["num_items"], config["num_categories"], config["shards"],
                                         config["seed"])
            print(f"wrote {entry['users']} users x {length + 2} interactions in {time.perf_counter() - start:.1f} s",
                  flush=True)
        files = list(dirs.values())
        user_items = {length: dataset.load_user_items(path) for length, path in dirs.items()}

        def record(done: int) -> dict:
            made = records.make_record(BENCHMARK, variant, config, metrics_of(throughput_rows, step_rows),
                                       epochs=None, seed=config["seed"], partial=done < phases, data_files=files,
                                       command=command)
            made["path"] = records.write_record(made, out_records or records.ROOT)
            return made

        print(f"\n{'task':<10} {'max_len':>7} {'variant':<10} {'rows/s':>10} {'ms/batch':>9}")
        for length in dirs:
            for task in ("next_item", "ctr"):
                for name, kwargs in config["reader_variants"].items():
                    kwargs = {k: tuple(x) if isinstance(x, list) else x for k, x in kwargs.items()}
                    ds = reader(dirs[length], task, length, batch_size, config, user_items[length], **kwargs)
                    # A cache is filled during the first epoch: measure after it.
                    epoch = -(-users[length] * rows_per_user(task, config) // batch_size) if kwargs.get("cache") else 0
                    row = {"task": task, "max_len": length, "variant": name,
                           **throughput(ds, config["batches"], warmup + epoch, config["repeats"])}
                    throughput_rows.append(row)
                    print(f"{task:<10} {length:>7} {name:<10} {row['rows_per_s']:>10.0f} "
                          f"{row['ms_per_batch']:>9.1f}", flush=True)
        last = record(1)

        print(f"\n{'task':<10} {'max_len':>7} {'features':<10} {'memory ms':>10} {'reader ms':>10} {'ratio':>7} "
              f"{'cpu ratio':>9}")
        for setting in config["train_step"]:
            task, length = setting["task"], setting["max_len"]
            build_model, names = MODELS[setting["model"]]
            side = reader_features(setting)
            ds = reader(dirs[length], task, length, batch_size, config, user_items[length], sequence_features=side)
            features = "all" if setting["reader_features"] == "all" else "model"
            model = build_model(length, config["num_items"], config["num_categories"])
            row = {"task": task, "max_len": length, "model": setting["model"], "features": features,
                   "reader_features": list(side),
                   **step_ratio(ds, model, names, config["steps"], config["rounds"], warmup)}
            step_rows.append(row)
            print(f"{task:<10} {length:>7} {features:<10} {row['memory_ms_per_step']:>10.1f} "
                  f"{row['reader_ms_per_step']:>10.1f} {row['ratio']:>7.3f} {row['cpu_ratio']:>9.3f}", flush=True)
            last = record(1 + len(step_rows))
    return last


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="default", choices=sorted(SETTINGS["variants"]))
    parser.add_argument("--quick", action="store_const", const="quick", dest="variant",
                        help="the quick variant (a smoke run)")
    parser.add_argument("--out-records", help="where the record is written (default: benchmarks/results/records; "
                                              "quick: a temporary folder)")
    args = parser.parse_args(argv)
    out = args.out_records or (tempfile.mkdtemp(prefix="data-pipeline-") if args.variant == "quick" else records.ROOT)
    record = run(args.variant, out_records=out,
                 command=sys.argv if argv is None else ["benchmarks/data_pipeline.py", *argv])
    goal = record["config"]["goal"]["reader_over_memory_step_time_max"]
    ratio = record["metrics"].get("reader_over_memory_step_time")
    print(f"\nreader_over_memory_step_time (max over settings) = {ratio:.3f} (goal <= {goal})")
    print(f"record: {record['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
