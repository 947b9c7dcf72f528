"""HyMoERec hybrid MoE feed-forward block: a shared dense FFN plus a warmed-up, gated mixture of experts.

``y = FFN_shared(x) + alpha(t) * MoE(x)``, ``alpha(t) = sigmoid(a) * w(t)``,
``w(t) = min(1, t / warmup_steps)`` (``w = 1`` when ``warmup_steps = 0``), with ``a`` a learnable
float32 scalar and ``t`` the number of training calls made before the current one (a non-trainable
int64 counter incremented only by calls with ``training=True``; inference uses the current value).
Training therefore starts from the dense FFN (``alpha = 0``) and blends the experts in linearly.

``MoE`` is a :class:`MixtureOfExperts` (sparse top-k by default, ``routing="dense"`` to run every expert)
whose HyMoERec load-balance regulariser ``entropy_loss_weight * sum_e m_e log m_e`` (``m_e`` the mean
router probability of expert ``e`` over unmasked tokens) is added with ``add_loss``.

The layer replaces the position-wise FFN of a transformer block: the residual connection, the
output dropout and the LayerNorm are the block's job (``LayerNorm(x + Dropout(layer(x)))``).

Example:
    >>> import numpy as np
    >>> from tfmoe import layers
    >>> ffn = layers.HybridMoEFeedForward(hidden_dim=64, num_experts=4, k=2, warmup_steps=100)
    >>> x = np.random.rand(2, 5, 16).astype("float32")
    >>> ffn(x, training=True).shape, int(ffn.step.numpy())
    (TensorShape([2, 5, 16]), 1)

References:
    * Li, Sun & Lim, "HyMoERec: Hybrid Mixture-of-Experts for Sequential Recommendation", AAAI 2026. https://arxiv.org/abs/2511.06388
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.layers.experts import FeedForward
from tfmoe.layers.moe import MixtureOfExperts
from tfmoe.utils.forwarding import Forwarded
from tfmoe.utils.initializers import fresh_initializer
from tfmoe.utils.validation import check_choice, check_float, check_int, check_optional_int


@keras.saving.register_keras_serializable(package="tfmoe")
class HybridMoEFeedForward(keras.layers.Layer):
    """HyMoERec FFN: ``y = FFN_shared(x) + sigmoid(a) * min(1, t / warmup_steps) * MoE(x)``.

    Args:
        hidden_dim: inner size of the shared FFN.
        num_experts: experts ``E`` of the specialised branch.
        k: experts per token (top-k), ``1 <= k <= E``.
        routing: ``"top_k"`` (sparse, default), ``"dense"`` or ``"dropless"`` (top-k computing each assignment
            once, no capacity; not under XLA; see :mod:`tfmoe.layers.moe`).
        expert_hidden_dim: inner size of each expert (default ``hidden_dim``).
        capacity_factor: top-k capacity factor (see :class:`MixtureOfExperts`).
        normalize: top-k gate normalisation, ``"selected"`` (default) or ``"all"``.
        activation: activation of every FFN (default ``"gelu"``).
        dropout: hidden dropout rate of every FFN.
        alpha_logit_init: initial value of ``a`` (``alpha = sigmoid(a)`` after warm-up; 0 gives 0.5).
        warmup_steps: training calls over which ``alpha`` ramps linearly from 0 (0 = no warm-up).
        entropy_loss_weight: weight of the HyMoERec entropy regulariser (default 0.01; 0 disables).
        load_balance_weight: weight of the Switch/GShard load-balance loss (default 0), as in
            :class:`MixtureOfExperts`.
        z_loss_weight: weight of the router z-loss (default 0).
        noise_std, seed: top-k router noise in training and its seed.
        kernel_initializer: initializer of the FFN kernels.
        track_statistics: keep the MoE's routing statistics (plus ``alpha`` and ``step`` here).

    Call: ``layer(x, mask=None, training=None)`` with ``x [..., d]``; returns ``[..., d]`` with zeros at
    masked positions. ``training`` must be a Python bool (as Keras passes it).

    Example:
        >>> import numpy as np
        >>> from tfmoe import layers
        >>> ffn = layers.HybridMoEFeedForward(hidden_dim=32, num_experts=4, k=1, warmup_steps=0)
        >>> ffn.build((None, 16))
        >>> round(float(ffn.alpha()), 3)
        0.5
    """

    # arguments the layer passes on to its routed branch, read from there
    num_experts = Forwarded("moe")
    k = Forwarded("moe")
    capacity_factor = Forwarded("moe")
    normalize = Forwarded("moe")
    noise_std = Forwarded("moe")
    seed = Forwarded("moe")
    activation = Forwarded("moe")
    dropout = Forwarded("moe")
    entropy_loss_weight = Forwarded("moe")
    load_balance_weight = Forwarded("moe")
    z_loss_weight = Forwarded("moe")
    track_statistics = Forwarded("moe")

    def __init__(
        self,
        hidden_dim,
        num_experts=4,
        k=2,
        routing="top_k",
        expert_hidden_dim=None,
        capacity_factor=1.25,
        normalize="selected",
        activation="gelu",
        dropout=0.0,
        alpha_logit_init=0.0,
        warmup_steps=0,
        entropy_loss_weight=0.01,
        load_balance_weight=0.0,
        z_loss_weight=0.0,
        noise_std=0.0,
        seed=None,
        kernel_initializer="glorot_uniform",
        track_statistics=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.hidden_dim = check_int(owner, "hidden_dim", hidden_dim, minimum=1)
        self.expert_hidden_dim = check_optional_int(owner, "expert_hidden_dim", expert_hidden_dim, minimum=1)
        self.routing = check_choice(owner, "routing", routing, ("top_k", "dense", "dropless"))
        self.alpha_logit_init = check_float(owner, "alpha_logit_init", alpha_logit_init)
        self.warmup_steps = check_int(owner, "warmup_steps", warmup_steps, minimum=0)
        for name, value in (
            ("entropy_loss_weight", entropy_loss_weight),
            ("load_balance_weight", load_balance_weight),
            ("z_loss_weight", z_loss_weight),
        ):
            check_float(owner, name, value, minimum=0.0)
        try:  # the branches validate the arguments forwarded to them; errors name this layer too
            self.kernel_initializer = keras.initializers.get(kernel_initializer)
            self.shared_ffn = FeedForward(
                hidden_dim=self.hidden_dim,
                activation=activation,
                dropout=dropout,
                kernel_initializer=fresh_initializer(self.kernel_initializer, "shared_ffn"),
                dtype=self.dtype_policy,
                name="shared_ffn",
            )
            self.moe = MixtureOfExperts(
                num_experts=num_experts,
                hidden_dim=self.expert_hidden_dim or self.hidden_dim,
                routing=self.routing,
                k=k,
                capacity_factor=capacity_factor,
                normalize=normalize,
                noise_std=noise_std,
                seed=seed,
                activation=activation,
                dropout=dropout,
                kernel_initializer=fresh_initializer(self.kernel_initializer, "moe"),
                load_balance_weight=load_balance_weight,
                z_loss_weight=z_loss_weight,
                entropy_loss_weight=entropy_loss_weight,
                track_statistics=track_statistics,
                dtype=self.dtype_policy,
                name="moe",
            )
        except ValueError as error:
            raise ValueError(f"{owner}: {error}") from error
        self.supports_masking = True

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__}: the last input dimension must be known, got {input_shape}"
            )
        self.shared_ffn.build(input_shape)
        self.moe.build(input_shape)
        self.alpha_logit = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.alpha_logit_init),
            name="alpha_logit",
            autocast=False,
        )
        # Each replica increments its own copy by one per training call, so all copies stay equal.
        self.step = self.add_weight(
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            name="step",
            autocast=False,
            aggregation="none",
        )

    def warmup(self):
        """``w(t) = min(1, t / warmup_steps)`` (1 without warm-up), float32."""
        if self.warmup_steps == 0:
            return tf.constant(1.0)
        progress = tf.cast(tf.convert_to_tensor(self.step), tf.float32) / float(self.warmup_steps)
        return tf.minimum(progress, 1.0)

    def alpha(self):
        """Current fusion weight ``sigmoid(a) * w(t)`` (float32 scalar)."""
        return tf.sigmoid(tf.convert_to_tensor(self.alpha_logit)) * self.warmup()

    def call(self, inputs, mask=None, training=None):
        shared = self.shared_ffn(inputs, mask=mask, training=training)
        experts = self.moe(inputs, mask=mask, training=training)
        alpha = self.alpha()
        if training:
            self.step.assign_add(1)
        return shared + tf.cast(alpha, shared.dtype) * experts

    @property
    def routing_statistics(self) -> dict:
        """``alpha`` and ``step`` (the MoE sublayer reports its own routing statistics)."""
        if not self.moe.track_statistics or not self.built:
            return {}
        return {"alpha": self.alpha(), "step": self.step}

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_mask(self, inputs, mask=None):
        return mask


    @classmethod
    def from_config(cls, config):
        if "switch_loss_weight" in config:  # saved by tfmoe 0.1: load_balance_weight was the entropy loss
            config = {**config, "entropy_loss_weight": config.get("load_balance_weight", 0.01),
                      "load_balance_weight": config["switch_loss_weight"]}
            del config["switch_loss_weight"]
        return cls(**config)

    def get_config(self):
        config = super().get_config()
        moe = self.moe.get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            num_experts=moe["num_experts"],
            k=moe["k"],
            routing=self.routing,
            expert_hidden_dim=self.expert_hidden_dim,
            capacity_factor=moe["capacity_factor"],
            normalize=moe["normalize"],
            activation=moe["activation"],
            dropout=moe["dropout"],
            alpha_logit_init=self.alpha_logit_init,
            warmup_steps=self.warmup_steps,
            entropy_loss_weight=moe["entropy_loss_weight"],
            load_balance_weight=moe["load_balance_weight"],
            z_loss_weight=moe["z_loss_weight"],
            noise_std=moe["noise_std"],
            seed=moe["seed"],
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            track_statistics=moe["track_statistics"],
        )
        return config
