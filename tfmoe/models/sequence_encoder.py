"""The SASRec sequence encoder: the backbone that every next-item model of :mod:`tfmoe.models` composes.

For left-padded item ids ``items [B, L]`` (0 = padding) the encoder computes::

    x_0 = Drop(E[items] * sqrt(d) + P[positions])                          (ItemEncoder)
    x_n = Block_n(x_{n-1}),  n = 1..N                                        (causal TransformerBlock s)
    h   = LN_final(x_N)   (norm "pre" / "sasrec"),   h = x_N   (norm "post")
    h[b, i] = 0 where items[b, i] = 0

and returns ``(h [B, L, d], mask [B, L])`` with ``mask = items != 0``. Each block's position-wise FFN is
pluggable: ``feedforward`` gives one layer (or None for the default :class:`~tfmoe.layers.FeedForward`) per block,
e.g. a :class:`~tfmoe.layers.HybridMoEFeedForward` (HyMoERec). ``call(..., last_only=True)`` lets the last block
compute the last position only (``[B, 1, d]``: serving and evaluation never pay for the other queries).
``length_groups=G`` encodes each batch in ``G`` groups of rows of similar history length, each cut to its longest
(:mod:`tfmoe.models.length_groups`): the same outputs for less work on padded batches.

Example:
    >>> import numpy as np
    >>> from tfmoe.models.sequence_encoder import SequenceEncoder
    >>> encoder = SequenceEncoder(num_items=20, max_len=5, hidden_dim=16, num_heads=2)
    >>> h, mask = encoder(np.array([[0, 0, 3, 4, 5]]))
    >>> tuple(h.shape), mask.numpy().tolist(), float(abs(h[0, 0]).numpy().sum())
    ((1, 5, 16), [[False, False, True, True, True]], 0.0)

References:
    Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. https://arxiv.org/abs/1808.09781
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.models import blocks
from tfmoe.models.length_groups import encode_in_length_groups, transformer_position_cost
from tfmoe.utils import validation as v
from tfmoe.utils.initializers import fresh_initializer, optional_initializer, serialize_optional
from tfmoe.utils.xla import in_xla_context


def normal_or(initializer_range, default):
    """``N(0, initializer_range^2)`` if ``initializer_range`` is set, else ``default`` (a layer's own initializer)."""
    if initializer_range is None:
        return default
    return keras.initializers.RandomNormal(stddev=initializer_range)


@keras.saving.register_keras_serializable(package="tfmoe")
class SequenceEncoder(keras.layers.Layer):
    """Item + position embeddings, ``num_blocks`` causal transformer blocks and the final LayerNorm.

    Args:
        num_items: catalogue size without padding (item ids ``1..num_items``).
        max_len: longest input sequence ``L``.
        hidden_dim: ``d`` (default 64).
        num_blocks: transformer blocks ``N`` (default 2; 0 = embeddings and final LayerNorm only).
        num_heads: attention heads (default 1; ``d`` must be divisible by it).
        inner_dim: inner size of the default FFN (default ``4 d``).
        dropout: embedding, residual and FFN dropout (default 0.2).
        attention_dropout: attention-probability dropout (default ``dropout``).
        attention_output_dropout: dropout on each attention output before its residual sum (default ``dropout``).
        norm: ``"pre"`` (default), ``"sasrec"`` or ``"post"`` (:class:`~tfmoe.models.blocks.TransformerBlock`);
            ``"pre"`` and ``"sasrec"`` end with the final LayerNorm.
        activation: activation of the default FFN (default ``"gelu"``).
        scale_embeddings: multiply item embeddings by ``sqrt(d)`` (default True).
        positions: ``"recency"`` (default) or ``"absolute"`` (:class:`~tfmoe.models.blocks.ItemEncoder`).
        initializer_range: if given, embedding tables and kernels start from ``N(0, initializer_range^2)``;
            default None: the layers' own initializers.
        attention_initializer: initializer of every block's attention query, key and value kernels (default None:
            as the other kernels).
        layer_norm_epsilon: epsilon of every LayerNorm (default 1e-6).
        feedforward: the FFN of each block: None (every block builds a :class:`~tfmoe.layers.FeedForward`) or a list
            of ``num_blocks`` entries, each a layer ``[B, L, d] -> [B, L, d]`` or None (the default FFN).
        length_groups: encode each batch in this many groups of rows sorted by history length, each group cut to
            its longest history (default 1: the batch as it is). The outputs are the same (only dropout draws
            differ); the work on padding drops. Needs the default FFNs (an FFN layer that routes tokens would see
            per-group batches). The groups' widths are dynamic, which XLA pads back to their bound, so code that XLA
            compiles (a serving signature exported with ``jit_compile``) encodes the batch as it is.

    Call: ``encoder(items [B, L] int, training=None, last_only=False)`` -> ``(h [B, L, d], mask [B, L] bool)``;
    with ``last_only=True``: ``(h [B, 1, d], mask [B, 1])`` of the last position.
    """

    def __init__(
        self,
        num_items,
        max_len,
        hidden_dim=64,
        num_blocks=2,
        num_heads=1,
        inner_dim=None,
        dropout=0.2,
        attention_dropout=None,
        attention_output_dropout=None,
        norm="pre",
        activation="gelu",
        scale_embeddings=True,
        positions="recency",
        initializer_range=None,
        attention_initializer=None,
        layer_norm_epsilon=1e-6,
        feedforward=None,
        length_groups=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_items = v.check_int(owner, "num_items", num_items, minimum=1)
        self.max_len = v.check_int(owner, "max_len", max_len, minimum=1)
        self.hidden_dim = v.check_int(owner, "hidden_dim", hidden_dim, minimum=1)
        self.num_blocks = v.check_int(owner, "num_blocks", num_blocks, minimum=0)
        self.num_heads = v.check_int(owner, "num_heads", num_heads, minimum=1)
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"{owner}: `hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads})")
        self.inner_dim = v.check_optional_int(owner, "inner_dim", inner_dim, minimum=1)
        self.dropout = v.check_float(owner, "dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.attention_dropout = v.check_optional_float(
            owner, "attention_dropout", attention_dropout, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self.attention_output_dropout = v.check_optional_float(
            owner, "attention_output_dropout", attention_output_dropout, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self.norm = v.check_choice(owner, "norm", norm, blocks.NORMS)
        self.activation = activation
        self.scale_embeddings = v.check_bool(owner, "scale_embeddings", scale_embeddings)
        self.positions = v.check_choice(owner, "positions", positions, blocks.POSITIONS)
        self.initializer_range = None
        if initializer_range is not None:
            self.initializer_range = v.check_float(
                owner, "initializer_range", initializer_range, minimum=0.0, min_inclusive=False
            )
        self.attention_initializer = optional_initializer(owner, "attention_initializer", attention_initializer)
        self.layer_norm_epsilon = v.check_float(
            owner, "layer_norm_epsilon", layer_norm_epsilon, minimum=0.0, min_inclusive=False
        )
        feedforward = [None] * self.num_blocks if feedforward is None else list(feedforward)
        if len(feedforward) != self.num_blocks:
            raise ValueError(f"{owner}: `feedforward` must give one layer or None per block ({self.num_blocks}), "
                             f"got {len(feedforward)}")
        self._feedforward_passed = [layer is not None for layer in feedforward]
        self.length_groups = v.check_int(owner, "length_groups", length_groups, minimum=1)
        if self.length_groups > 1 and any(self._feedforward_passed):
            raise ValueError(f"{owner}: `length_groups` ({length_groups}) needs the default FFN in every block; "
                             f"the FFN layers passed ({', '.join(type(f).__name__ for f in feedforward if f)}) "
                             "may depend on the whole batch")
        policy = self.dtype_policy
        try:
            self.item_encoder = blocks.ItemEncoder(
                self.num_items, self.max_len, self.hidden_dim, dropout=self.dropout,
                scale_embeddings=self.scale_embeddings, positions=self.positions,
                embeddings_initializer=normal_or(self.initializer_range, None), dtype=policy, name="item_encoder",
            )
            self.transformer_blocks = [
                blocks.TransformerBlock(
                    num_heads=self.num_heads,
                    inner_dim=self.inner_dim or 4 * self.hidden_dim,
                    dropout=self.dropout,
                    attention_dropout=self.attention_dropout,
                    attention_output_dropout=self.attention_output_dropout,
                    norm=self.norm,
                    activation=self.activation,
                    feedforward=layer,
                    layer_norm_epsilon=self.layer_norm_epsilon,
                    kernel_initializer=normal_or(self.initializer_range, "glorot_uniform"),
                    attention_initializer=fresh_initializer(self.attention_initializer, f"block_{i}_attention"),
                    dtype=policy,
                    name=f"block_{i}",
                )
                for i, layer in enumerate(feedforward)
            ]
        except ValueError as error:
            raise ValueError(f"{owner}: {error}") from error
        self.final_norm = None
        if self.norm != "post":
            self.final_norm = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, dtype=policy, name="final_norm"
            )

    @property
    def item_embeddings(self):
        """The ``[V, d]`` item table (row 0 = padding)."""
        return self.item_encoder.item_embeddings

    def build(self, input_shape=None):
        shape = (None, self.max_len, self.hidden_dim)
        self.item_encoder.build((None, self.max_len))
        for block in self.transformer_blocks:
            block.build(shape)
        if self.final_norm is not None:
            self.final_norm.build(shape)
        self.built = True

    def call(self, items, training=None, last_only=False):
        if self.length_groups > 1 and not in_xla_context():  # XLA would pad the groups back to L
            position_cost = transformer_position_cost(self.hidden_dim, self.inner_dim or 4 * self.hidden_dim)
            return encode_in_length_groups(lambda rows: self.encode(rows, training, last_only), items,
                                           self.length_groups, last_only, position_cost)
        return self.encode(items, training, last_only)

    def encode(self, items, training=None, last_only=False):
        """``call`` on the batch as it is (no length groups)."""
        x, mask = self.item_encoder(items, training=training)
        for i, block in enumerate(self.transformer_blocks):
            last_block = i == len(self.transformer_blocks) - 1
            x = block(x, mask=mask, training=training, last_only=last_only and last_block)
        if last_only:
            x, mask = x[:, -1:], mask[:, -1:]
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x * tf.cast(mask, x.dtype)[..., None], mask

    def compute_mask(self, items, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            num_items=self.num_items,
            max_len=self.max_len,
            hidden_dim=self.hidden_dim,
            num_blocks=self.num_blocks,
            num_heads=self.num_heads,
            inner_dim=self.inner_dim,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            attention_output_dropout=self.attention_output_dropout,
            norm=self.norm,
            activation=self.activation,
            scale_embeddings=self.scale_embeddings,
            positions=self.positions,
            initializer_range=self.initializer_range,
            attention_initializer=serialize_optional(self.attention_initializer),
            layer_norm_epsilon=self.layer_norm_epsilon,
            length_groups=self.length_groups,
            feedforward=[
                keras.saving.serialize_keras_object(block.ffn) if passed else None
                for block, passed in zip(self.transformer_blocks, self._feedforward_passed)
            ] if any(self._feedforward_passed) else None,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("feedforward") is not None:
            config["feedforward"] = [
                None if layer is None else keras.saving.deserialize_keras_object(layer)
                for layer in config["feedforward"]
            ]
        return cls(**config)
