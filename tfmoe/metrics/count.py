"""``Count``: the number of rows a metric pass saw, reported by ``model.evaluate`` as ``"count"``.

Example:
    >>> import numpy as np
    >>> from tfmoe.metrics import Count
    >>> count = Count()
    >>> count.update_state(np.array([3, 5]), np.zeros((2, 7)))
    >>> count.update_state(np.array([1]), np.zeros((1, 7)))
    >>> float(count.result())
    3.0
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfmoe")
class Count(keras.metrics.Metric):
    """Rows seen (one per label row, whatever ``sample_weight`` is); summed over the replicas of a strategy."""

    def __init__(self, name: str = "count", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.rows = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="rows")

    def update_state(self, y_true, y_pred=None, sample_weight=None):
        self.rows.assign_add(tf.cast(tf.shape(y_true)[0], tf.float64))

    def result(self):
        return tf.cast(self.rows, tf.float32)

    def reset_state(self):
        self.rows.assign(0.0)
