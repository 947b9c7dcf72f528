"""CTR models with one backbone over the whole history: ``din``, ``transact``, ``twin``.

``u = Backbone(e_1..e_L, mask, q)`` (:class:`~tfmoe.models.ctr.interest.SingleBackboneInterest`),
then the shared head of :class:`~tfmoe.models.ctr.base.CTRModel`.

Example:
    >>> import numpy as np
    >>> from tfmoe.models.ctr import DIN, SingleBackboneModel
    >>> model = SingleBackboneModel(num_items=20, max_len=4, backbone="din", embedding_dim=8, mlp_units=[8])
    >>> features = {"history": np.array([[0, 3, 4, 5]]), "target_item": np.array([6])}
    >>> model(features).shape, isinstance(DIN(num_items=20, max_len=4), SingleBackboneModel)
    (TensorShape([1]), True)

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

from tfmoe.models.ctr.base import BackboneFamily
from tfmoe.models.ctr.interest import SingleBackboneInterest
from tfmoe.models.ctr.named import backbone_preset


@keras.saving.register_keras_serializable(package="tfmoe")
class SingleBackboneModel(BackboneFamily):
    """The backbone on the full history (options: ``backbone``, ``backbone_options`` and those of CTRModel)."""

    INTEREST = SingleBackboneInterest


DIN = backbone_preset(SingleBackboneModel, "din", "DIN", "din",
                      "DIN: target attention over the history (backbone ``\"din\"``).")
TransAct = backbone_preset(SingleBackboneModel, "transact", "TransAct", "transact",
                           "TransAct-style transformer over the history with the target appended.")
TWIN = backbone_preset(SingleBackboneModel, "twin", "TWIN", "twin",
                       "TWIN/SIM two-stage model: top-k retrieval by the target then target attention.")
