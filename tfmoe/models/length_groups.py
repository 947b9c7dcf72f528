"""Length groups: a batch of left-padded histories encoded in groups of similar length, each cut to its longest.

A batch of ``B`` histories padded to ``L`` spends its attention on ``L^2`` pairs per row and its projections and
FFNs on ``L`` positions per row, padding included. With ``groups = G``, the rows are sorted by their *width* (``L``
minus the index of their first real item), ``w_(1) <= ... <= w_(B)``, and split into ``G`` runs. Group ``g`` (sorted
rows ``b_g .. b_{g+1} - 1``) is cut to its widest row ``w_(b_{g+1})`` (its last ``w`` columns), encoded, padded back
to ``L`` with zeros and returned to the batch's row order. The split is the one of least work, by dynamic
programming over every row boundary::

    minimise  sum_g (b_{g+1} - b_g) * c(w_(b_{g+1}))      c(w) = w (w + position_cost)

``c`` counts a row's multiply-adds up to a constant: ``w^2`` for attention, ``w * position_cost`` for the
position-wise work (``2 d + inner`` for a transformer block's projections and FFN, relative to its ``2 d w^2``
attention); an empty group costs nothing.

The result equals the encoding of the whole batch whenever a row's encoding depends only on its own real
positions: causal attention that masks padded keys, position-wise layers, positions counted from either end of
the real items (both of :class:`~tfmoe.models.blocks.ItemEncoder`'s). Only the random draws of dropout differ
(other shapes). The batches, the loss and the gradient are those of the padded batch; the work drops to the
rows' real widths rounded up to their group's. On ML-1M at length 200 (46% padding), four groups do about 54% of
the padded work (the rows' own widths: 46%).

:func:`call_in_length_groups` does the same for a model of a features dict that returns one output per row (a CTR
model's logits): every ``[B, L]`` history feature is cut with the history, the others go with their rows.

Shapes are dynamic (each group's width is a tensor): XLA pads dynamic sizes back to their static bound, so
grouping saves nothing there and :class:`~tfmoe.models.sequence_encoder.SequenceEncoder` encodes the batch as it is
under XLA. Layers whose outputs depend on
the whole batch (token-routed experts with a capacity or a batch-level balance loss) would see per-group batches,
so :class:`~tfmoe.models.sequence_encoder.SequenceEncoder` allows groups with its dense FFNs only.

Example:
    >>> import numpy as np
    >>> items = np.array([[0, 0, 0, 7], [1, 2, 3, 4], [0, 0, 5, 6], [0, 9, 8, 7]])
    >>> encode = lambda rows: (rows * 10, rows != 0)          # any row-wise encoder of [b, w] ids
    >>> h, mask = encode_in_length_groups(encode, items, groups=2)
    >>> h.numpy().tolist() == (items * 10).tolist()
    True
    >>> cheapest_group_starts(tf.constant([1, 2, 4, 6]), groups=2).numpy().tolist()  # {1, 2} {4, 6}: 2*4 + 2*36
    [0, 2, 4]
"""

from __future__ import annotations

import tensorflow as tf

from tfmoe.utils.xla import in_xla_context


def row_widths(items):
    """``[B]`` int32: ``L`` minus the index of each row's first nonzero id (0 for an empty row)."""
    items = tf.convert_to_tensor(items)
    length = tf.shape(items)[1]
    from_end = length - tf.range(length)  # column i -> L - i
    return tf.reduce_max(tf.where(tf.not_equal(items, 0), from_end[None], 0), axis=1)


def cut_to_widest_row(values, mask):
    """``(values[:, -w:], mask[:, -w:])`` for ``values [B, S, ...]`` and ``mask [B, S]``, with ``w`` the batch's widest
    row (:func:`row_widths`, at least 1): the columns before every row's first real position go, so a row-wise
    layer that ignores padding computes the same from fewer columns. Outside XLA only (``w`` is dynamic); under XLA
    the inputs come back as they are.

    Example:
        >>> values, mask = tf.reshape(tf.range(8), [2, 4]), tf.constant([[0, 0, 1, 1], [0, 0, 0, 1]]) > 0
        >>> [t.numpy().tolist() for t in cut_to_widest_row(values, mask)]
        [[[2, 3], [6, 7]], [[True, True], [False, True]]]
    """
    if in_xla_context():
        return values, mask
    width = tf.maximum(tf.reduce_max(row_widths(tf.cast(mask, tf.int32))), 1)
    return values[:, -width:], mask[:, -width:]


def cheapest_group_starts(sorted_widths, groups: int, position_cost: float = 0.0):
    """``[groups + 1]`` int32 row offsets ``0 = b_0 <= ... <= b_G = B`` of the least-work split of rows sorted by
    width (see the module docstring); groups may be empty."""
    widths = tf.cast(tf.maximum(tf.convert_to_tensor(sorted_widths), 1), tf.float32)
    batch = tf.shape(widths)[0]
    row_cost = tf.concat([[0.0], widths * (widths + position_cost)], 0)  # [B + 1]: [j] = c(w of row j - 1)
    bounds = tf.range(batch + 1)
    size = bounds[None, :] - bounds[:, None]  # [i, j]: rows i .. j - 1
    segment = tf.where(size >= 0, tf.cast(size, tf.float32) * row_cost[None, :], float("inf"))
    best, choices = segment[0], []  # best[j]: least work of rows 0 .. j - 1 in g + 1 groups
    for _ in range(groups - 1):
        total = best[:, None] + segment  # [i, j]: the first groups end at i, the next is rows i .. j - 1
        choices.append(tf.argmin(total, axis=0, output_type=tf.int32))
        best = tf.reduce_min(total, axis=0)
    starts = [batch]
    for choice in reversed(choices):
        starts.append(tf.gather(choice, starts[-1]))
    return tf.stack([tf.constant(0, tf.int32), *reversed(starts)])


def transformer_position_cost(hidden_dim: int, inner_dim: int) -> int:
    """``position_cost`` of a transformer block (see the module docstring): ``2 d + inner``."""
    return 2 * hidden_dim + inner_dim


def plan_length_groups(items, groups: int, position_cost: float = 0.0):
    """``(order [B], starts [G + 1], widths [G])`` of a left-padded ``items [B, L]`` batch: the rows sorted by width,
    the groups' offsets in that order (:func:`cheapest_group_starts`) and each group's width, its widest row's
    (at least 1, also for an empty group)."""
    widths = row_widths(items)
    order = tf.argsort(widths, stable=True)
    sorted_widths = tf.gather(widths, order)
    starts = cheapest_group_starts(sorted_widths, groups, position_cost)
    widest = tf.gather(tf.concat([[0], sorted_widths], 0), starts[1:])  # the last row of each group, sorted
    return order, starts, tf.maximum(tf.where(starts[1:] > starts[:-1], widest, 1), 1)


def encode_in_length_groups(encode, items, groups: int, last_only: bool = False, position_cost: float = 0.0):
    """``encode(items)`` of a left-padded ``items [B, L]`` batch, computed in ``groups`` length groups.

    Args:
        encode: ``items [b, w] -> (h [b, w, ...], mask [b, w])`` (with ``last_only``: ``[b, 1, ...]`` and
            ``[b, 1]``), row-wise and zero at padding.
        items: ``[B, L]`` ids, 0 = padding on the left.
        groups: the number of groups ``G >= 1``.
        last_only: ``encode`` returns the last position only.
        position_cost: the position-wise work of a row position relative to one attention pair (the split's
            cost model, :func:`cheapest_group_starts`).

    Returns:
        ``(h, mask)`` as ``encode(items)`` returns them, in the rows' order.
    """
    items = tf.convert_to_tensor(items)
    length = tf.shape(items)[1]

    def encode_group(rows):  # one group's rows, cut to its width; padded back to L on the left
        h, _ = encode(rows["history"])
        if last_only:
            return h
        pad = length - tf.shape(rows["history"])[1]
        return tf.pad(h, [[0, 0], [pad, 0]] + [[0, 0]] * (h.shape.rank - 2))

    h = call_in_length_groups(encode_group, {"history": items}, groups, tf.not_equal(items, 0), position_cost)
    mask = tf.not_equal(items, 0)
    if last_only:
        mask = mask[:, -1:]
    return tf.ensure_shape(h, mask.shape.concatenate(h.shape[2:])), mask


def resolve_jit_compile(owner: str, groups: int, jit_compile="auto"):
    """``compile``'s ``jit_compile`` for a model with ``groups`` length groups: with groups (dynamic shapes)
    ``"auto"`` means no XLA and ``True`` is a ``ValueError``; without them the argument is returned as it is.

    Example:
        >>> resolve_jit_compile("SASRec", 1, True), resolve_jit_compile("SASRec", 4, "auto")
        (True, False)
    """
    if groups > 1:
        if jit_compile is True:
            raise ValueError(f"{owner}: jit_compile=True cannot compile length_groups={groups} (dynamic widths); "
                             f"use length_groups=1 for XLA")
        return False
    return jit_compile


def call_in_length_groups(call, features: dict, groups: int, mask, position_cost: float = 0.0):
    """``call(features)`` of a batch of left-padded histories, computed in ``groups`` length groups.

    Args:
        call: ``features dict -> [b, ...]``, one output per row that depends on the row's own real history positions
            only (e.g. a CTR model's logits in inference mode).
        features: ``{name: tensor}``; the features of rank 2 or more whose names start with ``history`` are
            ``[B, L, ...]`` histories (ids, categories, timestamps, session ids, embedded histories, masks) and are
            cut to each group's width along axis 1; the others (``[B]`` targets, ``history_length``, ``[B, d]``
            target embeddings, ...) are taken row by row.
        groups: the number of groups ``G >= 1``.
        mask: ``[B, L]`` bool, the real history positions (a row's width counts from its first one).
        position_cost: the split's cost model (:func:`cheapest_group_starts`).

    Returns:
        ``call``'s output for the whole batch, in the rows' order.

    Example:
        >>> import numpy as np
        >>> features = {"history": np.array([[0, 0, 3], [1, 2, 3], [0, 4, 5]]), "target_item": np.array([7, 8, 9])}
        >>> count = lambda f: tf.reduce_sum(tf.cast(f["history"] != 0, tf.int32), 1) * 10 + tf.shape(f["history"])[1]
        >>> call_in_length_groups(count, features, 3, features["history"] != 0).numpy().tolist()  # width of each group
        [11, 33, 22]
    """
    plan = LengthGroups(mask, groups, position_cost)
    return plan.merge([call(part) for part in plan.split_features(features)])


class LengthGroups:
    """The length groups of a batch of left-padded histories (see the module docstring): the plan of
    :func:`plan_length_groups`, a split of the batch's features into the groups' and the merge of the groups'
    outputs back into the batch's row order. :func:`call_in_length_groups` is ``merge([call(part) for part in
    split_features(features)])``; a model whose rows share a batch-level step (MoS's router) runs its row-wise
    parts per group and that step on :meth:`merge` of the groups' values, read back with :meth:`split`.

    Args:
        mask: ``[B, L]`` bool, the real history positions (a row's width counts from its first one).
        groups: the number of groups ``G >= 1`` (some may be empty).
        position_cost: the split's cost model (:func:`cheapest_group_starts`).

    Example:
        >>> import numpy as np
        >>> plan = LengthGroups(np.array([[0, 0, 1], [1, 1, 1], [0, 1, 1]], bool), groups=3)
        >>> [part.numpy().tolist() for part in plan.split(tf.constant([10, 11, 12]))]  # narrowest group first
        [[10], [12], [11]]
        >>> plan.merge(plan.split(tf.constant([10, 11, 12]))).numpy().tolist()
        [10, 11, 12]
    """

    def __init__(self, mask, groups: int, position_cost: float = 0.0):
        mask = tf.convert_to_tensor(mask)
        self.groups = groups
        self.length = tf.shape(mask)[1]
        self.order, self.starts, self.widths = plan_length_groups(tf.cast(mask, tf.int32), groups, position_cost)
        self.sizes = self.starts[1:] - self.starts[:-1]

    def split(self, value) -> list:
        """``[B, ...]`` in the batch's row order -> the groups' rows ``[b_g, ...]`` (one gather and a split: their
        gradients, a scatter and a concat, touch each row once)."""
        return tf.split(tf.gather(value, self.order), self.sizes, axis=0, num=self.groups)

    def merge(self, values):
        """The groups' ``[b_g, ...]`` (the same trailing shape) -> ``[B, ...]`` in the batch's row order."""
        return tf.gather(tf.concat(values, axis=0), tf.math.invert_permutation(self.order))

    def split_features(self, features: dict) -> list[dict]:
        """A features dict -> one per group: the ``[B, L, ...]`` history features (rank 2 or more, names starting
        with ``history``) cut to the group's rows and last ``w_g`` positions, the others to its rows."""
        features = {key: tf.convert_to_tensor(value) for key, value in features.items()}
        histories = {key for key, value in features.items() if key.startswith("history") and value.shape.rank >= 2}
        parts = {key: self.split(value) for key, value in features.items() if key not in histories}
        # A history: each group gathers its rows' last w_g positions from the history flattened to [B * L, ...], so
        # that the gradient of a float history (embeddings) is the gathered positions' rows alone, summed once,
        # instead of a zero-padded [b_g, L, ...] slice gradient per group, a concat and a scatter.
        flat = {key: tf.reshape(features[key], tf.concat([[-1], tf.shape(features[key])[2:]], 0)) for key in histories}
        groups = []
        for g in range(self.groups):
            part = {key: values[g] for key, values in parts.items()}
            if histories:
                rows = self.order[self.starts[g]:self.starts[g + 1]]
                columns = tf.range(self.length - self.widths[g], self.length)
                index = rows[:, None] * self.length + columns[None, :]  # [b_g, w_g]
                part.update({key: tf.gather(flat[key], index) for key in histories})
            groups.append(part)
        return groups
