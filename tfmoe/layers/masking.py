"""Mask helpers shared by every tfmoe layer and model: attention masks, masked softmax and mean.

Conventions: a *padding mask* is a boolean tensor that is ``True`` at real positions and ``False``
at padding; it covers the leading axes of the values it describes (``[B, L]`` for ``[B, L, d]``).
Every helper is shape-static (XLA friendly) and never produces NaN, even for rows where
everything is masked:

* ``causal_mask(Lq, Lk)``: ``[Lq, Lk]`` with ``mask[i, j] = j <= i + (Lk - Lq)`` (queries aligned
  to the end of the keys, the usual convention for cached or left-padded decoding).
* ``attention_mask(query_mask, key_mask, causal)``: ``[B, Lq, Lk]`` combining the above.
* ``masked_softmax(x, mask)``: ``softmax`` over the unmasked entries (computed in float32),
  exactly 0 at masked entries and all-zero for fully masked rows.
* ``masked_mean(x, mask, axis)``: ``sum(mask * x) / max(sum(mask), 1)`` (0 for empty groups).

Example:
    >>> import numpy as np
    >>> from tfmoe.layers import masking
    >>> valid = np.array([[False, True, True]])
    >>> masking.attention_mask(valid, causal=True).numpy()[0].astype(int)
    array([[0, 0, 0],
           [0, 1, 0],
           [0, 1, 1]])
    >>> masking.masked_softmax(np.zeros((1, 3), "float32"), valid).numpy()
    array([[0. , 0.5, 0.5]], dtype=float32)
"""

from __future__ import annotations

import tensorflow as tf

from tfmoe.utils.xla import dim

# Added to masked logits before the softmax (float32); exp() of it underflows to exactly 0.
MASKED_LOGIT = -1e9


def as_bool_mask(mask):
    """Converts a 0/1 or boolean mask to a boolean tensor (``None`` stays ``None``)."""
    if mask is None:
        return None
    mask = tf.convert_to_tensor(mask)
    return mask if mask.dtype == tf.bool else tf.not_equal(mask, tf.zeros([], mask.dtype))


def combine_masks(*masks):
    """Logical AND of the given (broadcastable) masks, ignoring ``None``; ``None`` if all are ``None``."""
    result = None
    for mask in masks:
        if mask is None:
            continue
        mask = as_bool_mask(mask)
        result = mask if result is None else tf.logical_and(result, mask)
    return result


def causal_mask(query_length, key_length=None):
    """Boolean ``[Lq, Lk]`` lower-triangular mask: query ``i`` sees keys ``j <= i + (Lk - Lq)``.

    Lengths are Python ints or scalar int32 tensors (dynamic lengths).
    """
    key_length = query_length if key_length is None else key_length
    rows = tf.range(query_length)[:, None] + (key_length - query_length)
    cols = tf.range(key_length)[None, :]
    return cols <= rows


def attention_mask(query_mask=None, key_mask=None, causal: bool = False, query_length=None, key_length=None):
    """Boolean ``[B, Lq, Lk]`` attention mask from padding masks and/or causality.

    ``mask[b, i, j]`` is ``True`` when query ``i`` may attend to key ``j``: both are real positions
    (``query_mask[b, i]`` and ``key_mask[b, j]``) and, if ``causal``, ``j <= i + (Lk - Lq)``.
    ``key_mask`` defaults to ``query_mask`` (self-attention). Lengths are read from the masks when
    given, otherwise from ``query_length``/``key_length`` (ints or scalar tensors). Returns ``None``
    if nothing is masked.
    A fully padded query row is all ``False``; pair it with :func:`masked_softmax` to get zeros.
    """
    query_mask = as_bool_mask(query_mask)
    key_mask = query_mask if key_mask is None else as_bool_mask(key_mask)
    parts = []
    if query_mask is not None:
        parts.append(query_mask[:, :, None])
    if key_mask is not None:
        parts.append(key_mask[:, None, :])
    if causal:
        lq = dim(query_mask, 1) if query_mask is not None else query_length
        lk = dim(key_mask, 1) if key_mask is not None else (key_length if key_length is not None else lq)
        if lq is None or lk is None:
            raise ValueError("attention_mask: causal masks need the lengths (pass masks or `query_length`)")
        parts.append(causal_mask(lq, lk)[None])
    return combine_masks(*parts)


def masked_softmax(logits, mask=None, axis: int = -1, zero_empty_rows: bool = True):
    """Softmax over ``axis`` that ignores masked entries; computed in float32, returned in ``logits``' dtype.

    ``p_i = mask_i exp(x_i) / sum_j mask_j exp(x_j)``. Masked entries are exactly 0 and a row
    with no unmasked entry is all zeros (never NaN). ``mask`` must broadcast to ``logits``.
    ``zero_empty_rows=False`` skips that last multiply and leaves such rows finite but meaningless: for a
    caller that zeroes them more cheaply downstream (attention zeroes the ``[B, L, d']`` outputs of padded
    queries, not their ``[B, L, L]`` maps).

    The mask is never broadcast to the logits' shape: it becomes an additive bias (0 or
    ``MASKED_LOGIT``) and a per-row validity factor, both at the mask's own shape, so a broadcast mask
    (``[B, 1, 1, L, L]`` against attention logits ``[B, H, N, L, L]``) costs one add and one multiply
    over the logits rather than a broadcast, a select and a cast of full size.
    """
    logits = tf.convert_to_tensor(logits)
    x = tf.cast(logits, tf.float32)
    if mask is None:
        return tf.cast(tf.nn.softmax(x, axis=axis), logits.dtype)
    mask = as_bool_mask(mask)
    for _ in range(x.shape.rank - mask.shape.rank):  # numpy broadcasting, so that ``axis`` names the same axis
        mask = mask[None]
    bias = tf.where(mask, tf.constant(0.0, tf.float32), tf.constant(MASKED_LOGIT, tf.float32))
    probs = tf.nn.softmax(x + bias, axis=axis)
    if zero_empty_rows:
        probs *= tf.cast(tf.reduce_any(mask, axis=axis, keepdims=True), tf.float32)
    return tf.cast(probs, logits.dtype)


def expand_mask(mask, rank: int, dtype=tf.float32):
    """Casts ``mask`` to ``dtype`` and appends unit axes until it has ``rank`` axes (to broadcast)."""
    mask = tf.cast(as_bool_mask(mask), dtype)
    for _ in range(rank - mask.shape.rank):
        mask = mask[..., None]
    return mask


def apply_mask(values, mask):
    """Zeroes ``values`` where ``mask`` (covering the leading axes of ``values``) is ``False``."""
    if mask is None:
        return values
    values = tf.convert_to_tensor(values)
    return values * expand_mask(mask, values.shape.rank, values.dtype)


def masked_sum(values, mask=None, axis=1, keepdims: bool = False):
    """``sum(mask * values)`` over ``axis`` (``mask`` covers the leading axes of ``values``)."""
    return tf.reduce_sum(apply_mask(values, mask), axis=axis, keepdims=keepdims)


def masked_mean(values, mask=None, axis=1, keepdims: bool = False):
    """Mean of ``values`` over ``axis`` counting only unmasked entries; 0 where nothing is unmasked.

    ``mask`` covers the leading axes of ``values`` (e.g. ``[B, M, P]`` for ``[B, M, P, d]``) and
    ``axis`` must be one of those axes. Accumulates in float32, returns ``values``' dtype.
    """
    values = tf.convert_to_tensor(values)
    x = tf.cast(values, tf.float32)
    if mask is None:
        return tf.cast(tf.reduce_mean(x, axis=axis, keepdims=keepdims), values.dtype)
    weights = expand_mask(mask, x.shape.rank, tf.float32)
    total = tf.reduce_sum(x * weights, axis=axis, keepdims=keepdims)
    count = tf.reduce_sum(weights, axis=axis, keepdims=keepdims)
    return tf.cast(total / tf.maximum(count, 1.0), values.dtype)
