"""The CTR prediction head (an MLP to one float32 logit) and the CTR loss, shared by every CTR model.

Example:
    >>> import numpy as np
    >>> from tfmoe.models.ctr.heads import PredictionHead, binary_cross_entropy
    >>> head = PredictionHead(hidden_units=[8])
    >>> head(np.ones((3, 5), "float32")).shape
    TensorShape([3])
    >>> round(float(binary_cross_entropy(np.array([1.0, 0.0]), np.zeros(2, "float32"))), 4)  # log 2
    0.6931
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.utils import flops as fl
from tfmoe.utils import validation as v


def binary_cross_entropy(labels, logits):
    """Mean ``BCE(sigmoid(logits), labels)`` over ``[B]`` rows, float32 (stable, from logits)."""
    logits = tf.reshape(tf.cast(logits, tf.float32), [-1])
    labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


@keras.saving.register_keras_serializable(package="tfmoe")
class PredictionHead(keras.layers.Layer):
    """``logit = w^T MLP(x) + b``: Dense layers with dropout, then a float32 Dense(1); returns ``[B]`` float32.

    Args:
        hidden_units: hidden sizes (DIN/SIM use [200, 80]; empty = logistic regression).
        activation: hidden activation (a Keras activation name).
        dropout: dropout after each hidden layer.
    """

    def __init__(self, hidden_units=(200, 80), activation="relu", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.hidden_units = v.check_int_sequence(owner, "hidden_units", hidden_units, allow_empty=True)
        self.activation = v.check_activation(owner, "activation", activation)
        self.dropout = v.check_float(owner, "dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)

    def build(self, input_shape):
        width = int(input_shape[-1])
        self.hidden_layers = []
        for i, units in enumerate(self.hidden_units):
            layer = keras.layers.Dense(units, activation=self.activation, dtype=self.dtype_policy, name=f"hidden_{i}")
            layer.build((None, width))
            self.hidden_layers.append(layer)
            width = units
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        # a float32 logit under the layer's policy: no autocast of the (float32) inputs or the weights
        self.logit_layer = keras.layers.Dense(1, dtype=self.dtype_policy, autocast=False, name="logit")
        self.logit_layer.build((None, width))
        self.built = True

    def call(self, inputs, training=None):
        x = tf.cast(inputs, self.compute_dtype)
        for layer in self.hidden_layers:
            x = self.dropout_layer(layer(x), training=training)
        return self.logit_layer(tf.cast(x, tf.float32))[:, 0]

    def flops(self, input_dim: int) -> int:
        """Forward FLOPs per example."""
        return fl.mlp_flops(1, input_dim, [*self.hidden_units, 1])

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=list(self.hidden_units), activation=self.activation, dropout=self.dropout)
        return config
