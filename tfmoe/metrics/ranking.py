"""Full-ranking next-item metrics (HR@K, NDCG@K, MRR@K), in-graph and streamed batch by batch.

Conventions (one held-out target per row, scores over the whole catalogue ``[B, V]``, ``V = num_items + 1``):

* **Candidates**: every item ``1..V-1``; the padding item 0 is never a candidate. With
  ``filter_seen=True`` the items the user has already seen are removed as well: the row's whole
  history ``seen`` when the features carry it (next-item evaluation rows do), else its model input
  ``history``, which holds only the most recent ``max_len`` items; **except the target**: the target is
  always ranked against all non-history items, even if it also occurs in the history (RecBole's history
  filter; the same as dropping it on data without repeated items, such as ML-1M and Beauty).
* **Rank** (0-based) = number of other candidates whose score is ``>=`` the target's score
  (``ties="pessimistic"``, default: a constant model ranks every target last) or ``>`` it
  (``ties="optimistic"``). A non-finite (NaN or ``-inf``) target score gets the worst rank.
* ``HR@K = [rank < K]``, ``NDCG@K = [rank < K] / log2(rank + 2)``, ``MRR@K = [rank < K] / (rank + 1)``,
  averaged over rows (``sample_weight`` optional).

Memory per batch is ``O(B * V)`` (no ``[B, L, V]`` or sort), so any number of rows can be streamed.

Example:
    >>> import numpy as np
    >>> from tfmoe.metrics import ranking
    >>> scores = np.array([[0.0, 0.9, 0.5, 0.7]], "float32")  # item 0 is padding
    >>> ranking.ranks(scores, np.array([2]), history=np.array([[0, 1]])).numpy().tolist()  # 1 is filtered
    [1]
    >>> m = ranking.RankingMetrics(ks=(1, 2), mrr_ks=(2,))
    >>> m.update_state(np.array([2]), scores, history=np.array([[0, 1]]))
    >>> {k: round(float(x), 3) for k, x in m.result().items()}
    {'HR@1': 0.0, 'NDCG@1': 0.0, 'HR@2': 1.0, 'NDCG@2': 0.631, 'MRR@2': 0.5}
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmoe.metrics.feature_metric import require_feature
from tfmoe.utils import validation as v
from tfmoe.utils.xla import dim

TIES = ("pessimistic", "optimistic")
# Where the items to filter are, first found first: the whole history, else the model input's window.
HISTORY_KEYS = ("seen", "history", "items")
DEFAULT_KS = (5, 10, 20)
DEFAULT_MRR_KS = (10,)


def candidate_mask(targets, num_scores, history=None):
    """``[B, V]`` bool: True for the items ranked against the target (the target itself excluded)."""
    targets = tf.cast(targets, tf.int32)
    columns = tf.range(num_scores)[None, :]
    candidates = (columns != 0) & (columns != targets[:, None])
    if history is not None:
        history = tf.cast(history, tf.int32)
        rows = tf.broadcast_to(tf.range(tf.shape(history)[0])[:, None], tf.shape(history))
        indices = tf.reshape(tf.stack([rows, history], axis=-1), [-1, 2])
        counts = tf.scatter_nd(indices, tf.ones(tf.shape(indices)[:1], tf.int32), [tf.shape(history)[0], num_scores])
        candidates &= counts == 0
    return candidates


def ranks(scores, targets, history=None, ties: str = "pessimistic"):
    """0-based rank ``[B]`` int32 of each target among its candidates (see the module docstring).

    ``history [B, L]`` (padding 0) switches on seen-item filtering; ``None`` ranks against all items.
    """
    v.check_choice("ranks", "ties", ties, TIES)
    scores = tf.cast(scores, tf.float32)
    targets = tf.cast(targets, tf.int32)
    num_scores = dim(scores, -1)
    candidates = candidate_mask(targets, num_scores, history)
    target_scores = tf.gather(scores, targets[:, None], batch_dims=1)  # [B, 1]
    above = scores >= target_scores if ties == "pessimistic" else scores > target_scores
    rank = tf.reduce_sum(tf.cast(candidates & above, tf.int32), axis=-1)
    worst = tf.reduce_sum(tf.cast(candidates, tf.int32), axis=-1)
    return tf.where(tf.math.is_finite(target_scores[:, 0]), rank, worst)


def metrics_from_ranks(rank, ks=DEFAULT_KS, mrr_ks=DEFAULT_MRR_KS) -> dict:
    """Per-row ``{"HR@K", "NDCG@K", "MRR@K"}`` float32 ``[B]`` from 0-based ranks."""
    rank = tf.cast(rank, tf.float32)
    out = {}
    for k in ks:
        hit = tf.cast(rank < k, tf.float32)
        out[f"HR@{k}"] = hit
        out[f"NDCG@{k}"] = hit / (tf.math.log(rank + 2.0) / np.log(2.0))
    for k in mrr_ks:
        out[f"MRR@{k}"] = tf.cast(rank < k, tf.float32) / (rank + 1.0)
    return out


@keras.saving.register_keras_serializable(package="tfmoe")
class RankingMetrics(keras.metrics.Metric):
    """Streaming HR@K / NDCG@K / MRR@K over full-catalogue scores; ``result()`` is a dict of means.

    Args:
        ks: cut-offs of HR and NDCG (default 5, 10, 20).
        mrr_ks: cut-offs of MRR (default 10).
        ties: ``"pessimistic"`` (default) or ``"optimistic"``.

    ``update_state(targets [B], scores [B, V], history=None, sample_weight=None)``: pass ``history``
    ``[B, L]`` to filter seen items.
    """

    def __init__(self, ks=DEFAULT_KS, mrr_ks=DEFAULT_MRR_KS, ties="pessimistic", name="ranking", **kwargs):
        super().__init__(name=name, **kwargs)
        owner = type(self).__name__
        self.ks = tuple(v.check_int_sequence(owner, "ks", list(ks)))
        self.mrr_ks = tuple(v.check_int_sequence(owner, "mrr_ks", list(mrr_ks), allow_empty=True))
        self.ties = v.check_choice(owner, "ties", ties, TIES)
        self._names = [n for k in self.ks for n in (f"HR@{k}", f"NDCG@{k}")] + [f"MRR@{k}" for k in self.mrr_ks]
        self.totals = self.add_variable(shape=(len(self._names),), initializer="zeros", name="totals", dtype="float64")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float64")

    def update_state(self, y_true, y_pred, history=None, sample_weight=None):
        values = metrics_from_ranks(ranks(y_pred, y_true, history, self.ties), self.ks, self.mrr_ks)
        stacked = tf.cast(tf.stack([values[n] for n in self._names], axis=-1), tf.float64)  # [B, M]
        weights = tf.ones(tf.shape(stacked)[:1], tf.float64) if sample_weight is None else tf.cast(
            tf.reshape(sample_weight, [-1]), tf.float64
        )
        self.totals.assign_add(tf.reduce_sum(stacked * weights[:, None], axis=0))
        self.count.assign_add(tf.reduce_sum(weights))

    def result(self):
        means = self.totals / tf.maximum(self.count, 1e-12)
        return {name: tf.cast(means[i], tf.float32) for i, name in enumerate(self._names)}

    def reset_state(self):
        self.totals.assign(tf.zeros_like(self.totals))
        self.count.assign(tf.zeros_like(self.count))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "ks": list(self.ks), "mrr_ks": list(self.mrr_ks),
                "ties": self.ties}


def _history(features):
    return require_feature("evaluate_ranking", features, HISTORY_KEYS)


def evaluate_ranking(
    scores_fn, dataset, filter_seen: bool = True, ks=DEFAULT_KS, mrr_ks=DEFAULT_MRR_KS, ties="pessimistic"
) -> dict:
    """Streams ``(features, targets [B])`` batches through ``scores_fn(features) -> [B, V]``; returns mean metrics.

    ``scores_fn`` is e.g. ``model.last_scores``; the history used for filtering is
    ``features["history"]`` (or ``"items"``, or ``features`` itself when it is a tensor). The per-batch
    work runs in one ``tf.function``. Returns ``{"HR@5": ..., ..., "MRR@10": ..., "count": rows}`` floats.

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from tfmoe.metrics import evaluate_ranking
        >>> ds = tf.data.Dataset.from_tensor_slices(({"history": [[1, 2]]}, [3])).batch(1)
        >>> scores = lambda f: tf.one_hot(tf.fill([tf.shape(f["history"])[0]], 3), 5)
        >>> evaluate_ranking(scores, ds, ks=(1,), mrr_ks=())["HR@1"]
        1.0
    """
    return RankingEvaluator(scores_fn, filter_seen, ks, mrr_ks, ties)(dataset)


class RankingEvaluator:
    """:func:`evaluate_ranking` as a reusable object: the per-batch step is traced once, not per call.

    Example:
        >>> import tensorflow as tf
        >>> evaluator = RankingEvaluator(lambda f: tf.one_hot(f["history"][:, -1] + 1, 5), ks=(1,), mrr_ks=())
        >>> ds = tf.data.Dataset.from_tensor_slices(({"history": [[1, 2]]}, [3])).batch(1)
        >>> evaluator(ds)["HR@1"], evaluator(ds)["count"]
        (1.0, 1.0)
    """

    def __init__(self, scores_fn, filter_seen: bool = True, ks=DEFAULT_KS, mrr_ks=DEFAULT_MRR_KS, ties="pessimistic"):
        self.filter_seen = v.check_bool("evaluate_ranking", "filter_seen", filter_seen)
        self.scores_fn = scores_fn
        self.metric = RankingMetrics(ks=ks, mrr_ks=mrr_ks, ties=ties)
        self._step = tf.function(self._update, reduce_retracing=True)  # the width of "seen" varies by batch

    def _update(self, features, targets):
        history = _history(features) if self.filter_seen else None
        self.metric.update_state(targets, self.scores_fn(features), history=history)

    def __call__(self, dataset) -> dict:
        self.metric.reset_state()
        for features, targets in dataset:
            self._step(features, targets)
        out = {name: float(value) for name, value in self.metric.result().items()}
        out["count"] = float(self.metric.count.numpy())
        return out
