"""The tf.data reader: prepared TFRecords -> ``(features, labels)`` batches for ``keras.Model.fit``.

Pipeline (each stage parallel and autotuned, in this order): shard files (shuffled when
training) -> parallel interleave of GZIP ``TFRecordDataset`` s -> optional ``cache`` of the raw
records -> seeded ``shuffle`` -> optional ``repeat`` -> ``batch`` of serialized records ->
``tf.io.parse_example`` **after** batching (ragged features: one C++ call per batch, no
per-record Python or padding) -> a sample builder of :mod:`tfmoe.data.samples` (one C++
``to_tensor`` or one gather per feature, so ``max_len`` of 10,000 and more costs only the copied
bytes) -> for CTR,
``rebatch`` to exactly ``batch_size`` rows -> ``prefetch(AUTOTUNE)``. When a prepared
directory's ``summary.json`` gives the split's record count and one pass has a fixed number of
batches (not repeated, not bucketed, not CTR training), the dataset declares its cardinality, so
``keras.Model.fit`` knows the epoch length (a stale summary then fails loudly).

Shapes: with the default fixed padding every time dimension is ``max_len`` (static, XLA and TPU
friendly); add ``drop_remainder=True`` for a static batch dimension too. With
``bucket_boundaries=[b0, b1, ...]`` records are grouped by history length into buckets
``[0, b0], (b0, b1], ..., (b_last, max_len]`` and padded to their bucket's upper bound, so the
time dimension is **not static** (it takes ``len(bucket_boundaries) + 1`` values, which bounds
XLA recompilations); CTR batches then hold the rows of ``batch_size // rows_per_user`` users.

Randomness: shuffling uses ``seed``; CTR training positions and negatives are keyed per record
by a seeded stream that changes every epoch (``Dataset.random(seed, rerandomize_each_iteration)``),
so a run is reproducible with ``deterministic=True``; CTR valid/test negatives depend only on
``(CTRSampling.eval_seed, user_id)``.

Example (a prepared directory is read the same way: ``make_dataset("prepared/", "train")``):
    >>> import os, tempfile, tensorflow as tf
    >>> from tfmoe.data import dataset, schema
    >>> path = os.path.join(tempfile.mkdtemp(), "part-00000-of-00001.tfrecord.gz")
    >>> with tf.io.TFRecordWriter(path, "GZIP") as writer:
    ...     writer.write(schema.encode_example(user_id=1, items=[4, 5, 6]).SerializeToString())
    >>> ds = dataset.make_dataset(path, "train", max_len=4, batch_size=1, sequence_features=())
    >>> features, labels = next(iter(ds))
    >>> features["history"].numpy().tolist(), labels.numpy().tolist()
    ([[0, 0, 4, 5]], [[0, 0, 5, 6]])
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfmoe.data import negatives, samples, schema
from tfmoe.utils import validation as v
from tfmoe.utils.choices import TASKS

COMPRESSIONS = ("GZIP", "ZLIB", "")
_KEY = "_sample_key"  # per-record randomness key travelling with the features (bucketed CTR training)
_OWNER = "make_dataset"
# CTR training with positions="stride" yields a data-dependent number of rows per record; parse
# batches assume this many positions per record (``rebatch`` then makes batches exact anyway).
_STRIDE_POSITIONS_GUESS = 8


def split_files(source, split: str) -> list[str]:
    """Sorted TFRecord paths of ``split``.

    ``source`` is a prepared directory (``<source>/<split>/part-*``), a glob pattern, or a list of
    paths. Raises ``ValueError`` naming the source when nothing matches.
    """
    if isinstance(source, (list, tuple)):
        files = [os.fspath(f) for f in source]
        if not files:
            raise ValueError(f"{_OWNER}: `source` is an empty list of files")
        return files
    source = os.fspath(source)
    if tf.io.gfile.isdir(source):
        pattern = os.path.join(source, split, f"part-*{schema.RECORD_SUFFIX}")
    else:
        pattern = source
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"{_OWNER}: no TFRecord files match {pattern!r} (split {split!r})")
    return files


def read_num_items(data_dir) -> int:
    """Item vocabulary size of a prepared directory (lines of ``vocab/items.txt``; ids are 1..n)."""
    path = os.path.join(os.fspath(data_dir), schema.VOCAB_DIR, "items.txt")
    if not tf.io.gfile.exists(path):
        raise ValueError(f"{_OWNER}: cannot find {path!r} to count items; pass `num_items`")
    with tf.io.gfile.GFile(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def parse_spec(split: str, sequence_features=samples.DEFAULT_SEQUENCE_FEATURES) -> dict:
    """``tf.io.parse_example`` spec: ragged int64 sequences, int64 scalars (targets for valid/test)."""
    v.check_choice(_OWNER, "split", split, schema.SPLITS)
    ragged = tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)
    spec = {schema.USER_ID: tf.io.FixedLenFeature([], tf.int64)}
    for name in (schema.ITEMS, *sequence_features):
        spec[name] = ragged
    if split != "train":
        spec[schema.TARGET] = tf.io.FixedLenFeature([], tf.int64)
        spec[schema.TARGET_TIMESTAMP] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
        spec[schema.TARGET_CATEGORY] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
        if schema.BEHAVIORS in sequence_features:
            spec[schema.TARGET_BEHAVIOR] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
    return spec


@dataclass(frozen=True)
class UserItems:
    """Every item each user touched and each item's category, from the ``test`` split.

    ``items``: ``tf.RaggedTensor [max_user_id + 1, None]`` int64, row ``u`` = the distinct items of
    user ``u``'s full sequence (``test`` record ``items + [target]``), sorted ascending; empty for
    unknown users (the CTR builders then fall back to the record's own items).
    ``item_categories``: ``np.ndarray [num_items + 1]`` int64 (0 = unknown: an item in no user's
    sequence), or ``None`` if the data has no categories. Memory: 8 bytes per interaction.
    ``item_counts``: ``np.ndarray [num_items + 1]`` int64, each item's occurrences over all users' full
    sequences (entry 0 = 0): the popularity that ``CTRSampling(negatives="popularity")`` follows.
    """

    items: tf.RaggedTensor
    item_categories: np.ndarray | None
    num_items: int
    item_counts: np.ndarray | None = None

    def rows_for(self, user_ids) -> tf.RaggedTensor:
        """The touched items of ``user_ids`` (unknown ids get an empty row)."""
        user_ids = tf.cast(user_ids, tf.int64)
        known = tf.logical_and(user_ids >= 0, user_ids < self.items.nrows(out_type=tf.int64))
        return tf.gather(self.items, tf.where(known, user_ids, 0))


def load_user_items(source, num_items: int | None = None, compression: str = "GZIP") -> UserItems:
    """Reads the ``test`` split (a prepared directory or a file pattern/list) into :class:`UserItems`.

    Under leave-one-out a ``test`` record's ``items + [target]`` is the user's whole sequence, so
    this is the exact touched set for negatives of every split. ``num_items`` defaults to the
    vocabulary size of a prepared directory, else to the largest id seen.
    """
    files = split_files(source, "test")
    spec = parse_spec("test", (schema.CATEGORIES,))
    ds = tf.data.TFRecordDataset(files, compression_type=compression).batch(4096).map(
        lambda s: tf.io.parse_example(s, spec), num_parallel_calls=tf.data.AUTOTUNE
    )
    parts = list(ds)
    if not parts:
        raise ValueError(f"load_user_items: the test split at {source!r} has no records")
    user_ids = np.concatenate([p[schema.USER_ID].numpy() for p in parts])
    unique, counts = np.unique(user_ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"load_user_items: user_id {int(unique[counts > 1][0])} has several test records")
    items = tf.concat([p[schema.ITEMS] for p in parts], axis=0)
    targets = tf.concat([p[schema.TARGET] for p in parts], axis=0)
    full = tf.concat([items, tf.RaggedTensor.from_tensor(targets[:, None])], axis=1)
    largest = int(tf.reduce_max(full.values)) if int(tf.size(full.values)) else 0
    if num_items is None:
        num_items = read_num_items(source) if _is_dir(source) else largest
    if largest > num_items:
        raise ValueError(f"load_user_items: item id {largest} is larger than num_items={num_items}")
    item_counts = np.bincount(full.values.numpy(), minlength=num_items + 1).astype(np.int64)
    item_counts[0] = 0
    record_of_user = np.full(int(user_ids.max()) + 1, len(user_ids), np.int64)  # default: the empty row
    record_of_user[user_ids] = np.arange(len(user_ids))
    full = negatives.sorted_unique_rows(full, num_items)
    padded = tf.concat([full, tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int64), [0])], axis=0)
    by_user = tf.gather(padded, record_of_user)
    categories = tf.concat([p[schema.CATEGORIES] for p in parts], axis=0)
    item_categories = None
    if int(tf.size(categories.values)):
        item_categories = np.zeros(num_items + 1, np.int64)
        aligned = (categories.row_lengths() == items.row_lengths()).numpy()
        item_categories[items.values.numpy()[np.repeat(aligned, items.row_lengths().numpy())]] = (
            categories.values.numpy()[np.repeat(aligned, categories.row_lengths().numpy())]
        )
        target_categories = np.concatenate([p[schema.TARGET_CATEGORY].numpy() for p in parts])
        known = target_categories > 0
        item_categories[targets.numpy()[known]] = target_categories[known]
    return UserItems(items=by_user, item_categories=item_categories, num_items=int(num_items),
                     item_counts=item_counts)


def _known_batches(source, split, task, ctr, batch_size, drop_remainder, repeat, rows_vary) -> int | None:
    """Number of batches of one pass, from ``summary.json``'s record count, when it is fixed."""
    if repeat or rows_vary or not _is_dir(source) or (task == "ctr" and split == "train"):
        return None
    path = os.path.join(os.fspath(source), schema.SUMMARY_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        records = json.load(f).get("splits", {}).get(split, {}).get("records")
    if not isinstance(records, int):
        return None
    rows = records * (1 + ctr.num_negatives) if task == "ctr" else records
    return rows // batch_size if drop_remainder else -(-rows // batch_size)


def _is_dir(source) -> bool:
    return not isinstance(source, (list, tuple)) and tf.io.gfile.isdir(os.fspath(source))


def _check_bucket_boundaries(bucket_boundaries, max_len: int) -> list[int] | None:
    if bucket_boundaries is None:
        return None
    bounds = v.check_int_sequence(_OWNER, "bucket_boundaries", bucket_boundaries, minimum=1)
    if any(b >= c for b, c in zip(bounds, bounds[1:])) or bounds[-1] >= max_len:
        raise ValueError(
            f"{_OWNER}: `bucket_boundaries` must be strictly increasing and below max_len={max_len}, got {bounds}"
        )
    return bounds


def _ctr_context(source, split, num_items, touched_items, item_categories, compression):
    """Resolves ``(num_items, UserItems or None, item_categories)`` for the CTR builders."""
    is_dir = _is_dir(source)
    if num_items is None:
        if isinstance(touched_items, UserItems):
            num_items = touched_items.num_items
        elif is_dir:
            num_items = read_num_items(source)
        else:
            raise ValueError(f"{_OWNER}: task='ctr' needs `num_items` when `source` is not a prepared directory")
    num_items = v.check_int(_OWNER, "num_items", num_items, minimum=1)
    user_items = None
    if isinstance(touched_items, UserItems):
        user_items = touched_items
    elif touched_items is None:
        if is_dir:
            user_items = load_user_items(source, num_items, compression)
        elif split != "test":
            raise ValueError(
                f"{_OWNER}: task='ctr' on split {split!r} needs every item each user touched (a {split} record "
                "lacks the held-out items): pass touched_items=load_user_items(<prepared dir or test files>), "
                "or touched_items='record' to exclude only the record's own items (approximate)"
            )
    elif touched_items != "record":
        raise ValueError(f"{_OWNER}: `touched_items` must be None, 'record' or a UserItems, got {touched_items!r}")
    if item_categories is None and user_items is not None:
        item_categories = user_items.item_categories
    if item_categories is not None:
        item_categories = np.asarray(item_categories)
        if item_categories.shape != (num_items + 1,) or not np.issubdtype(item_categories.dtype, np.integer):
            raise ValueError(
                f"{_OWNER}: `item_categories` must be an integer array of shape [num_items + 1] = [{num_items + 1}], "
                f"got {item_categories.dtype} {item_categories.shape}"
            )
        item_categories = tf.constant(item_categories, tf.int64)
    return num_items, user_items, item_categories


def _make_builder(split, task, sequence_features, ctr, num_items, user_items, item_categories, shuffle_samples):
    """``build(features, max_len) -> (features, labels)`` for one batch of parsed records."""
    training = split == "train"
    item_counts = None
    if task == "ctr" and ctr.negatives == "popularity":
        if user_items is None or user_items.item_counts is None:
            raise ValueError(f"{_OWNER}: CTRSampling(negatives='popularity') needs each item's occurrence count: "
                             "read a prepared directory, or pass touched_items=load_user_items(...)")
        item_counts = tf.constant(user_items.item_counts, tf.int64)

    def build(features, max_len):
        features = dict(features)
        keys = features.pop(_KEY, None)
        if task == "next_item":
            fn = samples.next_item_train if training else samples.next_item_eval
            return fn(features, max_len, sequence_features)
        touched = user_items.rows_for(features[schema.USER_ID]) if user_items is not None else None
        common = dict(touched=touched, item_categories=item_categories, sequence_features=sequence_features,
                      item_counts=item_counts)
        if not training and ctr.holdout == "fraction":
            return samples.ctr_eval_positions(features, max_len, num_items, split, ctr, **common)
        if not training:
            return samples.ctr_eval(features, max_len, num_items, ctr, **common)
        return samples.ctr_train(features, max_len, num_items, keys, ctr, shuffle_samples=shuffle_samples, **common)

    return build


def make_dataset(
    source,
    split: str,
    task: str = "next_item",
    max_len: int = 200,
    batch_size: int = 256,
    *,
    sequence_features: Sequence[str] = samples.DEFAULT_SEQUENCE_FEATURES,
    ctr: samples.CTRSampling | None = None,
    num_items: int | None = None,
    touched_items=None,
    item_categories=None,
    shuffle: bool | None = None,
    shuffle_buffer: int = 10_000,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    deterministic: bool = True,
    bucket_boundaries: Sequence[int] | None = None,
    cache: bool | str = False,
    compression: str = "GZIP",
    num_parallel_calls: int | None = None,
    threadpool_size: int | None = None,
) -> tf.data.Dataset:
    """Streams ``(features, labels)`` batches of ``split`` for ``task`` (see the module docstring).

    Args:
        source: a prepared directory, a glob pattern, or a list of TFRecord files.
        split: ``"train"`` (training samples) or ``"valid"`` / ``"test"`` (evaluation samples).
        task: ``"next_item"`` or ``"ctr"``; the features and labels are described in
            :mod:`tfmoe.data.samples`.
        max_len: history positions kept (the most recent) and padded to (left).
        batch_size: rows per batch (CTR: positive and negative rows together).
        sequence_features: side features to emit next to ``history`` (a subset of
            ``timestamps``, ``categories``, ``session_ids``, ``behaviors``); fewer parse faster.
        ctr: :class:`~tfmoe.data.samples.CTRSampling` (default ``CTRSampling()``).
        num_items: item vocabulary size (CTR; default: read from ``vocab/items.txt``).
        touched_items: CTR exclusion sets: ``None`` loads them from the prepared ``test`` split
            (exact), a :class:`UserItems` reuses loaded ones, ``"record"`` uses only the record.
        item_categories: ``[num_items + 1]`` ints for ``target_category`` (default: from
            ``touched_items``; without either, ``target_category`` is 0 on every row).
        shuffle: shuffle shards and records (default: ``split == "train"``), with ``seed``.
        repeat: repeat forever (else one pass per iteration, e.g. per Keras epoch).
        drop_remainder: drop the last partial batch, making the batch dimension static.
        deterministic: keep a reproducible order (``False`` lets parallel stages reorder).
        bucket_boundaries: bucket by history length instead of padding to ``max_len``.
        cache: cache the raw records in memory (``True``) or in files (a path prefix).
        num_parallel_calls: parallelism of parse/build (default AUTOTUNE).
        threadpool_size: size of a private tf.data thread pool (default: TensorFlow's shared one).
    """
    v.check_choice(_OWNER, "split", split, schema.SPLITS)
    v.check_choice(_OWNER, "task", task, TASKS)
    max_len = v.check_int(_OWNER, "max_len", max_len, minimum=1)
    batch_size = v.check_int(_OWNER, "batch_size", batch_size, minimum=1)
    sequence_features = samples.check_sequence_features(_OWNER, sequence_features)
    shuffle = split == "train" if shuffle is None else v.check_bool(_OWNER, "shuffle", shuffle)
    shuffle_buffer = v.check_int(_OWNER, "shuffle_buffer", shuffle_buffer, minimum=1)
    seed = v.check_int(_OWNER, "seed", seed, minimum=0)
    for name, flag in (("repeat", repeat), ("drop_remainder", drop_remainder), ("deterministic", deterministic)):
        v.check_bool(_OWNER, name, flag)
    bounds = _check_bucket_boundaries(bucket_boundaries, max_len)
    if not isinstance(cache, (bool, str)):
        raise ValueError(f"{_OWNER}: `cache` must be True, False or a file path prefix, got {cache!r}")
    v.check_choice(_OWNER, "compression", compression, COMPRESSIONS)
    parallel = tf.data.AUTOTUNE if num_parallel_calls is None else v.check_int(
        _OWNER, "num_parallel_calls", num_parallel_calls, minimum=1)
    v.check_optional_int(_OWNER, "threadpool_size", threadpool_size, minimum=1)
    if ctr is None:
        ctr = samples.CTRSampling()
    elif not isinstance(ctr, samples.CTRSampling):
        raise ValueError(f"{_OWNER}: `ctr` must be a CTRSampling, got {type(ctr).__name__}")

    # the time split of CTRSampling(holdout="fraction") cuts every split from the full sequences of the test records
    record_split = "test" if task == "ctr" and ctr.holdout == "fraction" else split
    files = split_files(source, record_split)
    if task == "ctr":
        num_items, user_items, item_categories = _ctr_context(source, record_split, num_items, touched_items,
                                                              item_categories, compression)
        positions = ctr.samples_per_user if ctr.positions == "random" else _STRIDE_POSITIONS_GUESS
        group = 1 if ctr.impressions == "labelled" else 1 + ctr.num_negatives  # rows per position
        records_per_batch = max(1, batch_size // (group * positions if split == "train" else group))
    else:
        user_items, records_per_batch = None, batch_size
    build = _make_builder(split, task, sequence_features, ctr, num_items, user_items, item_categories,
                          shuffle_samples=shuffle)
    labelled = task == "ctr" and ctr.impressions == "labelled"
    if labelled:
        _check_has_behaviors(source)
    # labelled impressions read their labels from the behaviors, emitted as a model input or not
    parsed = tuple(dict.fromkeys((*sequence_features, schema.BEHAVIORS))) if labelled else sequence_features
    spec = parse_spec(record_split, parsed)
    keyed = task == "ctr" and split == "train"

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle and len(files) > 1:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression, buffer_size=1 << 20),
        cycle_length=min(len(files), 16),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if cache:
        ds = ds.cache("" if cache is True else cache)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if bounds is None:
        ds = ds.batch(records_per_batch, drop_remainder=drop_remainder and task == "next_item",
                      num_parallel_calls=parallel, deterministic=deterministic)
        if keyed:
            ds = tf.data.Dataset.zip((ds, _key_stream(seed)))

        def parse_and_build(serialized, key=None):
            features = tf.io.parse_example(serialized, spec)
            if key is not None:
                features[_KEY] = key + tf.range(tf.size(serialized, out_type=tf.int64))
            return build(features, max_len)

        ds = ds.map(parse_and_build, num_parallel_calls=parallel, deterministic=deterministic)
        if task == "ctr":
            ds = ds.rebatch(batch_size, drop_remainder=drop_remainder)
    else:
        ds = _bucketed(ds, spec, build, bounds, max_len, records_per_batch, task, split, keyed, seed,
                       drop_remainder, parallel, deterministic)
    rows_vary = bounds is not None or (task == "ctr" and ctr.holdout == "fraction")  # impressions per record vary
    batches = _known_batches(source, split, task, ctr, batch_size, drop_remainder, repeat, rows_vary)
    if batches is not None:  # lets Keras show progress and skip its "ran out of data" warning
        ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_options(deterministic, threadpool_size))


def _check_has_behaviors(source) -> None:
    """``ValueError`` when a prepared directory's ``summary.json`` says its input had no behaviors."""
    path = os.path.join(os.fspath(source), schema.SUMMARY_FILE) if _is_dir(source) else None
    if path is None or not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        has = json.load(f).get("features", {}).get(schema.BEHAVIORS)
    if has is False:
        raise ValueError(f"{_OWNER}: CTRSampling(impressions='labelled') labels each impression by its behavior, "
                         f"but {os.fspath(source)!r} was prepared from input without behaviors")


def _key_stream(seed: int) -> tf.data.Dataset:
    """Seeded int64 keys that differ in every epoch (iteration) yet repeat across runs."""
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)


def _bucketed(ds, spec, build, bounds, max_len, records_per_batch, task, split, keyed, seed, drop_remainder,
              parallel, deterministic):
    """Groups records by history length and pads each batch to its bucket's upper bound."""
    ds = ds.batch(1024, num_parallel_calls=parallel, deterministic=deterministic)
    ds = ds.map(lambda s: tf.io.parse_example(s, spec), num_parallel_calls=parallel, deterministic=deterministic)
    ds = ds.unbatch()
    if keyed:
        ds = tf.data.Dataset.zip((ds, _key_stream(seed))).map(lambda f, k: {**f, _KEY: k})
    shift = 1 if (task == "next_item" and split == "train") else 0
    boundaries = tf.constant(bounds, tf.int64)
    pad_lengths = tf.constant([*bounds, max_len], tf.int64)

    def bucket_of(features):
        length = tf.minimum(tf.maximum(tf.shape(features[schema.ITEMS], out_type=tf.int64)[0] - shift, 0), max_len)
        return tf.searchsorted(boundaries, length[None], side="left", out_type=tf.int64)[0]

    def batch_bucket(bucket, window):
        batches = window.ragged_batch(records_per_batch, drop_remainder=drop_remainder and task == "next_item")
        return batches.map(lambda f: build(f, pad_lengths[bucket]), num_parallel_calls=parallel,
                           deterministic=deterministic)

    return ds.group_by_window(bucket_of, batch_bucket, window_size=records_per_batch)


def _options(deterministic: bool, threadpool_size: int | None) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    if threadpool_size:
        options.threading.private_threadpool_size = threadpool_size
    return options
