"""Length groups: a batch of left-padded histories encoded in groups of similar length, each cut to its longest.

A batch of ``B`` histories padded to ``L`` spends its attention on ``L^2`` pairs per row and its projections and
FFNs on ``L`` positions per row, padding included. With ``groups = G``, the rows are sorted by their *width* (``L``
minus the index of their first real item) and split into ``G`` runs of ``B / G`` rows. Group ``g`` is cut to its
widest row ``w_g`` (the last ``w_g`` columns), encoded, padded back to ``L`` with zeros and returned to the
batch's row order::

    order = argsort(width)                       rows of group g: order[b_g : b_{g+1}],  b_g = floor(g B / G)
    h[order[b_g : b_{g+1}], L - w_g :] = encode(items[order[b_g : b_{g+1}], L - w_g :])
    h[b, : L - w_g] = 0                          (padding, as the full encoding has it)

The result equals the encoding of the whole batch whenever a row's encoding depends only on its own real
positions: causal attention that masks padded keys, position-wise layers, positions counted from either end of
the real items (both of :class:`~tfmoe.models.blocks.ItemEncoder`'s). Only the random draws of dropout differ
(other shapes). The batches, the loss and the gradient are those of the padded batch; the work drops to the
rows' real widths rounded up to their group's. On ML-1M (length 200, 46% padding) four groups do about 40% of
the padded attention work.

Shapes are dynamic (each group's width is a tensor), so XLA cannot compile it; layers whose outputs depend on
the whole batch (token-routed experts with a capacity or a batch-level balance loss) would see per-group batches,
so :class:`~tfmoe.models.sequence_encoder.SequenceEncoder` allows groups with its dense FFNs only.

Example:
    >>> import numpy as np
    >>> items = np.array([[0, 0, 0, 7], [1, 2, 3, 4], [0, 0, 5, 6], [0, 9, 8, 7]])
    >>> encode = lambda rows: (rows * 10, rows != 0)          # any row-wise encoder of [b, w] ids
    >>> h, mask = encode_in_length_groups(encode, items, groups=2)
    >>> h.numpy().tolist() == (items * 10).tolist()
    True
"""

from __future__ import annotations

import tensorflow as tf


def row_widths(items):
    """``[B]`` int32: ``L`` minus the index of each row's first nonzero id (0 for an empty row)."""
    items = tf.convert_to_tensor(items)
    length = tf.shape(items)[1]
    from_end = length - tf.range(length)  # column i -> L - i
    return tf.reduce_max(tf.where(tf.not_equal(items, 0), from_end[None], 0), axis=1)


def group_starts(batch, groups: int):
    """``[groups + 1]`` int32 row offsets ``floor(g * batch / groups)``: ``groups`` runs of sizes differing by <= 1."""
    return (tf.range(groups + 1) * batch) // groups


def encode_in_length_groups(encode, items, groups: int, last_only: bool = False):
    """``encode(items)`` of a left-padded ``items [B, L]`` batch, computed in ``groups`` length groups.

    Args:
        encode: ``items [b, w] -> (h [b, w, ...], mask [b, w])`` (with ``last_only``: ``[b, 1, ...]`` and
            ``[b, 1]``), row-wise and zero at padding.
        items: ``[B, L]`` ids, 0 = padding on the left.
        groups: the number of groups ``G >= 1``.
        last_only: ``encode`` returns the last position only.

    Returns:
        ``(h, mask)`` as ``encode(items)`` returns them, in the rows' order.
    """
    items = tf.convert_to_tensor(items)
    batch, length = tf.shape(items)[0], tf.shape(items)[1]
    widths = row_widths(items)
    order = tf.argsort(widths, stable=True)
    sorted_items, sorted_widths = tf.gather(items, order), tf.gather(widths, order)
    starts = group_starts(batch, groups)
    outputs = []
    for g in range(groups):
        rows = sorted_items[starts[g]:starts[g + 1]]
        # the group's widest row (its last, sorted); at least 1 column, also for a group of empty rows or none
        width = tf.maximum(tf.reduce_max(tf.concat([sorted_widths[starts[g]:starts[g + 1]], [1]], 0)), 1)
        h, _ = encode(rows[:, length - width:])
        if not last_only:
            h = tf.pad(h, [[0, 0], [length - width, 0]] + [[0, 0]] * (h.shape.rank - 2))
        outputs.append(h)
    h = tf.gather(tf.concat(outputs, axis=0), tf.math.invert_permutation(order))
    mask = tf.not_equal(items, 0)
    if last_only:
        mask = mask[:, -1:]
    return tf.ensure_shape(h, mask.shape.concatenate(h.shape[2:])), mask
