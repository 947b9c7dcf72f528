"""tfmoe.models: next-item recommenders (SASRec, HyMoERec, FAME) with one loss switch.

Example:
    >>> import numpy as np
    >>> from tfmoe.models import SASRec
    >>> model = SASRec(num_items=50, max_len=8, hidden_dim=16)
    >>> model.last_scores({"history": np.array([[0, 0, 0, 0, 1, 2, 3, 4]])}).shape
    TensorShape([1, 51])
"""

from tfmoe.models import losses, presets, registry
from tfmoe.models.blocks import ItemEncoder, TransformerBlock
from tfmoe.models.fame import FAME, FacetBlock, FacetHead
from tfmoe.models.hymoerec import HyMoERec
from tfmoe.models.losses import NextItemLoss
from tfmoe.models.next_item_task import NextItemTask
from tfmoe.models.sasrec import SASRec
from tfmoe.models.saving import load_model
from tfmoe.models.sequence_encoder import SequenceEncoder

__all__ = [
    "FAME", "FacetBlock", "FacetHead", "HyMoERec", "ItemEncoder", "NextItemLoss", "NextItemTask", "SASRec",
    "SequenceEncoder", "TransformerBlock", "load_model", "losses", "presets", "registry",
]
