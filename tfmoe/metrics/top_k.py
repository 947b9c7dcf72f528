r"""Full-ranking next-item metrics as Keras metrics: ``NDCG(k)``, ``HitRate(k)`` and ``MRR(k)``.

Each row has one held-out target and scores over the whole catalogue ``[B, V]`` (column 0 is padding).
With ``filter_seen=True`` the items in the user's history are removed from the candidates, except the
target (:func:`tfmoe.metrics.ranking.candidate_mask`). With ``r`` the target's 0-based rank among its
candidates (ties pessimistic: a constant scorer ranks every target last):

.. math::

    \mathrm{HR@K} = [r < K], \qquad \mathrm{NDCG@K} = \frac{[r < K]}{\log_2(r + 2)},
    \qquad \mathrm{MRR@K} = \frac{[r < K]}{r + 1},

averaged over rows (weighted by ``sample_weight``). Memory per batch is ``O(B V)``: no sort, no ``[B, L, V]``.

In ``model.compile(metrics=[NDCG(k=10, filter_seen=True)])`` of a tfmoe next-item model the model scores
the last position and passes the features' history (``"seen"``, else ``"history"``); ``model.evaluate``
then returns ``"NDCG@10"``. On their own: ``update_state(targets [B], scores [B, V], history=None)``.

Example:
    >>> import numpy as np
    >>> from tfmoe.metrics import NDCG, HitRate
    >>> scores = np.array([[0.0, 0.9, 0.5, 0.7]], "float32")      # item 2 ranks third of 1..3
    >>> metric = NDCG(k=2, filter_seen=True)
    >>> metric.update_state(np.array([2]), scores, history=np.array([[0, 1]]))  # item 1 was seen
    >>> round(float(metric.result()), 4)                           # rank 1 among {2, 3}: 1 / log2(3)
    0.6309
    >>> hits = HitRate(k=1)
    >>> hits.update_state(np.array([2]), scores)
    >>> float(hits.result())
    0.0
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.metrics.feature_metric import FeatureMetric, require_feature
from tfmoe.metrics.ranking import HISTORY_KEYS, TIES, metrics_from_ranks, ranks
from tfmoe.utils import validation as v


class TopKMetric(FeatureMetric):
    """Mean of a per-row value of the target's rank (subclasses name it in ``KEY``: ``"NDCG"``, ...)."""

    KEY = ""

    def __init__(self, k: int = 10, filter_seen: bool = False, ties: str = "pessimistic", name: str | None = None,
                 dtype=None):
        owner = type(self).__name__
        k = v.check_int(owner, "k", k, minimum=1)
        super().__init__(name=name or f"{self.KEY}@{k}", dtype=dtype)
        self.k = k
        self.filter_seen = v.check_bool(owner, "filter_seen", filter_seen)
        self.ties = v.check_choice(owner, "ties", ties, TIES)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="count")

    def _values(self, rank):
        values = metrics_from_ranks(rank, ks=(self.k,), mrr_ks=(self.k,))
        return values[f"{self.KEY}@{self.k}"]

    def update_state(self, y_true, y_pred, sample_weight=None, history=None):
        if self.filter_seen and history is None:
            raise ValueError(f"{self.name}: filter_seen=True needs the users' seen items: pass history=[B, L], "
                             "or use the metric in compile() of a tfmoe next-item model")
        targets = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        values = tf.cast(self._values(ranks(y_pred, targets, history if self.filter_seen else None, self.ties)),
                         tf.float64)
        weights = tf.ones_like(values) if sample_weight is None else tf.reshape(tf.cast(sample_weight, tf.float64),
                                                                                [-1])
        self.total.assign_add(tf.reduce_sum(values * weights))
        self.count.assign_add(tf.reduce_sum(weights))

    def update_from_features(self, features, y_true, y_pred, sample_weight=None):
        history = require_feature(self.name, features, HISTORY_KEYS) if self.filter_seen else None
        self.update_state(y_true, y_pred, sample_weight=sample_weight, history=history)

    def result(self):
        return tf.cast(self.total / tf.maximum(self.count, 1e-12), tf.float32)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "k": self.k, "filter_seen": self.filter_seen,
                "ties": self.ties}


@keras.saving.register_keras_serializable(package="tfmoe")
class NDCG(TopKMetric):
    """Normalised discounted cumulative gain at ``k`` of one target per row: ``[r < k] / log2(r + 2)``."""

    KEY = "NDCG"


@keras.saving.register_keras_serializable(package="tfmoe")
class HitRate(TopKMetric):
    """Hit rate (recall with one target) at ``k``: ``[r < k]``; named ``HR@k``."""

    KEY = "HR"


@keras.saving.register_keras_serializable(package="tfmoe")
class MRR(TopKMetric):
    """Mean reciprocal rank cut at ``k``: ``[r < k] / (r + 1)``."""

    KEY = "MRR"
