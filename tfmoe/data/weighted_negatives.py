"""Exact, seeded sampling of untouched items in proportion to their popularity (pure TF, vectorised, tf.data-ready).

Negatives drawn uniformly are mostly unpopular items, so a CTR model can beat chance by scoring popularity
alone. Drawn in proportion to popularity (integer counts ``w_i``, ``w_0 = 0``), they make a popularity-only
scorer's AUC about 0.5 and the task measure personalisation. Draws exclude the items the user touched, exactly,
with no rejection loop:

* ``C(i) = sum_{k <= i} w_k`` is the cumulative count over the catalogue;
* a row's touched ids, sorted and unique, are ``t_0 < t_1 < ...``; ``W_j = sum_{k < j} w(t_k)`` is the touched
  mass before ``t_j`` and ``G_j = C(t_j - 1) - W_j`` the *untouched* mass below ``t_j`` (non-decreasing in ``j``);
* a draw is an integer ``u`` in ``[0, M)``, ``M = C(V) - sum_j w(t_j)`` the row's untouched mass. With
  ``j* = #{j : G_j <= u}``, the item is the smallest ``i`` with ``C(i) > u + W_{j*}``.

That ``i`` lies strictly between ``t_{j*-1}`` and ``t_{j*}``, so it is untouched, and each untouched item ``i``
is hit by exactly ``w_i`` of the ``M`` values of ``u``: the draw is exactly proportional to popularity. Both
searches are one batched ``tf.searchsorted`` (rows share a flat key array ``row * span + G_j``, as in
:mod:`tfmoe.data.negatives`). ``u`` comes from the same keyed permutation as the uniform sampler
(:func:`tfmoe.data.negatives.seeded_ranks`), so draws are a pure function of (seed triple, draw index).

Example:
    >>> import tensorflow as tf
    >>> from tfmoe.data import weighted_negatives as wn
    >>> counts = tf.constant([0, 1, 2, 3, 4], tf.int64)              # item 0 is padding
    >>> table = wn.weighted_untouched_table(tf.ragged.constant([[3]], tf.int64), counts)
    >>> int(table.free_mass[0])                                       # 1 + 2 + 4: item 3 is touched
    7
    >>> wn.nth_untouched_weighted(table, rows=[0] * 7, draws=list(range(7))).numpy().tolist()
    [1, 2, 2, 4, 4, 4, 4]
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from tfmoe.data import negatives


class WeightedUntouchedTable(NamedTuple):
    """Per-row lookup structure built by :func:`weighted_untouched_table` (all int64)."""

    keys: tf.Tensor  # [U] row * span + G_j over every row's sorted unique touched ids
    touched_before: tf.Tensor  # [U + 1] W_{j+1} of each key (touched mass up to and including t_j); last entry 0
    row_starts: tf.Tensor  # [B] offset of each row's first key
    free_mass: tf.Tensor  # [B] untouched mass M of each row
    span: tf.Tensor  # scalar C(V) + 1
    cumulative: tf.Tensor  # [V + 1] C(i)


def check_item_counts(item_counts, num_items=None) -> tf.Tensor:
    """``item_counts`` ([num_items + 1] non-negative integers, entry 0 = padding) as int64, checked."""
    counts = tf.convert_to_tensor(item_counts)
    if not counts.dtype.is_integer:
        raise ValueError(f"item_counts: must be integers (occurrence counts), got {counts.dtype.name}")
    if counts.shape.rank != 1 or (num_items is not None and counts.shape[0] not in (None, int(num_items) + 1)):
        want = "num_items + 1" if num_items is None else f"num_items + 1 = {int(num_items) + 1}"
        raise ValueError(f"item_counts: must have shape [{want}], got {counts.shape}")
    counts = tf.cast(counts, tf.int64)
    check = tf.debugging.assert_non_negative(counts, message="item_counts: counts must be >= 0")
    with tf.control_dependencies([check]):
        return tf.tensor_scatter_nd_update(counts, [[0]], tf.zeros([1], tf.int64))  # padding is never drawn


def weighted_untouched_table(touched: tf.RaggedTensor, item_counts, presorted: bool = False,
                             num_items=None) -> WeightedUntouchedTable:
    """Lookup table of each row's untouched items weighted by ``item_counts`` ([V + 1] ints, entry 0 ignored).

    ``touched``: [B, None] ids in ``[1, V]``; rows may be unsorted with duplicates unless ``presorted=True``.
    ``num_items``: when given, ``item_counts`` must have ``num_items + 1`` entries (:func:`check_item_counts`).
    """
    counts = check_item_counts(item_counts, num_items)
    num_items = tf.size(counts, out_type=tf.int64) - 1
    touched = (negatives._checked_ids(touched, num_items) if presorted
               else negatives.sorted_unique_rows(touched, num_items))
    cumulative = tf.cumsum(counts)
    span = cumulative[-1] + 1
    rows = touched.value_rowids()
    weights = tf.gather(counts, touched.values)
    inclusive = tf.cumsum(weights)  # global running sum; subtract each row's start to make it per row
    row_offset = tf.gather(tf.concat([tf.zeros([1], tf.int64), inclusive], 0), touched.row_starts())
    through = inclusive - tf.gather(row_offset, rows)  # W_{j+1}: touched mass up to and including t_j
    before = through - weights  # W_j
    below = tf.gather(cumulative, touched.values - 1) - before  # G_j
    row_mass = tf.math.unsorted_segment_sum(weights, rows, touched.nrows(out_type=tf.int64))
    return WeightedUntouchedTable(
        keys=rows * span + below,
        touched_before=tf.concat([through, tf.zeros([1], tf.int64)], 0),
        row_starts=touched.row_starts(),
        free_mass=cumulative[-1] - row_mass,
        span=span,
        cumulative=cumulative,
    )


def nth_untouched_weighted(table: WeightedUntouchedTable, rows, draws) -> tf.Tensor:
    """The item hit by mass offset ``draws`` (in ``[0, free_mass[row])``, not checked here) of row ``rows``."""
    rows = tf.reshape(tf.cast(rows, tf.int64), [-1])
    draws = tf.cast(draws, tf.int64)
    flat = tf.reshape(draws, [-1])
    found = tf.searchsorted(table.keys, rows * table.span + flat, side="right", out_type=tf.int64)
    count = found - tf.gather(table.row_starts, rows)  # j*: touched items whose untouched mass below is <= u
    mass_before = tf.where(count > 0, tf.gather(table.touched_before, tf.maximum(found - 1, 0)), 0)  # W_{j*}
    items = tf.searchsorted(table.cumulative, flat + mass_before, side="right", out_type=tf.int64)
    return tf.reshape(items, tf.shape(draws))


def sample_untouched_weighted(table: WeightedUntouchedTable, rows, index, seeds) -> tf.Tensor:
    """Popularity-weighted untouched items for draws ``(rows [D], index [D])`` with seed triples ``seeds [D, 3]``.

    Draw ``index`` of a seed maps to a distinct mass offset until the row's untouched mass is exhausted, so
    popular items may repeat across draws (with replacement, in proportion to their counts). Fails with an
    ``InvalidArgumentError`` if a row with a draw has no untouched item of positive count.
    """
    rows = tf.cast(rows, tf.int64)
    free = tf.gather(table.free_mass, rows)
    check = tf.debugging.assert_positive(
        free, message="sample_untouched_weighted: a user touched every item with a positive count, so no "
        "popularity-weighted negative exists; drop such users or use uniform negatives")
    with tf.control_dependencies([check]):
        draws = negatives.seeded_ranks(index, seeds, free)
    return nth_untouched_weighted(table, rows, draws)
