"""CTR backbones with a target item: ``(sequence [B, S, d], mask [B, S], target [B, d]) -> [B, d_out]``.

Each backbone is a Keras layer usable on its own (as the interest extractor of a CTR model) and as a
MoS / MoE expert (run on a subsequence). Weights depend only on ``d``, never on ``S``, so one layer
runs on sequences of any static length (whole history, short window, theme subsequence).

* ``"din"`` :class:`TargetAttention` (DIN, Zhou et al. 2018): an MLP scores
  ``[e_i, q, e_i - q, e_i * q]``; the output is ``sum_i w_i e_i`` (``w`` = masked softmax of the
  scores, or sigmoid / raw scores).
* ``"transact"`` :class:`TransActEncoder` (TransAct, Xia et al. 2023): early fusion
  ``x_i = W [e_i ; q]``, the target appended as token ``S + 1``, a bidirectional transformer
  encoder (pre- or post-LayerNorm) over the ``S + 1`` tokens; the output is
  ``[x_target ; masked max-pool_i x_i]`` (``2 d_model``). No positional embedding (TransAct relies on
  the action features; all backbones here are permutation invariant).
* ``"twin"`` :class:`TwinAttention` (SIM / TWIN two-stage, Chang et al. 2023): the general search
  unit scores every behaviour with the same multi-head projections as the exact search unit
  (TWIN's consistency: ``r_i = mean_h (W_k^h e_i) . (W_q^h q) / sqrt(d_h)``), keeps the
  ``top_k`` most relevant (static ``min(top_k, S)``), and the ESU is multi-head target attention over
  them (``softmax`` of the same scores, values ``W_v e_i``, output projection to ``d_out``).

Each backbone has ``output_width(d)`` and ``flops(length, d)``: the analytic forward FLOPs per
example (see :mod:`tfmoe.utils.flops` for the conventions).

A backbone's output for a row depends only on that row's real positions, so a batch may run in length groups of
rows, each cut to its widest row (:class:`tfmoe.models.length_groups.LengthGroups`), with the padded batch's
outputs.

Example:
    >>> import numpy as np
    >>> from tfmoe.models.ctr.backbones import make_backbone
    >>> din = make_backbone("din", {"attention_units": [8]})
    >>> seq, mask = np.random.rand(2, 5, 4).astype("float32"), np.ones((2, 5), bool)
    >>> tuple(din(seq, mask, np.random.rand(2, 4).astype("float32")).shape)
    (2, 4)

References:
    * Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018. https://arxiv.org/abs/1706.06978
    * Xia et al., "TransAct", KDD 2023. https://arxiv.org/abs/2306.00248
    * Chang et al., "TWIN", KDD 2023. https://arxiv.org/abs/2302.02352
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfmoe.layers import masking
from tfmoe.layers.routers import flatten_tokens, leading_shape, unflatten_tokens
from tfmoe.utils import flops as fl
from tfmoe.utils import validation as v
from tfmoe.utils.xla import dim

# The length groups' split cost model (tfmoe.models.length_groups.cheapest_group_starts): a CTR backbone's work per
# row grows linearly with its width (target attention, session pooling), so a large position cost makes
# c(w) = w (w + cost) about linear.
LINEAR_WIDTH_COST = 1.0e4


class SequenceLayer(keras.layers.Layer):
    """A layer over a sequence ``[B, L, d]`` whose weights depend only on ``d``: ``build(sequence_shape)`` calls
    ``_build(d)``; subclasses define ``_build`` and ``output_width(d)``."""

    def build(self, sequence_shape):
        d = sequence_shape[-1]
        if d is None:
            raise ValueError(f"{type(self).__name__}: the feature size must be static, got {tuple(sequence_shape)}")
        self._build(int(d))
        self.built = True

    def _build(self, d: int):
        raise NotImplementedError

    def output_width(self, d: int) -> int:
        raise NotImplementedError


class Backbone(SequenceLayer):
    """Base of the backbones: ``build(sequence_shape)`` from ``d``; subclasses define the rest."""

    def flops(self, length: int, d: int) -> int:
        raise NotImplementedError

    def _dense(self, units, name, activation=None, use_bias=True):
        return keras.layers.Dense(units, activation=activation, use_bias=use_bias, dtype=self.dtype_policy, name=name)

    def compute_mask(self, *args, **kwargs):
        return None


def dense_on_rows(layer, x):
    """``layer(x)`` of a Dense ``layer`` on ``x [..., a]`` as one 2-D matmul over the rows ``[-1, a]``.

    A Dense layer on a 3-D input runs a batched matmul, whose kernel gradient is one product per batch row summed
    over the batch: a cost per row, not per position, that dominates short sequences (a length group's, a theme's
    subsequence). On the rows it is one matmul forward and one for the kernel gradient; the same numbers.
    """
    out = unflatten_tokens(layer(flatten_tokens(x)), leading_shape(x))
    return tf.ensure_shape(out, x.shape[:-1].concatenate(out.shape[-1:]))  # a dynamic length keeps its static dims


def _inputs(layer, sequence, mask, target):
    dtype = layer.compute_dtype
    return tf.cast(sequence, dtype), masking.as_bool_mask(mask), tf.cast(target, dtype)


def factored_target_dense(seq, q, kernel, bias):
    """``[e_i, q, e_i - q, e_i * q] K + b`` for every item ``e_i`` of ``seq [B, S, d]`` and target ``q [B, d]``,
    as ``e_i M_q + c_q``: ``M_q = K_e + K_d + diag(q) K_p [B, d, u]``, ``c_q = q (K_q - K_d) + b [B, u]``
    (``K [4d, u]`` in blocks ``K_e, K_q, K_d, K_p``). Returns ``[B, S, u]`` in ``seq``'s dtype."""
    kernel, bias = tf.cast(kernel, seq.dtype), tf.cast(bias, seq.dtype)
    k_e, k_q, k_d, k_p = tf.split(kernel, 4, axis=0)
    per_target = (k_e + k_d)[None] + q[:, :, None] * k_p[None]  # [B, d, u]
    offset = tf.matmul(q, k_q - k_d) + bias  # [B, u]
    return tf.matmul(seq, per_target) + offset[:, None, :]


def factored_target_dense_flops(length: int, d: int, units: int) -> int:
    """Forward FLOPs of :func:`factored_target_dense` for one example of ``length`` items (profiler conventions)."""
    per_target = 2 * d * units + d * units  # K_e + K_d + diag(q) K_p: a product and a sum per entry
    offset = fl.dense_flops(1, d, units) + d * units  # K_q - K_d, then q (K_q - K_d) + b
    return per_target + offset + fl.matmul_flops(length, d, units) + length * units


@keras.saving.register_keras_serializable(package="tfmoe")
class TargetAttention(Backbone):
    """DIN target attention: ``w_i = norm(MLP([e_i, q, e_i - q, e_i * q]))``, output ``sum_i w_i e_i``.

    The MLP's first layer (kernel ``K = [K_e; K_q; K_d; K_p]`` on the four ``d``-blocks, bias ``b``) runs in
    its factored form: ``K_e e_i + K_q q + K_d (e_i - q) + K_p (e_i * q) + b = M_q e_i + c_q`` with
    ``M_q = K_e + K_d + diag(q) K_p`` and ``c_q = (K_q - K_d) q + b``, one ``d x u`` matrix and one bias per
    example. Each history item then costs one ``d x u`` product instead of ``4d x u``, and the ``[B, S, 4d]``
    features are never built; the weights (and checkpoints) are those of the concatenated form.

    Args:
        attention_units: hidden sizes of the scoring MLP (DIN: [80, 40]).
        activation: their activation (DIN uses Dice/PReLU; any Keras activation name).
        normalization: ``"softmax"`` (masked softmax over the sequence; default), ``"sigmoid"`` or
            ``"none"`` (DIN's raw weights).

    Example:
        >>> import numpy as np
        >>> att = TargetAttention(attention_units=[8])
        >>> out = att(np.ones((1, 3, 4), "float32"), np.array([[0, 1, 1]], bool), np.ones((1, 4), "float32"))
        >>> np.allclose(out.numpy(), 1.0)  # softmax weights over identical real items sum to 1
        True
    """

    def __init__(self, attention_units=(64,), activation="relu", normalization="softmax", **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.attention_units = v.check_int_sequence(owner, "attention_units", attention_units, allow_empty=True)
        self.activation = v.check_activation(owner, "activation", activation)
        self.normalization = v.check_choice(owner, "normalization", normalization, ("softmax", "sigmoid", "none"))

    def _build(self, d):
        width = 4 * d
        self.hidden_layers = []
        for i, units in enumerate(self.attention_units):
            layer = self._dense(units, f"attention_hidden_{i}", self.activation)
            layer.build((None, width))
            self.hidden_layers.append(layer)
            width = units
        # float32 scores under the layer's policy: no autocast of the (float32) inputs or the weights
        self.score_layer = keras.layers.Dense(1, dtype=self.dtype_policy, autocast=False, name="attention_score")
        self.score_layer.build((None, width))

    def output_width(self, d):
        return d

    def call(self, sequence, mask, target, training=None):
        seq, mask, q = _inputs(self, sequence, mask, target)
        if self.hidden_layers:
            first = self.hidden_layers[0]
            h = first.activation(factored_target_dense(seq, q, first.kernel, first.bias))  # [B, S, u]
            h = flatten_tokens(h)  # the rest of the MLP on [B * S, u] rows: 2-D matmuls (see dense_on_rows)
            for layer in self.hidden_layers[1:]:
                h = layer(h)
            scores = self.score_layer(tf.cast(h, tf.float32))
        else:
            scores = factored_target_dense(tf.cast(seq, tf.float32), tf.cast(q, tf.float32), self.score_layer.kernel,
                                           self.score_layer.bias)
        scores = tf.reshape(scores, tf.shape(mask))  # [B, S] float32
        if self.normalization == "softmax":
            weights = masking.masked_softmax(scores, mask)
        else:
            weights = tf.sigmoid(scores) if self.normalization == "sigmoid" else scores
            weights = masking.apply_mask(weights, mask)
        return tf.matmul(tf.cast(weights, seq.dtype)[:, None, :], seq)[:, 0, :]

    def flops(self, length, d):
        units = [*self.attention_units, 1]
        first = factored_target_dense_flops(length, d, units[0])
        rest = fl.mlp_flops(length, units[0], units[1:])
        softmax = 5 * length if self.normalization == "softmax" else 0
        return first + rest + softmax + fl.matmul_flops(1, length, d)

    def get_config(self):
        config = super().get_config()
        config.update(attention_units=list(self.attention_units), activation=self.activation,
                      normalization=self.normalization)
        return config


@keras.saving.register_keras_serializable(package="tfmoe")
class TransActEncoder(Backbone):
    """TransAct-style encoder: early fusion with the target, target token appended, transformer layers.

    Args:
        model_dim: ``d_model`` (default: the input size ``d``); must be divisible by ``num_heads``.
        num_heads: attention heads.
        num_layers: encoder layers.
        ffn_dim: FFN inner size (default ``2 d_model``).
        dropout: residual and FFN dropout.
        early_fusion: concatenate ``q`` to every token before the input projection (TransAct's
            "concat" early fusion); else project ``e_i`` alone.
        norm: ``"pre"`` (``x + f(LN(x))``, no final norm: the output keeps the embeddings' scale;
            default) or ``"post"`` (``LN(x + f(x))``, the original transformer / TransAct).

    Output: ``[x_target ; masked max-pool of the sequence tokens]`` (``2 d_model``; zeros for the
    pool of an empty sequence).

    Example:
        >>> import numpy as np
        >>> enc = TransActEncoder(num_heads=2)
        >>> tuple(enc(np.ones((2, 3, 4), "float32"), np.ones((2, 3), bool), np.ones((2, 4), "float32")).shape)
        (2, 8)
    """

    def __init__(self, model_dim=None, num_heads=2, num_layers=1, ffn_dim=None, dropout=0.0, early_fusion=True,
                 norm="pre", **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.model_dim = v.check_optional_int(owner, "model_dim", model_dim, minimum=1)
        self.num_heads = v.check_int(owner, "num_heads", num_heads, minimum=1)
        if self.model_dim is not None and self.model_dim % self.num_heads:
            raise ValueError(f"{owner}: `model_dim` ({model_dim}) must be divisible by `num_heads` ({num_heads})")
        self.num_layers = v.check_int(owner, "num_layers", num_layers, minimum=1)
        self.ffn_dim = v.check_optional_int(owner, "ffn_dim", ffn_dim, minimum=1)
        self.dropout = v.check_float(owner, "dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.early_fusion = v.check_bool(owner, "early_fusion", early_fusion)
        self.norm = v.check_choice(owner, "norm", norm, ("pre", "post"))

    def _dims(self, d):
        dm = self.model_dim or d
        if dm % self.num_heads:
            raise ValueError(
                f"{type(self).__name__}: d_model ({dm}) must be divisible by `num_heads` ({self.num_heads})"
            )
        return dm, self.ffn_dim or 2 * dm

    def _build(self, d):
        dm, ff = self._dims(d)
        self.input_projection = self._dense(dm, "input_projection")
        self.input_projection.build((None, 2 * d if self.early_fusion else d))
        norm = lambda name: keras.layers.LayerNormalization(epsilon=1e-6, dtype=self.dtype_policy, name=name)
        self.qkv_layers = [self._dense(3 * dm, f"qkv_{i}") for i in range(self.num_layers)]
        self.attention_outputs = [self._dense(dm, f"attention_output_{i}") for i in range(self.num_layers)]
        self.attention_norms = [norm(f"attention_norm_{i}") for i in range(self.num_layers)]
        self.ffn_inputs = [self._dense(ff, f"ffn_in_{i}", "relu") for i in range(self.num_layers)]
        self.ffn_outputs = [self._dense(dm, f"ffn_out_{i}") for i in range(self.num_layers)]
        self.ffn_norms = [norm(f"ffn_norm_{i}") for i in range(self.num_layers)]
        for layers, width in ((self.qkv_layers, dm), (self.attention_outputs, dm), (self.attention_norms, dm),
                              (self.ffn_inputs, dm), (self.ffn_outputs, ff), (self.ffn_norms, dm)):
            for layer in layers:
                layer.build((None, width))
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    def output_width(self, d):
        return 2 * self._dims(d)[0]

    def _attention(self, i, x, key_mask, training):
        dm, h = x.shape[-1], self.num_heads
        length = dim(x, 1)  # may be dynamic (a batch cut to its widest row)
        qkv = tf.reshape(dense_on_rows(self.qkv_layers[i], x), [-1, length, 3, h, dm // h])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, B, H, T, dh]
        scores = tf.matmul(qkv[0], qkv[1], transpose_b=True) * tf.cast(1.0 / math.sqrt(dm // h), x.dtype)
        probs = masking.masked_softmax(scores, key_mask[:, None, None, :])
        context = tf.matmul(self.dropout_layer(probs, training=training), qkv[2])  # [B, H, T, dh]
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, length, dm])
        return dense_on_rows(self.attention_outputs[i], context)

    def _ffn(self, i, x, training):
        inner = self.dropout_layer(dense_on_rows(self.ffn_inputs[i], x), training=training)
        return dense_on_rows(self.ffn_outputs[i], inner)

    def _sublayer(self, x, norm, function, training):
        """``x + f(LN(x))`` (pre) or ``LN(x + f(x))`` (post), with dropout on ``f``."""
        if self.norm == "pre":
            return x + self.dropout_layer(function(norm(x)), training=training)
        return norm(x + self.dropout_layer(function(x), training=training))

    def call(self, sequence, mask, target, training=None):
        seq, mask, q = _inputs(self, sequence, mask, target)
        tokens = tf.concat([seq, q[:, None, :]], axis=1)  # [B, S + 1, d]
        token_mask = tf.concat([mask, tf.ones_like(mask[:, :1])], axis=1)
        if self.early_fusion:
            tokens = tf.concat([tokens, tf.broadcast_to(q[:, None, :], tf.shape(tokens))], axis=-1)
        x = dense_on_rows(self.input_projection, tokens)
        for i in range(self.num_layers):
            x = self._sublayer(x, self.attention_norms[i], lambda y, i=i: self._attention(i, y, token_mask, training),
                               training)
            x = self._sublayer(x, self.ffn_norms[i], lambda y, i=i: self._ffn(i, y, training), training)
        items = x[:, :-1]
        pooled = tf.reduce_max(tf.where(mask[..., None], items, tf.cast(-1e4, items.dtype)), axis=1)
        pooled = tf.where(tf.reduce_any(mask, axis=1, keepdims=True), pooled, tf.zeros_like(pooled))
        return tf.concat([x[:, -1], pooled], axis=-1)

    def flops(self, length, d):
        dm, ff = self._dims(d)
        t = length + 1
        total = fl.dense_flops(t, 2 * d if self.early_fusion else d, dm)
        per_layer = (
            fl.dense_flops(t, dm, 3 * dm)
            + 2 * fl.matmul_flops(t, dm, t)  # scores and context over all heads
            + t * t * self.num_heads * 7  # scale (1) + softmax (5) + mask (1)
            + fl.dense_flops(t, dm, dm)
            + fl.mlp_flops(t, dm, [ff, dm])
            + 2 * t * dm  # residual adds
            + 2 * 8 * t * dm  # two LayerNorms (moments, normalise, scale, shift)
        )
        pool = 2 * length * dm
        return total + self.num_layers * per_layer + pool

    def get_config(self):
        config = super().get_config()
        config.update(model_dim=self.model_dim, num_heads=self.num_heads, num_layers=self.num_layers,
                      ffn_dim=self.ffn_dim, dropout=self.dropout, early_fusion=self.early_fusion, norm=self.norm)
        return config


@keras.saving.register_keras_serializable(package="tfmoe")
class TwinAttention(Backbone):
    """Two-stage long-sequence attention (SIM/TWIN): top-``k`` retrieval by the target, then target attention.

    Args:
        top_k: behaviours kept by the search unit (static ``min(top_k, S)``).
        num_heads: attention heads ``H``.
        head_dim: ``d_h`` (default ``d // H``, at least 1).
        output_dim: ``d_out`` of the output projection (default ``d``).

    Example:
        >>> import numpy as np
        >>> twin = TwinAttention(top_k=2, num_heads=2)
        >>> tuple(twin(np.random.rand(1, 6, 4).astype("float32"), np.ones((1, 6), bool),
        ...            np.random.rand(1, 4).astype("float32")).shape)
        (1, 4)
    """

    def __init__(self, top_k=50, num_heads=2, head_dim=None, output_dim=None, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.top_k = v.check_int(owner, "top_k", top_k, minimum=1)
        self.num_heads = v.check_int(owner, "num_heads", num_heads, minimum=1)
        self.head_dim = v.check_optional_int(owner, "head_dim", head_dim, minimum=1)
        self.output_dim = v.check_optional_int(owner, "output_dim", output_dim, minimum=1)

    def _head_dim(self, d):
        return self.head_dim or max(1, d // self.num_heads)

    def _build(self, d):
        inner = self.num_heads * self._head_dim(d)
        self.key_projection = self._dense(inner, "key_projection", use_bias=False)
        self.query_projection = self._dense(inner, "query_projection", use_bias=False)
        self.value_projection = self._dense(inner, "value_projection", use_bias=False)
        for layer in (self.key_projection, self.query_projection, self.value_projection):
            layer.build((None, d))
        self.output_projection = self._dense(self.output_width(d), "output_projection")
        self.output_projection.build((None, inner))

    def output_width(self, d):
        return self.output_dim or d

    def call(self, sequence, mask, target, training=None):
        seq, mask, q = _inputs(self, sequence, mask, target)
        length, d = dim(seq, 1), seq.shape[-1]  # the length may be dynamic (a batch cut to its widest row)
        h, dh = self.num_heads, self._head_dim(d)
        k = min(self.top_k, length) if isinstance(length, int) else tf.minimum(self.top_k, length)
        keys = tf.reshape(dense_on_rows(self.key_projection, seq), [-1, length, h, dh])
        keys = tf.transpose(keys, [0, 2, 1, 3])  # [B, H, S, dh]
        query = tf.reshape(self.query_projection(q), [-1, h, dh, 1])
        scores = tf.cast(tf.matmul(keys, query)[..., 0], tf.float32) * (1.0 / math.sqrt(dh))  # [B, H, S]
        relevance = tf.where(mask, tf.reduce_mean(scores, axis=1), masking.MASKED_LOGIT)  # GSU
        chosen = tf.math.top_k(relevance, k=k).indices  # [B, K]
        chosen_mask = tf.gather(mask, chosen, batch_dims=1)
        chosen_scores = tf.gather(tf.transpose(scores, [0, 2, 1]), chosen, batch_dims=1)  # [B, K, H]
        weights = masking.masked_softmax(chosen_scores, chosen_mask[..., None], axis=1)  # ESU
        values = tf.reshape(dense_on_rows(self.value_projection, tf.gather(seq, chosen, batch_dims=1)), [-1, k, h, dh])
        weights = tf.transpose(tf.cast(weights, values.dtype), [0, 2, 1])[:, :, None, :]  # [B, H, 1, K]
        context = tf.matmul(weights, tf.transpose(values, [0, 2, 1, 3]))  # [B, H, 1, dh]
        return self.output_projection(tf.reshape(context, [-1, h * dh]))

    def flops(self, length, d):
        h, dh = self.num_heads, self._head_dim(d)
        inner, k = h * dh, min(self.top_k, length)
        gsu = fl.dense_flops(length, d, inner, bias=False) + fl.dense_flops(1, d, inner, bias=False)
        gsu += fl.matmul_flops(h * length, dh, 1) + 2 * h * length  # scores, scale, head mean
        esu = fl.dense_flops(k, d, inner, bias=False) + 5 * k * h + fl.matmul_flops(h, k, dh)
        return gsu + esu + fl.dense_flops(1, inner, self.output_width(d))

    def get_config(self):
        config = super().get_config()
        config.update(top_k=self.top_k, num_heads=self.num_heads, head_dim=self.head_dim, output_dim=self.output_dim)
        return config




BACKBONES = {"din": TargetAttention, "transact": TransActEncoder, "twin": TwinAttention}


def make_backbone(backbone: str, options=None, **layer_kwargs) -> Backbone:
    """A backbone layer by name (``"din"``, ``"transact"``, ``"twin"``) with its ``options`` dict."""
    v.check_choice("make_backbone", "backbone", backbone, tuple(BACKBONES))
    if options is not None and not isinstance(options, dict):
        raise ValueError(f"make_backbone: `backbone_options` must be a dict or None, got {options!r}")
    try:
        return BACKBONES[backbone](**(options or {}), **layer_kwargs)
    except (TypeError, ValueError) as error:  # unknown or invalid option
        raise ValueError(f"make_backbone: bad `backbone_options` {options!r} for {backbone!r}: {error}") from None
