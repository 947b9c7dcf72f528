r"""CTR metrics: exact AUC, GAUC and LogLoss, streamed over a dataset or accumulated in-graph.

* AUC: ``sum_{i pos, j neg} w_i w_j ([s_i > s_j] + 1/2 [s_i = s_j]) / (W_pos W_neg)``, exact (sorting;
  ties count one half), not Keras' bucketed approximation.
* GAUC (DIN's definition, LongCTR's ``gAUC`` grouped by user): ``sum_u n_u AUC_u / sum_u n_u`` over the
  users with both classes, ``n_u`` = the user's impressions (sum of their weights).
* LogLoss: weighted mean of ``-y log p - (1 - y) log(1 - p)``, ``p`` clipped to ``[1e-7, 1 - 1e-7]``.

Undefined values (a single class overall, or no user with both classes) are NaN.

:func:`ctr_metrics` is the computation (TensorFlow ops, float64, any graph or eager context; not
XLA: it sorts and segments dynamic sizes). :func:`evaluate_ctr` streams a dataset through a
probability function and accumulates the rows (memory bounded by the eval set). :class:`CTRMetrics`
is a ``keras.metrics.Metric`` with fixed-capacity buffers for in-graph use.

Example:
    >>> import numpy as np
    >>> from tfmoe.metrics import ctr_metrics
    >>> out = ctr_metrics(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.4]), users=np.array([1, 1, 2, 2]))
    >>> float(out["AUC"]), float(out["GAUC"])  # pairs: 1, 1, 0.5 (tie), 1 / per user: 1 and 0.5
    (0.875, 0.75)
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

EPSILON = 1e-7
NAMES = ("AUC", "GAUC", "LogLoss")


def _prepare(labels, scores, weights):
    labels = tf.reshape(tf.cast(labels, tf.float64), [-1])
    scores = tf.reshape(tf.cast(scores, tf.float64), [-1])
    weights = tf.ones_like(labels) if weights is None else tf.reshape(tf.cast(weights, tf.float64), [-1])
    return labels, scores, weights


def _grouped_auc(labels, scores, weights, groups):
    """Per-group weighted AUC ``[G]``, positive / negative weights ``[G]`` and impressions ``[G]``."""
    by_score = tf.argsort(scores, stable=True)
    order = tf.gather(by_score, tf.argsort(tf.gather(groups, by_score), stable=True))  # (group, score) order
    s, y, w, g = (tf.gather(t, order) for t in (scores, labels, weights, groups))
    _, group_index = tf.unique(g)  # groups are contiguous after sorting: ids 0..G-1 in order
    num_groups = tf.reduce_max(group_index) + 1
    starts = tf.concat([[True], tf.logical_or(g[1:] != g[:-1], s[1:] != s[:-1])], axis=0)
    block = tf.cumsum(tf.cast(starts, tf.int32)) - 1  # tie blocks within a group
    num_blocks = block[-1] + 1
    block_pos = tf.math.unsorted_segment_sum(w * y, block, num_blocks)
    block_neg = tf.math.unsorted_segment_sum(w * (1.0 - y), block, num_blocks)
    block_group = tf.boolean_mask(group_index, starts)
    below = tf.cumsum(block_neg, exclusive=True)  # negatives with a lower score (across groups)
    below -= tf.gather(tf.math.unsorted_segment_min(below, block_group, num_groups), block_group)
    wins = tf.math.unsorted_segment_sum(block_pos * (below + 0.5 * block_neg), block_group, num_groups)
    pos = tf.math.unsorted_segment_sum(block_pos, block_group, num_groups)
    neg = tf.math.unsorted_segment_sum(block_neg, block_group, num_groups)
    impressions = tf.math.unsorted_segment_sum(w, group_index, num_groups)
    return wins / (pos * neg), pos, neg, impressions


def _nan_if_empty(value, defined):
    return tf.where(defined, value, tf.constant(np.nan, tf.float64))


def auc(labels, scores, weights=None):
    """Exact weighted AUC (ties = 1/2); NaN with a single class."""
    labels, scores, weights = _prepare(labels, scores, weights)
    if labels.shape[0] == 0:
        return tf.constant(np.nan, tf.float64)
    value, pos, neg, _ = _grouped_auc(labels, scores, weights, tf.zeros_like(scores, tf.int64))
    return _nan_if_empty(value[0], pos[0] * neg[0] > 0)


def gauc(labels, scores, users, weights=None):
    """Impression-weighted mean of per-user AUC over users with both classes; NaN if there are none."""
    labels, scores, weights = _prepare(labels, scores, weights)
    if labels.shape[0] == 0:
        return tf.constant(np.nan, tf.float64)
    users = tf.reshape(tf.cast(users, tf.int64), [-1])
    value, pos, neg, impressions = _grouped_auc(labels, scores, weights, users)
    valid = pos * neg > 0
    total = tf.reduce_sum(tf.where(valid, impressions, 0.0))
    weighted = tf.reduce_sum(tf.where(valid, impressions * value, 0.0))
    return _nan_if_empty(weighted / tf.where(total > 0, total, 1.0), total > 0)


def log_loss(labels, probabilities, weights=None):
    """Weighted mean binary cross-entropy of probabilities clipped to ``[1e-7, 1 - 1e-7]``."""
    labels, p, weights = _prepare(labels, probabilities, weights)
    p = tf.clip_by_value(p, EPSILON, 1.0 - EPSILON)
    losses = -(labels * tf.math.log(p) + (1.0 - labels) * tf.math.log(1.0 - p))
    total = tf.reduce_sum(weights)
    return _nan_if_empty(tf.reduce_sum(weights * losses) / tf.where(total > 0, total, 1.0), total > 0)


def ctr_metrics(labels, probabilities, users=None, weights=None) -> dict:
    """``{"AUC", "GAUC", "LogLoss"}`` as float64 scalars (GAUC is NaN without ``users``)."""
    return {
        "AUC": auc(labels, probabilities, weights),
        "GAUC": tf.constant(np.nan, tf.float64) if users is None else gauc(labels, probabilities, users, weights),
        "LogLoss": log_loss(labels, probabilities, weights),
    }


def evaluate_ctr(probability_fn, dataset, user_key: str = "user_id", compile: bool = True) -> dict:
    """Streams ``dataset`` through ``probability_fn`` and returns exact AUC, GAUC, LogLoss and the row count.

    Args:
        probability_fn: ``features -> [B]`` click probabilities (e.g. ``model.probabilities``).
        dataset: yields ``(features, labels [B])`` or ``(features, labels, weights)``; ``features``
            must hold ``user_key`` (for GAUC).
        user_key: the user feature.
        compile: wrap ``probability_fn`` in a ``tf.function`` (one trace per batch shape).

    Returns:
        ``{"AUC": float, "GAUC": float, "LogLoss": float, "count": int}``.
    """
    fn = tf.function(probability_fn, reduce_retracing=True) if compile else probability_fn
    labels, probs, users, weights = [], [], [], []
    for element in dataset:
        features, y = element[0], element[1]
        if user_key not in features:
            raise ValueError(f"evaluate_ctr: features have no {user_key!r} (needed for GAUC); got {sorted(features)}")
        probs.append(np.reshape(np.asarray(fn(features)), [-1]))
        labels.append(np.reshape(np.asarray(y), [-1]))
        users.append(np.reshape(np.asarray(features[user_key]), [-1]))
        if len(element) > 2 and element[2] is not None:
            weights.append(np.reshape(np.asarray(element[2]), [-1]))
    if not labels:
        return {"AUC": float("nan"), "GAUC": float("nan"), "LogLoss": float("nan"), "count": 0}
    w = np.concatenate(weights) if weights else None
    result = ctr_metrics(np.concatenate(labels), np.concatenate(probs), np.concatenate(users), w)
    out = {name: float(value.numpy()) for name, value in result.items()}
    out["count"] = int(sum(len(y) for y in labels))
    return out


@keras.saving.register_keras_serializable(package="tfmoe")
class CTRMetrics(keras.metrics.Metric):
    """Exact AUC / GAUC / LogLoss as a Keras metric: rows are kept in fixed-capacity buffers.

    ``update_state(y_true, y_pred, sample_weight=None, user_ids=None)`` appends the rows
    (``y_pred`` = probabilities, or logits with ``from_logits=True``); ``result()`` returns
    ``{"AUC", "GAUC", "LogLoss"}`` (float32) computed exactly over every row seen. Rows beyond
    ``capacity`` are not stored and make every result NaN (never a silent approximation). GAUC
    needs ``user_ids`` (NaN otherwise), so pass them explicitly; ``model.compile(metrics=...)``
    only provides labels and predictions.

    Under ``tf.distribute`` every replica appends the rows of all replicas (an ``all_gather``), and
    the result reads the first replica's buffers: the same rows as on one device. The buffer writes
    compile under XLA; ``result()`` sorts and does not, so a tfmoe model compiled with
    ``jit_compile=True`` runs its test steps without XLA when these metrics are compiled
    (``evaluation_only``: the metric is updated by ``evaluate`` and validation, not by training steps,
    where an exact AUC would re-sort the buffers at every step).

    Args:
        capacity: rows the buffers hold (4 buffers of 4-8 bytes per row).
        from_logits: ``y_pred`` are logits.

    Example:
        >>> import numpy as np
        >>> metric = CTRMetrics(capacity=16)
        >>> metric.update_state(np.array([1, 0]), np.array([0.8, 0.3]), user_ids=np.array([4, 4]))
        >>> {k: round(float(v), 3) for k, v in metric.result().items()}
        {'AUC': 1.0, 'GAUC': 1.0, 'LogLoss': 0.29}
    """

    evaluation_only = True

    def __init__(self, capacity: int = 1 << 20, from_logits: bool = False, name: str = "ctr_metrics", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"CTRMetrics: `capacity` must be a positive integer, got {capacity!r}")
        if not isinstance(from_logits, bool):
            raise ValueError(f"CTRMetrics: `from_logits` must be True or False, got {from_logits!r}")
        self.capacity, self.from_logits = capacity, from_logits
        # one slot past the capacity takes the rows that do not fit (static shapes: the writes compile under XLA)
        self._buffers = {
            key: self.add_variable(shape=(capacity + 1,), initializer="zeros", dtype=dtype, name=key,
                                   aggregation="only_first_replica")
            for key, dtype in (("labels", "float32"), ("scores", "float32"), ("weights", "float32"), ("users", "int64"))
        }
        self.count, self.overflow, self._has_users = (
            self.add_variable(shape=(), initializer="zeros", dtype="int64", name=name, aggregation="only_first_replica")
            for name in ("count", "overflow", "has_users"))

    def update_state(self, y_true, y_pred, sample_weight=None, user_ids=None):
        scores = tf.reshape(tf.cast(y_pred, tf.float32), [-1])
        if self.from_logits:
            scores = tf.sigmoid(scores)
        rows = gather_from_replicas({
            "labels": tf.reshape(tf.cast(y_true, tf.float32), [-1]),
            "scores": scores,
            "weights": tf.ones_like(scores) if sample_weight is None
            else tf.reshape(tf.cast(sample_weight, tf.float32), [-1]),
            "users": tf.zeros_like(scores, tf.int64) if user_ids is None
            else tf.reshape(tf.cast(user_ids, tf.int64), [-1]),
        })
        n = tf.size(rows["scores"], out_type=tf.int64)
        index = self.count + tf.range(n)
        keep = index < self.capacity
        slots = tf.where(keep, index, self.capacity)[:, None]
        for key, values in rows.items():
            buffer = self._buffers[key]
            if isinstance(buffer.value, tf.distribute.DistributedValues):  # no scatter in a replica context
                buffer.assign(tf.tensor_scatter_nd_update(buffer.value, slots, values))
            else:  # in place: a batch writes its rows, not a copy of the whole buffer
                buffer.value.scatter_nd_update(slots, values)
        kept = tf.reduce_sum(tf.cast(keep, tf.int64))
        self.count.assign_add(kept)
        self.overflow.assign_add(n - kept)
        if user_ids is not None:
            self._has_users.assign(tf.ones([], tf.int64))

    def result(self):
        n = self.count.value
        safe = tf.clip_by_value(n, 1, self.capacity)  # keeps the graph valid when empty (the result is then NaN)
        labels, scores, weights, users = (self._buffers[k].value[:safe] for k in ("labels", "scores", "weights",
                                                                                    "users"))
        nan = tf.constant(np.nan, tf.float64)
        values = {
            "AUC": auc(labels, scores, weights),
            "GAUC": tf.where(self._has_users.value > 0, gauc(labels, scores, users, weights), nan),
            "LogLoss": log_loss(labels, scores, weights),
        }
        ok = tf.logical_and(self.overflow.value == 0, n > 0)
        return {k: tf.cast(tf.where(ok, value, nan), tf.float32) for k, value in values.items()}

    def reset_state(self):
        self.count.assign(0)
        self.overflow.assign(0)
        self._has_users.assign(0)

    def get_config(self):
        config = super().get_config()
        config.update(capacity=self.capacity, from_logits=self.from_logits)
        return config


def gather_from_replicas(tensors: dict) -> dict:
    """``tensors`` (``[n]`` each) with the rows of every replica, in a replica context of a multi-replica strategy;
    unchanged elsewhere."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensors
    return {key: context.all_gather(value, axis=0) for key, value in tensors.items()}
