r"""Token-routed MoE interest layers with the same experts as MoS: :class:`GShardExperts`, :class:`ExpertChoiceExperts`.

What is routed: the **tokens (behaviours) of the raw history** are routed to ``E`` **expert copies
of the backbone** (the same experts MoS uses; separate parameters by default). Expert ``e`` of
example ``b`` receives the subsequence of the tokens routed to it (time order, at most ``C``
tokens, each scaled by its gate, which is the router's gradient path) and runs the backbone on
it with the target; the interest is the sum of the outputs of the experts that received at least
one token::

    u = sum_e [X_e non-empty] Backbone_e(g_e * X_e, q)

So the comparison with MoS isolates the routing: MoS routes **sessions** to **themes** with a
target-aware router (and adds the short-term and global experts), these layers route single
tokens with a token-level router. Both keep static shapes ``[B, E, C, d]``.

* :class:`GShardExperts` (GShard / Switch style): a :class:`~tfmoe.layers.TopKRouter` sends each
  token to its top-``k`` experts; expert ``e`` keeps at most
  ``C_b = ceil(capacity_factor * k * n_b / E)`` tokens of example ``b`` (``n_b`` real tokens; static
  buffer ``C = ceil(capacity_factor * k * L / E)``), first choices before second choices, the most
  recent first within a rank; overflowing tokens are dropped. Load-balance loss
  ``load_balance_weight * E sum_e f_e P_e`` over the real tokens.
* :class:`ExpertChoiceExperts` (Zhou et al. 2022): an :class:`~tfmoe.layers.ExpertChoiceRouter`;
  each expert picks its top-``C_b`` tokens of the example (``C_b = ceil(capacity_factor * n_b / E)``,
  ``capacity_factor`` = average experts per token); no auxiliary loss (balanced by construction).

Cost: ``E`` backbone runs on ``C`` tokens each, i.e. about ``capacity_factor * k * L`` tokens through
the experts (GShard) or ``capacity_factor * L`` (expert choice), for any backbone. Since every row is routed
within itself, a CTR model's ``length_groups`` route and run each group of rows at its width (``L`` and ``C`` of
the group, each expert's subsequences cut to the widest), with the logits, the load-balance loss and the gradients
of the padded batch.

Example:
    >>> import numpy as np
    >>> from tfmoe.models.ctr.token_routing import GShardExperts
    >>> moe = GShardExperts(max_len=8, backbone="din", num_experts=2)
    >>> sequence, mask = np.random.rand(1, 8, 4).astype("float32"), np.ones((1, 8), bool)
    >>> tuple(moe(sequence, mask, np.random.rand(1, 4).astype("float32")).shape)
    (1, 4)

References:
    * GShard: Lepikhin et al., "GShard: Scaling Giant Models with Conditional Computation and Automatic
      Sharding", ICLR 2021, https://arxiv.org/abs/2006.16668.
    * Expert Choice: Zhou et al., "Mixture-of-Experts with Expert Choice Routing", NeurIPS 2022,
      https://arxiv.org/abs/2202.09368.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.layers import ExpertChoiceRouter, TopKRouter, expert_capacity, losses
from tfmoe.models.ctr.experts import ExpertSet, gather_subsequences
from tfmoe.models.ctr.interest import InterestLayer
from tfmoe.utils import flops as fl
from tfmoe.utils import validation as v
from tfmoe.utils.xla import dim


class _TokenExperts(InterestLayer):
    """The experts of a token-routed layer and the combination of their outputs; the router is the subclass's.

    Every row is routed within itself (per-example capacity ``C_b`` from its own real tokens), so a batch may run in
    length groups (:meth:`call_grouped`): each group is routed and its experts run at the group's width, and the
    load-balance loss is taken once, over the real tokens of every group (those of the padded batch).
    """

    supports_length_groups = True

    def __init__(self, max_len, backbone="din", backbone_options=None, num_experts=4, shared_experts=False,
                 **kwargs):
        super().__init__(max_len, backbone, backbone_options, **kwargs)
        owner = type(self).__name__
        self.num_experts = v.check_int(owner, "num_experts", num_experts, minimum=1)
        self.shared_experts = v.check_bool(owner, "shared_experts", shared_experts)
        self.experts = ExpertSet(self.backbone, self.backbone_options, self.num_experts, self.shared_experts,
                                 dtype=self.dtype_policy, name="experts")

    def _build(self, d):
        self.router.build((None, self.max_len, d))
        self.experts.build((None, None, None, d))

    def output_width(self, d):
        return self.experts.output_width(d)

    @property
    def capacity(self) -> int:
        """Tokens per expert ``C`` at ``max_len`` (the padded batch's buffer)."""
        return self.buffer_size(self.max_len)

    def buffer_size(self, length):
        """Tokens per expert ``C`` for histories read at ``length`` positions (int, or int32 tensor if dynamic)."""
        raise NotImplementedError

    def route(self, sequence, mask, training=None):
        """``(token_indices [B, E, C] with -1 = unused, gates [B, E, C], the router's outputs)``; no loss."""
        raise NotImplementedError

    def add_balance_loss(self, routes: list, masks: list) -> None:
        """Adds the routing's auxiliary loss over the real tokens of ``routes`` (router outputs) and their ``masks``;
        none by default."""

    def dispatch(self, sequence, mask, training=None):
        """``(token_indices [B, E, C] with -1 = unused, gates [B, E, C])``; adds the routing's auxiliary loss."""
        indices, gates, route = self.route(sequence, mask, training)
        self.add_balance_loss([route], [mask])
        return indices, gates

    def call(self, sequence, mask, target, features=None, training=None):
        indices, gates = self.dispatch(sequence, mask, training)
        return self._run_experts(sequence, mask, indices, gates, target, training)  # static shapes: [B, E, C, d]

    def call_grouped(self, groups, plan, training=None):
        """Each group routed and its experts run at its width; the auxiliary loss once over every group's tokens."""
        routed = [self.route(sequence, mask, training) for sequence, mask, _, _ in groups]
        self.add_balance_loss([route for _, _, route in routed], [mask for _, mask, _, _ in groups])
        return [self._run_experts(sequence, mask, indices, gates, target, training, cut_to_widest=True)
                for (sequence, mask, target, _), (indices, gates, _) in zip(groups, routed)]

    def _run_experts(self, sequence, mask, indices, gates, target, training=None, cut_to_widest=False):
        """``u = sum_e [X_e non-empty] Backbone_e(g_e * X_e, q)``; with ``cut_to_widest`` (a length group, outside
        XLA) each expert reads its subsequences cut to the widest."""
        tokens, token_mask = gather_subsequences(sequence, mask, indices, gates)
        outputs = self.experts(tokens, token_mask, target, training=training, cut_to_widest=cut_to_widest)
        filled = tf.cast(tf.reduce_any(token_mask, axis=-1), outputs.dtype)
        return tf.reduce_sum(outputs * filled[..., None], axis=1)

    def routing_flops(self, length: int) -> int:
        """Forward FLOPs per example of the dispatch beyond the router's logits and softmax, at ``length``."""
        return 0

    def flops(self, d, width=None):
        length = min(width or self.max_len, self.max_len)
        c, e = self.buffer_size(length), self.num_experts
        return {
            "router": fl.matmul_flops(length, d, e) + 5 * length * e + self.routing_flops(length),
            "experts": self.experts.flops(c, d) + 2 * e * c * d,  # + gate scaling and masking of the tokens
            "combine": 2 * e * self.output_width(d),
        }

    def options(self):
        return {**super().options(), "num_experts": self.num_experts, "shared_experts": self.shared_experts}


@keras.saving.register_keras_serializable(package="tfmoe")
class GShardExperts(_TokenExperts):
    """Top-``k`` token routing with per-example capacity (see the module docstring).

    Args:
        max_len, backbone, backbone_options: see :class:`~tfmoe.models.ctr.interest.InterestLayer`.
        num_experts: ``E`` (default 4).
        k: experts per token (default 2).
        capacity_factor: see the module docstring (default 1.25).
        normalize: ``"selected"`` (softmax over the k chosen logits, default) or ``"all"`` (GShard/Switch gates).
        router_temperature: softmax temperature of the router (default 1).
        shared_experts: one backbone for every expert (default False).
        load_balance_weight: weight of the load-balance loss (default 1e-2).
    """

    def __init__(self, max_len, backbone="din", backbone_options=None, num_experts=4, k=2, capacity_factor=1.25,
                 normalize="selected", router_temperature=1.0, shared_experts=False, load_balance_weight=1e-2,
                 **kwargs):
        super().__init__(max_len, backbone, backbone_options, num_experts, shared_experts, **kwargs)
        owner = type(self).__name__
        self.capacity_factor = v.check_float(owner, "capacity_factor", capacity_factor, minimum=0.0,
                                             min_inclusive=False)
        self.load_balance_weight = v.check_float(owner, "load_balance_weight", load_balance_weight, minimum=0.0)
        self.router = TopKRouter(self.num_experts, k=k, normalize=normalize, temperature=router_temperature,
                                 dtype=self.dtype_policy, name="router")
        self.k = self.router.k
        self.normalize = self.router.normalize
        self.router_temperature = self.router.temperature

    def buffer_size(self, length):
        return expert_capacity(length, self.num_experts, self.capacity_factor, self.k)

    def route(self, sequence, mask, training=None):
        length, e, k = dim(sequence, 1), self.num_experts, self.k
        route = self.router(sequence, mask=mask, training=training)
        onehot = tf.one_hot(route["expert_indices"], e)  # [B, L, k, E]; -1 (padding) -> zeros
        rank_bonus = tf.cast((k - tf.range(k)) * length, tf.float32)[None, None, :, None]
        chosen = tf.reduce_sum(onehot, axis=2) > 0  # [B, L, E]
        position = tf.range(length, dtype=tf.float32)[None, :, None]
        priority = tf.where(chosen, tf.reduce_sum(onehot * rank_bonus, axis=2) + position, -1.0)
        capacity = self.buffer_size(length)
        top = tf.math.top_k(tf.transpose(priority, [0, 2, 1]), k=capacity)  # [B, E, C]
        real = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        limit = expert_capacity(real, e, self.capacity_factor, k)[:, None, None]
        used = tf.logical_and(top.values >= 0, tf.range(capacity)[None, None, :] < limit)
        indices = tf.where(used, top.indices, -1)
        gates = tf.gather(tf.transpose(route["combine_weights"], [0, 2, 1]), top.indices, batch_dims=2)
        return indices, tf.where(used, gates, 0.0), route

    def add_balance_loss(self, routes, masks):
        """``load_balance_weight * E sum_e f_e P_e`` over the real tokens of every route."""
        if self.load_balance_weight == 0:
            return
        e = self.num_experts
        tokens = {key: tf.concat([tf.reshape(route[key], [-1, e]) for route in routes], axis=0)
                  for key in ("router_probs", "dispatch_mask")}
        flat_mask = tf.concat([tf.reshape(mask, [-1]) for mask in masks], axis=0)
        self.add_loss(self.load_balance_weight * losses.switch_load_balance_loss(
            tokens["router_probs"], tokens["dispatch_mask"], flat_mask))

    def routing_flops(self, length):
        return 4 * length * self.k * self.num_experts

    def options(self):
        return {**super().options(), "k": self.k, "capacity_factor": self.capacity_factor,
                "normalize": self.normalize, "router_temperature": self.router_temperature,
                "load_balance_weight": self.load_balance_weight}


@keras.saving.register_keras_serializable(package="tfmoe")
class ExpertChoiceExperts(_TokenExperts):
    """Expert-choice token routing (see the module docstring).

    Args:
        max_len, backbone, backbone_options: see :class:`~tfmoe.models.ctr.interest.InterestLayer`.
        num_experts: ``E`` (default 4).
        capacity_factor: average experts per token (default 2).
        router_temperature: softmax temperature of the router (default 1).
        shared_experts: one backbone for every expert (default False).
    """

    def __init__(self, max_len, backbone="din", backbone_options=None, num_experts=4, capacity_factor=2.0,
                 router_temperature=1.0, shared_experts=False, **kwargs):
        super().__init__(max_len, backbone, backbone_options, num_experts, shared_experts, **kwargs)
        self.router = ExpertChoiceRouter(self.num_experts, capacity_factor=capacity_factor,
                                         temperature=router_temperature, dtype=self.dtype_policy, name="router")
        self.capacity_factor = self.router.capacity_factor
        self.router_temperature = self.router.temperature

    def buffer_size(self, length):
        return self.router.capacity(length)

    def route(self, sequence, mask, training=None):
        route = self.router(sequence, mask=mask, training=training)
        return route["token_indices"], route["token_gates"], route

    def options(self):
        return {**super().options(), "capacity_factor": self.capacity_factor,
                "router_temperature": self.router_temperature}
