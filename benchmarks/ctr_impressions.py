"""Per-impression CTR evaluation for the long-sequence benchmark: scores, history lengths, buckets, counts.

A time-split CTR evaluation (``CTRSampling(holdout="fraction")``) makes every position ``t`` of a user's test range an
impression whose history holds ``t`` items. :func:`score_impressions` keeps, for every row, the user id, label, score
and that full history length ``t`` (the model sees at most ``max_len`` of it), so that metrics can be cut by
history-length bucket and the paired bootstrap (:mod:`tfmoe.metrics.bootstrap`) can resample users afterwards.
:func:`save_impressions` stores them compactly (``.npz``, next to the run, never in git).

Buckets: ``bounds = [200, 1000]`` gives ``<=200``, ``201-1000`` and ``>1000`` items of history
(:func:`bucket_names`).

Example:
    >>> bucket_names([200, 1000])
    ['<=200', '201-1000', '>1000']
    >>> bucket_of(np.array([1, 200, 201, 1000, 1001]), [200, 1000]).tolist()
    [0, 0, 1, 1, 2]
"""

from __future__ import annotations

import math
import os

import numpy as np

FIELDS = ("users", "labels", "scores", "positions")


def bucket_names(bounds) -> list[str]:
    """``["<=b0", "b0+1-b1", ..., ">b_last"]`` of increasing ``bounds``."""
    bounds = list(bounds)
    if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:])) or bounds[0] < 1:
        raise ValueError(f"buckets: bounds must be increasing positive integers, got {bounds}")
    names = [f"<={bounds[0]}"] + [f"{b + 1}-{c}" for b, c in zip(bounds, bounds[1:])]
    return names + [f">{bounds[-1]}"]


def bucket_of(positions, bounds) -> np.ndarray:
    """The bucket index of each history length (``t <= bounds[0]`` is bucket 0)."""
    return np.searchsorted(np.asarray(bounds), np.asarray(positions), side="left")


def full_lengths(data_dir: str) -> dict:
    """``{user_id: full sequence length}`` from the prepared ``test`` records (``items + [target]``)."""
    import tensorflow as tf

    from tfmoe.data import dataset, schema

    spec = {schema.USER_ID: tf.io.FixedLenFeature([], tf.int64),
            schema.ITEMS: tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)}
    files = dataset.split_files(data_dir, "test")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096)
    out = {}
    for batch in ds.map(lambda serialized: tf.io.parse_example(serialized, spec)):
        lengths = batch[schema.ITEMS].row_lengths().numpy() + 1
        out.update(zip(batch[schema.USER_ID].numpy().tolist(), lengths.tolist()))
    return out


def split_range(n: int, split: str, fraction: float, min_history: int) -> range:
    """Positions of ``split`` (``valid``/``test``) of a full sequence of ``n`` under the time split."""
    k = max(1, math.floor(fraction * n))
    start, end = (max(n - 2 * k, 0), max(n - k, 0)) if split == "valid" else (max(n - k, 0), n)
    return range(max(start, min_history), max(end, max(start, min_history)))


def impression_positions(users: np.ndarray, lengths: dict, split: str, sampling) -> np.ndarray:
    """The history length ``t`` of each evaluation row, rows in the reader's order (a user's rows contiguous, in time
    order, ``rows_per_position`` rows per position); ``ValueError`` when a user's row count does not match."""
    group = 1 if sampling.impressions == "labelled" else 1 + sampling.num_negatives
    positions = np.empty(users.size, np.int64)
    change = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1], [True]]))
    for start, end in zip(change[:-1], change[1:]):
        user = int(users[start])
        expected = split_range(lengths[user], split, sampling.holdout_fraction, sampling.min_history)
        if end - start != group * len(expected):
            raise ValueError(f"impression_positions: user {user} has {end - start} rows, expected "
                             f"{group} x {len(expected)} positions (are the user's rows contiguous?)")
        positions[start:end] = np.repeat(np.asarray(expected), group)
    return positions


def score_impressions(model, data_dir: str, split: str, sampling, max_len: int, sequence_features,
                      batch_size: int = 1024, touched_items=None) -> dict:
    """``{"users", "labels", "scores", "positions"}`` (numpy ``[N]``) of every evaluation row of ``split``."""
    import tensorflow as tf

    from tfmoe.data import dataset

    ds = dataset.make_dataset(data_dir, split, "ctr", max_len=max_len, batch_size=batch_size, ctr=sampling,
                              sequence_features=tuple(sequence_features), touched_items=touched_items)
    probabilities = tf.function(model.probabilities, reduce_retracing=True)
    users, labels, scores, seen = [], [], [], []
    for x, y in ds:
        scores.append(np.reshape(np.asarray(probabilities(x)), [-1]))
        labels.append(y.numpy())
        users.append(x["user_id"].numpy())
        seen.append(x["history_length"].numpy())
    out = {"users": np.concatenate(users).astype(np.int32), "labels": np.concatenate(labels).astype(np.int8),
           "scores": np.concatenate(scores).astype(np.float32)}
    out["positions"] = impression_positions(out["users"], full_lengths(data_dir), split, sampling).astype(np.int32)
    if not np.array_equal(np.minimum(out["positions"], max_len), np.concatenate(seen)):
        raise ValueError("score_impressions: history lengths of the rows disagree with their positions")
    return out


def save_impressions(path: str, arrays: dict) -> str:
    """Writes ``arrays`` (:data:`FIELDS`) compressed to ``path`` (``.npz``) atomically; returns ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = path + ".tmp.npz"
    np.savez_compressed(temporary, **{k: arrays[k] for k in FIELDS})
    os.replace(temporary, path)
    return path


def load_impressions(path: str) -> dict:
    with np.load(path) as data:
        missing = [k for k in FIELDS if k not in data]
        if missing:
            raise ValueError(f"{path}: impressions file lacks {missing}")
        return {k: data[k] for k in FIELDS}


def _metrics(labels, scores, users) -> dict:
    from tfmoe.metrics import ctr_metrics

    if labels.size == 0:
        return {"AUC": None, "GAUC": None, "LogLoss": None, "count": 0, "users": 0, "positives": 0}
    values = {k: float(x) for k, x in ctr_metrics(labels, scores, users).items()}
    values = {k: (None if math.isnan(x) else x) for k, x in values.items()}
    return {**values, "count": int(labels.size), "users": int(np.unique(users).size),
            "positives": int(labels.sum())}


def bucket_metrics(arrays: dict, bounds) -> dict:
    """``{"overall": m, "buckets": {name: m}}``, ``m = {AUC, GAUC, LogLoss, count, users, positives}`` (``None``
    where a metric is undefined, e.g. a bucket without both labels)."""
    labels, scores, users = arrays["labels"], arrays["scores"], arrays["users"]
    which = bucket_of(arrays["positions"], bounds)
    return {"overall": _metrics(labels, scores, users),
            "buckets": {name: _metrics(labels[which == b], scores[which == b], users[which == b])
                        for b, name in enumerate(bucket_names(bounds))}}


def impression_counts(data_dir: str, sampling, bounds, split: str = "test") -> dict:
    """Impressions (positions, before negatives) of ``split`` under the time split, overall and per bucket, and
    their users: from the prepared data alone."""
    lengths = full_lengths(data_dir)
    positions = np.concatenate([np.asarray(split_range(n, split, sampling.holdout_fraction, sampling.min_history))
                                for n in lengths.values()])
    per_bucket = np.bincount(bucket_of(positions, bounds), minlength=len(bounds) + 1)
    users = sum(1 for n in lengths.values() if len(split_range(n, split, sampling.holdout_fraction,
                                                               sampling.min_history)))
    return {"impressions": int(positions.size), "users": users,
            "buckets": dict(zip(bucket_names(bounds), per_bucket.tolist()))}
