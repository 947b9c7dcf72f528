"""Routers (gates) that decide which experts process which tokens.

Every router maps token vectors ``x [..., d]`` to scaled logits ``z = (x W + b) / tau`` (``W: [d, E]``,
``tau`` the temperature) and returns a dict of routing tensors. Routing math runs in float32 whatever
the layer's dtype policy (the router weights are never autocast), so top-k choices and softmaxes are
not degraded by ``mixed_float16`` / ``mixed_bfloat16``.

Padding: pass ``mask`` (bool, the leading shape of ``x``) or rely on Keras' implicit mask. Masked
tokens are never routed: their ``router_logits``, ``router_probs``, ``combine_weights`` and
``dispatch_mask`` rows are zero, their ``expert_indices`` are ``-1`` and they are never chosen by an expert.

Output keys (float32 unless noted; ``...`` is the leading shape of ``x``):

==================  ============  ===============================================================
key                 shape         meaning
==================  ============  ===============================================================
``router_logits``   ``[..., E]``  scaled clean logits ``z`` (input of the z-loss)
``router_probs``    ``[..., E]``  ``softmax(z)`` over all experts (with noise if any was added)
``combine_weights`` ``[..., E]``  gate weight of each expert for each token, 0 where not routed
``dispatch_mask``   ``[..., E]``  1.0 where the token is routed to the expert (before capacity)
``expert_indices``  ``[..., k]``  int32 experts chosen per token, best first (``-1``: masked)
``expert_gates``    ``[..., k]``  gate weights aligned with ``expert_indices``
``token_indices``   ``[B, E, C]`` int32, expert choice only: tokens picked by each expert
``token_gates``     ``[B, E, C]`` expert choice only: gate weights aligned with ``token_indices``
==================  ============  ===============================================================

Example:
    >>> import numpy as np
    >>> from tfmoe import layers
    >>> router = layers.TopKRouter(num_experts=4, k=2)
    >>> out = router(np.random.rand(2, 5, 8).astype("float32"))
    >>> out["expert_indices"].shape, out["combine_weights"].shape
    (TensorShape([2, 5, 2]), TensorShape([2, 5, 4]))

References:
    * Lepikhin et al., "GShard", ICLR 2021. https://arxiv.org/abs/2006.16668
    * Fedus, Zoph & Shazeer, "Switch Transformers", JMLR 2022. https://arxiv.org/abs/2101.03961
    * Zhou et al., "Mixture-of-Experts with Expert Choice Routing", NeurIPS 2022. https://arxiv.org/abs/2202.09368
"""

from __future__ import annotations

from fractions import Fraction

import keras
import tensorflow as tf

from tfmoe.utils.initializers import fresh_initializer
from tfmoe.utils.validation import check_bool, check_choice, check_float, check_int, check_optional_int
from tfmoe.utils.xla import dim

# Denominator bound used to read a capacity factor as an exact fraction (1.25 -> 5/4).
_CAPACITY_DENOMINATOR = 10_000


def _exact_capacity_factor(capacity_factor: float) -> Fraction:
    return Fraction(capacity_factor).limit_denominator(_CAPACITY_DENOMINATOR)


def capacity_never_drops(num_experts: int, capacity_factor: float, k: int = 1) -> bool:
    """True when :func:`expert_capacity` is ``T`` for every ``T`` (``capacity_factor * k >= E``, read exactly as
    :func:`expert_capacity` reads it): top-k routing with this capacity never drops an assignment.

    Example:
        >>> capacity_never_drops(4, 2.0, k=2), capacity_never_drops(4, 1.25, k=2)
        (True, False)
    """
    return _exact_capacity_factor(capacity_factor) * k >= num_experts


def expert_capacity(num_tokens, num_experts: int, capacity_factor: float, k: int = 1):
    """Tokens each expert may take: ``C = min(T, ceil(capacity_factor * k * T / E))``.

    ``capacity_factor`` is read as an exact fraction (``1.25 == 5/4``), so the result has no float
    rounding error. ``num_tokens`` may be a Python int (returns an int) or an integer tensor of any
    shape (returns int32 of that shape); the integer arithmetic is XLA friendly.

    Example:
        >>> expert_capacity(8192, 8, 1.25, k=2)
        2560
    """
    ratio = _exact_capacity_factor(capacity_factor)
    numerator, denominator = ratio.numerator * k, ratio.denominator * num_experts
    if isinstance(num_tokens, int):
        return min(num_tokens, -(-numerator * num_tokens // denominator))
    tokens = tf.cast(num_tokens, tf.int64)
    capacity = (numerator * tokens + denominator - 1) // denominator
    return tf.cast(tf.minimum(tokens, capacity), tf.int32)


def leading_shape(x):
    """Leading (token) dims of ``x [..., d]``: a list of ints when static, else an int32 tensor."""
    static = x.shape[:-1]
    if static.is_fully_defined():
        return static.as_list()
    return tf.shape(x)[:-1]


def num_tokens(lead):
    """Number of tokens for a :func:`leading_shape` result (int when static, else a scalar tensor)."""
    if isinstance(lead, list):
        total = 1
        for dim in lead:
            total *= dim
        return total
    return tf.reduce_prod(lead)


def flatten_tokens(x):
    """``[..., d] -> [T, d]``."""
    return tf.reshape(x, [-1, x.shape[-1]])


def unflatten_tokens(y, lead):
    """``[T, n] -> [..., n]`` for a :func:`leading_shape` result ``lead``."""
    if isinstance(lead, list):
        return tf.reshape(y, lead + [y.shape[-1]])
    return tf.reshape(y, tf.concat([lead, [y.shape[-1]]], axis=0))


def flat_token_mask(owner: str, mask, x):
    """Validates ``mask`` against ``x [..., d]`` and returns it as a flat bool ``[T]`` (or ``None``)."""
    if mask is None:
        return None
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank is not None and x.shape.rank is not None and mask.shape.rank != x.shape.rank - 1:
        raise ValueError(
            f"{owner}: `mask` must have the leading shape of the inputs {x.shape[:-1]}, "
            f"got shape {mask.shape}"
        )
    if not mask.shape.is_compatible_with(x.shape[:-1]):
        raise ValueError(
            f"{owner}: `mask` must have the leading shape of the inputs {x.shape[:-1]}, "
            f"got shape {mask.shape}"
        )
    return tf.reshape(tf.cast(mask, tf.bool), [-1])


def _default_router_initializer():
    """Switch-Transformer router init: truncated normal with variance ``0.1 / d`` (near-uniform start)."""
    return keras.initializers.VarianceScaling(scale=0.1, mode="fan_in", distribution="truncated_normal")


class _Router(keras.layers.Layer):
    """Shared parts of every router: the float32 projection ``z = (x W + b) / tau`` and the config."""

    def __init__(self, num_experts, temperature=1.0, use_bias=False, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_experts = check_int(owner, "num_experts", num_experts, minimum=1)
        self.temperature = check_float(owner, "temperature", temperature, minimum=0.0, min_inclusive=False)
        self.use_bias = check_bool(owner, "use_bias", use_bias)
        self.kernel_initializer = (
            _default_router_initializer()
            if kernel_initializer is None
            else keras.initializers.get(kernel_initializer)
        )
        self._kernel_initializer_arg = kernel_initializer

    def build(self, input_shape):
        model_dim = input_shape[-1]
        if model_dim is None:
            raise ValueError(
                f"{type(self).__name__}: the last input dimension must be known, got {input_shape}"
            )
        # Router weights stay float32 inside call (autocast=False): routing is done in float32.
        self.kernel = self.add_weight(
            shape=(model_dim, self.num_experts),
            initializer=fresh_initializer(self.kernel_initializer, "kernel"),
            name="kernel",
            autocast=False,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.num_experts,), initializer="zeros", name="bias", autocast=False
            )

    def router_logits(self, flat_inputs):
        """Scaled float32 logits ``[T, E]`` of flat ``[T, d]`` inputs."""
        logits = tf.matmul(tf.cast(flat_inputs, tf.float32), tf.convert_to_tensor(self.kernel))
        if self.bias is not None:
            logits = logits + tf.convert_to_tensor(self.bias)
        return logits / self.temperature

    def compute_mask(self, inputs, mask=None):
        return None  # outputs are routing tensors, not a sequence

    def get_config(self):
        config = super().get_config()
        config.update(
            num_experts=self.num_experts,
            temperature=self.temperature,
            use_bias=self.use_bias,
            kernel_initializer=(
                None
                if self._kernel_initializer_arg is None
                else keras.initializers.serialize(self.kernel_initializer)
            ),
        )
        return config


def _scatter_to_experts(indices, values, num_experts):
    """``[T, k]`` expert ids (``-1`` = none) and values -> dense ``[T, E]`` rows (sum of one-hots)."""
    one_hot = tf.one_hot(indices, num_experts, dtype=values.dtype)  # -1 gives an all-zero row
    return tf.reduce_sum(one_hot * values[..., None], axis=-2)


def _mask_rows(tensor, flat_mask, fill=0):
    if flat_mask is None:
        return tensor
    shape = [-1] + [1] * (tensor.shape.rank - 1)
    return tf.where(tf.reshape(flat_mask, shape), tensor, tf.cast(fill, tensor.dtype))


def _restore(outputs, lead):
    return {key: unflatten_tokens(value, lead) for key, value in outputs.items()}


@keras.saving.register_keras_serializable(package="tfmoe")
class SoftmaxRouter(_Router):
    """Dense softmax gate: every token goes to every expert with weight ``softmax(z)_e``.

    ``g(x) = softmax((x W + b) / tau)``; ``combine_weights = router_probs = g``, ``dispatch_mask = 1``
    and ``expert_indices = [0, 1, ..., E-1]`` for every unmasked token.

    Args:
        num_experts: number of experts ``E >= 1``.
        temperature: ``tau > 0``; larger values flatten the gate.
        use_bias: add a learned bias ``b`` to the logits.
        kernel_initializer: initializer of ``W``; ``None`` uses a truncated normal with variance
            ``0.1 / d`` (Switch Transformer), which starts close to uniform routing.

    Call: ``router(x, mask=None)`` with ``x [..., d]`` and optional bool ``mask [...]``; returns the
    dict described in :mod:`tfmoe.layers.routers`.

    Example:
        >>> import numpy as np
        >>> from tfmoe import layers
        >>> out = layers.SoftmaxRouter(num_experts=3)(np.ones((2, 4, 8), "float32"))
        >>> np.allclose(out["combine_weights"].numpy().sum(-1), 1.0)
        True
    """

    def call(self, inputs, mask=None, training=None):
        lead = leading_shape(inputs)
        flat_mask = flat_token_mask(type(self).__name__, mask, inputs)
        logits = self.router_logits(flatten_tokens(inputs))
        probs = _mask_rows(tf.nn.softmax(logits, axis=-1), flat_mask)
        indices = tf.broadcast_to(tf.range(self.num_experts, dtype=tf.int32), tf.shape(probs))
        ones = tf.ones_like(probs)
        return _restore(
            {
                "router_logits": _mask_rows(logits, flat_mask),
                "router_probs": probs,
                "combine_weights": probs,
                "dispatch_mask": _mask_rows(ones, flat_mask),
                "expert_indices": _mask_rows(indices, flat_mask, fill=-1),
                "expert_gates": probs,
            },
            lead,
        )


@keras.saving.register_keras_serializable(package="tfmoe")
class TopKRouter(_Router):
    """Top-k gate: each token goes to the ``k`` experts with the largest (optionally noisy) logits.

    With ``z = (x W + b) / tau`` and, in training only, ``z~ = z + noise_std * N(0, 1)`` (seeded):

    * ``normalize="selected"``: ``g_i = softmax(z~_topk)_i`` over the ``k`` selected logits (gates sum to 1,
      Mixtral / HyMoERec form);
    * ``normalize="all"``: ``g_i = softmax(z~)_i`` over all experts, kept for the selected ones (Switch /
      GShard form; use it for ``k=1``, where "selected" gives a constant gate of 1 and no router gradient).

    ``router_probs = softmax(z~)`` (used by the load-balance losses), ``router_logits = z``.

    Args:
        num_experts: number of experts ``E >= 1``.
        k: experts per token, ``1 <= k <= E``.
        normalize: ``"selected"`` or ``"all"`` (see above).
        temperature: ``tau > 0``.
        noise_std: standard deviation of the Gaussian logit noise added in training calls (0 = none).
        seed: optional int seed of the noise.
        use_bias: add a learned bias to the logits.
        kernel_initializer: initializer of ``W`` (``None``: truncated normal, variance ``0.1 / d``).

    Example:
        >>> import numpy as np
        >>> from tfmoe import layers
        >>> router = layers.TopKRouter(num_experts=4, k=2, normalize="selected")
        >>> out = router(np.random.rand(3, 8).astype("float32"))
        >>> np.allclose(out["expert_gates"].numpy().sum(-1), 1.0)
        True
    """

    def __init__(
        self,
        num_experts,
        k=2,
        normalize="selected",
        temperature=1.0,
        noise_std=0.0,
        seed=None,
        use_bias=False,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(num_experts, temperature, use_bias, kernel_initializer, **kwargs)
        owner = type(self).__name__
        self.k = check_int(owner, "k", k, minimum=1, maximum=self.num_experts)
        self.normalize = check_choice(owner, "normalize", normalize, ("selected", "all"))
        self.noise_std = check_float(owner, "noise_std", noise_std, minimum=0.0)
        self.seed = check_optional_int(owner, "seed", seed, minimum=0)
        self.seed_generator = keras.random.SeedGenerator(self.seed) if self.noise_std > 0 else None

    def call(self, inputs, mask=None, training=None):
        lead = leading_shape(inputs)
        flat_mask = flat_token_mask(type(self).__name__, mask, inputs)
        logits = self.router_logits(flatten_tokens(inputs))
        selection_logits = logits
        if training and self.seed_generator is not None:
            noise = keras.random.normal(tf.shape(logits), seed=self.seed_generator, dtype="float32")
            selection_logits = logits + self.noise_std * noise
        probs = tf.nn.softmax(selection_logits, axis=-1)
        top_logits, indices = tf.math.top_k(selection_logits, k=self.k)
        if self.normalize == "selected":
            gates = tf.nn.softmax(top_logits, axis=-1)
        else:
            gates = tf.gather(probs, indices, batch_dims=1)
        probs = _mask_rows(probs, flat_mask)
        gates = _mask_rows(gates, flat_mask)
        indices = _mask_rows(indices, flat_mask, fill=-1)
        return _restore(
            {
                "router_logits": _mask_rows(logits, flat_mask),
                "router_probs": probs,
                "combine_weights": _scatter_to_experts(indices, gates, self.num_experts),
                "dispatch_mask": _scatter_to_experts(indices, tf.ones_like(gates), self.num_experts),
                "expert_indices": indices,
                "expert_gates": gates,
            },
            lead,
        )

    def get_config(self):
        config = super().get_config()
        config.update(k=self.k, normalize=self.normalize, noise_std=self.noise_std, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="tfmoe")
class ExpertChoiceRouter(_Router):
    """Expert-choice routing (Zhou et al., 2022): each expert picks its top-``C`` tokens.

    Group = one example: for ``x [B, L, d]``, ``S = softmax((x W + b) / tau)`` over experts gives
    ``[B, L, E]``; expert ``e`` of example ``b`` takes the ``C_b`` tokens with the largest ``S[b, :, e]``
    and weights them by ``S[b, l, e]``. Per-example groups keep shapes static, make the routing of an
    example independent of the rest of the batch (and of how the batch is split over replicas).

    ``C = min(L, ceil(capacity_factor * L / E))`` is the buffer size (static where ``L`` is); with padding, example
    ``b`` uses ``C_b = min(n_b, ceil(capacity_factor * n_b / E))`` with ``n_b`` its unmasked tokens, so every
    expert picks exactly ``C_b`` real tokens and padding changes nothing. Unused slots have
    ``token_indices = -1`` and ``token_gates = 0``. ``capacity_factor`` is the average number of experts
    per token (the paper's ``c``). A token picked by no expert gets a zero output (residual only).

    Args:
        num_experts: number of experts ``E >= 1``.
        capacity_factor: ``c > 0`` (default 2, "EC-CF2").
        temperature: ``tau > 0``.
        use_bias: add a learned bias to the logits.
        kernel_initializer: initializer of ``W`` (``None``: truncated normal, variance ``0.1 / d``).

    Example:
        >>> import numpy as np
        >>> from tfmoe import layers
        >>> router = layers.ExpertChoiceRouter(num_experts=4, capacity_factor=2.0)
        >>> out = router(np.random.rand(2, 6, 8).astype("float32"))
        >>> out["token_indices"].shape  # C = ceil(2 * 6 / 4) = 3
        TensorShape([2, 4, 3])
    """

    def __init__(
        self,
        num_experts,
        capacity_factor=2.0,
        temperature=1.0,
        use_bias=False,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(num_experts, temperature, use_bias, kernel_initializer, **kwargs)
        self.capacity_factor = check_float(
            type(self).__name__, "capacity_factor", capacity_factor, minimum=0.0, min_inclusive=False
        )

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"{type(self).__name__}: inputs must be [batch, length, dim], got shape {tuple(input_shape)}"
            )
        super().build(input_shape)

    def capacity(self, length):
        """Per-example buffer ``C`` for sequences of ``length`` tokens (an int, or an int32 tensor for a dynamic
        length)."""
        return expert_capacity(length, self.num_experts, self.capacity_factor)

    def call(self, inputs, mask=None, training=None):
        length = dim(inputs, 1)  # static where known; dynamic in a length group (CTRModel's length_groups)
        capacity = self.capacity(length)
        lead = leading_shape(inputs)
        flat_mask = flat_token_mask(type(self).__name__, mask, inputs)
        logits = self.router_logits(flatten_tokens(inputs))
        probs = _mask_rows(tf.nn.softmax(logits, axis=-1), flat_mask)
        probs_3d = unflatten_tokens(probs, lead)  # [B, L, E]
        scores = tf.transpose(probs_3d, [0, 2, 1])  # [B, E, L]
        if flat_mask is None:
            valid_count = tf.fill(tf.shape(inputs)[:1], length)
        else:
            token_mask = tf.reshape(flat_mask, tf.shape(inputs)[:2])
            scores = tf.where(token_mask[:, None, :], scores, -1.0)  # below every probability
            valid_count = tf.reduce_sum(tf.cast(token_mask, tf.int32), axis=1)
        top_scores, token_indices = tf.math.top_k(scores, k=capacity)  # [B, E, C]
        used = (
            tf.range(capacity)[None, None, :]
            < expert_capacity(valid_count, self.num_experts, self.capacity_factor)[:, None, None]
        )
        token_gates = tf.where(used, top_scores, 0.0)
        token_indices = tf.where(used, token_indices, -1)
        combine = _scatter_to_tokens(token_indices, token_gates, length)
        dispatch = _scatter_to_tokens(token_indices, tf.cast(used, tf.float32), length)
        return {
            "router_logits": unflatten_tokens(_mask_rows(logits, flat_mask), lead),
            "router_probs": probs_3d,
            "combine_weights": combine,
            "dispatch_mask": dispatch,
            "token_indices": token_indices,
            "token_gates": token_gates,
        }

    def get_config(self):
        config = super().get_config()
        config.update(capacity_factor=self.capacity_factor)
        return config


def _scatter_to_tokens(token_indices, values, length):
    """Expert-choice ``[B, E, C]`` token ids (``-1`` = unused) and values -> ``[B, L, E]`` per-token rows."""
    batch = tf.shape(token_indices)[0]
    num_experts = token_indices.shape[1]
    example = tf.range(batch)[:, None, None]
    expert = tf.range(num_experts)[None, :, None]
    used = token_indices >= 0
    segment = (example * length + tf.maximum(token_indices, 0)) * num_experts + expert
    values = tf.where(used, values, tf.zeros_like(values))
    flat = tf.math.unsorted_segment_sum(
        tf.reshape(values, [-1]), tf.reshape(segment, [-1]), batch * length * num_experts
    )
    return tf.reshape(flat, [batch, length, num_experts])
