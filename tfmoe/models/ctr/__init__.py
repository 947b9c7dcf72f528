"""tfmoe.models.ctr: long-sequence CTR models with a target item.

A CTR model (:class:`CTRModel`, the task) composes the feature embedding, an **interest layer** (one
per routing family) and the prediction head, with the BCE loss and the metrics. Each routing family
is one model class taking the backbone (``"din"``, ``"transact"``, ``"twin"``) as an argument:

| family class | interest layer | registered names (class) |
|---|---|---|
| :class:`SingleBackboneModel` | :class:`SingleBackboneInterest` | ``din``, ``transact``, ``twin`` (:class:`DIN`, ...) |
| :class:`MoS` | :class:`MixtureOfSequences` | ``mos_din``, ``mos_transact``, ``mos_twin`` (:class:`MoSDIN`, ...) |
| :class:`GShardMoE` | :class:`GShardExperts` | ``gshard_<b>`` (:class:`GShardDIN`, ...) |
| :class:`ExpertChoiceMoE` | :class:`ExpertChoiceExperts` | ``expert_choice_<b>`` (:class:`ExpertChoiceDIN`, ...) |

A registered name is the family with its backbone fixed: ``registry.build_model("mos_din", **options)``
is ``MoS(backbone="din", **options)``. Every model: ``Model(num_items, max_len, num_categories=0,
**options)``, ``call(features) -> logits [B]``, ``probabilities(features)``, ``compute_loss`` (BCE +
auxiliary losses), ``analytic_flops()``. Backbones (Keras layers usable as experts):
:class:`TargetAttention`, :class:`TransActEncoder`, :class:`TwinAttention`.

Example:
    >>> from tfmoe.models import registry
    >>> model = registry.build_model("mos_din", num_items=50, max_len=20, embedding_dim=8, session_length=5)
    >>> registry.model_task("mos_din"), type(model).__name__, model.backbone
    ('ctr', 'MoSDIN', 'din')
"""

from tfmoe.models.ctr import checkpoints
from tfmoe.models.ctr.backbones import BACKBONES, TargetAttention, TransActEncoder, TwinAttention, make_backbone
from tfmoe.models.ctr.base import BackboneFamily, CTRModel
from tfmoe.models.ctr.baselines import (
    ExpertChoiceDIN,
    ExpertChoiceMoE,
    ExpertChoiceTransAct,
    ExpertChoiceTWIN,
    GShardDIN,
    GShardMoE,
    GShardTransAct,
    GShardTWIN,
)
from tfmoe.models.ctr.experts import ExpertSet, gather_subsequences
from tfmoe.models.ctr.heads import PredictionHead, binary_cross_entropy
from tfmoe.models.ctr.inputs import FeatureEmbedding, history_mask
from tfmoe.models.ctr.interest import InterestLayer, SingleBackboneInterest
from tfmoe.models.ctr.mixture_of_sequences import MixtureOfSequences
from tfmoe.models.ctr.mos import MoS, MoSDIN, MoSTransAct, MoSTWIN, time_gap_session_ids
from tfmoe.models.ctr.single import DIN, TWIN, SingleBackboneModel, TransAct
from tfmoe.models.ctr.token_routing import ExpertChoiceExperts, GShardExperts

__all__ = [
    "BACKBONES",
    "BackboneFamily",
    "CTRModel",
    "DIN",
    "ExpertChoiceDIN",
    "ExpertChoiceExperts",
    "ExpertChoiceMoE",
    "ExpertChoiceTWIN",
    "ExpertChoiceTransAct",
    "ExpertSet",
    "FeatureEmbedding",
    "GShardDIN",
    "GShardExperts",
    "GShardMoE",
    "GShardTWIN",
    "GShardTransAct",
    "InterestLayer",
    "MixtureOfSequences",
    "MoS",
    "MoSDIN",
    "MoSTWIN",
    "MoSTransAct",
    "PredictionHead",
    "SingleBackboneInterest",
    "SingleBackboneModel",
    "TWIN",
    "TargetAttention",
    "TransAct",
    "TransActEncoder",
    "TwinAttention",
    "binary_cross_entropy",
    "checkpoints",
    "gather_subsequences",
    "history_mask",
    "make_backbone",
    "time_gap_session_ids",
]
