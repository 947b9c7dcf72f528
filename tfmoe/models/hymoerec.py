"""HyMoERec (Li, Sun & Lim, AAAI 2026 student abstract): SASRec whose position-wise FFN is a hybrid MoE.

Each selected block's FFN is a :class:`~tfmoe.layers.HybridMoEFeedForward`:
``y = FFN_shared(x) + sigmoid(a) * min(1, t / warmup_steps) * sum_{e in topk} g_e f_e(x)``, routed on the
token's hidden state, with the entropy load-balance loss ``entropy_loss_weight * sum_e m_e log m_e``
added to the training loss. Everything else (and the loss switch) is :class:`~tfmoe.models.SASRec`'s: the model is
the :class:`~tfmoe.models.sequence_encoder.SequenceEncoder` given those FFN layers (``feedforward``) and the
:class:`~tfmoe.models.next_item_task.NextItemTask`.

Options the paper leaves open, with the defaults chosen here:

* ``moe_blocks``: how many of the **last** blocks get the hybrid FFN (default ``None`` = all, as the
  paper "replaces the PFFN in each block").
* ``expert_hidden_dim``: expert inner size (default = the FFN inner size ``4 d``).
* ``routing``: ``"top_k"`` (default; exact top-k with ``capacity_factor = num_experts / k``, so no token
  is ever dropped and scores do not depend on the batch; outside XLA it runs the packed ``k T``-row dispatch,
  under ``jit_compile`` static buffers), ``"dropless"`` or ``"dense"``.
* ``alpha`` is one learnable scalar per block; ``warmup_steps`` counts training calls (linear ramp).

Example:
    >>> import numpy as np
    >>> from tfmoe.models import HyMoERec
    >>> model = HyMoERec(num_items=20, max_len=5, hidden_dim=16, num_experts=4, k=2)
    >>> model.last_scores({"history": np.array([[0, 0, 3, 4, 5]])}).shape
    TensorShape([1, 21])

References:
    Li, Sun & Lim, HyMoERec, AAAI 2026 (student abstract).
    Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. https://arxiv.org/abs/1808.09781
"""

from __future__ import annotations

import keras

from tfmoe.layers import HybridMoEFeedForward
from tfmoe.models import registry
from tfmoe.models.next_item_task import NextItemTask, with_placeholder_frequencies
from tfmoe.models.sasrec import (
    encoder_arguments,
    sasrec_encoder,
    split_arguments,
    store_encoder_arguments,
    with_sasrec_arguments,
)
from tfmoe.models.sequence_encoder import normal_or
from tfmoe.utils import validation as v
from tfmoe.utils.initializers import fresh_initializer

ROUTINGS = ("top_k", "dense", "dropless")


@registry.register_model("hymoerec", task="next_item")
@keras.saving.register_keras_serializable(package="tfmoe")
class HyMoERec(NextItemTask):
    """SASRec with :class:`~tfmoe.layers.HybridMoEFeedForward` FFNs in the last ``moe_blocks`` blocks.

    Args (on top of :class:`~tfmoe.models.SASRec`'s):
        num_experts: experts ``E`` per hybrid FFN (default 4).
        k: experts per token (default 2).
        warmup_steps: training calls over which ``alpha`` ramps from 0 (default 0 = none).
        entropy_loss_weight: ``lambda_lb`` of the entropy regulariser (default 0.01).
        moe_blocks: number of last blocks with the hybrid FFN (``None`` = all).
        expert_hidden_dim: expert inner size (default: the FFN inner size).
        routing: ``"top_k"``, ``"dense"`` or ``"dropless"``.
    """

    @with_sasrec_arguments
    def __init__(
        self,
        num_items,
        max_len,
        num_experts=4,
        k=2,
        warmup_steps=0,
        entropy_loss_weight=0.01,
        moe_blocks=None,
        expert_hidden_dim=None,
        routing="top_k",
        **kwargs,
    ):
        owner = type(self).__name__
        encoder, task, rest = split_arguments(kwargs)
        num_blocks = v.check_int(owner, "num_blocks", encoder["num_blocks"], minimum=1)
        moe_blocks = v.check_optional_int(owner, "moe_blocks", moe_blocks, minimum=1)
        if moe_blocks is not None and moe_blocks > num_blocks:
            raise ValueError(f"{owner}: `moe_blocks` must be <= num_blocks ({num_blocks}), got {moe_blocks!r}")
        v.check_int(owner, "k", k, minimum=1, maximum=v.check_int(owner, "num_experts", num_experts, minimum=1))
        v.check_choice(owner, "routing", routing, ROUTINGS)
        first_moe = 0 if moe_blocks is None else num_blocks - moe_blocks
        hidden_dim = v.check_int(owner, "hidden_dim", encoder["hidden_dim"], minimum=1)
        try:
            feedforward = [
                None if i < first_moe else HybridMoEFeedForward(
                    hidden_dim=encoder["inner_dim"] or 4 * hidden_dim,
                    num_experts=num_experts,
                    k=k,
                    routing=routing,
                    capacity_factor=num_experts / k,
                    warmup_steps=warmup_steps,
                    entropy_loss_weight=entropy_loss_weight,
                    load_balance_weight=0.0,
                    expert_hidden_dim=expert_hidden_dim,
                    activation=encoder["activation"],
                    dropout=encoder["dropout"],
                    kernel_initializer=fresh_initializer(
                        normal_or(encoder["initializer_range"], "glorot_uniform"), "ffn"),
                    dtype=rest.get("dtype"),
                    name="ffn",
                )
                for i in range(num_blocks)
            ]
        except (TypeError, ValueError) as error:
            raise ValueError(f"{owner}: {error}") from error
        backbone = sasrec_encoder(owner, num_items, max_len, encoder, feedforward=feedforward, dtype=rest.get("dtype"))
        super().__init__(backbone, **task, **rest)
        store_encoder_arguments(self, backbone)
        ffn = feedforward[-1]
        self.num_experts = ffn.moe.num_experts
        self.k = ffn.moe.k
        self.warmup_steps = ffn.warmup_steps
        self.entropy_loss_weight = ffn.moe.entropy_loss_weight
        self.moe_blocks = moe_blocks
        self.expert_hidden_dim = ffn.expert_hidden_dim
        self.routing = ffn.routing

    def get_config(self):
        config = encoder_arguments(self)
        config.update(
            num_experts=self.num_experts,
            k=self.k,
            warmup_steps=self.warmup_steps,
            entropy_loss_weight=self.entropy_loss_weight,
            moe_blocks=self.moe_blocks,
            expert_hidden_dim=self.expert_hidden_dim,
            routing=self.routing,
        )
        return config

    @classmethod
    def from_config(cls, config):
        if "load_balance_weight" in config:  # a config of tfmoe 0.1, where it named the entropy loss
            config = {k: value for k, value in config.items() if k != "load_balance_weight"} | {
                "entropy_loss_weight": config["load_balance_weight"]}
        return cls(**with_placeholder_frequencies(config))
