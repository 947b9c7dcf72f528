"""Sample builders and exact negative sampling against numpy references and hand-computed cases."""

import numpy as np
import pytest
import tensorflow as tf

from tfmoe.data import negatives, samples

NUM_ITEMS = 40


def pad_left(values, length, pad=0):
    values = list(values)[-length:] if length else []
    return [pad] * (length - len(values)) + values


def rebase(session_ids, length):
    kept = list(session_ids)[-length:]
    return pad_left([s - kept[0] for s in kept], length, -1) if kept else [-1] * length


def _records(lengths, seed=0, with_targets=False):
    """Random user records (items distinct per user) as parsed features and as python lists."""
    rng = np.random.default_rng(seed)
    users = []
    for u, n in enumerate(lengths):
        seq = rng.choice(np.arange(1, NUM_ITEMS + 1), size=n + 1, replace=False).tolist()
        users.append({
            "user_id": 100 + u,
            "items": seq[:n],
            "target": seq[n],
            "timestamps": (1000 * u + np.arange(n) * 7).tolist(),
            "categories": [i % 5 + 1 for i in seq[:n]],
            "session_ids": (np.arange(n) // 3 + 2).tolist(),
        })
    feats = {"user_id": tf.constant([r["user_id"] for r in users], tf.int64)}
    for name in ("items", "timestamps", "categories", "session_ids"):
        feats[name] = tf.ragged.constant([r[name] for r in users], dtype=tf.int64, ragged_rank=1)
    if with_targets:
        feats["target"] = tf.constant([r["target"] for r in users], tf.int64)
        feats["target_timestamp"] = tf.constant([5000 + u for u in range(len(users))], tf.int64)
    return feats, users


def _numpy(outputs):
    return {k: v.numpy() for k, v in outputs.items()}


def test_gather_windows_hand_case_and_static_shape():
    rt = tf.ragged.constant([[1, 2, 3], [4], []], dtype=tf.int64)
    out = samples.gather_windows(rt, rows=[0, 0, 1, 2], ends=[3, 2, 1, 0], length=2, pad=-9)
    assert out.shape == (4, 2)
    np.testing.assert_array_equal(out.numpy(), [[2, 3], [1, 2], [-9, 4], [-9, -9]])


@pytest.mark.parametrize("skip_last", [0, 1])
def test_last_windows_matches_numpy_and_gather_windows(skip_last):
    rng = np.random.default_rng(skip_last)
    rows = [rng.integers(1, 99, size=n).tolist() for n in (0, 1, 2, 5, 9, 13)]
    rt = tf.ragged.constant(rows, dtype=tf.int64, ragged_rank=1)
    for length in (1, 3, 9, 20):
        expected = [pad_left(r[: len(r) - skip_last], length, -1) for r in rows]
        fast = samples.last_windows(rt, length, -1, tf.int32, skip_last)
        assert fast.shape == (len(rows), length) and fast.dtype == tf.int32
        np.testing.assert_array_equal(fast.numpy(), expected)
        ends = [max(len(r) - skip_last, 0) for r in rows]
        general = samples.gather_windows(rt, tf.range(len(rows)), ends, length, -1, tf.int32)
        np.testing.assert_array_equal(general.numpy(), expected)
        dynamic = samples.last_windows(rt, tf.constant(length), -1, tf.int32, skip_last)
        np.testing.assert_array_equal(dynamic.numpy(), expected)


@pytest.mark.parametrize("max_len", [1, 4, 7, 30])
def test_next_item_train_matches_numpy_shift_pad_truncate(max_len):
    feats, users = _records([0, 1, 2, 5, 9, 20])
    x, y = samples.next_item_train(feats, max_len)
    x = _numpy(x)
    for b, r in enumerate(users):
        seq = r["items"]
        np.testing.assert_array_equal(x["history"][b], pad_left(seq[:-1], max_len))
        np.testing.assert_array_equal(y.numpy()[b], pad_left(seq[1:], max_len))
        np.testing.assert_array_equal(x["history_timestamps"][b], pad_left(r["timestamps"][:-1], max_len))
        np.testing.assert_array_equal(x["history_categories"][b], pad_left(r["categories"][:-1], max_len))
        np.testing.assert_array_equal(x["history_session_ids"][b], rebase(r["session_ids"][:-1], max_len))
        assert x["history_length"][b] == min(max(len(seq) - 1, 0), max_len)
        assert x["user_id"][b] == r["user_id"]
    assert x["history"].dtype == np.int32 and x["history_timestamps"].dtype == np.int64 and y.dtype == tf.int32
    # Labels are 0 exactly where the input is padding.
    np.testing.assert_array_equal(y.numpy() == 0, x["history"] == 0)


def test_next_item_eval_uses_all_items_and_target():
    feats, users = _records([3, 8, 1], with_targets=True)
    x, y = samples.next_item_eval(feats, 5, sequence_features=("session_ids",))
    assert set(x) == {"history", "history_session_ids", "history_length", "user_id", "seen"}
    # seen: every history item (8 > max_len 5 for the second record), right-padded to the longest row
    assert x["seen"].dtype == tf.int32 and x["seen"].shape == (3, 8)
    for b, r in enumerate(users):
        np.testing.assert_array_equal(x["history"].numpy()[b], pad_left(r["items"], 5))
        np.testing.assert_array_equal(x["history_session_ids"].numpy()[b], rebase(r["session_ids"], 5))
        np.testing.assert_array_equal(x["seen"].numpy()[b], list(r["items"]) + [0] * (8 - len(r["items"])))
    np.testing.assert_array_equal(y.numpy(), [r["target"] for r in users])


def test_empty_side_features_pad_everything_and_misaligned_ones_fail():
    feats = {"user_id": tf.constant([1], tf.int64), "items": tf.ragged.constant([[3, 4, 5]], dtype=tf.int64),
             "timestamps": tf.ragged.constant([[]], dtype=tf.int64, ragged_rank=1)}
    x, _ = samples.next_item_train(feats, 4, sequence_features=("timestamps",))
    np.testing.assert_array_equal(x["history_timestamps"].numpy(), [[0, 0, 0, 0]])
    feats["timestamps"] = tf.ragged.constant([[1, 2]], dtype=tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature `timestamps` has a row whose length"):
        samples.next_item_train(feats, 4, sequence_features=("timestamps",))


@pytest.mark.parametrize("touched_count", [0, 10, 2277, 3413, 3415])
def test_nth_untouched_enumerates_exactly_the_untouched_ids(touched_count):
    num_items = 3416  # ML-1M: one user touched 2,277 of 3,416 items
    rng = np.random.default_rng(touched_count)
    touched = rng.choice(np.arange(1, num_items + 1), size=touched_count, replace=False)
    with_duplicates = np.concatenate([touched, touched[: touched_count // 3]])
    rows = tf.ragged.constant([with_duplicates.tolist(), [5]], dtype=tf.int64, ragged_rank=1)
    table = negatives.untouched_table(rows, num_items)
    free = np.setdiff1d(np.arange(1, num_items + 1), touched)
    assert int(table.num_free[0]) == free.size
    got = negatives.nth_untouched(table, np.zeros(free.size, np.int64), np.arange(free.size))
    np.testing.assert_array_equal(got.numpy(), free)


def test_untouched_table_rejects_ids_out_of_range():
    with pytest.raises(tf.errors.InvalidArgumentError, match="larger than num_items"):
        negatives.untouched_table(tf.ragged.constant([[1, 41]], dtype=tf.int64), 40)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be >= 1"):
        negatives.untouched_table(tf.ragged.constant([[0, 2]], dtype=tf.int64), 40)


def test_seeded_ranks_are_uniform_across_consecutive_user_seeds():
    # Raw index_shuffle on consecutive seeds is visibly non-uniform; mixed seeds must not be.
    n, k = 8000, 8
    seeds = tf.stack([tf.zeros([n], tf.int64), tf.range(n, dtype=tf.int64), tf.ones([n], tf.int64)], axis=1)
    ranks = negatives.seeded_ranks(tf.zeros([n], tf.int64), seeds, tf.fill([n], tf.constant(k, tf.int64)))
    counts = np.bincount(ranks.numpy(), minlength=k)
    chi2 = ((counts - n / k) ** 2 / (n / k)).sum()
    assert chi2 < 30, counts  # 7 degrees of freedom: p(chi2 > 30) < 1e-4


def _ctr_eval(feats, touched=None, n=3, seed=0, categories=None):
    x, y = samples.ctr_eval(feats, 6, NUM_ITEMS, samples.CTRSampling(num_negatives=n, eval_seed=seed),
                            touched=touched, item_categories=categories)
    return _numpy(x), y.numpy()


def test_ctr_eval_rows_negatives_and_determinism():
    feats, users = _records([4, 12, 1, 7], with_targets=True)
    held_out = [r["target"] % NUM_ITEMS + 1 for r in users]  # e.g. the test target of a valid record
    extra = tf.ragged.constant([sorted(set(r["items"]) | {r["target"], h}) for r, h in zip(users, held_out)],
                               dtype=tf.int64)
    categories = np.arange(NUM_ITEMS + 1) * 10
    x, y = _ctr_eval(feats, touched=extra, categories=categories)
    group = 4
    np.testing.assert_array_equal(y, np.tile([1.0, 0.0, 0.0, 0.0], len(users)))
    for b, r in enumerate(users):
        rows = slice(b * group, (b + 1) * group)
        assert x["target_item"][rows][0] == r["target"]
        forbidden = set(r["items"]) | {r["target"], held_out[b]}
        negs = x["target_item"][rows][1:]
        assert not forbidden & set(negs.tolist()) and len(set(negs.tolist())) == 3
        assert (negs >= 1).all() and (negs <= NUM_ITEMS).all()
        np.testing.assert_array_equal(x["target_category"][rows], categories[x["target_item"][rows]])
        np.testing.assert_array_equal(x["target_timestamp"][rows], [5000 + b] * group)
        for row in range(b * group, (b + 1) * group):
            np.testing.assert_array_equal(x["history"][row], pad_left(r["items"], 6))
            assert x["user_id"][row] == r["user_id"]
    # Same negatives in a second run, and for a user whatever else is in the batch.
    x2, _ = _ctr_eval(feats, touched=extra, categories=categories)
    np.testing.assert_array_equal(x2["target_item"], x["target_item"])
    reversed_feats = {k: tf.reverse(v, [0]) if isinstance(v, tf.Tensor) else tf.gather(v, [3, 2, 1, 0])
                      for k, v in feats.items()}
    x3, _ = _ctr_eval(reversed_feats, touched=tf.gather(extra, [3, 2, 1, 0]), categories=categories)
    np.testing.assert_array_equal(x3["target_item"].reshape(4, group)[::-1], x["target_item"].reshape(4, group))
    # Another eval seed gives other negatives; without a category map every row has category 0.
    x4, _ = _ctr_eval(feats, touched=extra, seed=1)
    assert (x4["target_item"] != x["target_item"]).any()
    assert (x4["target_category"] == 0).all()


def test_ctr_touched_rows_replace_the_record_and_empty_rows_fall_back_to_it():
    feats, users = _records([6, 6], with_targets=True)
    # Row 0: a complete touched set covering all but items 1 and 2; row 1: empty -> the record.
    everything_else = [i for i in range(3, NUM_ITEMS + 1)]
    touched = tf.ragged.constant([everything_else, []], dtype=tf.int64, ragged_rank=1)
    x, _ = samples.ctr_eval(feats, 4, NUM_ITEMS, samples.CTRSampling(num_negatives=30), touched=touched,
                            sequence_features=())
    negs = x["target_item"].numpy().reshape(2, 31)[:, 1:]
    assert set(negs[0].tolist()) == {1, 2}
    free = set(range(1, NUM_ITEMS + 1)) - set(users[1]["items"]) - {users[1]["target"]}
    assert set(negs[1].tolist()) <= free and len(set(negs[1].tolist())) == 30


def test_sorted_unique_rows_matches_numpy():
    rows = [[5, 3, 5, 1], [], [9, 9], [2, 8, 4]]
    out = negatives.sorted_unique_rows(tf.ragged.constant(rows, dtype=tf.int64), 10)
    assert out.to_list() == [sorted(set(r)) for r in rows]


def test_ctr_eval_is_exact_for_a_user_who_touched_almost_everything():
    everything = list(range(1, NUM_ITEMS + 1))
    left_out = [7, 19, 33]
    items = [i for i in everything if i not in left_out + [40]]
    feats = {"user_id": tf.constant([1, 2], tf.int64), "items": tf.ragged.constant([items, items[:-1]], dtype=tf.int64),
             "target": tf.constant([40, 40], tf.int64)}
    x, _ = samples.ctr_eval(feats, 8, NUM_ITEMS, samples.CTRSampling(num_negatives=5), sequence_features=())
    negs = x["target_item"].numpy().reshape(2, 6)[:, 1:]
    assert sorted(set(negs[0].tolist())) == left_out  # only 3 exist: all drawn, then cycled
    assert sorted(negs[0][:3].tolist()) == left_out
    assert set(negs[1].tolist()) <= set(left_out) | {items[-1]}
    feats = {"user_id": tf.constant([3], tf.int64), "items": tf.ragged.constant([everything[:-1]], dtype=tf.int64),
             "target": tf.constant([40], tf.int64)}
    with pytest.raises(tf.errors.InvalidArgumentError, match="a user touched every item"):
        samples.ctr_eval(feats, 8, NUM_ITEMS, sequence_features=())


def test_ctr_eval_negatives_are_uniform_over_untouched_items():
    n_users = 3000
    items = [1, 2, 3, 5, 8, 13, 21, 34]
    feats = {"user_id": tf.range(1, n_users + 1, dtype=tf.int64),
             "items": tf.ragged.constant([items] * n_users, dtype=tf.int64),
             "target": tf.fill([n_users], tf.constant(40, tf.int64))}
    x, _ = samples.ctr_eval(feats, 2, NUM_ITEMS, sequence_features=())
    negs = x["target_item"].numpy()[1::2]
    free = np.setdiff1d(np.arange(1, NUM_ITEMS + 1), items + [40])
    assert set(negs.tolist()) <= set(free.tolist())
    counts = np.array([np.count_nonzero(negs == f) for f in free])
    expected = n_users / free.size
    assert ((counts - expected) ** 2 / expected).sum() < 70  # 30 dof: p(chi2 > 70) < 1e-4


def test_ctr_train_stride_positions_match_numpy():
    feats, users = _records([1, 2, 6, 11], with_targets=False)
    sampling = samples.CTRSampling(num_negatives=2, positions="stride", stride=3, min_history=2)
    keys = tf.constant([11, 12, 13, 14], tf.int64)
    x, y = samples.ctr_train(feats, 4, NUM_ITEMS, keys, sampling)
    x = _numpy(x)
    expected = []
    for b, r in enumerate(users):
        n = len(r["items"])
        for t in range(n - 1, sampling.min_history - 1, -sampling.stride):
            expected.append((b, t))
    assert y.shape[0] == 3 * len(expected)
    np.testing.assert_array_equal(y.numpy(), np.tile([1.0, 0.0, 0.0], len(expected)))
    for s, (b, t) in enumerate(expected):
        r = users[b]
        pos = 3 * s
        assert x["target_item"][pos] == r["items"][t]
        assert x["target_timestamp"][pos] == r["timestamps"][t]
        np.testing.assert_array_equal(x["history"][pos], pad_left(r["items"][:t], 4))
        np.testing.assert_array_equal(x["history_session_ids"][pos], rebase(r["session_ids"][:t], 4))
        negs = x["target_item"][pos + 1 : pos + 3]
        assert not set(negs.tolist()) & set(r["items"])


def test_ctr_train_random_positions_are_distinct_keyed_and_exclude_touched():
    feats, users = _records([3, 9, 25, 30])
    extra = tf.ragged.constant([sorted(r["items"] + [r["target"]]) for r in users], dtype=tf.int64)
    sampling = samples.CTRSampling(num_negatives=1, samples_per_user=4, min_history=1)

    def run(keys):
        x, _ = samples.ctr_train(feats, 8, NUM_ITEMS, tf.constant(keys, tf.int64), sampling, touched=extra)
        return _numpy(x)

    x = run([1, 2, 3, 4])
    for r in users:
        rows = np.flatnonzero(x["user_id"] == r["user_id"])
        positive_rows = rows[0::2]
        assert positive_rows.size == min(4, len(r["items"]) - 1)
        positions = []
        for row in positive_rows:
            t = r["items"].index(x["history"][row][-1]) + 1  # the history ends right before t
            positions.append(t)
            assert x["target_item"][row] == r["items"][t]
            np.testing.assert_array_equal(x["history"][row], pad_left(r["items"][:t], 8))
        assert len(set(positions)) == len(positions) and min(positions) >= 1
        negs = x["target_item"][rows[1::2]]
        assert not set(negs.tolist()) & (set(r["items"]) | {r["target"]})
    np.testing.assert_array_equal(run([1, 2, 3, 4])["target_item"], x["target_item"])
    assert (run([5, 6, 7, 8])["target_item"] != x["target_item"]).any()


def test_ctr_train_shuffle_samples_permutes_whole_groups():
    feats, users = _records([5, 9, 14, 20])
    sampling = samples.CTRSampling(num_negatives=2, positions="stride", stride=2)
    keys = tf.constant([3, 4, 5, 6], tf.int64)

    def groups(shuffle):
        x, y = samples.ctr_train(feats, 5, NUM_ITEMS, keys, sampling, shuffle_samples=shuffle)
        np.testing.assert_array_equal(y.numpy(), np.tile([1.0, 0.0, 0.0], len(y) // 3))
        rows = np.stack([x["user_id"].numpy(), x["history_length"].numpy(), x["target_item"].numpy()], 1)
        return [tuple(rows[i : i + 3].ravel()) for i in range(0, len(rows), 3)]

    plain, shuffled = groups(False), groups(True)
    assert sorted(plain) == sorted(shuffled) and plain != shuffled
    assert shuffled == groups(True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_negatives": 0}, r"CTRSampling: `num_negatives` must be an integer >= 1, got 0"),
        ({"positions": "all"}, r"CTRSampling: `positions` must be one of 'random', 'stride'; got 'all'"),
        ({"stride": 0}, r"CTRSampling: `stride` must be an integer >= 1, got 0"),
    ],
)
def test_ctr_sampling_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        samples.CTRSampling(**kwargs)


def test_sequence_features_validation():
    with pytest.raises(ValueError, match=r"`sequence_features` must be one of 'timestamps'"):
        samples.check_sequence_features("X", ("ratings",))
