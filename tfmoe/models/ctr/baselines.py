"""Token-routed MoE CTR models with the same experts as MoS: ``gshard_<backbone>``, ``expert_choice_<backbone>``.

:class:`GShardMoE` and :class:`ExpertChoiceMoE` are the CTR models of the interest layers
:class:`~tfmoe.models.ctr.token_routing.GShardExperts` and
:class:`~tfmoe.models.ctr.token_routing.ExpertChoiceExperts` (routing, capacity, losses and cost:
see :mod:`tfmoe.models.ctr.token_routing`).

Example:
    >>> import numpy as np
    >>> from tfmoe.models.ctr import GShardMoE
    >>> model = GShardMoE(num_items=30, max_len=8, backbone="twin", embedding_dim=8, mlp_units=[8], num_experts=2)
    >>> model({"history": np.arange(8)[None], "target_item": np.array([3])}).shape
    TensorShape([1])

References:
    * GShard: Lepikhin et al., "GShard: Scaling Giant Models with Conditional Computation and Automatic
      Sharding", ICLR 2021, https://arxiv.org/abs/2006.16668.
    * Expert Choice: Zhou et al., "Mixture-of-Experts with Expert Choice Routing", NeurIPS 2022,
      https://arxiv.org/abs/2202.09368.
"""

from __future__ import annotations

import keras

from tfmoe.models.ctr.base import BackboneFamily
from tfmoe.models.ctr.named import backbone_presets
from tfmoe.models.ctr.token_routing import ExpertChoiceExperts, GShardExperts


@keras.saving.register_keras_serializable(package="tfmoe")
class GShardMoE(BackboneFamily):
    """Top-``k`` token routing to backbone experts.

    Options: ``backbone``, ``backbone_options``, those of :class:`~tfmoe.models.ctr.token_routing.GShardExperts`
    (``num_experts``, ``k``, ``capacity_factor``, ``normalize``, ``router_temperature``, ``shared_experts``,
    ``load_balance_weight``) and those of :class:`~tfmoe.models.ctr.base.CTRModel`.
    """

    INTEREST = GShardExperts


@keras.saving.register_keras_serializable(package="tfmoe")
class ExpertChoiceMoE(BackboneFamily):
    """Expert-choice token routing to backbone experts.

    Options: ``backbone``, ``backbone_options``, those of
    :class:`~tfmoe.models.ctr.token_routing.ExpertChoiceExperts` (``num_experts``, ``capacity_factor``,
    ``router_temperature``, ``shared_experts``) and those of :class:`~tfmoe.models.ctr.base.CTRModel`.
    """

    INTEREST = ExpertChoiceExperts


GShardDIN, GShardTransAct, GShardTWIN = backbone_presets(
    GShardMoE, "gshard_", "GShard", "GShard top-k token routing to {backbone} experts.")
ExpertChoiceDIN, ExpertChoiceTransAct, ExpertChoiceTWIN = backbone_presets(
    ExpertChoiceMoE, "expert_choice_", "ExpertChoice", "Expert-choice token routing to {backbone} experts.")
