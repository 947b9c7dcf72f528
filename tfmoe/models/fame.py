"""FAME (Liu, Zhang & Long, WSDM 2025): facet-aware multi-head MoE on top of SASRec.

Blocks ``1..n-1`` are ordinary SASRec :class:`~tfmoe.models.blocks.TransformerBlock` s; the **last**
block is a :class:`FacetBlock` that keeps the ``H`` heads apart and predicts from each::

    f^(h)  = MultiHeadMoEAttention head h (N expert queries, dense per-head router), d' = d / H
    a^(h)  = LN_a(x^(h) + Drop(f^(h)))              x^(h): the h-th d'-chunk of the block input
    F^(h)  = LN_f(a^(h) + Drop(FFN'(a^(h))))        FFN': d' -> d' -> d', ReLU, shared by the heads
    s^(h)(v) = F^(h) . (e_v W_f^(h))                W_f: [H, d, d'] item sub-embedding projections
    g      = softmax(W_g [F^(1) || ... || F^(H)] + b_g)                               [H]
    mix="logits" (default):  s(v) = sum_h g_h s^(h)(v)
    mix="probs":             s(v) = log sum_h g_h softmax_v(s^(h))(v)   (log-space; items 1..V-1)

With ``mix="logits"`` the score is a dot product with the tied item table,
``s(v) = q . e_v`` with ``q = sum_h g_h W_f^(h) F^(h)`` (``sequence_representation``), so every loss
of the switch (full, sampled softmax, BCE) applies unchanged. ``mix="probs"`` supports only the
full softmax loss (CE on the log mixture = ``-log P(target)``) and costs ``[B, L, H, V]`` in training.

Options the paper leaves open, with the defaults chosen here: residual of the attention = the
split block input (as in reimplementation B); post-LayerNorm inside the facet block (``facet_norm``);
FFN' of inner size ``d'`` (``facet_inner_dim``); item sub-embeddings by ``W_f`` (``item_projection="dense"``,
or ``"slice"``: the ``h``-th chunk of ``e_v``, no extra weights); with ``norm="pre"`` the blocks' output
first goes through SASRec's final LayerNorm; no auxiliary routing loss (none is described).

The model is a composition: the :class:`~tfmoe.models.sequence_encoder.SequenceEncoder` of blocks ``1..n-1``
(with its final LayerNorm for ``norm="pre"``), the :class:`FacetHead` around the :class:`FacetBlock`, and the
:class:`~tfmoe.models.next_item_task.NextItemTask`, which scores with the head and trains.

Example:
    >>> import numpy as np
    >>> from tfmoe.models import FAME
    >>> model = FAME(num_items=20, max_len=5, hidden_dim=16, num_heads=2, num_experts=3)
    >>> model.last_scores({"history": np.array([[0, 0, 3, 4, 5]])}).shape
    TensorShape([1, 21])

References:
    Liu, Zhang & Long, "Facet-Aware Multi-Head Mixture-of-Experts Model for Sequential Recommendation",
    WSDM 2025. https://arxiv.org/abs/2411.11926
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.layers import FeedForward, MultiHeadMoEAttention, SoftmaxRouter, masking
from tfmoe.models import registry
from tfmoe.models.blocks import add_residual_sublayers
from tfmoe.models.next_item_task import NextItemTask, with_placeholder_frequencies
from tfmoe.models.sasrec import (
    encoder_arguments,
    sasrec_encoder,
    split_arguments,
    store_encoder_arguments,
    with_sasrec_arguments,
)
from tfmoe.models.sequence_encoder import normal_or
from tfmoe.utils import validation as v
from tfmoe.utils.initializers import HeadChunks, fresh_initializer, optional_initializer, serialize_optional
from tfmoe.utils.xla import dim

MIXES = ("logits", "probs")
FACET_NORMS = ("post", "pre")
ITEM_PROJECTIONS = ("dense", "slice")
ITEM_PROJECTION_INITS = ("random", "chunks")


@keras.saving.register_keras_serializable(package="tfmoe")
class FacetBlock(keras.layers.Layer):
    """FAME's last layer: per-head MoE attention, shared per-head FFN', item projections and head gate.

    Args:
        num_heads: ``H``; ``num_experts``: ``N`` expert queries per head.
        dropout: residual/FFN' dropout; ``attention_dropout``: attention dropout, ``attention_output_dropout``:
            dropout on the head outputs before the residual sum (both default ``dropout``).
        inner_dim: inner size of the shared FFN' (default ``d'``, the paper's ``d' -> d' -> d'``).
        norm: ``"post"`` (default): ``a = LN_a(x + Drop(f))``, ``F = LN_f(a + Drop(FFN'(a)))``; ``"pre"``:
            ``a = x + Drop(f)``, ``F = LN_f(a + Drop(FFN'(LN_a(a))))``.
        item_projection: ``"dense"`` (default): item sub-embeddings ``e_v W_f^(h)`` with ``W_f`` ``[H, d, d']``;
            ``"slice"``: the ``h``-th ``d'``-chunk of ``e_v`` (no extra weights; then ``q`` is the concatenation
            of the gated heads).
        item_projection_init: ``"chunks"`` (default): ``W_f^(h)`` starts as the selector of the ``h``-th chunk
            (:class:`~tfmoe.utils.initializers.HeadChunks`), so the block starts from ``"slice"``'s sub-embeddings
            and learns from there; ``"random"``: ``W_f`` drawn from ``kernel_initializer``. A draw from a small
            ``kernel_initializer`` shrinks the sub-embeddings: ``N(0, 0.02^2)`` at ``d = 64`` scales them, and the
            head scores, by about ``0.02 sqrt(d) = 0.16``.
        layer_norm_epsilon: LayerNorm epsilon.
        kernel_initializer: initializer of every kernel (attention, FFN', gate, and ``W_f`` with
            ``item_projection_init="random"``; each its own draw).
        attention_initializer: initializer of the attention's query, key and value kernels only (default
            ``kernel_initializer``).

    Call: ``block(x [B, L, d], mask=[B, L], training=None)`` -> ``(F [B, L, H, d'], g [B, L, H] float32)``,
    both zero at padding. ``item_projection_kernel`` is ``W_f`` ``[H, d, d']`` (None with ``"slice"``);
    :meth:`sub_embeddings` and :meth:`gated_query` apply it.

    Example:
        >>> import numpy as np
        >>> from tfmoe.models.fame import FacetBlock
        >>> heads, gates = FacetBlock(num_heads=2, num_experts=2)(np.ones((1, 3, 8), "float32"))
        >>> tuple(heads.shape), tuple(gates.shape)
        ((1, 3, 2, 4), (1, 3, 2))
    """

    def __init__(
        self,
        num_heads=2,
        num_experts=4,
        dropout=0.0,
        attention_dropout=None,
        attention_output_dropout=None,
        inner_dim=None,
        norm="post",
        item_projection="dense",
        item_projection_init="chunks",
        layer_norm_epsilon=1e-6,
        kernel_initializer="glorot_uniform",
        attention_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.kernel_initializer = optional_initializer(owner, "kernel_initializer", kernel_initializer)
        self.attention_initializer = optional_initializer(owner, "attention_initializer", attention_initializer)
        self.num_heads = v.check_int(owner, "num_heads", num_heads, minimum=1)
        self.num_experts = v.check_int(owner, "num_experts", num_experts, minimum=1)
        self.dropout = v.check_float(owner, "dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.attention_dropout = v.check_optional_float(
            owner, "attention_dropout", attention_dropout, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self.attention_output_dropout = v.check_optional_float(
            owner, "attention_output_dropout", attention_output_dropout, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self.inner_dim = v.check_optional_int(owner, "inner_dim", inner_dim, minimum=1)
        self.norm = v.check_choice(owner, "norm", norm, FACET_NORMS)
        self.item_projection = v.check_choice(owner, "item_projection", item_projection, ITEM_PROJECTIONS)
        self.item_projection_init = v.check_choice(owner, "item_projection_init", item_projection_init,
                                                   ITEM_PROJECTION_INITS)
        self.layer_norm_epsilon = v.check_float(owner, "layer_norm_epsilon", layer_norm_epsilon, minimum=0.0)
        self.attention = MultiHeadMoEAttention(
            num_heads=self.num_heads,
            num_experts=self.num_experts,
            use_output_projection=False,
            return_head_outputs=True,
            dropout=self.dropout if attention_dropout is None else attention_dropout,
            kernel_initializer=fresh_initializer(self.kernel_initializer, "attention"),
            query_key_value_initializer=fresh_initializer(self.attention_initializer, "attention_qkv"),
            dtype=self.dtype_policy,
            name="attention",
        )
        add_residual_sublayers(self, attention_output_dropout)
        self.ffn = None
        self.gate = None

    def build(self, input_shape):
        d = input_shape[-1]
        if d is None or d % self.num_heads:
            raise ValueError(
                f"{type(self).__name__}: hidden size {d} must be known and divisible by `num_heads` {self.num_heads}"
            )
        h, dk = self.num_heads, d // self.num_heads
        self.head_dim = dk
        self.ffn = FeedForward(hidden_dim=self.inner_dim or dk, activation="relu", dropout=self.dropout,
                               dtype=self.dtype_policy, name="head_ffn",
                               kernel_initializer=fresh_initializer(self.kernel_initializer, "head_ffn"))
        # the head gate is a softmax router: float32 weights and logits under any dtype policy
        self.gate = SoftmaxRouter(h, use_bias=True, dtype=self.dtype_policy, name="head_gate",
                                  kernel_initializer=fresh_initializer(self.kernel_initializer, "head_gate"))
        head_shape = (None, input_shape[1], h, dk)
        self.attention.build(input_shape)
        self.attention_norm.build(head_shape)
        self.ffn.build(head_shape)
        self.ffn_norm.build(head_shape)
        self.gate.build((None, input_shape[1], h * dk))
        self.item_projection_kernel = None
        if self.item_projection == "dense":
            self.item_projection_kernel = self.add_weight(
                name="item_projection",
                shape=(h, d, dk),
                initializer=HeadChunks() if self.item_projection_init == "chunks"
                else fresh_initializer(self.kernel_initializer, "item_projection"),
            )
        self.built = True

    def sub_embeddings(self, table):
        """Item sub-embeddings ``e_v^(h)`` ``[H, V, d']`` float32 of an item table ``[V, d]``."""
        table = tf.cast(table, tf.float32)
        if self.item_projection_kernel is None:
            return tf.transpose(tf.reshape(table, [-1, self.num_heads, self.head_dim]), [1, 0, 2])
        return tf.einsum("vd,hdk->hvk", table, tf.cast(self.item_projection_kernel, tf.float32))

    def gated_query(self, weighted):
        """``q = sum_h W_f^(h) (g_h F^(h))`` ``[n, d]`` of gated heads ``[n, H, d']`` (float32), so that
        ``sum_h g_h s^(h)(v) = q . e_v``."""
        flat = tf.reshape(tf.cast(weighted, tf.float32), [-1, self.num_heads * self.head_dim])
        if self.item_projection_kernel is None:
            return flat
        projection = tf.cast(self.item_projection_kernel, tf.float32)  # [H, d, d']
        return tf.matmul(flat, tf.reshape(tf.transpose(projection, [0, 2, 1]), [self.num_heads * self.head_dim, -1]))

    def call(self, x, mask=None, training=None, last_only=False):
        """``last_only=True``: the last position only (``[B, 1, H, d']`` and ``[B, 1, H]``)."""
        mask = masking.as_bool_mask(mask)
        h, dk = self.num_heads, self.head_dim
        _, heads = self.attention(x, mask=mask, training=training, last_query_only=last_only)  # [B, Lq, H, d']
        if last_only:
            x, mask = x[:, -1:], None if mask is None else mask[:, -1:]
        length = dim(x, 1)  # dynamic with length buckets
        residual = tf.reshape(x, [-1, length, h, dk])
        a = residual + self.attention_output_dropout_layer(heads, training=training)
        if self.norm == "post":
            a = self.attention_norm(a)
            inner = self.ffn(a, training=training)
        else:
            inner = self.ffn(self.attention_norm(a), training=training)
        f = self.ffn_norm(a + self.ffn_output_dropout(inner, training=training))
        f = masking.apply_mask(f, mask)
        gates = self.gate(tf.reshape(f, [-1, length, h * dk]), mask=mask)["router_probs"]  # float32, 0 at padding
        return f, gates

    def compute_mask(self, x, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            num_experts=self.num_experts,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            attention_output_dropout=self.attention_output_dropout,
            inner_dim=self.inner_dim,
            norm=self.norm,
            item_projection=self.item_projection,
            item_projection_init=self.item_projection_init,
            layer_norm_epsilon=self.layer_norm_epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            attention_initializer=serialize_optional(self.attention_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="tfmoe")
class FacetHead(keras.layers.Layer):
    """FAME's scoring head: a :class:`FacetBlock` and the mixture of its per-head scores.

    With ``F^(h)``, ``g`` the facet block's heads and gates and ``e_v^(h)`` its item sub-embeddings::

        mix="logits":  s(v) = sum_h g_h F^(h) . e_v^(h) = q . e_v,   q = sum_h g_h W_f^(h) F^(h)
        mix="probs":   s(v) = log sum_h g_h softmax_v(F^(h) . e^(h))(v)    (items 1..V-1)

    Args:
        facet_block: the :class:`FacetBlock` (a layer or its serialized config).
        mix: ``"logits"`` (default; the scores are dot products ``q . e_v``) or ``"probs"``.

    Call: ``head(x [B, L, d], mask=[B, L], training=None, last_only=False)`` ->
    ``{"heads": F [B, L, H, d'], "gates": g [B, L, H]}`` (``L = 1`` with ``last_only``). ``query(output)`` gives
    ``q`` ``[..., d]`` (``mix="logits"``) and ``scores(output, table)`` ``s`` ``[..., V]``, both float32.

    Example:
        >>> import numpy as np
        >>> from tfmoe.models.fame import FacetBlock, FacetHead
        >>> head = FacetHead(FacetBlock(num_heads=2, num_experts=2))
        >>> output = head(np.ones((1, 3, 8), "float32"))
        >>> tuple(head.scores(output, np.ones((5, 8), "float32")).shape)
        (1, 3, 5)

    References:
        Liu, Zhang & Long, "Facet-Aware Multi-Head Mixture-of-Experts Model for Sequential Recommendation",
        WSDM 2025. https://arxiv.org/abs/2411.11926
    """

    def __init__(self, facet_block, mix="logits", **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        if isinstance(facet_block, dict):
            facet_block = keras.saving.deserialize_keras_object(facet_block)
        if not isinstance(facet_block, FacetBlock):
            raise ValueError(f"{owner}: `facet_block` must be a FacetBlock, got {facet_block!r}")
        self.facet_block = facet_block
        self.mix = v.check_choice(owner, "mix", mix, MIXES)

    @property
    def dot_product(self) -> bool:
        """Whether the scores are dot products ``q . e_v`` with the item table (``mix="logits"``)."""
        return self.mix == "logits"

    def build(self, input_shape):
        if not self.facet_block.built:
            self.facet_block.build(input_shape)
        self.built = True

    def call(self, x, mask=None, training=None, last_only=False):
        heads, gates = self.facet_block(x, mask=mask, training=training, last_only=last_only)
        return {"heads": heads, "gates": gates}

    def compute_mask(self, x, mask=None):
        return None

    def query(self, output):
        """``q = sum_h g_h W_f^(h) F^(h)`` ``[..., d]`` float32 of an output (``mix="logits"`` only)."""
        if not self.dot_product:
            raise ValueError(f"{type(self).__name__}: the query needs mix='logits', got {self.mix!r}")
        heads = tf.cast(output["heads"], tf.float32)
        query = self.facet_block.gated_query(heads * output["gates"][..., None])  # [n, d]
        return tf.reshape(query, tf.concat([tf.shape(heads)[:-2], tf.shape(query)[-1:]], 0))

    def scores(self, output, table):
        """Scores ``[..., V]`` float32 of an output against an item table ``[V, d]``."""
        table = tf.cast(table, tf.float32)
        if self.dot_product:
            return tf.matmul(self.query(output), table, transpose_b=True)
        block = self.facet_block
        heads = tf.cast(output["heads"], tf.float32)  # [..., H, d']
        sub = block.sub_embeddings(table)  # [H, V, d']
        rank = heads.shape.rank
        flat = tf.reshape(heads, [-1, block.num_heads, block.head_dim])
        per_head = tf.einsum("nhk,hvk->nhv", flat, sub)  # [n, H, V]
        padding = tf.one_hot(0, tf.shape(table)[0], on_value=True, off_value=False)
        per_head = tf.where(padding, tf.constant(masking.MASKED_LOGIT, tf.float32), per_head)  # finite: no NaN grads
        log_probs = tf.nn.log_softmax(per_head, axis=-1)
        gates = tf.reshape(output["gates"], [-1, block.num_heads, 1])
        mixed = tf.reduce_logsumexp(tf.math.log(tf.maximum(gates, 1e-30)) + log_probs, axis=1)  # [n, V]
        return tf.reshape(mixed, tf.concat([tf.shape(heads)[: rank - 2], tf.shape(table)[:1]], 0))

    def get_config(self):
        config = super().get_config()
        config.update(facet_block=keras.saving.serialize_keras_object(self.facet_block), mix=self.mix)
        return config


@registry.register_model("fame", task="next_item")
@keras.saving.register_keras_serializable(package="tfmoe")
class FAME(NextItemTask):
    """SASRec's encoder with its last block replaced by a :class:`FacetHead` (see the module docstring).

    The composition of a :class:`~tfmoe.models.sequence_encoder.SequenceEncoder` of ``num_blocks - 1`` blocks
    (``sequence_encoder``), the :class:`FacetHead` (``scoring_head``; its block is ``facet_block``) and the
    :class:`~tfmoe.models.next_item_task.NextItemTask`. ``call`` returns
    ``{"heads": F [B, L, H, d'], "gates": g [B, L, H]}``; scores and losses use it.

    Args (on top of :class:`~tfmoe.models.SASRec`'s; ``num_heads`` defaults to 2 here):
        num_experts: expert queries per head ``N`` (default 4, as FAME's public reimplementations). The attention cost
            grows with ``H N``; the benchmark presets use 2 (see the benchmarks' report for the comparison).
        mix: ``"logits"`` (default) or ``"probs"`` (needs ``loss="softmax"``).
        facet_inner_dim: inner size of the facet block's shared FFN' (default ``d' = d / H``).
        facet_norm: ``"post"`` (default) or ``"pre"`` LayerNorm inside the facet block (:class:`FacetBlock`).
        item_projection: ``"dense"`` (default, ``W_f``) or ``"slice"`` item sub-embeddings (:class:`FacetBlock`).
        item_projection_init: ``"chunks"`` (default) or ``"random"``: how ``W_f`` starts (:class:`FacetBlock`).

    References:
        Liu, Zhang & Long, WSDM 2025. https://arxiv.org/abs/2411.11926
    """

    @with_sasrec_arguments
    def __init__(self, num_items, max_len, num_experts=4, mix="logits", num_heads=2, facet_inner_dim=None,
                 facet_norm="post", item_projection="dense", item_projection_init="chunks", **kwargs):
        owner = type(self).__name__
        encoder, task, rest = split_arguments({**kwargs, "num_heads": num_heads})
        num_blocks = v.check_int(owner, "num_blocks", encoder["num_blocks"], minimum=1)
        v.check_choice(owner, "mix", mix, MIXES)
        # FacetBlock's own names for these are inner_dim and norm: checked here under FAME's names
        v.check_optional_int(owner, "facet_inner_dim", facet_inner_dim, minimum=1)
        v.check_choice(owner, "facet_norm", facet_norm, FACET_NORMS)
        if mix == "probs" and task["loss"] != "softmax":
            raise ValueError(f"{owner}: mix='probs' supports only loss='softmax', got loss={task['loss']!r}")
        dtype = rest.get("dtype")
        backbone = sasrec_encoder(owner, num_items, max_len, encoder, num_blocks=num_blocks - 1, dtype=dtype)
        try:
            block = FacetBlock(
                num_heads=backbone.num_heads,
                num_experts=num_experts,
                dropout=backbone.dropout,
                attention_dropout=backbone.attention_dropout,
                attention_output_dropout=backbone.attention_output_dropout,
                inner_dim=facet_inner_dim,
                norm=facet_norm,
                item_projection=item_projection,
                item_projection_init=item_projection_init,
                layer_norm_epsilon=backbone.layer_norm_epsilon,
                kernel_initializer=normal_or(backbone.initializer_range, "glorot_uniform"),
                attention_initializer=fresh_initializer(backbone.attention_initializer, "facet_block_attention"),
                dtype=dtype,
                name="facet_block",
            )
            head = FacetHead(block, mix=mix, dtype=dtype, name="facet_head")
        except ValueError as error:
            raise ValueError(f"{owner}: {error}") from error
        super().__init__(backbone, head=head, **task, **rest)
        self.facet_block = block  # saved as facet_block/... (see NextItemTask)
        store_encoder_arguments(self, backbone)
        self.num_blocks = num_blocks
        self.num_experts = block.num_experts
        self.mix = head.mix
        self.facet_inner_dim = block.inner_dim
        self.facet_norm = block.norm
        self.item_projection = block.item_projection
        self.item_projection_init = block.item_projection_init

    def get_config(self):
        config = encoder_arguments(self)
        config.update(num_experts=self.num_experts, mix=self.mix, facet_inner_dim=self.facet_inner_dim,
                      facet_norm=self.facet_norm, item_projection=self.item_projection,
                      item_projection_init=self.item_projection_init)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**with_placeholder_frequencies(config))
