"""Group a flat, padded behaviour history into a static grid of sessions (MoS sessionization).

A history ``values [B, L, ...]`` (item embeddings ``[B, L, d]`` or ids ``[B, L]``) with a padding
mask ``[B, L]`` becomes a grid ``[B, M, P, ...]`` holding the ``M`` most recent sessions and, in
each, its ``P`` most recent items, plus ``item_mask [B, M, P]`` and ``session_mask [B, M]``.

* ``mode="session"``: a session is a maximal run of equal ``session_ids`` among the real
  positions (``session_ids`` are non-decreasing in the data, e.g. +1 after a 30-minute gap).
* ``mode="chunk"``: no ids; the real items are cut into chunks of ``P`` counted from the most
  recent item (so the most recent chunk is full and the oldest may be partial).

Layout (left-padding convention, like the flat input): time runs forward along both axes, the
most recent session sits in the last slot ``M - 1`` and, within a session, the most recent item
in the last slot ``P - 1``; unused slots come first and are masked. Padding may sit anywhere in
the input (left or right); it is skipped. All shapes are static and every op is XLA-compilable
(a stable sort, a top-k and gathers).

Example:
    >>> import numpy as np
    >>> from tfmoe.layers import sessions
    >>> ids = np.array([[0, 7, 8, 9, 5]])  # 0 = padding
    >>> sid = np.array([[0, 3, 3, 4, 4]])
    >>> pos, item_mask, session_mask = sessions.session_positions(sid, ids != 0, num_sessions=3,
    ...                                                           session_length=2)
    >>> sessions.gather_grid(ids, pos, item_mask).numpy()[0]
    array([[0, 0],
           [7, 8],
           [9, 5]])

References:
    * Mixture of Sequence (MoS), WWW 2026: sessions as the routing unit (docs/specs/mos.md).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.layers import masking
from tfmoe.utils import validation as v
from tfmoe.utils.xla import dim

MODES = ("session", "chunk")


def _static_or_dynamic(value):
    """``value``'s Python int when it is known while tracing, else the scalar tensor."""
    static = tf.get_static_value(value)
    return int(static) if static is not None else value


def _grid_from_compact(order, compact_ids, num_valid, num_sessions, session_length: int):
    """Shared core: positions of the grid given the compacted sequence.

    ``order [B, L]`` lists the original positions with padding first and real positions after
    (original order kept), ``compact_ids [B, L]`` the session id of each compacted position and
    ``num_valid [B]`` the number of real positions (they occupy the last ``num_valid`` slots).
    A session ends at compact position ``j`` when ``j`` is real and ``j + 1`` has another id (or
    ``j = L - 1``). The ``M + 1`` largest 1-based end positions ``E_0 > E_1 > ...`` (top-k, 0 for
    missing sessions) give session ``r``'s size ``E_r - max(E_{r+1}, L - n)``; slot ``(m, p)``
    takes session ``r = M - 1 - m`` and its item ``t = P - 1 - p`` from the end. ``L`` and ``M`` may
    be tensors (a batch cut to a dynamic width); the shapes are static when they are not.
    """
    length = dim(order, 1)
    m, p = _static_or_dynamic(num_sessions), session_length
    pos = tf.range(length, dtype=tf.int32)[None, :]
    first_valid = length - num_valid[:, None]  # [B, 1]
    is_real = pos >= first_valid
    next_differs = tf.concat(
        [tf.not_equal(compact_ids[:, 1:], compact_ids[:, :-1]), tf.ones_like(compact_ids[:, :1], tf.bool)],
        axis=1,
    )
    end_markers = tf.where(tf.logical_and(is_real, next_differs), pos + 1, 0)
    short = m + 1 - length
    if not isinstance(short, int) or short > 0:
        end_markers = tf.pad(end_markers, [[0, 0], [0, tf.maximum(short, 0)]])
    ends = tf.math.top_k(end_markers, k=m + 1).values  # [B, M + 1], most recent first
    sizes = tf.where(ends[:, :m] > 0, ends[:, :m] - tf.maximum(ends[:, 1:], first_valid), 0)
    ends, sizes = tf.reverse(ends[:, :m], axis=[1]), tf.reverse(sizes, axis=[1])  # oldest first
    from_end = tf.range(p - 1, -1, -1, dtype=tf.int32)[None, None, :]  # [1, 1, P]
    item_mask = from_end < sizes[:, :, None]  # [B, M, P]
    compact_index = tf.where(item_mask, ends[:, :, None] - 1 - from_end, 0)
    positions = tf.gather(order, tf.reshape(compact_index, [-1, m * p]), batch_dims=1)
    positions = tf.where(item_mask, tf.reshape(positions, [-1, m, p]), 0)
    return positions, item_mask, sizes > 0


def _compact(mask, length):
    """Stable order with padding first, and the number of real positions per row."""
    valid = tf.ones([1, length], tf.bool) if mask is None else masking.as_bool_mask(mask)
    valid_int = tf.cast(valid, tf.int32)
    order = tf.argsort(valid_int, axis=1, stable=True)
    if mask is None:
        return order, tf.fill([1], length)
    return order, tf.reduce_sum(valid_int, axis=1)


def session_positions(session_ids, mask=None, *, num_sessions, session_length: int):
    """Grid positions of the ``M`` most recent sessions, ``P`` most recent items each.

    Args:
        session_ids: ``[B, L]`` integer session id per position (runs of equal ids are sessions); ``L`` may be
            dynamic.
        mask: ``[B, L]`` padding mask (``True`` = real item); ``None`` = all real.
        num_sessions: ``M``, an int or a scalar int32 tensor.
        session_length: ``P``.

    Returns:
        ``positions [B, M, P]`` int32 (index into ``L``; 0 at masked slots), ``item_mask [B, M, P]``
        and ``session_mask [B, M]`` (bool). Use :func:`gather_grid` to gather any aligned feature.
    """
    session_ids = tf.convert_to_tensor(session_ids)
    length = dim(session_ids, 1)
    order, num_valid = _compact(mask, length)
    if mask is None:
        order = tf.broadcast_to(order, tf.shape(session_ids))
    compact_ids = tf.gather(session_ids, order, batch_dims=1)
    return _grid_from_compact(order, compact_ids, num_valid, num_sessions, session_length)


def chunk_positions(mask, *, num_sessions, session_length: int, length=None):
    """Like :func:`session_positions` with sessions = chunks of ``P`` real items from the most recent one.

    ``mask`` ``[B, L]`` is the padding mask; if it is ``None`` pass ``length`` (every position real,
    and the batch axis of the outputs is 1: broadcast it). ``L`` and ``num_sessions`` may be dynamic.
    """
    if mask is None:
        if length is None:
            raise ValueError("chunk_positions: pass `mask` or `length`")
    else:
        mask = masking.as_bool_mask(mask)
        length = dim(mask, 1)
    order, num_valid = _compact(mask, length)
    pos = tf.range(length, dtype=tf.int32)[None, :]
    compact_ids = tf.broadcast_to((length - 1 - pos) // session_length, tf.shape(order))
    return _grid_from_compact(order, compact_ids, num_valid, num_sessions, session_length)


def gather_grid(values, positions, item_mask):
    """Gathers ``values [B, L, ...]`` into the grid ``[B, M, P, ...]``; masked slots are zero (or False)."""
    values = tf.convert_to_tensor(values)
    grid = tf.gather(values, positions, batch_dims=1)
    keep = item_mask
    for _ in range(grid.shape.rank - item_mask.shape.rank):
        keep = keep[..., None]
    return tf.where(keep, grid, tf.zeros_like(grid))


@keras.saving.register_keras_serializable(package="tfmoe")
class SessionGrouper(keras.layers.Layer):
    r"""Keras layer form of :func:`session_positions` / :func:`chunk_positions` + :func:`gather_grid`.

    Given a flat history ``values [B, L, ...]`` it returns the session grid ``[B, M, P, ...]``
    (``M`` most recent sessions, ``P`` most recent items each, time order kept, oldest session
    first, unused slots first and zero), ``item_mask [B, M, P]`` and ``session_mask [B, M]``::

        session r (0 = most recent) -> slot M - 1 - r;  its item t (0 = most recent) -> slot P - 1 - t
        item_mask[b, m, p] = t < min(P, |session r|),  session_mask[b, m] = |session r| > 0

    Args:
        num_sessions: ``M``; in ``"chunk"`` mode it defaults to ``ceil(L / P)``.
        session_length: ``P``.
        mode: ``"session"`` (sessions = runs of equal ``session_ids``) or ``"chunk"`` (chunks of
            ``P`` real items counted from the most recent; ``session_ids`` is not used).
        return_positions: also return ``positions [B, M, P]`` (int32 index into ``L``) to gather
            other aligned features with :func:`gather_grid`.

    Call arguments:
        values: ``[B, L, ...]`` (embeddings or ids).
        session_ids: ``[B, L]`` integers (required in ``"session"`` mode).
        mask: ``[B, L]`` padding mask, ``True`` = real item. Keras propagates an
            ``Embedding(mask_zero=True)`` mask automatically only when ``values`` is the only
            tensor argument (``"chunk"`` mode); in ``"session"`` mode pass it explicitly.
        num_sessions: the ``M`` of this call instead of the layer's (an int or a scalar int32 tensor):
            a batch cut to a narrower, possibly dynamic, width ``L`` holds fewer sessions. Required when
            ``L`` is dynamic.

    Returns:
        ``(grid, item_mask, session_mask)`` or ``(grid, item_mask, session_mask, positions)``.

    Example:
        >>> import numpy as np
        >>> from tfmoe import layers
        >>> grouper = layers.SessionGrouper(num_sessions=2, session_length=3)
        >>> emb = np.random.rand(1, 6, 4).astype("float32")
        >>> sid = np.array([[0, 0, 1, 1, 1, 2]])
        >>> grid, item_mask, session_mask = grouper(emb, sid, mask=np.ones((1, 6), bool))
        >>> item_mask.numpy()[0].astype(int)
        array([[1, 1, 1],
               [0, 0, 1]])
    """

    def __init__(
        self,
        num_sessions: int | None,
        session_length: int,
        mode: str = "session",
        return_positions: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.mode = v.check_choice(owner, "mode", mode, MODES)
        if self.mode == "session" and num_sessions is None:
            raise ValueError(f"{owner}: `num_sessions` is required in mode='session', got None")
        self.num_sessions = v.check_optional_int(owner, "num_sessions", num_sessions, minimum=1)
        self.session_length = v.check_int(owner, "session_length", session_length, minimum=1)
        self.return_positions = v.check_bool(owner, "return_positions", return_positions)

    def _num_sessions_for(self, length: int) -> int:
        return self.num_sessions or -(-length // self.session_length)

    def call(self, values, session_ids=None, mask=None, num_sessions=None):
        owner = type(self).__name__
        if num_sessions is None:
            if values.shape[1] is None:
                raise ValueError(
                    f"{owner}: the sequence length of `values` must be static, got shape {values.shape} "
                    f"(or pass `num_sessions`)"
                )
            num_sessions = self._num_sessions_for(values.shape[1])
        length = dim(values, 1)
        if self.mode == "session":
            if session_ids is None:
                raise ValueError(f"{owner}: mode='session' needs `session_ids`, got None")
            positions, item_mask, session_mask = session_positions(
                session_ids, mask, num_sessions=num_sessions, session_length=self.session_length
            )
        else:
            positions, item_mask, session_mask = chunk_positions(
                mask, num_sessions=num_sessions, session_length=self.session_length, length=length
            )
            batch = tf.shape(values)[:1]
            positions = tf.broadcast_to(positions, tf.concat([batch, tf.shape(positions)[1:]], 0))
            item_mask = tf.broadcast_to(item_mask, tf.concat([batch, tf.shape(item_mask)[1:]], 0))
            session_mask = tf.broadcast_to(session_mask, tf.concat([batch, tf.shape(session_mask)[1:]], 0))
        grid = gather_grid(values, positions, item_mask)
        outputs = (grid, item_mask, session_mask)
        return (*outputs, positions) if self.return_positions else outputs

    def compute_mask(self, values, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            num_sessions=self.num_sessions,
            session_length=self.session_length,
            mode=self.mode,
            return_positions=self.return_positions,
        )
        return config
