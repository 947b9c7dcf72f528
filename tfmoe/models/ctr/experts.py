"""Experts = copies of a backbone, each run on its own subsequence (shared by MoS and the MoE baselines).

* :class:`ExpertSet`: ``E`` backbones (or one shared by all) mapping subsequences
  ``[B, E, S, d]`` + masks ``[B, E, S]`` + target ``[B, d]`` to ``[B, E, d_out]``. Shared
  parameters run as one batched call on ``[B * E, S, d]``. With ``cut_to_widest=True`` (outside XLA) each backbone
  call reads its subsequences cut to the widest one (:func:`~tfmoe.models.length_groups.cut_to_widest_row`: unused
  slots come first), with the same outputs.
* :func:`gather_subsequences`: token indices ``[B, E, C]`` (``-1`` = unused slot) into
  time-ordered subsequences, each token scaled by its routing weight (the router's gradient path).

Example:
    >>> import numpy as np
    >>> from tfmoe.models.ctr.experts import ExpertSet
    >>> experts = ExpertSet("din", {"attention_units": [4]}, num_experts=3, shared=False)
    >>> out = experts(np.ones((2, 3, 5, 4), "float32"), np.ones((2, 3, 5), bool), np.ones((2, 4), "float32"))
    >>> tuple(out.shape)
    (2, 3, 4)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.layers import masking
from tfmoe.models.ctr.backbones import make_backbone
from tfmoe.models.length_groups import cut_to_widest_row
from tfmoe.utils import validation as v
from tfmoe.utils.xla import dim


def gather_subsequences(sequence, mask, indices, weights=None):
    """Tokens ``indices [B, E, C]`` of ``sequence [B, L, d]`` in time order, scaled by ``weights [B, E, C]``.

    Returns ``(tokens [B, E, C, d], token_mask [B, E, C])``; unused slots (index ``-1``) come first,
    are masked and zero. Indices need not be sorted; ``weights`` follow their indices.
    """
    order = tf.argsort(indices, axis=-1, stable=True)
    indices = tf.gather(indices, order, batch_dims=2)
    used = indices >= 0
    safe = tf.maximum(indices, 0)
    num, capacity = indices.shape[1], dim(indices, 2)  # C is dynamic in a length group
    flat = tf.reshape(safe, [-1, num * capacity])
    tokens = tf.reshape(tf.gather(sequence, flat, batch_dims=1), [-1, num, capacity, sequence.shape[-1]])
    token_mask = tf.logical_and(used, tf.reshape(tf.gather(mask, flat, batch_dims=1), [-1, num, capacity]))
    if weights is not None:
        weights = tf.gather(weights, order, batch_dims=2)
        tokens = tokens * tf.cast(weights, tokens.dtype)[..., None]
    return masking.apply_mask(tokens, token_mask), token_mask


@keras.saving.register_keras_serializable(package="tfmoe")
class ExpertSet(keras.layers.Layer):
    """``E`` backbone experts (separate parameters) or one backbone shared by all ``E`` inputs.

    Args:
        backbone: backbone name (see :data:`tfmoe.models.ctr.backbones.BACKBONES`).
        backbone_options: its constructor options.
        num_experts: ``E``; with ``shared=True`` any number of subsequences may be passed.
        shared: one backbone for every expert.

    Call: ``experts(sequences [B, E, S, d], masks [B, E, S], target [B, d], training=None)`` -> ``[B, E, d_out]``.
    """

    def __init__(self, backbone, backbone_options=None, num_experts=1, shared=True, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.backbone = backbone
        self.backbone_options = dict(backbone_options or {})
        self.num_experts = v.check_int(owner, "num_experts", num_experts, minimum=1)
        self.shared = v.check_bool(owner, "shared", shared)
        count = 1 if self.shared else self.num_experts
        self.backbones = [
            make_backbone(backbone, self.backbone_options, dtype=self.dtype_policy, name=f"expert_{i}")
            for i in range(count)
        ]

    def build(self, sequences_shape):
        d = sequences_shape[-1]
        for backbone in self.backbones:
            backbone.build((None, None, d))
        self.built = True

    def output_width(self, d: int) -> int:
        return self.backbones[0].output_width(d)

    def flops(self, length: int, d: int, num_inputs: int | None = None) -> int:
        """Forward FLOPs per example for ``num_inputs`` (default ``E``) subsequences of ``length``."""
        return (num_inputs or self.num_experts) * self.backbones[0].flops(length, d)

    def call(self, sequences, masks, target, training=None, cut_to_widest=False):
        num, length, d = sequences.shape[1], dim(sequences, 2), sequences.shape[3]

        def run(backbone, sequence, mask, target):
            if cut_to_widest:
                sequence, mask = cut_to_widest_row(sequence, mask)
            return backbone(sequence, mask, target, training=training)

        if self.shared:
            flat = tf.reshape(sequences, [-1, length, d])
            targets = tf.reshape(tf.repeat(target[:, None, :], num, axis=1), [-1, target.shape[-1]])
            out = run(self.backbones[0], flat, tf.reshape(masks, [-1, length]), targets)
            return tf.reshape(out, [-1, num, out.shape[-1]])
        if num != self.num_experts:
            raise ValueError(f"{type(self).__name__}: expected {self.num_experts} subsequences, got {num}")
        return tf.stack([run(bb, sequences[:, e], masks[:, e], target) for e, bb in enumerate(self.backbones)], axis=1)

    def compute_mask(self, *args, **kwargs):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(backbone=self.backbone, backbone_options=dict(self.backbone_options),
                      num_experts=self.num_experts, shared=self.shared)
        return config
