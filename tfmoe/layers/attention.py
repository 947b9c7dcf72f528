"""FAME multi-head mixture-of-experts self-attention (Liu, Zhang & Long, WSDM 2025).

Each head ``h`` owns ``N`` expert query projections and one shared key and value projection;
expert ``n`` attends with its own query, and a per-head router mixes the ``N`` expert outputs
with dense soft weights computed from their concatenation.

References:
    * Liu, Zhang & Long, "Facet-Aware Multi-Head Mixture-of-Experts Model for Sequential Recommendation", WSDM 2025. https://arxiv.org/abs/2411.11926
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfmoe.layers import losses, masking, routing_stats
from tfmoe.layers.dropout import BitDropout
from tfmoe.utils import validation as v
from tfmoe.utils.initializers import fresh_initializer, optional_initializer, serialize_optional
from tfmoe.utils.xla import dim


@keras.saving.register_keras_serializable(package="tfmoe")
class MultiHeadMoEAttention(keras.layers.Layer):
    r"""Multi-head self-attention whose queries are a mixture of experts per head (FAME).

    For input ``x`` ``[B, L, d]`` with ``H`` heads, ``N`` experts per head and head size ``d'``::

        q_i(n)^(h) = x_i W_Q(n)^(h)              W_Q: [H, N, d, d']  (expert queries)
        k_j^(h)    = x_j W_K^(h),  v_j^(h) = x_j W_V^(h)   W_K, W_V: [H, d, d'] (shared per head)
        f_i(n)^(h) = sum_j softmax_j(q_i(n)^(h) . k_j^(h) / sqrt(d') + mask_ij) v_j^(h)
        beta_i^(h) = softmax(W_exp^(h) [f_i(1)^(h) || ... || f_i(N)^(h)] + b_exp^(h))  W_exp: [H, N d', N]
        f_i^(h)    = sum_n beta_i(n)^(h) f_i(n)^(h)                                    -> [B, L, H, d']
        y_i        = [f_i^(1) || ... || f_i^(H)] W_O + b_O                            W_O: [H d', d_out]

    ``mask_ij`` allows key ``j`` for query ``i`` when both are real positions and, if
    ``use_causal_mask``, ``j <= i``. Routing is dense (no top-k, no noise); the attention and
    router softmaxes run in float32. Padded query rows give exactly zero outputs, zero head
    outputs and zero router weights, and never influence other positions. With ``N = 1`` the
    layer is ordinary multi-head attention. Memory: the float32 attention scores take
    ``B * H * N * L * L`` values (``N`` times a plain multi-head attention).

    Args:
        num_heads: ``H``.
        num_experts: ``N``, expert query projections per head.
        head_dim: ``d'``; default ``d // H`` (then ``d`` must be divisible by ``H``).
        output_dim: ``d_out`` of ``W_O``; default ``d``.
        use_output_projection: if False there is no ``W_O`` and the output is the concatenated
            head outputs ``[B, L, H d']`` (FAME's last layer predicts from each head directly).
        use_causal_mask: mask future keys (SASRec-style unidirectional attention).
        dropout: attention-probability dropout rate in ``[0, 1)``.
        seed: optional integer seed of the dropout.
        use_bias: biases on the query, key, value and output projections (the router always has one).
        return_head_outputs: also return the per-head outputs ``f^(h)`` ``[B, L, H, d']``.
        return_router_probs: also return ``beta`` ``[B, L, H, N]`` (float32).
        track_statistics: keep the last call's router statistics in ``routing_statistics`` (the
            :mod:`tfmoe.layers.routing_stats` protocol; experts are the ``H * N`` (head, expert)
            pairs, head-major; ``expert_load`` is the mean ``beta`` over real positions; the loss
            entries are per-head values averaged over heads; FAME itself adds no auxiliary loss).
        kernel_initializer, bias_initializer: initializers of every projection.
        query_key_value_initializer: initializer of the query, key and value kernels only (default
            ``kernel_initializer``), e.g. PyTorch's Glorot-uniform over the stacked ``[3d, d]``
            in-projection of ``nn.MultiheadAttention`` next to ``N(0, 0.02^2)`` everywhere else.

    Call arguments:
        inputs: ``[B, L, d]``.
        mask: optional padding mask ``[B, L]`` (``True`` = real item); propagated from an
            ``Embedding(mask_zero=True)``.
        context: optional ``[B, L, d]`` the keys and values are projected from instead of ``inputs``
            (same positions and mask; the original SASRec code queries with ``LayerNorm(x)`` and keys
            ``x``).
        training: enables attention dropout.

    Returns:
        ``y`` ``[B, L, d_out]``, or the tuple ``(y, head_outputs?, router_probs?)`` with the requested
        extras in that order.

    Example:
        >>> import numpy as np
        >>> from tfmoe import layers
        >>> attn = layers.MultiHeadMoEAttention(num_heads=2, num_experts=4, return_router_probs=True)
        >>> y, beta = attn(np.random.rand(3, 5, 8).astype("float32"), mask=np.ones((3, 5), bool))
        >>> tuple(y.shape), tuple(beta.shape)
        ((3, 5, 8), (3, 5, 2, 4))
    """

    def __init__(
        self,
        num_heads: int,
        num_experts: int,
        head_dim: int | None = None,
        output_dim: int | None = None,
        use_output_projection: bool = True,
        use_causal_mask: bool = True,
        dropout: float = 0.0,
        seed: int | None = None,
        use_bias: bool = True,
        return_head_outputs: bool = False,
        return_router_probs: bool = False,
        track_statistics: bool = True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        query_key_value_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_heads = v.check_int(owner, "num_heads", num_heads, minimum=1)
        self.num_experts = v.check_int(owner, "num_experts", num_experts, minimum=1)
        self.head_dim = v.check_optional_int(owner, "head_dim", head_dim, minimum=1)
        self.output_dim = v.check_optional_int(owner, "output_dim", output_dim, minimum=1)
        self.use_output_projection = v.check_bool(owner, "use_output_projection", use_output_projection)
        if output_dim is not None and not use_output_projection:
            raise ValueError(
                f"{owner}: `output_dim` needs use_output_projection=True, got output_dim={output_dim!r}"
            )
        self.use_causal_mask = v.check_bool(owner, "use_causal_mask", use_causal_mask)
        self.dropout = v.check_float(owner, "dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.seed = v.check_optional_int(owner, "seed", seed, minimum=0)
        self.use_bias = v.check_bool(owner, "use_bias", use_bias)
        self.return_head_outputs = v.check_bool(owner, "return_head_outputs", return_head_outputs)
        self.return_router_probs = v.check_bool(owner, "return_router_probs", return_router_probs)
        self.track_statistics = v.check_bool(owner, "track_statistics", track_statistics)
        self._statistic_names = ()
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.query_key_value_initializer = optional_initializer(
            owner, "query_key_value_initializer", query_key_value_initializer
        )
        self.supports_masking = True
        self._dropout_layer = BitDropout(self.dropout, seed=self.seed, dtype=self.dtype_policy)  # maps: H·N·L² draws

    def build(self, input_shape):
        owner = type(self).__name__
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                f"{owner}: inputs must be [batch, length, features] with known features, "
                f"got shape {tuple(input_shape)}"
            )
        d = int(input_shape[-1])
        if self.head_dim is None and d % self.num_heads:
            raise ValueError(
                f"{owner}: input features ({d}) must be divisible by `num_heads` "
                f"({self.num_heads}) when `head_dim` is not given"
            )
        h, n = self.num_heads, self.num_experts
        dk = self.head_dim or d // h
        self._dk = dk

        def kernel(name, shape, autocast=True, initializer=None):
            initializer = fresh_initializer(self.kernel_initializer if initializer is None else initializer, name)
            return self.add_weight(name=name, shape=shape, initializer=initializer, autocast=autocast)

        def bias(name, shape):
            return self.add_weight(name=name, shape=shape, initializer=fresh_initializer(self.bias_initializer, name))

        qkv = self.query_key_value_initializer
        self.query_kernel = kernel("query_kernel", (h, n, d, dk), initializer=qkv)
        self.key_kernel = kernel("key_kernel", (h, d, dk), initializer=qkv)
        self.value_kernel = kernel("value_kernel", (h, d, dk), initializer=qkv)
        if self.use_bias:
            self.query_bias = bias("query_bias", (h, n, dk))
            self.key_bias = bias("key_bias", (h, dk))
            self.value_bias = bias("value_bias", (h, dk))
        # The router is float32 even under mixed precision (autocast=False).
        self.router_kernel = kernel("router_kernel", (h, n * dk, n), autocast=False)
        self.router_bias = self.add_weight(
            name="router_bias", shape=(h, n), initializer="zeros", autocast=False
        )
        if self.use_output_projection:
            self.output_kernel = kernel("output_kernel", (h * dk, self.output_dim or d))
            if self.use_bias:
                self.output_bias = bias("output_bias", (self.output_dim or d,))
        self._dropout_layer.build(None)
        if self.track_statistics:
            stats = routing_stats.add_routing_statistics(self, h * n)
            self._statistic_names = tuple(stats)
            for name, variable in stats.items():  # plain attributes: add_weight already tracks them
                object.__setattr__(self, f"_stat_{name}", variable)
        self.built = True

    @property
    def routing_statistics(self) -> dict:
        """Last call's router statistics: name -> non-trainable float32 variable (empty if not tracked)."""
        return {name: getattr(self, f"_stat_{name}") for name in self._statistic_names}

    def _record_statistics(self, router_logits, router_probs, query_mask):
        """Statistics over real positions; each head's router is a separate ``N``-expert router."""
        h, n = self.num_heads, self.num_experts
        if query_mask is None:
            query_mask = tf.ones(tf.shape(router_probs)[:2], tf.bool)
        tokens = tf.reduce_sum(tf.cast(query_mask, tf.int32))
        per_head = {"load_balance_loss": [], "z_loss": [], "entropy_loss": []}
        for head in range(h):
            probs, logits = router_probs[:, :, head], router_logits[:, :, head]
            dispatch = tf.one_hot(tf.argmax(probs, axis=-1), n)
            per_head["load_balance_loss"].append(losses.switch_load_balance_loss(probs, dispatch, query_mask))
            per_head["z_loss"].append(losses.router_z_loss(logits, query_mask))
            per_head["entropy_loss"].append(losses.entropy_balance_loss(probs, query_mask))
        stats = routing_stats.routing_statistics(
            tokens=tokens,
            routed_assignments=tokens * h * n,
            dropped_assignments=0,
            dropped_tokens=0,
            expert_load=losses.masked_mean_over_tokens(
                tf.reshape(router_probs, tf.concat([tf.shape(router_probs)[:2], [h * n]], 0)), query_mask
            ),
            router_entropy=losses.router_entropy(router_probs, query_mask[..., None] & tf.ones([h], tf.bool)),
            **{name: tf.reduce_mean(tf.stack(values)) for name, values in per_head.items()},
        )
        routing_stats.assign_routing_statistics(self.routing_statistics, stats)

    def _single_expert_heads(self, expert_outputs, query_mask):
        """``(beta [B, L, H, 1], head outputs [B, L, H, d'])`` with one expert per head (plain multi-head attention).

        The router's softmax over one logit is exactly 1, so ``beta`` is 1 at real positions and the head outputs
        are the expert outputs, with no router matmuls. The router weights stay (the saved layout) and get the
        zero gradient the one-logit softmax gave them (tied in with a zero term, so that Keras sees a gradient).
        """
        ones = tf.ones(tf.concat([tf.shape(expert_outputs)[:3], [1]], 0), tf.float32)
        router_probs = ones if query_mask is None else masking.apply_mask(ones, query_mask)
        head_outputs = expert_outputs[:, :, :, 0]
        if query_mask is not None:
            head_outputs = masking.apply_mask(head_outputs, query_mask)
        zero = 0.0 * (tf.reduce_sum(self.router_kernel) + tf.reduce_sum(self.router_bias))
        return router_probs, head_outputs + tf.cast(zero, head_outputs.dtype)

    def _project(self, x, name):
        """``x [B, L, d]`` -> expert queries ``[B, H, N, L, d']`` or shared keys/values ``[B, H, L, d']``.

        One 2-D matmul ``[B L, d] x [d, H N d']`` and a transpose of the ``d'``-wide result (not an einsum, which
        oneDNN runs as several transposes and batched matmuls, forward and backward). Heads and experts lead so
        that the attention maps ``[B, H, N, L, L]`` come out of, and go into, batched matmuls with no transpose:
        only these projections are laid out, never the maps.
        """
        dtype = self.compute_dtype
        kernel = tf.cast(getattr(self, f"{name}_kernel"), dtype)  # [H, N, d, d'] (queries) or [H, d, d']
        heads = kernel.shape[:-2]
        d, dk = kernel.shape[-2], kernel.shape[-1]
        perm = [2, 0, 1, 3] if name == "query" else [1, 0, 2]
        flat_kernel = tf.reshape(tf.transpose(kernel, perm), [d, -1])  # [d, H (N) d']
        out = tf.matmul(tf.reshape(x, [-1, d]), flat_kernel)
        if self.use_bias:
            out += tf.reshape(tf.cast(getattr(self, f"{name}_bias"), dtype), [-1])
        out = tf.reshape(out, [dim(x, 0), dim(x, 1), *heads, dk])
        return tf.transpose(out, [0, 2, 3, 1, 4] if name == "query" else [0, 2, 1, 3])

    def call(self, inputs, mask=None, training=None, last_query_only=False, context=None):
        """``last_query_only=True`` computes the output of the last position only (``[B, 1, d_out]``), attending
        to every position as usual: what next-item scoring needs, at ``1 / L`` of the query-side work."""
        dtype = self.compute_dtype
        x = tf.cast(inputs, dtype)
        source = x if context is None else tf.cast(context, dtype)
        h, n, dk = self.num_heads, self.num_experts, self._dk
        key_mask = masking.as_bool_mask(mask)
        query_x, query_mask = (x[:, -1:], None if key_mask is None else key_mask[:, -1:]) if last_query_only else (
            x, key_mask)
        length, key_length = dim(query_x, 1), dim(x, 1)  # static under XLA

        queries = self._project(query_x, "query") * tf.cast(1.0 / math.sqrt(dk), dtype)  # [B, H, N, Lq, d']
        keys = self._project(source, "key")  # [B, H, L, d']
        values = self._project(source, "value")  # [B, H, L, d']

        scores = tf.cast(_per_expert_matmul(queries, keys, transpose_b=True), tf.float32)  # [B, H, N, Lq, L]
        allowed = masking.attention_mask(query_mask, key_mask, causal=self.use_causal_mask, query_length=length,
                                         key_length=key_length)
        # Rows with no allowed key (padded queries) are zeroed on the [B, L, H, N, d'] outputs, not on the maps.
        probs = masking.masked_softmax(scores, None if allowed is None else allowed[:, None, None],
                                       zero_empty_rows=False)
        probs = self._dropout_layer(tf.cast(probs, dtype), training=training)
        expert_outputs = _per_expert_matmul(probs, values)  # [B, H, N, Lq, d']
        expert_outputs = tf.transpose(expert_outputs, [0, 3, 1, 2, 4])  # [B, L, H, N, d']
        if allowed is not None:
            expert_outputs = masking.apply_mask(expert_outputs, tf.reduce_any(allowed, axis=-1))

        if n == 1 and not self.track_statistics:
            router_probs, head_outputs = self._single_expert_heads(expert_outputs, query_mask)
        else:
            router_inputs = tf.reshape(expert_outputs, [-1, length, h, n * dk])
            router_logits = tf.einsum("blhi,hin->blhn", tf.cast(router_inputs, tf.float32), self.router_kernel)
            router_logits += self.router_bias
            router_probs = tf.nn.softmax(router_logits, axis=-1)  # [B, L, H, N] float32
            if query_mask is not None:
                router_probs = masking.apply_mask(router_probs, query_mask)
            if self.track_statistics:
                self._record_statistics(router_logits, router_probs, query_mask)
            head_outputs = tf.einsum("blhn,blhnk->blhk", tf.cast(router_probs, dtype), expert_outputs)

        concatenated = tf.reshape(head_outputs, [-1, length, h * dk])
        if self.use_output_projection:
            outputs = tf.matmul(concatenated, tf.cast(self.output_kernel, dtype))
            if self.use_bias:
                outputs += tf.cast(self.output_bias, dtype)
            outputs = masking.apply_mask(outputs, query_mask)
        else:
            outputs = concatenated
        extras = []
        if self.return_head_outputs:
            extras.append(head_outputs)
        if self.return_router_probs:
            extras.append(router_probs)
        return (outputs, *extras) if extras else outputs

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        count = 1 + int(self.return_head_outputs) + int(self.return_router_probs)
        return mask if count == 1 else [mask] * count

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            num_experts=self.num_experts,
            head_dim=self.head_dim,
            output_dim=self.output_dim,
            use_output_projection=self.use_output_projection,
            use_causal_mask=self.use_causal_mask,
            dropout=self.dropout,
            seed=self.seed,
            use_bias=self.use_bias,
            return_head_outputs=self.return_head_outputs,
            return_router_probs=self.return_router_probs,
            track_statistics=self.track_statistics,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            query_key_value_initializer=serialize_optional(self.query_key_value_initializer),
        )
        return config


def _per_expert_matmul(per_expert, shared, transpose_b=False):
    """``[B, H, N, Lq, m] x [B, H, k, m or k] -> [B, H, N, Lq, .]``: the ``N`` experts' rows stacked into one batched
    matmul per (batch, head) against the head's shared keys or values (``bhnlk,bhmk->bhnlm`` with ``transpose_b``,
    ``bhnlm,bhmk->bhnlk`` without)."""
    batch, heads, n, lq, width = (dim(per_expert, i) for i in range(5))
    out = tf.matmul(tf.reshape(per_expert, [batch, heads, -1, width]), shared, transpose_b=transpose_b)
    return tf.reshape(out, [batch, heads, n, lq, dim(out, 3)])
