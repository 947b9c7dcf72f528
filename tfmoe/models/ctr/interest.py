r"""Interest layers: the part of a CTR model that reads the history with the target, one per routing family.

An interest layer maps the embedded history ``e [B, L, d]`` (zero at padding), its mask ``[B, L]``
and the target embedding ``q [B, d]`` to the user interest ``u [B, d_out]``; the CTR task
(:class:`~tfmoe.models.ctr.base.CTRModel`) composes it with the feature embedding, the prediction
head and the loss. Every interest layer runs CTR backbones (:mod:`tfmoe.models.ctr.backbones`,
named by ``backbone`` with ``backbone_options``) and has the same interface:

* ``InterestLayer(max_len, backbone="din", backbone_options=None, **options)``;
* ``build(sequence_shape)`` from ``[B, L, d]``; ``output_width(d)``;
* ``call(sequence, mask, target, features=None, training=None) -> [B, d_out]`` (``features``: the
  raw features dict, for the side features a layer reads: ``required_features()``);
* ``flops(d, width=None) -> dict``: analytic forward FLOPs per example, by part, of a row whose history is read
  at ``width`` positions (default ``max_len``; a CTR model's length groups cut a row to its group's width);
* ``call_grouped(groups, plan, training=None) -> [[b_g, d_out], ...]``: the call of a batch split into length groups
  (:attr:`InterestLayer.supports_length_groups`, below);
* ``options()``: its constructor options but ``max_len`` (the flat options of a CTR family model).

Layers: :class:`SingleBackboneInterest` (``u = Backbone(e, mask, q)``, this module),
:class:`~tfmoe.models.ctr.token_routing.GShardExperts`,
:class:`~tfmoe.models.ctr.token_routing.ExpertChoiceExperts` and
:class:`~tfmoe.models.ctr.mixture_of_sequences.MixtureOfSequences`.

Example:
    >>> import numpy as np
    >>> from tfmoe.models.ctr.interest import SingleBackboneInterest
    >>> interest = SingleBackboneInterest(max_len=5, backbone="din", backbone_options={"attention_units": [8]})
    >>> sequence, mask = np.random.rand(2, 5, 4).astype("float32"), np.ones((2, 5), bool)
    >>> tuple(interest(sequence, mask, np.random.rand(2, 4).astype("float32")).shape)
    (2, 4)

References:
    * DIN: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018,
      https://arxiv.org/abs/1706.06978.
    * TransAct: Xia et al., "TransAct: Transformer-based Realtime User Action Model for Recommendation
      at Pinterest", KDD 2023, https://arxiv.org/abs/2306.00248.
    * TWIN: Chang et al., "TWIN: TWo-stage Interest Network for Lifelong User Behavior Modeling in CTR
      Prediction at Kuaishou", KDD 2023, https://arxiv.org/abs/2302.02352.
"""

from __future__ import annotations

import keras

from tfmoe.models.ctr.backbones import BACKBONES, SequenceLayer, make_backbone
from tfmoe.utils import validation as v


class InterestLayer(SequenceLayer):
    """Base of the interest layers: ``max_len``, ``backbone``, ``backbone_options`` and the shared interface."""

    #: whether a model may score and train the layer's batch in length groups of rows, each cut to its widest row
    #: (:class:`~tfmoe.models.ctr.base.CTRModel`'s ``length_groups``) with :meth:`call_grouped`: the layer computes
    #: each row from that row's real history positions alone, at any history width, and runs any batch-level part
    #: (MoS's router, the baselines' load-balance loss) on the whole batch. False by default: a layer whose rows depend
    #: on each other (a capacity shared across the batch) cannot.
    supports_length_groups = False

    def __init__(self, max_len, backbone="din", backbone_options=None, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.max_len = v.check_int(owner, "max_len", max_len, minimum=1)
        self.backbone = v.check_choice(owner, "backbone", backbone, tuple(BACKBONES))
        if backbone_options is not None and not isinstance(backbone_options, dict):
            raise ValueError(f"{owner}: `backbone_options` must be a dict or None, got {backbone_options!r}")
        self.backbone_options = dict(backbone_options or {})
        make_backbone(self.backbone, self.backbone_options)  # validates the options now (the layer is discarded)

    def make_backbone(self, name: str):
        """A fresh backbone layer of this layer's kind, with ``backbone_options`` and this layer's dtype policy."""
        return make_backbone(self.backbone, self.backbone_options, dtype=self.dtype_policy, name=name)

    def flops(self, d: int, width: int | None = None) -> dict:
        raise NotImplementedError

    def call_grouped(self, groups: list, plan, training=None) -> list:
        """The interest of a batch split into length groups (:attr:`supports_length_groups` layers only).

        Args:
            groups: one ``(sequence [b_g, w_g, d], mask [b_g, w_g], target [b_g, d], features)`` per group, the
                group's rows cut to its width (``features``: the group's features dict).
            plan: the :class:`~tfmoe.models.length_groups.LengthGroups` that made them (its ``merge`` and
                ``split`` carry a batch-level step across the groups).
            training: the call's ``training``.

        Returns:
            the groups' interests ``[b_g, d_out]``. Here: the layer called on each group.
        """
        return [self(sequence, mask, target, features, training=training)
                for sequence, mask, target, features in groups]

    def required_features(self) -> tuple:
        """Keys of the history side features the layer reads from ``features`` (e.g. ``history_session_ids``)."""
        return ()

    def input_sequence_features(self) -> tuple:
        """The prepared-data names (``tfmoe.data.schema``) of :meth:`required_features` (``session_ids``)."""
        return tuple(key.removeprefix("history_") for key in self.required_features())

    def options(self) -> dict:
        """Constructor options but ``max_len``."""
        return {"backbone": self.backbone, "backbone_options": dict(self.backbone_options)}

    def compute_mask(self, *args, **kwargs):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(max_len=self.max_len, **self.options())
        return config


@keras.saving.register_keras_serializable(package="tfmoe")
class SingleBackboneInterest(InterestLayer):
    """One backbone over the whole history: ``u = Backbone(e_1..e_L, mask, q)`` (see the module docstring)."""

    supports_length_groups = True

    def __init__(self, max_len, backbone="din", backbone_options=None, **kwargs):
        super().__init__(max_len, backbone, backbone_options, **kwargs)
        self.encoder = self.make_backbone("encoder")

    def _build(self, d):
        self.encoder.build((None, self.max_len, d))

    def output_width(self, d):
        return self.encoder.output_width(d)

    def call(self, sequence, mask, target, features=None, training=None):
        return self.encoder(sequence, mask, target, training=training)

    def flops(self, d, width=None):
        return {"backbone": self.encoder.flops(width or self.max_len, d)}
