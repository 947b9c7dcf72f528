"""Feed-forward experts: one position-wise FFN (``FeedForward``) and E FFNs run together (``ExpertBank``).

Both compute ``f(x) = act(x W1 + b1) W2 + b2`` (``d -> h -> d_out``) with dropout on the hidden
activation; the residual connection, the output dropout and the LayerNorm belong to the caller's block.

``ExpertBank`` keeps one weight tensor per projection for all experts (``W1: [E, d, h]``,
``W2: [E, h, d_out]``) and runs them with batched matmuls in two modes:

* buffers (sparse dispatch): ``x [E, C, d] -> [E, C, d_out]``, expert ``e`` processes row ``e`` only;
* gated mixture (dense): ``x [..., d]`` with ``gates [..., E]`` ->
  ``sum_e gates_e * f_e(x)``, every expert on every token (computed as two large matmuls).

A variance-scaling initializer (e.g. the default Glorot uniform) is applied as if each expert's
``[d, h]`` slice were its own Dense kernel.

Example:
    >>> import numpy as np
    >>> from tfmoe import layers
    >>> bank = layers.ExpertBank(num_experts=4, hidden_dim=32)
    >>> bank(np.random.rand(4, 10, 16).astype("float32")).shape  # buffers [E, C, d]
    TensorShape([4, 10, 16])
    >>> gates = np.full((2, 5, 4), 0.25, "float32")
    >>> bank(np.random.rand(2, 5, 16).astype("float32"), gates).shape  # dense mixture
    TensorShape([2, 5, 16])
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.layers.routers import flatten_tokens, leading_shape, unflatten_tokens
from tfmoe.utils.initializers import fresh_initializer
from tfmoe.utils.validation import check_bool, check_float, check_int, check_optional_int


def per_expert_initializer(initializer, num_experts: int, salt: str = "kernel"):
    """Initializer for ``[E, d, h]`` kernels that gives each ``[d, h]`` slice the variance of a Dense kernel.

    Keras computes fans of a 3-D shape as ``E * d`` and ``E * h``; variance-scaling initializers are
    rescaled by ``E`` to undo that. Other initializers do not depend on fans and are returned as copies.
    """
    initializer = fresh_initializer(initializer, salt)
    if isinstance(initializer, keras.initializers.VarianceScaling):
        return keras.initializers.VarianceScaling(
            scale=initializer.scale * num_experts,
            mode=initializer.mode,
            distribution=initializer.distribution,
            seed=initializer.seed,
        )
    return initializer


class _FeedForwardBase(keras.layers.Layer):
    """Arguments, hidden activation and config shared by ``FeedForward`` and ``ExpertBank``."""

    def __init__(
        self,
        hidden_dim,
        output_dim=None,
        activation="gelu",
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.hidden_dim = check_int(owner, "hidden_dim", hidden_dim, minimum=1)
        self.output_dim = check_optional_int(owner, "output_dim", output_dim, minimum=1)
        self.dropout = check_float(owner, "dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.use_bias = check_bool(owner, "use_bias", use_bias)
        try:
            self.activation = keras.activations.get(activation)
            self.kernel_initializer = keras.initializers.get(kernel_initializer)
            self.bias_initializer = keras.initializers.get(bias_initializer)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{owner}: invalid activation or initializer: {error}") from error
        self.hidden_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy, name="hidden_dropout")
        self.supports_masking = True

    def _model_dim(self, input_shape):
        model_dim = input_shape[-1]
        if model_dim is None:
            raise ValueError(
                f"{type(self).__name__}: the last input dimension must be known, got {input_shape}"
            )
        return model_dim

    def _hidden(self, pre_activation, training):
        return self.hidden_dropout(self.activation(pre_activation), training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            output_dim=self.output_dim,
            activation=keras.activations.serialize(self.activation),
            dropout=self.dropout,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="tfmoe")
class FeedForward(_FeedForwardBase):
    """Position-wise feed-forward network ``y = act(x W1 + b1) W2 + b2`` (``d -> h -> d_out``).

    Dropout (rate ``dropout``) is applied to the hidden activation in training. Masked positions
    (``mask`` or Keras' implicit mask) get a zero output; the mask is passed on.

    Args:
        hidden_dim: inner size ``h``.
        output_dim: ``d_out`` (default: the input size ``d``).
        activation: Keras activation name or callable (default ``"gelu"``).
        dropout: hidden dropout rate in ``[0, 1)``.
        use_bias: learn ``b1`` and ``b2``.
        kernel_initializer / bias_initializer: Keras initializers.

    Example:
        >>> import numpy as np
        >>> from tfmoe import layers
        >>> ffn = layers.FeedForward(hidden_dim=64)
        >>> ffn(np.random.rand(2, 7, 16).astype("float32")).shape
        TensorShape([2, 7, 16])
    """

    def build(self, input_shape):
        model_dim = self._model_dim(input_shape)
        output_dim = self.output_dim or model_dim
        self.kernel_in = self.add_weight(
            shape=(model_dim, self.hidden_dim),
            initializer=fresh_initializer(self.kernel_initializer, "kernel_in"),
            name="kernel_in",
        )
        self.kernel_out = self.add_weight(
            shape=(self.hidden_dim, output_dim),
            initializer=fresh_initializer(self.kernel_initializer, "kernel_out"),
            name="kernel_out",
        )
        self.bias_in = self.bias_out = None
        if self.use_bias:
            self.bias_in = self.add_weight(
                shape=(self.hidden_dim,),
                initializer=fresh_initializer(self.bias_initializer, "bias_in"),
                name="bias_in",
            )
            self.bias_out = self.add_weight(
                shape=(output_dim,), initializer=fresh_initializer(self.bias_initializer, "bias_out"), name="bias_out"
            )

    def call(self, inputs, mask=None, training=None):
        hidden = tf.tensordot(inputs, self.kernel_in, axes=1)
        if self.bias_in is not None:
            hidden = hidden + self.bias_in
        outputs = tf.tensordot(self._hidden(hidden, training), self.kernel_out, axes=1)
        if self.bias_out is not None:
            outputs = outputs + self.bias_out
        if mask is not None:
            outputs = tf.where(tf.cast(mask, tf.bool)[..., None], outputs, tf.zeros_like(outputs))
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)


@keras.saving.register_keras_serializable(package="tfmoe")
class ExpertBank(_FeedForwardBase):
    """``E`` feed-forward experts ``f_e(x) = act(x W1[e] + b1[e]) W2[e] + b2[e]`` computed together.

    Two call modes:

    * ``bank(buffers)`` with ``buffers [E, C, d]``: returns ``[E, C, d_out]`` where row ``e`` is
      ``f_e(buffers[e])`` (batched matmul ``[E, C, d] x [E, d, h]``). This is the sparse path of a MoE layer:
      its cost is ``2 * E * C * (d * h + h * d_out)`` FLOPs, proportional to the dispatched tokens.
    * ``bank(x, gates)`` with ``x [..., d]`` and ``gates [..., E]``: returns the dense mixture
      ``sum_e gates_e * f_e(x)`` of shape ``[..., d_out]``. Every expert runs on every token
      (``x W1`` for all experts is one ``[T, d] x [d, E*h]`` matmul; the gated hidden units go through
      one ``[T, E*h] x [E*h, d_out]`` matmul). To get each expert's output separately, pass
      ``tf.broadcast_to(x, [E, T, d])`` as buffers.

    Args:
        num_experts: ``E >= 1``.
        hidden_dim: inner size ``h`` of each expert.
        output_dim: ``d_out`` (default: the input size ``d``).
        activation: Keras activation (default ``"gelu"``).
        dropout: hidden dropout rate in ``[0, 1)``.
        use_bias: learn ``b1 [E, h]`` and ``b2 [E, d_out]``.
        kernel_initializer: applied per expert (variance-scaling fans of one ``[d, h]`` slice).
        bias_initializer: Keras initializer of the biases.

    Example:
        >>> import numpy as np
        >>> from tfmoe import layers
        >>> bank = layers.ExpertBank(num_experts=2, hidden_dim=8)
        >>> bank(np.zeros((2, 3, 4), "float32")).shape
        TensorShape([2, 3, 4])
    """

    def __init__(self, num_experts, hidden_dim, output_dim=None, **kwargs):
        super().__init__(hidden_dim, output_dim, **kwargs)
        self.num_experts = check_int(type(self).__name__, "num_experts", num_experts, minimum=1)

    def build(self, inputs_shape, gates_shape=None):
        model_dim = self._model_dim(inputs_shape)
        output_dim = self.output_dim or model_dim
        experts = self.num_experts
        self.kernel_in = self.add_weight(
            shape=(experts, model_dim, self.hidden_dim),
            initializer=per_expert_initializer(self.kernel_initializer, experts, "kernel_in"),
            name="kernel_in",
        )
        self.kernel_out = self.add_weight(
            shape=(experts, self.hidden_dim, output_dim),
            initializer=per_expert_initializer(self.kernel_initializer, experts, "kernel_out"),
            name="kernel_out",
        )
        self.bias_in = self.bias_out = None
        if self.use_bias:
            self.bias_in = self.add_weight(
                shape=(experts, self.hidden_dim),
                initializer=fresh_initializer(self.bias_initializer, "bias_in"),
                name="bias_in",
            )
            self.bias_out = self.add_weight(
                shape=(experts, output_dim),
                initializer=fresh_initializer(self.bias_initializer, "bias_out"),
                name="bias_out",
            )

    def call(self, inputs, gates=None, training=None):
        if gates is None:
            return self._run_buffers(inputs, training)
        return self._run_mixture(inputs, gates, training)

    def _run_buffers(self, buffers, training):
        if buffers.shape.rank != 3 or buffers.shape[0] not in (None, self.num_experts):
            raise ValueError(
                f"{type(self).__name__}: buffers must have shape "
                f"[num_experts={self.num_experts}, capacity, dim], "
                f"got {buffers.shape}"
            )
        hidden = tf.matmul(buffers, self.kernel_in)  # batched over experts: [E, C, d] x [E, d, h]
        if self.bias_in is not None:
            hidden = hidden + self.bias_in[:, None, :]
        outputs = tf.matmul(self._hidden(hidden, training), self.kernel_out)
        if self.bias_out is not None:
            outputs = outputs + self.bias_out[:, None, :]
        return outputs

    def run_packed(self, rows, rows_per_expert, training=None):
        """Rows ``[N, d]`` packed by expert -> ``[N, d_out]``: the first ``rows_per_expert[0]`` rows through
        expert 0, the next ``rows_per_expert[1]`` through expert 1, ...; rows after the ``E`` experts' (a last,
        ``E + 1``-th count, e.g. masked assignments) get 0. Each row is computed once (the dropless path of a
        MoE layer); the row counts are data-dependent shapes, so this does not compile under XLA.
        """
        experts = self.num_experts
        pieces = tf.split(rows, rows_per_expert, axis=0, num=rows_per_expert.shape[0])
        outputs = []
        for e in range(experts):
            hidden = tf.matmul(pieces[e], self.kernel_in[e])
            if self.bias_in is not None:
                hidden = hidden + self.bias_in[e]
            out = tf.matmul(self._hidden(hidden, training), self.kernel_out[e])
            outputs.append(out + self.bias_out[e] if self.bias_out is not None else out)
        for rest in pieces[experts:]:
            outputs.append(tf.zeros([tf.shape(rest)[0], self.kernel_out.shape[-1]], outputs[0].dtype))
        return tf.concat(outputs, axis=0)

    def _run_mixture(self, inputs, gates, training):
        experts = self.num_experts
        if gates.shape[-1] != experts:
            raise ValueError(
                f"{type(self).__name__}: gates must end with num_experts={experts}, got shape {gates.shape}"
            )
        lead = leading_shape(inputs)
        flat_inputs = flatten_tokens(inputs)
        flat_gates = tf.cast(tf.reshape(gates, [-1, experts]), inputs.dtype)
        model_dim, output_dim = flat_inputs.shape[-1], self.kernel_out.shape[-1]
        # All experts' first projections as one [T, d] x [d, E*h] matmul.
        kernel_in = tf.reshape(
            tf.transpose(self.kernel_in, [1, 0, 2]), [model_dim, experts * self.hidden_dim]
        )
        hidden = tf.reshape(tf.matmul(flat_inputs, kernel_in), [-1, experts, self.hidden_dim])
        if self.bias_in is not None:
            hidden = hidden + self.bias_in
        hidden = self._hidden(hidden, training) * flat_gates[:, :, None]
        # Gated sum over experts folded into one [T, E*h] x [E*h, d_out] matmul.
        kernel_out = tf.reshape(self.kernel_out, [experts * self.hidden_dim, output_dim])
        outputs = tf.matmul(tf.reshape(hidden, [-1, experts * self.hidden_dim]), kernel_out)
        if self.bias_out is not None:
            outputs = outputs + tf.matmul(flat_gates, self.bias_out)
        return unflatten_tokens(outputs, lead)

    def compute_output_shape(self, inputs_shape, gates_shape=None):
        return tuple(inputs_shape[:-1]) + (self.output_dim or inputs_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(num_experts=self.num_experts)
        return config
