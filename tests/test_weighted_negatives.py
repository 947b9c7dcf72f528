"""Popularity-weighted untouched negatives: exact proportions (every mass offset enumerated against a numpy
reference), exclusion of touched items, determinism, and clear errors."""

import numpy as np
import pytest
import tensorflow as tf

from tfmoe.data import negatives
from tfmoe.data import weighted_negatives as wn


def reference_items(counts, touched_row):
    """The item of each mass offset u = 0..M-1, by walking the catalogue: untouched item i covers w_i offsets."""
    return [i for i in range(1, len(counts)) if i not in set(touched_row) for _ in range(counts[i])]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_mass_offset_hits_the_item_a_catalogue_walk_gives(seed):
    rng = np.random.default_rng(seed)
    num_items = 30
    counts = rng.integers(0, 6, num_items + 1)
    counts[0] = 99  # padding: ignored
    rows = [sorted(set(rng.integers(1, num_items + 1, rng.integers(0, 12)).tolist())) for _ in range(5)]
    rows.append([])  # a user with no touched item
    rows.append(list(range(1, num_items + 1, 2)))
    table = wn.weighted_untouched_table(tf.ragged.constant(rows, dtype=tf.int64, ragged_rank=1), counts)
    for r, row in enumerate(rows):
        want = reference_items(counts, row)
        assert int(table.free_mass[r]) == len(want)
        got = wn.nth_untouched_weighted(table, [r] * len(want), np.arange(len(want))).numpy()
        np.testing.assert_array_equal(got, want)


def test_unsorted_rows_with_duplicates_give_the_same_table_as_sorted_unique_ones():
    counts = np.array([0, 3, 1, 4, 1, 5, 9, 2, 6])
    messy = tf.ragged.constant([[5, 2, 5, 8], [7, 7, 1]], dtype=tf.int64)
    clean = tf.ragged.constant([[2, 5, 8], [1, 7]], dtype=tf.int64)
    a = wn.weighted_untouched_table(messy, counts)
    b = wn.weighted_untouched_table(clean, counts, presorted=True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_sampled_frequencies_follow_popularity_and_never_hit_touched_items():
    counts = np.array([0, 1, 2, 4, 8, 16, 32, 1], np.int64)
    touched = tf.ragged.constant([[5]], dtype=tf.int64)
    table = wn.weighted_untouched_table(touched, counts)
    draws = 20_000
    seeds = tf.tile(tf.constant([[3, 7, 0]], tf.int64), [draws, 1])
    items = wn.sample_untouched_weighted(table, tf.zeros([draws], tf.int64), tf.range(draws, dtype=tf.int64),
                                         seeds).numpy()
    assert 5 not in items and 0 not in items
    free = counts.copy()
    free[5] = 0
    expected = free[1:] / free.sum()
    observed = np.bincount(items, minlength=len(counts))[1:] / draws
    # the first M = 48 draws of one seed are a permutation of all mass offsets: 20,000 draws cycle through
    # them, so frequencies are within one cycle's share of the exact proportions
    np.testing.assert_allclose(observed, expected, atol=48 / draws + 1e-9)


def test_draws_are_a_pure_function_of_seed_and_index():
    counts = np.arange(12)
    table = wn.weighted_untouched_table(tf.ragged.constant([[1, 4], [2]], dtype=tf.int64), counts)
    seeds = tf.constant([[1, 10, 0], [1, 11, 0], [1, 10, 0]], tf.int64)
    rows, index = tf.constant([0, 1, 0], tf.int64), tf.constant([5, 5, 5], tf.int64)
    first = wn.sample_untouched_weighted(table, rows, index, seeds).numpy()
    again = wn.sample_untouched_weighted(table, rows, index, seeds).numpy()
    np.testing.assert_array_equal(first, again)
    assert first[0] == first[2]
    # the same mass offsets as the uniform sampler's ranks
    ranks = negatives.seeded_ranks(index, seeds, tf.gather(table.free_mass, rows))
    np.testing.assert_array_equal(wn.nth_untouched_weighted(table, rows, ranks).numpy(), first)


def test_a_user_who_touched_every_counted_item_is_an_error():
    counts = np.array([0, 2, 0, 3])
    table = wn.weighted_untouched_table(tf.ragged.constant([[1, 3]], dtype=tf.int64), counts)
    with pytest.raises(tf.errors.InvalidArgumentError, match="touched every item with a positive count"):
        wn.sample_untouched_weighted(table, [0], [0], tf.constant([[0, 0, 0]], tf.int64))


@pytest.mark.parametrize(("counts", "match"), [
    (np.array([0.0, 1.0, 2.0]), "must be integers"),
    (np.array([[0, 1]]), r"must have shape \[num_items \+ 1\]"),
])
def test_bad_item_counts_are_named(counts, match):
    with pytest.raises(ValueError, match=match):
        wn.check_item_counts(counts)


def test_negative_counts_are_rejected():
    with pytest.raises(tf.errors.InvalidArgumentError, match="counts must be >= 0"):
        wn.check_item_counts(np.array([0, 1, -1]))
