"""MoS multi-scale fusion: a query-conditioned gate over global, short-term and theme experts.

References:
    * Mixture of Sequence (MoS), WWW 2026: the multi-scale fusion (docs/specs/mos.md).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.layers import masking
from tfmoe.utils import validation as v
from tfmoe.utils.initializers import fresh_initializer

GATE_INPUTS = ("query_and_experts", "query")
COMBINES = ("weighted_sum", "concat")


@keras.saving.register_keras_serializable(package="tfmoe")
class MultiScaleFusion(keras.layers.Layer):
    r"""Fuses ``S`` stacked expert outputs with a softmax gate conditioned on a query (target) vector.

    With expert outputs ``E [B, S, d_o]`` (e.g. ``[E_glob, E_short, E_theme_1..K']``), query
    ``q [B, d_q]`` and expert mask ``m [B, S]``::

        z = [q ; masked_mean_s E_s]     (gate_inputs="query_and_experts")   or   z = q   ("query")
        g = masked_softmax(MLP_g(z))    (float32; masked experts get g_s = 0)
        combine="weighted_sum":  h = sum_s g_s E_s                                  [B, d_o]
        combine="concat":        h = [E_0 ; ... ; E_{n-1} ; sum_{s >= n} g_s E_s]  [B, (n + 1) d_o]

    In ``"concat"`` mode the first ``n = num_ungated_experts`` experts (global, short-term) pass
    through unweighted (masked ones are zeroed) and the gate is a softmax over the remaining
    (theme) experts only; the returned gate then holds 1 for the unweighted experts (0 if
    masked). ``MLP_g`` is ``Dense(hidden_units[i], activation)`` layers (with dropout) then a
    linear layer with one logit per gated expert. If every gated expert is masked, ``g`` is 0.

    Args:
        hidden_units: hidden layer sizes of ``MLP_g`` (empty list: linear gate).
        activation: hidden activation (any Keras activation name).
        gate_inputs: ``"query_and_experts"`` or ``"query"``.
        combine: ``"weighted_sum"`` or ``"concat"`` (MoS §4.5 alternative).
        num_ungated_experts: ``n`` for ``"concat"`` (default 2: global and short-term).
        dropout: dropout rate after each hidden layer.
        seed: optional integer seed of the dropout.
        kernel_initializer: initializer of the gate MLP kernels.

    Call arguments:
        experts: ``[B, S, d_o]``.
        query: ``[B, d_q]``.
        expert_mask: optional ``[B, S]`` (``True`` = expert available).
        training: enables dropout.

    Returns:
        ``(h, g)``: fused output and the gate ``[B, S]`` (float32).

    Example:
        >>> import numpy as np
        >>> from tfmoe import layers
        >>> fusion = layers.MultiScaleFusion(hidden_units=[16])
        >>> experts = np.random.rand(2, 5, 8).astype("float32")  # global, short, 3 themes
        >>> h, g = fusion(experts, np.random.rand(2, 4).astype("float32"))
        >>> tuple(h.shape), np.allclose(g.numpy().sum(-1), 1.0)
        ((2, 8), True)
    """

    def __init__(
        self,
        hidden_units=(64,),
        activation: str = "relu",
        gate_inputs: str = "query_and_experts",
        combine: str = "weighted_sum",
        num_ungated_experts: int = 2,
        dropout: float = 0.0,
        seed: int | None = None,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.hidden_units = v.check_int_sequence(
            owner, "hidden_units", hidden_units, minimum=1, allow_empty=True
        )
        self.activation = v.check_activation(owner, "activation", activation)
        self.gate_inputs = v.check_choice(owner, "gate_inputs", gate_inputs, GATE_INPUTS)
        self.combine = v.check_choice(owner, "combine", combine, COMBINES)
        self.num_ungated_experts = v.check_int(owner, "num_ungated_experts", num_ungated_experts, minimum=0)
        self.dropout = v.check_float(owner, "dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.seed = v.check_optional_int(owner, "seed", seed, minimum=0)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self._hidden_layers = [
            keras.layers.Dense(
                units,
                activation=activation,
                kernel_initializer=fresh_initializer(self.kernel_initializer, f"gate_hidden_{i}"),
                dtype=self.dtype_policy,
                name=f"gate_hidden_{i}",
            )
            for i, units in enumerate(self.hidden_units)
        ]
        self._dropout_layers = [
            keras.layers.Dropout(
                self.dropout, seed=None if self.seed is None else self.seed + i, dtype=self.dtype_policy
            )
            for i in range(len(self.hidden_units))
        ]
        self._gate_layer = None

    @property
    def _num_ungated(self) -> int:
        return self.num_ungated_experts if self.combine == "concat" else 0

    def build(self, experts_shape, query_shape):
        owner = type(self).__name__
        if len(experts_shape) != 3 or experts_shape[1] is None or experts_shape[2] is None:
            raise ValueError(
                f"{owner}: `experts` must be [batch, experts, features] with static experts and "
                f"features, got shape {tuple(experts_shape)}"
            )
        if len(query_shape) != 2 or query_shape[-1] is None:
            raise ValueError(f"{owner}: `query` must be [batch, features], got shape {tuple(query_shape)}")
        num_experts, d_o = int(experts_shape[1]), int(experts_shape[2])
        num_gated = num_experts - self._num_ungated
        if num_gated < 1:
            raise ValueError(
                f"{owner}: combine='concat' needs more experts than `num_ungated_experts` "
                f"({self.num_ungated_experts}), got {num_experts} experts"
            )
        width = int(query_shape[-1]) + (d_o if self.gate_inputs == "query_and_experts" else 0)
        for layer in self._hidden_layers:
            layer.build((None, width))
            width = layer.units
        # Gate logits in float32 (routing math) under the layer's policy: no autocast of inputs or weights.
        self._gate_layer = keras.layers.Dense(
            num_gated,
            kernel_initializer=fresh_initializer(self.kernel_initializer, "gate_logits"),
            dtype=self.dtype_policy,
            autocast=False,
            name="gate_logits",
        )
        self._gate_layer.build((None, width))
        self.built = True

    def call(self, experts, query, expert_mask=None, training=None):
        dtype = self.compute_dtype
        experts = tf.cast(experts, dtype)
        expert_mask = masking.as_bool_mask(expert_mask)
        hidden = tf.cast(query, dtype)
        if self.gate_inputs == "query_and_experts":
            hidden = tf.concat([hidden, masking.masked_mean(experts, expert_mask, axis=1)], axis=-1)
        for layer, dropout in zip(self._hidden_layers, self._dropout_layers):
            hidden = dropout(layer(hidden), training=training)
        logits = self._gate_layer(tf.cast(hidden, tf.float32))  # [B, S - n]

        n = self._num_ungated
        gate = masking.masked_softmax(logits, None if expert_mask is None else expert_mask[:, n:])
        weighted = tf.einsum("bs,bsd->bd", tf.cast(gate, dtype), experts[:, n:])
        if n == 0:
            return weighted, gate
        ungated = masking.apply_mask(experts[:, :n], None if expert_mask is None else expert_mask[:, :n])
        if expert_mask is None:
            passed = tf.ones(tf.stack([tf.shape(gate)[0], n]), tf.float32)
        else:
            passed = tf.cast(expert_mask[:, :n], tf.float32)
        fused = tf.concat([tf.reshape(ungated, [-1, n * experts.shape[-1]]), weighted], axis=-1)
        return fused, tf.concat([passed, gate], axis=-1)

    def compute_mask(self, experts, previous_mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_units=list(self.hidden_units),
            activation=self.activation,
            gate_inputs=self.gate_inputs,
            combine=self.combine,
            num_ungated_experts=self.num_ungated_experts,
            dropout=self.dropout,
            seed=self.seed,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config
