"""Mixture-of-experts feed-forward layer with dense, sparse top-k and expert-choice routing.

``y(x) = sum_{e in S(x)} g_e(x) * f_e(x)`` where ``f_e`` are the FFN experts of an :class:`ExpertBank`,
``g`` the router's gate weights and ``S(x)`` the experts that process token ``x``:

* ``routing="dense"``: every expert on every token, ``g = softmax(z)`` (cost grows with ``E``);
* ``routing="top_k"``: the ``k`` best experts per token, limited by a per-expert capacity
  ``C = ceil(capacity_factor * k * T / E)``; cost grows with ``k * capacity_factor``, not with ``E``;
* ``routing="expert_choice"``: each expert takes its top-``C`` tokens of each example
  (``C = ceil(capacity_factor * k * L / E)``, ``k`` = average experts per token).
* ``routing="dropless"``: top-k without capacity: the ``k * T`` assignments, sorted by expert, are packed
  without padding and each expert runs on exactly its own rows (``k * T`` rows in all, where top-k with a
  no-drop capacity ``E / k`` computes ``E * T``). Same outputs as top-k without drops; the experts' row
  counts are data-dependent shapes, so it does not compile under XLA (``jit_compile``): use ``top_k`` there.

Sparse dispatch (``top_k``): the ``k * T`` token->expert assignments are ordered rank-major (every
token's first choice before any second choice, earlier tokens first within a rank), sorted by expert
with one ``argsort``; assignment ``j`` of expert ``e`` lands in slot ``j`` of ``e``'s buffer if
``j < C``, else it is **dropped**. Tokens are gathered into ``[E, C, d]`` buffers with integer indices,
the bank runs on the buffers and the gated results are gathered back per assignment and summed.
No ``[T, E, C]`` tensor is ever built. When ``capacity_factor >= E / k`` nothing can be dropped (``C = T``)
and, outside XLA, ``top_k`` runs the packed dispatch of ``"dropless"`` instead: the same outputs from
``k T`` expert rows rather than ``E T``. Under XLA it keeps the static buffers.

Here ``T`` is the number of **unmasked** tokens of the call on this replica (padding is not counted, so
padding never changes which tokens are dropped); buffers are allocated for the static worst case
``T = all positions``. Under ``tf.distribute`` each replica routes its own share of the batch.

Dropped tokens: a token whose every assignment overflowed gets output 0: it passes through on the
**residual path, which the caller adds** (``x + MoE(x)`` in the transformer block). Masked tokens are
never dispatched and get output 0. The numbers of dropped assignments and tokens are counted exactly
(see :mod:`tfmoe.layers.routing_stats`).

Auxiliary losses (``self.add_loss``, float32, per replica; weight 0 disables):

* ``load_balance_weight`` * Switch/GShard ``E * sum_e f_e P_e`` (``f_e``: share of routed assignments,
  ``P_e``: mean router probability; 1 at uniform routing; constant 1 for dense routing);
* ``z_loss_weight`` * ST-MoE ``mean(logsumexp(z)^2)``;
* ``entropy_loss_weight`` * HyMoERec ``sum_e m_e log m_e`` (``m_e``: mean router probability).

Example:
    >>> import numpy as np
    >>> from tfmoe import layers
    >>> moe = layers.MixtureOfExperts(num_experts=8, hidden_dim=64, k=2, capacity_factor=1.25)
    >>> x = np.random.rand(4, 10, 32).astype("float32")
    >>> y = moe(x, mask=np.arange(10)[None, :] < np.array([[10], [7], [3], [9]]))
    >>> y.shape, float(moe.routing_statistics["tokens"].numpy())
    (TensorShape([4, 10, 32]), 29.0)

References:
    * Shazeer et al., "Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer", ICLR 2017. https://arxiv.org/abs/1701.06538
    * Lepikhin et al., "GShard", ICLR 2021. https://arxiv.org/abs/2006.16668
    * Fedus, Zoph & Shazeer, "Switch Transformers", JMLR 2022. https://arxiv.org/abs/2101.03961
    * Zhou et al., "Mixture-of-Experts with Expert Choice Routing", NeurIPS 2022. https://arxiv.org/abs/2202.09368
    * Zoph et al., "ST-MoE" (router z-loss), 2022. https://arxiv.org/abs/2202.08906
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf

from tfmoe.layers import losses
from tfmoe.layers.experts import ExpertBank
from tfmoe.layers.routers import (
    ExpertChoiceRouter,
    SoftmaxRouter,
    TopKRouter,
    capacity_never_drops,
    expert_capacity,
    flat_token_mask,
    flatten_tokens,
    leading_shape,
    num_tokens,
    unflatten_tokens,
)
from tfmoe.layers.routing_stats import add_routing_statistics, assign_routing_statistics, routing_statistics
from tfmoe.utils.forwarding import Forwarded
from tfmoe.utils.validation import check_bool, check_choice, check_float, check_int, check_optional_int
from tfmoe.utils.xla import in_xla_context

ROUTINGS = ("top_k", "dense", "expert_choice", "dropless")


class DispatchPlan(NamedTuple):
    """Where each token->expert assignment goes (see :func:`plan_top_k_dispatch`).

    Attributes:
        slot_token: ``[E, C]`` int32, token copied into each buffer slot (arbitrary where unused).
        slot_assignment: ``[E, C]`` int32, flat assignment ``r * T + t`` held by each slot (arbitrary where
            unused).
        slot_used: ``[E, C]`` bool, slot holds a kept assignment.
        assignment_slot: ``[k, T]`` int32, flat slot ``e * C + c`` of each assignment (arbitrary where
            not kept).
        assignment_kept: ``[k, T]`` bool, assignment fits in its expert's capacity.
        assignment_routed: ``[k, T]`` bool, assignment exists (token unmasked).
    """

    slot_token: tf.Tensor
    slot_assignment: tf.Tensor
    slot_used: tf.Tensor
    assignment_slot: tf.Tensor
    assignment_kept: tf.Tensor
    assignment_routed: tf.Tensor


def plan_top_k_dispatch(expert_indices, num_experts: int, capacity, effective_capacity=None) -> DispatchPlan:
    """Plans capacity-limited dispatch of top-k choices with one sort (``O(kT log kT)``, no ``[T, E, C]``).

    Args:
        expert_indices: ``[T, k]`` int32 expert per token and rank, ``-1`` for masked tokens.
        num_experts: ``E``.
        capacity: static buffer size ``C`` (int or scalar tensor).
        effective_capacity: slots each expert may fill, ``<= C`` (default ``C``).

    Priority: rank-major (all first choices, then all second choices, ...), token order within a rank.

    Example:
        >>> import numpy as np
        >>> plan = plan_top_k_dispatch(np.array([[0], [0], [1], [0]], "int32"), num_experts=2, capacity=2)
        >>> plan.assignment_kept.numpy().tolist()  # expert 0 is full after two tokens
        [[True, True, True, False]]
    """
    if effective_capacity is None:
        effective_capacity = capacity
    k, tokens, count, routed, experts, order, counts, sorted_position = _sort_by_expert(expert_indices, num_experts)
    starts = tf.cumsum(counts, exclusive=True)
    rank = sorted_position - tf.gather(starts, experts)
    kept = routed & (rank < effective_capacity)
    slot = tf.minimum(experts, num_experts - 1) * capacity + tf.minimum(rank, capacity - 1)

    column = tf.range(capacity)
    slot_used = column[None, :] < tf.minimum(counts[:num_experts], effective_capacity)[:, None]
    sorted_index = tf.minimum(starts[:num_experts, None] + column[None, :], count - 1)
    slot_assignment = tf.gather(order, sorted_index)
    return DispatchPlan(
        slot_token=tf.math.floormod(slot_assignment, tokens),
        slot_assignment=slot_assignment,
        slot_used=slot_used,
        assignment_slot=tf.reshape(slot, [k, -1]),
        assignment_kept=tf.reshape(kept, [k, -1]),
        assignment_routed=tf.reshape(routed, [k, -1]),
    )


def _sort_by_expert(expert_indices, num_experts: int):
    """The rank-major assignments of ``expert_indices [T, k]`` sorted by expert (masked ones last).

    Returns ``(k, T, k * T, routed [kT], expert [kT] (E if masked), order [kT] (assignment ids in sorted
    order), counts [E + 1] (assignments per expert, then masked), position [kT] (inverse of order))``.
    """
    expert_indices = tf.convert_to_tensor(expert_indices, tf.int32)
    k = expert_indices.shape[-1]
    tokens = tf.shape(expert_indices)[0] if expert_indices.shape[0] is None else expert_indices.shape[0]
    assignments = tf.reshape(tf.transpose(expert_indices), [-1])  # rank-major [k * T]
    routed = assignments >= 0
    experts = tf.where(routed, assignments, num_experts)  # masked tokens sort after every expert
    count = k * tokens if isinstance(tokens, int) else tf.size(experts)
    # Unique keys make the sort order independent of the sort's stability.
    small = isinstance(count, int) and (num_experts + 1) * count < 2**31
    key_dtype = tf.int32 if small else tf.int64
    keys = tf.cast(experts, key_dtype) * tf.cast(count, key_dtype) + tf.range(count, dtype=key_dtype)
    order = tf.argsort(keys)  # assignment ids in buffer order
    counts = tf.math.unsorted_segment_sum(tf.ones_like(experts), experts, num_experts + 1)
    position = tf.scatter_nd(order[:, None], tf.range(count), [count])  # inverse permutation
    return k, tokens, count, routed, experts, order, counts, position


class PackedPlan(NamedTuple):
    """Dropless dispatch (see :func:`plan_packed_dispatch`): assignments packed by expert, no padding.

    Attributes:
        row_token: ``[k T]`` int32, token held by each packed row.
        row_assignment: ``[k T]`` int32, flat assignment ``r * T + t`` held by each packed row.
        rows_per_expert: ``[E + 1]`` int32, rows of each expert in packed order, then the masked assignments'.
        assignment_row: ``[k, T]`` int32, packed row of each assignment.
        assignment_routed: ``[k, T]`` bool, assignment exists (token unmasked).
    """

    row_token: tf.Tensor
    row_assignment: tf.Tensor
    rows_per_expert: tf.Tensor
    assignment_row: tf.Tensor
    assignment_routed: tf.Tensor


def plan_packed_dispatch(expert_indices, num_experts: int) -> PackedPlan:
    """Plans dropless dispatch of top-k choices ``[T, k]`` (``-1`` for masked tokens) with one sort.

    Example:
        >>> import numpy as np
        >>> plan = plan_packed_dispatch(np.array([[1], [0], [1], [-1]], "int32"), num_experts=2)
        >>> plan.row_token.numpy().tolist(), plan.rows_per_expert.numpy().tolist()
        ([1, 0, 2, 3], [1, 2, 1])
    """
    k, tokens, _, routed, _, order, counts, position = _sort_by_expert(expert_indices, num_experts)
    return PackedPlan(
        row_token=tf.math.floormod(order, tokens),
        row_assignment=order,
        rows_per_expert=counts,
        assignment_row=tf.reshape(position, [k, -1]),
        assignment_routed=tf.reshape(routed, [k, -1]),
    )


def dispatch_packed(tokens, plan: PackedPlan):
    """Copies tokens ``[T, d]`` into packed rows ``[k T, d]`` (``rows[j] = tokens[row_token[j]]``); like
    :func:`dispatch_to_buffers`, the gradient is a gather (each token sums its routed rows' gradients)."""
    routed = plan.assignment_routed

    @tf.custom_gradient
    def dispatch(x):
        rows = tf.gather(x, plan.row_token)

        def grad(d_rows):
            per_assignment = tf.gather(d_rows, plan.assignment_row)  # [k, T, d]
            return tf.reduce_sum(tf.where(routed[..., None], per_assignment, tf.zeros_like(per_assignment)), axis=0)

        return rows, grad

    return dispatch(tokens)


def combine_packed(expert_rows, plan: PackedPlan, expert_gates):
    """``y_t = sum_r gate[t, r] * rows[row(r, t)]`` over routed assignments: ``[k T, o]`` -> ``[T, o]``."""
    out_dim = expert_rows.shape[-1]

    @tf.custom_gradient
    def gather_rows(rows):
        per_assignment = tf.gather(rows, plan.assignment_row)  # [k, T, o]

        def grad(d_per_assignment):  # each row holds exactly one assignment: the inverse permutation
            return tf.gather(tf.reshape(d_per_assignment, [-1, out_dim]), plan.row_assignment)

        return per_assignment, grad

    per_assignment = gather_rows(expert_rows)
    weights = tf.where(plan.assignment_routed, tf.transpose(expert_gates), 0.0)
    return tf.reduce_sum(per_assignment * tf.cast(weights, per_assignment.dtype)[:, :, None], axis=0)


def dispatch_to_buffers(tokens, plan: DispatchPlan):
    """Copies tokens ``[T, d]`` into buffers ``[E, C, d]``: ``buffers[e, c] = tokens[slot_token[e, c]]``.

    The gradient is computed with gathers too (each token sums the gradients of its kept slots), not
    with the scatter-add that ``tf.gather``'s default gradient needs.
    """
    num_experts, capacity = plan.slot_token.shape[0], tf.shape(plan.slot_token)[1]
    kept = plan.assignment_kept

    @tf.custom_gradient
    def dispatch(x):
        buffers = tf.gather(x, plan.slot_token)

        def grad(d_buffers):
            flat = tf.reshape(d_buffers, [num_experts * capacity, -1])
            rows = tf.gather(flat, plan.assignment_slot)  # [k, T, d]
            return tf.reduce_sum(tf.where(kept[..., None], rows, tf.zeros_like(rows)), axis=0)

        return buffers, grad

    return dispatch(tokens)


def combine_top_k(expert_outputs, plan: DispatchPlan, expert_gates):
    """``y_t = sum_r gate[t, r] * out[slot(r, t)]`` over kept assignments: ``[E, C, o]`` -> ``[T, o]``.

    Like :func:`dispatch_to_buffers`, the gradient w.r.t. ``expert_outputs`` is a gather (each used slot
    takes the gradient of the one assignment it holds).
    """
    out_dim = expert_outputs.shape[-1]
    used = tf.reshape(plan.slot_used, [-1])
    slot_assignment = tf.reshape(plan.slot_assignment, [-1])

    @tf.custom_gradient
    def gather_rows(outputs):
        rows = tf.gather(tf.reshape(outputs, [-1, out_dim]), plan.assignment_slot)  # [k, T, o]

        def grad(d_rows):
            flat = tf.gather(tf.reshape(d_rows, [-1, out_dim]), slot_assignment)
            flat = tf.where(used[:, None], flat, tf.zeros_like(flat))
            return tf.reshape(flat, tf.shape(outputs))

        return rows, grad

    rows = gather_rows(expert_outputs)
    weights = tf.where(plan.assignment_kept, tf.transpose(expert_gates), 0.0)
    # An element-wise product and a sum over k (an einsum here becomes T tiny matmuls in graph mode).
    return tf.reduce_sum(rows * tf.cast(weights, rows.dtype)[:, :, None], axis=0)


@keras.saving.register_keras_serializable(package="tfmoe")
class MixtureOfExperts(keras.layers.Layer):
    """Mixture-of-experts FFN ``y = sum_{e in S(x)} g_e(x) f_e(x)``: dense, top-k or expert-choice routing.

    See :mod:`tfmoe.layers.moe` for routing, capacity, dropping and the auxiliary losses. The caller
    adds the residual (``x + MoE(x)``) and any LayerNorm.

    Args:
        num_experts: ``E >= 1``.
        hidden_dim: inner size ``h`` of each expert.
        output_dim: ``d_out`` (default: input size ``d``).
        routing: ``"top_k"`` (default), ``"dense"``, ``"expert_choice"`` or ``"dropless"`` (top-k without
            capacity; not under XLA).
        k: experts per token (top-k) / average experts per token (expert choice), ``1 <= k <= E``.
        capacity_factor: ``> 0``; ``C = min(T, ceil(capacity_factor * k * T / E))``. ``E / k`` or more
            never drops.
        normalize: top-k gate normalisation, ``"selected"`` (softmax over the k chosen logits) or ``"all"``.
        temperature: router temperature ``tau > 0``.
        noise_std: top-k router logit noise in training (0 = none); ``seed``: its optional int seed.
        activation, dropout, use_bias, kernel_initializer: expert FFN settings (see :class:`ExpertBank`).
        router_initializer: router kernel initializer (``None``: truncated normal, variance ``0.1 / d``).
        load_balance_weight, z_loss_weight, entropy_loss_weight: auxiliary loss weights ``>= 0``.
        track_statistics: keep the last call's routing statistics in ``routing_statistics``.

    Call: ``moe(x, mask=None, training=None)``, ``x [..., d]`` (``[B, L, d]`` for expert choice), ``mask``
    bool with the leading shape of ``x``; returns ``[..., d_out]`` (0 at masked and dropped tokens).

    Example:
        >>> import numpy as np
        >>> from tfmoe import layers
        >>> dense = layers.MixtureOfExperts(num_experts=4, hidden_dim=16, routing="dense")
        >>> dense(np.random.rand(2, 3, 8).astype("float32")).shape
        TensorShape([2, 3, 8])
    """

    # arguments the layer passes on to its expert bank, read from there
    activation = Forwarded("experts")
    dropout = Forwarded("experts")
    use_bias = Forwarded("experts")
    kernel_initializer = Forwarded("experts")

    def __init__(
        self,
        num_experts,
        hidden_dim,
        output_dim=None,
        routing="top_k",
        k=2,
        capacity_factor=1.25,
        normalize="selected",
        temperature=1.0,
        noise_std=0.0,
        seed=None,
        activation="gelu",
        dropout=0.0,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        router_initializer=None,
        load_balance_weight=0.01,
        z_loss_weight=0.0,
        entropy_loss_weight=0.0,
        track_statistics=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_experts = check_int(owner, "num_experts", num_experts, minimum=1)
        self.hidden_dim = check_int(owner, "hidden_dim", hidden_dim, minimum=1)
        self.output_dim = check_optional_int(owner, "output_dim", output_dim, minimum=1)
        self.routing = check_choice(owner, "routing", routing, ROUTINGS)
        self.k = check_int(owner, "k", k, minimum=1, maximum=self.num_experts)
        self.capacity_factor = check_float(
            owner, "capacity_factor", capacity_factor, minimum=0.0, min_inclusive=False
        )
        self.load_balance_weight = check_float(owner, "load_balance_weight", load_balance_weight, minimum=0.0)
        self.z_loss_weight = check_float(owner, "z_loss_weight", z_loss_weight, minimum=0.0)
        self.entropy_loss_weight = check_float(owner, "entropy_loss_weight", entropy_loss_weight, minimum=0.0)
        self.track_statistics = check_bool(owner, "track_statistics", track_statistics)
        # Router arguments are validated here so that errors name this layer.
        self.normalize = check_choice(owner, "normalize", normalize, ("selected", "all"))
        self.temperature = check_float(owner, "temperature", temperature, minimum=0.0, min_inclusive=False)
        self.noise_std = check_float(owner, "noise_std", noise_std, minimum=0.0)
        self.seed = check_optional_int(owner, "seed", seed, minimum=0)
        router_args = dict(
            num_experts=self.num_experts,
            temperature=temperature,
            kernel_initializer=router_initializer,
            dtype=self.dtype_policy,
            name="router",
        )
        if self.routing == "dense":
            self.router = SoftmaxRouter(**router_args)
        elif self.routing in ("top_k", "dropless"):
            self.router = TopKRouter(
                k=self.k, normalize=normalize, noise_std=noise_std, seed=seed, **router_args
            )
        else:
            self.router = ExpertChoiceRouter(capacity_factor=self.capacity_factor * self.k, **router_args)
        self.router_initializer = self.router.get_config()["kernel_initializer"]
        try:
            self.experts = ExpertBank(
                num_experts=self.num_experts,
                hidden_dim=self.hidden_dim,
                output_dim=self.output_dim,
                activation=activation,
                dropout=dropout,
                use_bias=use_bias,
                kernel_initializer=kernel_initializer,
                dtype=self.dtype_policy,
                name="experts",
            )
        except ValueError as error:  # forwarded expert arguments: name this layer too
            raise ValueError(f"{owner}: {error}") from error
        self.supports_masking = True
        self._statistic_names = ()

    # ------------------------------------------------------------------ build / config
    def build(self, input_shape):
        owner = type(self).__name__
        if input_shape[-1] is None:
            raise ValueError(f"{owner}: the last input dimension must be known, got {tuple(input_shape)}")
        if self.routing == "expert_choice" and (len(input_shape) != 3 or input_shape[1] is None):
            raise ValueError(
                f"{owner}: routing='expert_choice' needs inputs [batch, length, dim] with a known length, "
                f"got {tuple(input_shape)}"
            )
        self.router.build(input_shape)
        self.experts.build(input_shape)
        if self.track_statistics:
            stats = add_routing_statistics(self, self.num_experts)
            self._statistic_names = tuple(stats)
            for name, variable in stats.items():
                object.__setattr__(self, f"_stat_{name}", variable)

    @property
    def routing_statistics(self) -> dict:
        """Last call's routing statistics: name -> non-trainable variable (empty if not tracked)."""
        return {name: getattr(self, f"_stat_{name}") for name in self._statistic_names}

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        experts = self.experts.get_config()
        config.update(
            num_experts=self.num_experts,
            hidden_dim=self.hidden_dim,
            output_dim=self.output_dim,
            routing=self.routing,
            k=self.k,
            capacity_factor=self.capacity_factor,
            activation=experts["activation"],
            dropout=experts["dropout"],
            use_bias=experts["use_bias"],
            kernel_initializer=experts["kernel_initializer"],
            load_balance_weight=self.load_balance_weight,
            z_loss_weight=self.z_loss_weight,
            entropy_loss_weight=self.entropy_loss_weight,
            track_statistics=self.track_statistics,
            normalize=self.normalize,
            temperature=self.temperature,
            noise_std=self.noise_std,
            seed=self.seed,
            router_initializer=self.router_initializer,
        )
        return config

    # ------------------------------------------------------------------ forward
    def capacity(self, tokens):
        """Per-expert capacity for ``tokens`` unmasked tokens (top-k routing)."""
        return expert_capacity(tokens, self.num_experts, self.capacity_factor, self.k)

    def call(self, inputs, mask=None, training=None):
        owner = type(self).__name__
        lead = leading_shape(inputs)
        flat_mask = flat_token_mask(owner, mask, inputs)
        token_mask = None
        if flat_mask is not None:  # masked values (even NaN) can never reach experts or statistics
            token_mask = tf.reshape(flat_mask, tf.shape(inputs)[:-1])
            inputs = tf.where(token_mask[..., None], inputs, tf.zeros_like(inputs))
        if self.routing == "expert_choice":
            route = self.router(inputs, mask=token_mask, training=training)
            outputs, counts = self._expert_choice(inputs, route, token_mask, training)
        else:
            flat_inputs = flatten_tokens(inputs)
            route = self.router(flat_inputs, mask=flat_mask, training=training)
            if self.routing == "dense":
                outputs, counts = self._dense(flat_inputs, route, flat_mask, training)
            elif self.routing == "dropless":
                outputs, counts = self._dropless(flat_inputs, route, flat_mask, training)
            else:
                outputs, counts = self._top_k(flat_inputs, route, flat_mask, num_tokens(lead), training)
            outputs = unflatten_tokens(outputs, lead)
        self._losses_and_statistics(route, flat_mask, counts)
        return outputs

    def _dense(self, flat_inputs, route, flat_mask, training):
        outputs = self.experts(flat_inputs, route["combine_weights"], training=training)
        tokens = _count(flat_mask, tf.shape(flat_inputs)[0])
        counts = dict(routed_assignments=tokens * self.num_experts, dropped_assignments=0, dropped_tokens=0)
        return outputs, counts

    def _dropless(self, flat_inputs, route, flat_mask, training):
        if in_xla_context():
            raise ValueError(
                f"{type(self).__name__} {self.name!r}: routing='dropless' cannot be compiled by XLA "
                "(jit_compile=True): each expert's row count depends on the data; use jit_compile=False, or "
                f"routing='top_k' with capacity_factor >= num_experts / k = {self.num_experts / self.k:g} "
                "(the same outputs, no token dropped)"
            )
        return self._packed(flat_inputs, route, training)

    def _packed(self, flat_inputs, route, training):
        """Top-k without capacity: the ``k T`` assignments packed by expert (dynamic shapes, so not under XLA)."""
        plan = plan_packed_dispatch(route["expert_indices"], self.num_experts)
        rows = dispatch_packed(flat_inputs, plan)  # [k T, d]
        outputs = combine_packed(self.experts.run_packed(rows, plan.rows_per_expert, training), plan,
                                 route["expert_gates"])
        routed = tf.reduce_sum(tf.cast(plan.assignment_routed, tf.int32))
        return outputs, dict(routed_assignments=routed, dropped_assignments=0, dropped_tokens=0)

    def _top_k(self, flat_inputs, route, flat_mask, total_tokens, training):
        if capacity_never_drops(self.num_experts, self.capacity_factor, self.k) and not in_xla_context():
            # No assignment can be dropped (C = T), so the buffers would hold E T rows for k T assignments: the
            # packed dispatch computes the same outputs with k T expert rows. XLA needs the static buffers.
            return self._packed(flat_inputs, route, training)
        capacity = self.capacity(total_tokens)
        effective = (
            capacity if flat_mask is None else self.capacity(tf.reduce_sum(tf.cast(flat_mask, tf.int32)))
        )
        plan = plan_top_k_dispatch(route["expert_indices"], self.num_experts, capacity, effective)
        buffers = dispatch_to_buffers(flat_inputs, plan)  # [E, C, d]
        outputs = combine_top_k(self.experts(buffers, training=training), plan, route["expert_gates"])
        routed = tf.reduce_sum(tf.cast(plan.assignment_routed, tf.int32))
        kept = tf.reduce_sum(tf.cast(plan.assignment_kept, tf.int32))
        token_routed = plan.assignment_routed[0]
        token_kept = tf.reduce_any(plan.assignment_kept, axis=0)
        counts = dict(
            routed_assignments=routed,
            dropped_assignments=routed - kept,
            dropped_tokens=tf.reduce_sum(tf.cast(token_routed & ~token_kept, tf.int32)),
        )
        return outputs, counts

    def _expert_choice(self, inputs, route, token_mask, training):
        token_indices, token_gates = route["token_indices"], route["token_gates"]  # [B, E, C]
        batch = tf.shape(inputs)[0] if inputs.shape[0] is None else inputs.shape[0]
        length, model_dim = inputs.shape[1], inputs.shape[2]
        capacity = token_indices.shape[-1]
        safe_indices = tf.maximum(token_indices, 0)
        buffers = tf.gather(inputs, safe_indices, batch_dims=1)  # [B, E, C, d]
        buffers = tf.reshape(tf.transpose(buffers, [1, 0, 2, 3]), [self.num_experts, -1, model_dim])
        expert_out = self.experts(buffers, training=training)  # [E, B * C, o]
        out_dim = expert_out.shape[-1]
        expert_out = tf.transpose(
            tf.reshape(expert_out, [self.num_experts, -1, capacity, out_dim]), [1, 0, 2, 3]
        )
        weighted = expert_out * tf.cast(token_gates, expert_out.dtype)[..., None]  # unused slots have gate 0
        segments = tf.range(batch)[:, None, None] * length + safe_indices
        outputs = tf.math.unsorted_segment_sum(
            tf.reshape(weighted, [-1, out_dim]), tf.reshape(segments, [-1]), batch * length
        )
        outputs = tf.reshape(outputs, [batch, length, out_dim])
        used = tf.reduce_sum(tf.cast(token_indices >= 0, tf.int32))
        unpicked = tf.reduce_sum(route["dispatch_mask"], axis=-1) == 0  # [B, L]
        if token_mask is not None:
            unpicked = unpicked & token_mask
        counts = dict(
            routed_assignments=used,
            dropped_assignments=0,
            dropped_tokens=tf.reduce_sum(tf.cast(unpicked, tf.int32)),
        )
        return outputs, counts

    # ------------------------------------------------------------------ losses and statistics
    def _losses_and_statistics(self, route, flat_mask, counts):
        probs = route["router_probs"]
        flat_probs = tf.reshape(probs, [-1, self.num_experts])
        flat_dispatch = tf.reshape(route["dispatch_mask"], [-1, self.num_experts])
        flat_logits = tf.reshape(route["router_logits"], [-1, self.num_experts])
        values = {}
        if self.load_balance_weight > 0 or self.track_statistics:
            values["load_balance_loss"] = losses.switch_load_balance_loss(
                flat_probs, flat_dispatch, flat_mask
            )
        if self.z_loss_weight > 0 or self.track_statistics:
            values["z_loss"] = losses.router_z_loss(flat_logits, flat_mask)
        if self.entropy_loss_weight > 0 or self.track_statistics:
            values["entropy_loss"] = losses.entropy_balance_loss(flat_probs, flat_mask)
        for name, weight in (
            ("load_balance_loss", self.load_balance_weight),
            ("z_loss", self.z_loss_weight),
            ("entropy_loss", self.entropy_loss_weight),
        ):
            if weight > 0:
                self.add_loss(weight * values[name])
        if not self.track_statistics:
            return
        if self.routing == "dense":
            load = losses.masked_mean_over_tokens(flat_probs, flat_mask)
        else:
            load = losses.expert_load(flat_dispatch, flat_mask)
        stats = routing_statistics(
            tokens=_count(flat_mask, tf.shape(flat_probs)[0]),
            expert_load=load,
            router_entropy=losses.router_entropy(flat_probs, flat_mask),
            **counts,
            **values,
        )
        assign_routing_statistics(self.routing_statistics, stats)


def _count(flat_mask, total):
    """Unmasked tokens: ``sum(mask)`` or ``total`` without a mask (int32)."""
    if flat_mask is None:
        return tf.cast(total, tf.int32)
    return tf.reduce_sum(tf.cast(flat_mask, tf.int32))
