"""MoS (Mixture of Sequence, WWW 2026) CTR models: ``mos_din``, ``mos_transact``, ``mos_twin``.

:class:`MoS` is the CTR model of the interest layer
:class:`~tfmoe.models.ctr.mixture_of_sequences.MixtureOfSequences` (sessions -> themes -> backbone
experts -> fusion; the method and every option are documented there)::

    u     = MixtureOfSequences(e, mask, q)
    logit = MLP([u ; q ; u * q])          (shared CTR head)
    loss  = BCE + the router's auxiliary losses (load balance, diversity, VQ codebook and commitment)

Example:
    >>> import numpy as np
    >>> from tfmoe.models.ctr import MoS
    >>> model = MoS(num_items=30, max_len=12, backbone="din", embedding_dim=8, mlp_units=[8], session_length=3,
    ...             num_themes=2)
    >>> features = {"history": np.arange(12)[None], "target_item": np.array([5])}
    >>> model(features).shape, model.routing(features)["routing_probs"].shape
    (TensorShape([1]), TensorShape([1, 4, 2]))

References:
    * MoS: Lin et al., "Mixture of Sequence: Theme-Aware Mixture-of-Experts for Long-Sequence
      Recommendation", WWW 2026, https://arxiv.org/abs/2604.20858.
"""

from __future__ import annotations

import keras

from tfmoe.models.ctr.base import BackboneFamily
from tfmoe.models.ctr.mixture_of_sequences import SESSION_MODES, MixtureOfSequences, time_gap_session_ids
from tfmoe.models.ctr.named import backbone_presets

__all__ = ["SESSION_MODES", "MoS", "MoSDIN", "MoSTWIN", "MoSTransAct", "time_gap_session_ids"]


@keras.saving.register_keras_serializable(package="tfmoe")
class MoS(BackboneFamily):
    """MoS around a backbone: options ``backbone``, ``backbone_options``, those of
    :class:`~tfmoe.models.ctr.mixture_of_sequences.MixtureOfSequences` and those of
    :class:`~tfmoe.models.ctr.base.CTRModel`."""

    INTEREST = MixtureOfSequences

    @property
    def grouper(self):
        """The interest layer's :class:`~tfmoe.layers.SessionGrouper`."""
        return self.interest.grouper

    @property
    def router(self):
        """The interest layer's :class:`~tfmoe.layers.SessionThemeRouter`."""
        return self.interest.theme_router

    def _session_ids(self, features, mask):
        return self.interest.session_ids(features, mask)

    def routing(self, features) -> dict:
        """The router's outputs (``routing_probs [B, M, K]``, ``target_probs [B, K]``, ...) in inference mode."""
        sequence, mask, target = self.encode(features)
        return self.interest.route(sequence, mask, target, features)[3]

    @classmethod
    def from_config(cls, config):
        # A config without `router` describes a model that routes with softmax.
        return cls(**{"router": "softmax", **config})


MoSDIN, MoSTransAct, MoSTWIN = backbone_presets(MoS, "mos_", "MoS", "MoS with {backbone} experts.")
