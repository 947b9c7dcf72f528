"""Shared building blocks of the next-item models: the item/position encoder and the transformer block.

* :class:`ItemEncoder`: tied item embedding table ``[V, d]`` (``V = num_items + 1``, row 0 = padding)
  plus learned positions, counted from the most recent item (``positions="recency"``, default: position
  ``i`` of a left-padded ``[B, L]`` sequence gets ``P[L - 1 - i]``) or from the first real item
  (``"absolute"``, the original SASRec with its right padding). Either way prepending padding never
  changes the representation of a sequence (padding invariance), for any ``L``.
* :class:`TransformerBlock`: causal self-attention + position-wise FFN, pre-, post- or SASRec-LayerNorm,
  the FFN pluggable: any layer ``[B, L, d] -> [B, L, d]`` passed as ``feedforward`` (HyMoERec passes a
  :class:`~tfmoe.layers.HybridMoEFeedForward`), by default a :class:`~tfmoe.layers.FeedForward`. Attention is
  :class:`~tfmoe.layers.MultiHeadMoEAttention`; with ``attention_experts=1`` (default) it is
  ordinary multi-head attention.

Example:
    >>> import numpy as np
    >>> from tfmoe.models import blocks
    >>> encoder = blocks.ItemEncoder(num_items=10, max_len=4, hidden_dim=8)
    >>> x, mask = encoder(np.array([[0, 3, 4, 5]]))
    >>> block = blocks.TransformerBlock(num_heads=2, inner_dim=16)
    >>> tuple(block(x, mask=mask).shape)
    (1, 4, 8)

References:
    * Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. https://arxiv.org/abs/1808.09781
    * Vaswani et al., "Attention Is All You Need", NeurIPS 2017. https://arxiv.org/abs/1706.03762
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfmoe.layers import FeedForward, HybridMoEFeedForward, MultiHeadMoEAttention, masking
from tfmoe.utils import validation as v
from tfmoe.utils.initializers import fresh_initializer, optional_initializer, serialize_optional

NORMS = ("pre", "post", "sasrec")
POSITIONS = ("recency", "absolute")
FFNS = ("dense", "hybrid_moe")


@keras.saving.register_keras_serializable(package="tfmoe")
class ItemEncoder(keras.layers.Layer):
    """Item + learned position embeddings, optional ``sqrt(d)`` scaling, dropout; zero at padding.

    Args:
        num_items: catalogue size without padding; the table has ``num_items + 1`` rows.
        max_len: longest sequence ``L`` (rows of the position table).
        hidden_dim: ``d``.
        dropout: embedding dropout rate in ``[0, 1)``.
        scale_embeddings: multiply item embeddings by ``sqrt(d)`` (original SASRec).
        positions: ``"recency"`` (default; the most recent item has position 0) or ``"absolute"`` (the
            first real item of the window has position 0; positions count real items, so padding
            anywhere is skipped).
        embeddings_initializer: initializer of both tables (each gets its own draw); default truncated
            normal with standard deviation ``1 / sqrt(d)``.

    Call: ``encoder(items [B, L] int, training=None)`` -> ``(x [B, L, d], mask [B, L] bool)``,
    ``mask`` True at real items (``items != 0``). ``L <= max_len`` is required.

    Example:
        >>> import numpy as np
        >>> from tfmoe.models.blocks import ItemEncoder
        >>> x, mask = ItemEncoder(num_items=5, max_len=3, hidden_dim=4)(np.array([[0, 1, 2]]))
        >>> mask.numpy().tolist(), float(abs(x[0, 0]).numpy().sum())
        ([[False, True, True]], 0.0)
    """

    def __init__(
        self,
        num_items,
        max_len,
        hidden_dim=64,
        dropout=0.0,
        scale_embeddings=True,
        positions="recency",
        embeddings_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_items = v.check_int(owner, "num_items", num_items, minimum=1)
        self.max_len = v.check_int(owner, "max_len", max_len, minimum=1)
        self.hidden_dim = v.check_int(owner, "hidden_dim", hidden_dim, minimum=1)
        self.dropout = v.check_float(owner, "dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.scale_embeddings = v.check_bool(owner, "scale_embeddings", scale_embeddings)
        self.positions = v.check_choice(owner, "positions", positions, POSITIONS)
        if embeddings_initializer is None:
            embeddings_initializer = keras.initializers.TruncatedNormal(stddev=1.0 / math.sqrt(self.hidden_dim))
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embedding_dropout = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)

    @property
    def vocabulary_size(self) -> int:
        """``V = num_items + 1`` (index 0 is padding)."""
        return self.num_items + 1

    def build(self, input_shape=None):
        self.item_embeddings = self.add_weight(
            name="item_embeddings",
            shape=(self.vocabulary_size, self.hidden_dim),
            initializer=fresh_initializer(self.embeddings_initializer, "item_embeddings"),
        )
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(self.max_len, self.hidden_dim),
            initializer=fresh_initializer(self.embeddings_initializer, "position_embeddings"),
        )
        self.built = True

    def call(self, items, training=None):
        items = tf.cast(items, tf.int32)
        length = items.shape[1]
        if length is None:
            length = tf.shape(items)[1]
        elif length > self.max_len:
            raise ValueError(f"{type(self).__name__}: sequence length {length} exceeds `max_len` {self.max_len}")
        mask = tf.not_equal(items, 0)
        x = tf.gather(tf.cast(self.item_embeddings, self.compute_dtype), items)
        if self.scale_embeddings:
            x = x * tf.cast(math.sqrt(self.hidden_dim), self.compute_dtype)
        table = tf.cast(self.position_embeddings, self.compute_dtype)
        if self.positions == "recency":
            x = x + tf.gather(table, tf.range(length - 1, -1, -1))[None]  # position i -> L - 1 - i
        else:  # the k-th real item -> k - 1
            x = x + tf.gather(table, tf.maximum(tf.cumsum(tf.cast(mask, tf.int32), axis=1) - 1, 0))
        x = self.embedding_dropout(x, training=training)
        return masking.apply_mask(x, mask), mask

    def compute_mask(self, items, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            num_items=self.num_items,
            max_len=self.max_len,
            hidden_dim=self.hidden_dim,
            dropout=self.dropout,
            scale_embeddings=self.scale_embeddings,
            positions=self.positions,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config


def add_residual_sublayers(block, attention_output_dropout=None) -> None:
    """Gives ``block`` the LayerNorms and dropouts around its two residual sums, under the block's dtype policy:
    ``attention_norm``, ``ffn_norm``, ``attention_output_dropout_layer`` (rate ``attention_output_dropout``, default
    ``block.dropout``) and ``ffn_output_dropout`` (rate ``block.dropout``); LayerNorm epsilon
    ``block.layer_norm_epsilon``. Shared by :class:`TransformerBlock` and FAME's ``FacetBlock``."""
    policy, eps = block.dtype_policy, block.layer_norm_epsilon
    block.attention_norm = keras.layers.LayerNormalization(epsilon=eps, dtype=policy, name="attention_norm")
    block.ffn_norm = keras.layers.LayerNormalization(epsilon=eps, dtype=policy, name="ffn_norm")
    block.attention_output_dropout_layer = keras.layers.Dropout(
        block.dropout if attention_output_dropout is None else attention_output_dropout, dtype=policy
    )
    block.ffn_output_dropout = keras.layers.Dropout(block.dropout, dtype=policy)


@keras.saving.register_keras_serializable(package="tfmoe")
class TransformerBlock(keras.layers.Layer):
    """Causal transformer block with a pluggable FFN, pre-, post- or SASRec-LayerNorm.

    ``norm="post"`` (RecBole/BERT): ``x = LN(x + Drop(Attn(x)))``, ``x = LN(x + Drop(FFN(x)))``.
    ``norm="pre"``: ``x = x + Drop(Attn(LN(x)))``, ``x = x + Drop(FFN(LN(x)))``; the model then applies a
    final LayerNorm.
    ``norm="sasrec"`` (the original SASRec code): queries and the residual come from the normalised
    input, keys and values from the input itself, ``q = LN(x)``, ``x = q + Drop(Attn(q, keys=x))``,
    then ``x = LN(x) + Drop(FFN(LN(x)))``; also followed by a final LayerNorm.
    Outputs are zero at padding positions.

    Args:
        num_heads: attention heads ``H`` (``d`` must be divisible by ``H``).
        inner_dim: FFN inner size (and of every expert for ``"hybrid_moe"`` unless overridden in
            ``ffn_options``).
        dropout: residual (and FFN hidden) dropout rate.
        attention_dropout: attention-probability dropout (default ``dropout``).
        attention_output_dropout: dropout on the attention output before the residual sum (default
            ``dropout``; the original SASRec code has none there: 0).
        norm: ``"pre"``, ``"post"`` or ``"sasrec"``.
        activation: FFN activation.
        feedforward: the position-wise FFN, a layer ``[B, L, d] -> [B, L, d]`` called as
            ``feedforward(x, mask=mask, training=training)`` (e.g. a :class:`~tfmoe.layers.HybridMoEFeedForward`);
            default None: the block builds one from ``ffn``.
        ffn: the FFN the block builds without ``feedforward``: ``"dense"`` (:class:`~tfmoe.layers.FeedForward`)
            or ``"hybrid_moe"`` (:class:`~tfmoe.layers.HybridMoEFeedForward`).
        ffn_options: extra keyword arguments of :class:`~tfmoe.layers.HybridMoEFeedForward` for
            ``ffn="hybrid_moe"`` (``num_experts``, ``k``, ``warmup_steps``, ``entropy_loss_weight``, ...).
        attention_experts: expert queries per head (FAME-style MoE attention with ``W_O``); 1 = plain.
        layer_norm_epsilon: LayerNorm epsilon.
        kernel_initializer: initializer of the attention and FFN kernels (each gets its own draw).
        attention_initializer: initializer of the attention's query, key and value kernels only (default
            ``kernel_initializer``).

    Call: ``block(x [B, L, d], mask=[B, L] bool, training=None)`` -> ``[B, L, d]``.

    Example:
        >>> import numpy as np
        >>> from tfmoe.layers import HybridMoEFeedForward
        >>> from tfmoe.models.blocks import TransformerBlock
        >>> block = TransformerBlock(num_heads=1, feedforward=HybridMoEFeedForward(hidden_dim=8, num_experts=2, k=1))
        >>> tuple(block(np.ones((2, 3, 4), "float32")).shape), block.ffn_type
        ((2, 3, 4), 'hybrid_moe')
    """

    def __init__(
        self,
        num_heads=1,
        inner_dim=256,
        dropout=0.0,
        attention_dropout=None,
        attention_output_dropout=None,
        norm="pre",
        activation="gelu",
        feedforward=None,
        ffn="dense",
        ffn_options=None,
        attention_experts=1,
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        attention_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_heads = v.check_int(owner, "num_heads", num_heads, minimum=1)
        self.inner_dim = v.check_int(owner, "inner_dim", inner_dim, minimum=1)
        self.attention_initializer = optional_initializer(owner, "attention_initializer", attention_initializer)
        self.dropout = v.check_float(owner, "dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.attention_dropout = v.check_optional_float(
            owner, "attention_dropout", attention_dropout, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self.attention_output_dropout = v.check_optional_float(
            owner, "attention_output_dropout", attention_output_dropout, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self.norm = v.check_choice(owner, "norm", norm, NORMS)
        if not isinstance(activation, str):
            raise ValueError(f"{owner}: `activation` must be a Keras activation name, got {activation!r}")
        self.activation = activation
        self.ffn_kind = v.check_choice(owner, "ffn", ffn, FFNS)
        if ffn_options is not None and not isinstance(ffn_options, dict):
            raise ValueError(f"{owner}: `ffn_options` must be a dict or None, got {ffn_options!r}")
        if ffn_options and ffn == "dense":
            raise ValueError(f"{owner}: `ffn_options` needs ffn='hybrid_moe', got ffn_options={ffn_options!r}")
        self.ffn_options = dict(ffn_options or {})
        if feedforward is not None:
            if not isinstance(feedforward, keras.layers.Layer):
                raise ValueError(f"{owner}: `feedforward` must be a Keras layer or None, got {feedforward!r}")
            if ffn != "dense" or self.ffn_options:
                raise ValueError(f"{owner}: pass either `feedforward` or `ffn`/`ffn_options`, got ffn={ffn!r}")
        self._ffn_passed = feedforward is not None  # the FFN itself is saved as `ffn`: one attribute per layer
        self.attention_experts = v.check_int(owner, "attention_experts", attention_experts, minimum=1)
        self.layer_norm_epsilon = v.check_float(owner, "layer_norm_epsilon", layer_norm_epsilon, minimum=0.0)
        rate = self.dropout if attention_dropout is None else attention_dropout
        try:
            self.kernel_initializer = keras.initializers.get(kernel_initializer)
            self.attention = MultiHeadMoEAttention(
                num_heads=self.num_heads,
                num_experts=self.attention_experts,
                dropout=rate,
                track_statistics=self.attention_experts > 1,
                kernel_initializer=fresh_initializer(self.kernel_initializer, "attention"),
                query_key_value_initializer=fresh_initializer(self.attention_initializer, "attention_qkv"),
                dtype=self.dtype_policy,
                name="attention",
            )
            self.ffn = feedforward if feedforward is not None else self._default_ffn()
        except (TypeError, ValueError) as error:
            raise ValueError(f"{owner}: {error}") from error
        add_residual_sublayers(self, attention_output_dropout)
        self.supports_masking = True

    def _default_ffn(self):
        """The FFN named by ``ffn`` and ``ffn_options``."""
        options = {"activation": self.activation, "dropout": self.dropout, "dtype": self.dtype_policy,
                   "kernel_initializer": fresh_initializer(self.kernel_initializer, "ffn"), "name": "ffn"}
        if self.ffn_kind == "dense":
            return FeedForward(self.inner_dim, **options)
        return HybridMoEFeedForward(hidden_dim=self.inner_dim, **options, **self.ffn_options)

    @property
    def ffn_type(self) -> str:
        """``"hybrid_moe"`` for a :class:`~tfmoe.layers.HybridMoEFeedForward`, ``"dense"`` for a
        :class:`~tfmoe.layers.FeedForward`, else the FFN's class name."""
        if isinstance(self.ffn, HybridMoEFeedForward):
            return "hybrid_moe"
        return "dense" if isinstance(self.ffn, FeedForward) else type(self.ffn).__name__

    def build(self, input_shape):
        d = input_shape[-1]
        if d is None or d % self.num_heads:
            raise ValueError(
                f"{type(self).__name__}: hidden size {d} must be known and divisible by `num_heads` {self.num_heads}"
            )
        self.attention.build(input_shape)
        if not self.ffn.built:
            self.ffn.build(input_shape)
        self.attention_norm.build(input_shape)
        self.ffn_norm.build(input_shape)
        self.built = True

    def call(self, x, mask=None, training=None, last_only=False):
        """``last_only=True``: only the last position's output ``[B, 1, d]`` (it still attends to all positions)."""
        mask = masking.as_bool_mask(mask)
        post, sasrec = self.norm == "post", self.norm == "sasrec"
        h = x if post else self.attention_norm(x)
        a = self.attention(h, mask=mask, training=training, last_query_only=last_only, context=x if sasrec else None)
        residual = h if sasrec else x
        if last_only:
            residual, mask = residual[:, -1:], None if mask is None else mask[:, -1:]
        x = residual + self.attention_output_dropout_layer(a, training=training)
        if post:
            x = self.attention_norm(x)
        h = x if post else self.ffn_norm(x)
        residual = h if sasrec else x
        x = residual + self.ffn_output_dropout(self.ffn(h, mask=mask, training=training), training=training)
        if post:
            x = self.ffn_norm(x)
        return masking.apply_mask(x, mask)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            inner_dim=self.inner_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            attention_output_dropout=self.attention_output_dropout,
            norm=self.norm,
            activation=self.activation,
            feedforward=keras.saving.serialize_keras_object(self.ffn) if self._ffn_passed else None,
            ffn=self.ffn_kind,
            ffn_options=dict(self.ffn_options) or None,
            attention_experts=self.attention_experts,
            layer_norm_epsilon=self.layer_norm_epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            attention_initializer=serialize_optional(self.attention_initializer),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("feedforward") is not None:
            config["feedforward"] = keras.saving.deserialize_keras_object(config["feedforward"])
        return cls(**config)
