r"""CTR metrics as Keras metrics: exact streaming ``AUC``, ``GAUC`` and ``LogLoss``.

Definitions (:mod:`tfmoe.metrics.ctr`): AUC counts ordered positive/negative pairs, ties one half;
GAUC is the impression-weighted mean of per-user AUC over the users with both classes (DIN's gAUC);
LogLoss is the weighted mean of :math:`-y \log p - (1 - y) \log(1 - p)`, ``p`` clipped to
:math:`[10^{-7}, 1 - 10^{-7}]`. ``y_pred`` are probabilities (a tfmoe CTR model passes them in
``compile``; its ``call`` returns logits).

AUC and GAUC keep the rows in fixed-capacity buffers and are exact; rows beyond ``capacity`` make the
result NaN rather than an approximation. GAUC reads the user ids from the features (``user_key``) when
used in ``compile`` of a tfmoe CTR model; on its own pass ``user_ids=``. LogLoss keeps two sums.

Example:
    >>> import numpy as np
    >>> from tfmoe.metrics import AUC, GAUC, LogLoss
    >>> labels, probs = np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.4])
    >>> auc = AUC(capacity=8)
    >>> auc.update_state(labels, probs)
    >>> float(auc.result())                        # pairs: 1, 1, 0.5 (tie), 1
    0.875
    >>> gauc = GAUC(capacity=8)
    >>> gauc.update_state(labels, probs, user_ids=np.array([1, 1, 2, 2]))
    >>> float(gauc.result())                       # per user: 1 and 0.5
    0.75
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.metrics.ctr import EPSILON, CTRMetrics, _prepare
from tfmoe.metrics.feature_metric import FeatureMetric, require_feature


@keras.saving.register_keras_serializable(package="tfmoe")
class AUC(CTRMetrics):
    """Exact AUC of probabilities (ties count one half), kept in buffers of ``capacity`` rows."""

    def __init__(self, capacity: int = 1 << 20, from_logits: bool = False, name: str = "AUC", **kwargs):
        super().__init__(capacity=capacity, from_logits=from_logits, name=name, **kwargs)

    def result(self):
        return super().result()["AUC"]


@keras.saving.register_keras_serializable(package="tfmoe")
class GAUC(CTRMetrics, FeatureMetric):
    """Impression-weighted mean per-user AUC; the users come from ``features[user_key]`` or ``user_ids=``."""

    def __init__(self, capacity: int = 1 << 20, from_logits: bool = False, user_key: str = "user_id",
                 name: str = "GAUC", **kwargs):
        super().__init__(capacity=capacity, from_logits=from_logits, name=name, **kwargs)
        if not isinstance(user_key, str) or not user_key:
            raise ValueError(f"GAUC: `user_key` must be a non-empty string, got {user_key!r}")
        self.user_key = user_key

    def update_state(self, y_true, y_pred, sample_weight=None, user_ids=None):
        if user_ids is None:
            raise ValueError(f"{self.name}: needs user_ids=[B] (in compile() of a tfmoe CTR model it reads "
                             f"features[{self.user_key!r}])")
        super().update_state(y_true, y_pred, sample_weight=sample_weight, user_ids=user_ids)

    def update_from_features(self, features, y_true, y_pred, sample_weight=None):
        users = require_feature(self.name, features, (self.user_key,))
        self.update_state(y_true, y_pred, sample_weight=sample_weight, user_ids=users)

    def result(self):
        return super().result()["GAUC"]

    def get_config(self):
        return {**super().get_config(), "user_key": self.user_key}


@keras.saving.register_keras_serializable(package="tfmoe")
class LogLoss(keras.metrics.Metric):
    """Weighted mean binary cross-entropy of probabilities clipped to ``[1e-7, 1 - 1e-7]`` (two float64 sums)."""

    def __init__(self, from_logits: bool = False, name: str = "LogLoss", **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(from_logits, bool):
            raise ValueError(f"LogLoss: `from_logits` must be True or False, got {from_logits!r}")
        self.from_logits = from_logits
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="total")
        self.weight = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="weight")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y, p, w = _prepare(y_true, y_pred, sample_weight)  # flat float64, weights 1 by default
        if self.from_logits:
            p = tf.sigmoid(p)
        p = tf.clip_by_value(p, EPSILON, 1.0 - EPSILON)
        self.total.assign_add(tf.reduce_sum(-w * (y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p))))
        self.weight.assign_add(tf.reduce_sum(w))

    def result(self):
        nan = tf.constant(float("nan"), tf.float64)
        return tf.cast(tf.where(self.weight > 0, self.total / tf.maximum(self.weight, 1e-300), nan), tf.float32)

    def reset_state(self):
        self.total.assign(0.0)
        self.weight.assign(0.0)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "from_logits": self.from_logits}
