"""CTR time split (CTRSampling(holdout="fraction")): each user's positions split in time into train, valid and
test, checked position by position against a plain-Python reference, and end to end from a prepared directory
(no position lost or shared between splits)."""

import math

import numpy as np
import pytest
import tensorflow as tf
from test_dataset import NUM_ITEMS, collect, write_prepared

from tfmoe.data import dataset, samples, schema

FRACTION = 0.1


def reference_ranges(n, fraction=FRACTION, min_history=1):
    k = max(1, math.floor(fraction * n))
    return {"train": range(min_history, max(n - 2 * k, 0)), "valid": range(max(n - 2 * k, min_history), n - k),
            "test": range(max(n - k, min_history), n)}


@pytest.mark.parametrize("n", [1, 2, 3, 9, 10, 19, 20, 21, 45, 200, 1000])
def test_holdout_bounds_match_the_reference(n):
    valid_start, test_start = (int(b[0]) for b in samples.holdout_bounds([n], FRACTION))
    k = max(1, math.floor(FRACTION * n))
    assert (valid_start, test_start) == (max(n - 2 * k, 0), max(n - k, 0))


def test_records(lengths, seed=0):
    rng = np.random.default_rng(seed)
    full = [rng.choice(np.arange(1, NUM_ITEMS + 1), size=n, replace=False) for n in lengths]
    times = [1_000 + 10 * np.arange(n) for n in lengths]
    features = {
        schema.USER_ID: tf.constant(np.arange(len(lengths)) + 1, tf.int64),
        schema.ITEMS: tf.ragged.constant([f[:-1].tolist() for f in full], dtype=tf.int64, ragged_rank=1),
        schema.TIMESTAMPS: tf.ragged.constant([t[:-1].tolist() for t in times], dtype=tf.int64, ragged_rank=1),
        schema.TARGET: tf.constant([f[-1] for f in full], tf.int64),
        schema.TARGET_TIMESTAMP: tf.constant([t[-1] for t in times], tf.int64),
    }
    return features, full, times


test_records.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("split", ["valid", "test"])
def test_eval_impressions_are_every_position_of_the_split_with_its_history(split):
    lengths = [2, 5, 12, 30, 41]
    features, full, times = test_records(lengths)
    sampling = samples.CTRSampling(num_negatives=2, holdout="fraction", holdout_fraction=FRACTION)
    max_len = 8
    rows, labels = samples.ctr_eval_positions(features, max_len, NUM_ITEMS, split, sampling,
                                              sequence_features=(schema.TIMESTAMPS,))
    labels = labels.numpy()
    positives = np.flatnonzero(labels == 1)
    expected = [(u, t) for u, n in enumerate(lengths) for t in reference_ranges(n)[split]]
    assert len(positives) == len(expected)
    np.testing.assert_array_equal(np.diff(np.append(positives, len(labels))), 3)  # [positive, negative, negative]
    for row, (user, t) in zip(positives, expected):
        assert rows["user_id"][row] == user + 1
        assert rows[samples.TARGET_ITEM][row] == full[user][t]
        assert rows[samples.TARGET_TIMESTAMP][row] == times[user][t]
        history = full[user][:t][-max_len:]
        got = rows[samples.HISTORY][row].numpy()
        np.testing.assert_array_equal(got[max_len - len(history):], history)
        assert (got[:max_len - len(history)] == 0).all() and rows[samples.HISTORY_LENGTH][row] == len(history)
        negatives = rows[samples.TARGET_ITEM][row + 1:row + 3].numpy()
        assert not set(negatives) & set(full[user]), "a negative the user touched"
    again, _ = samples.ctr_eval_positions(features, max_len, NUM_ITEMS, split, sampling,
                                          sequence_features=(schema.TIMESTAMPS,))
    np.testing.assert_array_equal(again[samples.TARGET_ITEM].numpy(), rows[samples.TARGET_ITEM].numpy())


def test_training_positions_stop_before_the_valid_range():
    lengths = [3, 12, 30, 41]
    features, full, _ = test_records(lengths)
    sampling = samples.CTRSampling(positions="stride", stride=1, holdout="fraction")
    keys = tf.constant([5, 6, 7, 8], tf.int64)
    rows, labels = samples.ctr_train(features, 10, NUM_ITEMS, keys, sampling, sequence_features=())
    got = sorted((int(u) - 1, int(item)) for u, item in zip(rows["user_id"].numpy()[labels.numpy() == 1],
                                                             rows[samples.TARGET_ITEM].numpy()[labels.numpy() == 1]))
    want = sorted((u, int(full[u][t])) for u, n in enumerate(lengths) for t in reference_ranges(n)["train"])
    assert got == want


def test_one_impression_per_record_refuses_the_time_split():
    features, _, _ = test_records([5])
    with pytest.raises(ValueError, match="use ctr_eval_positions"):
        samples.ctr_eval(features, 4, NUM_ITEMS, samples.CTRSampling(holdout="fraction"))


def test_bad_fraction_is_named():
    with pytest.raises(ValueError, match="holdout_fraction"):
        samples.CTRSampling(holdout="fraction", holdout_fraction=0.5)


def test_prepared_directory_splits_lose_and_share_no_position(tmp_path):
    rng = np.random.default_rng(3)
    sequences = {u + 1: rng.choice(np.arange(1, NUM_ITEMS + 1), size=n, replace=False).tolist()
                 for u, n in enumerate([3, 8, 15, 24, 31, 40])}
    prepared = write_prepared(str(tmp_path / "prepared"), sequences)
    sampling = samples.CTRSampling(positions="stride", stride=1, holdout="fraction", negatives="popularity")
    seen = {}
    for split in ("train", "valid", "test"):
        x, y = collect(dataset.make_dataset(prepared, split, "ctr", max_len=10, batch_size=16, ctr=sampling))
        seen[split] = {(int(u), int(i)) for u, i in zip(x["user_id"][y == 1], x["target_item"][y == 1])}
    want = {split: {(u, seq[t]) for u, seq in sequences.items() for t in reference_ranges(len(seq))[split]}
            for split in seen}
    assert seen == want
    assert not (seen["train"] & seen["valid"]) and not (seen["valid"] & seen["test"])
