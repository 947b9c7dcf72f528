r"""The MoS interest layer (Mixture of Sequence, WWW 2026): sessions -> themes -> backbone experts -> fusion.

Reconstructed from the abstract and the spec of ``docs/specs/mos.md`` (sections 4.1-4.8); the
paper's body was not available, so every unknown is an option whose default is the spec's::

    sessions   [B, M, P, d] <- SessionGrouper(e, mask)        session_mode (S1 time gap / S2 chunks)
    router     p_{m,k} = softmax_k(-||W_s s_m - c_k||^2 / tau)  SessionThemeRouter (routing unit = session):
                         argmax = nearest prototype, VQ-VAE losses (router="codebook", default),
               or        softmax_k(W_s s_m . c_k / tau)          (router="softmax")
               X^(k)   = top-C sessions of theme k, time order, items scaled by p_{m,k}  [B, K, C*P, d]
               p_{q,k} = the same with s_m <- q               target routing
    themes     sparse (R1): E_k = Backbone(X^(k), q) for the k_q themes with the largest p_{q,k}
               dense  (R2): all K themes
               target_weighting: E_k <- p_{q,k} E_k   (the gradient path of the target routing)
    short      E_short = Backbone(last W positions, q)
    global     E_glob  = Backbone(whole history, q)  ("full")  or  Backbone(session means s_1..s_M, q) ("sessions")
    fusion     u = sum_s g_s E_s,  g = softmax(MLP([q ; mean_s E_s]))   MultiScaleFusion over [glob, short, themes]
    losses     load_balance_weight * K sum_k f_k P_k + diversity_weight * ||C C^T - I||^2
               (+ codebook_weight * ||sg(z) - c||^2 + commitment_weight * ||z - sg(c)||^2 with router="codebook")

Options (defaults = the spec's suggestions; [I] = inferred, not from the paper):
    session_mode: ``"chunk"`` (S2: chunks of ``session_length`` real items from the most recent;
        default, robust to coarse timestamps), ``"session_ids"`` (S1 with the data's
        ``history_session_ids``, e.g. a 30-minute gap at prepare time) or ``"time_gap"`` (S1 in the
        layer: a new session where ``history_timestamps`` jump by more than ``session_gap`` seconds).
    session_length: ``P`` items kept per session (default 10) [I].
    num_sessions: ``M`` most recent sessions kept (default ``ceil(max_len / P)``) [I].
    session_gap: seconds, for ``"time_gap"`` (default 1800 = 30 min).
    num_themes: ``K`` (default 4).
    sessions_per_theme: ``C`` (default ``ceil(M / K)``, so the themes can hold every session) [I].
    theme_mode: ``"sparse"`` (R1, default: only the target's themes run) or ``"dense"`` (R2).
    active_themes: ``k_q`` themes run in sparse mode (default 1) [I].
    shared_experts: theme experts share one backbone (default True: fewer parameters). With
        ``False`` each theme has its own backbone; in sparse mode all ``K`` then run (static shapes,
        dense FLOPs) and the target's ``k_q`` outputs are kept.
    short_window: ``W`` most recent positions of the short-term expert (default 20) [I].
    global_expert: ``"full"`` (default) or ``"sessions"`` (the pooled, cheaper multi-scale reading).
    router_temperature, assignment (``"argmax"`` / ``"expert_choice"``), session_pooling (``"mean"`` /
        ``"attention"``), probability_scaling (``"multiply"`` / ``"straight_through"`` / ``"none"``):
        see :class:`~tfmoe.layers.SessionThemeRouter`.
    target_weighting: scale theme outputs by ``p_{q,k}`` (default True) [I].
    load_balance_weight: Switch load balance over sessions (default 1e-2).
    diversity_weight: prototype orthogonality penalty (default 0).
    router: ``"codebook"`` (default: each session to its nearest prototype, with VQ-VAE codebook and
        commitment losses and dead-code restarts) [I: the paper's Sec. 4.1 cites VQ-VAE] or
        ``"softmax"`` (prototype similarities). ``benchmarks/theme_purity.py`` measures how well each
        recovers the planted themes of the synthetic data.
        codebook_weight (default 1) and commitment_weight (``beta``) weight the two losses; ``beta``
        defaults to 0 here (VQ-VAE: 0.25): MoS has no reconstruction loss to keep the session
        embeddings honest, so the commitment term pulls each session towards the code it already has
        and locks early mistakes in (``benchmarks/theme_purity.py --ablate-commitment`` measures it).
        See :class:`~tfmoe.layers.SessionThemeRouter`.
    fusion_units: hidden sizes of the fusion gate MLP (default [64]).

Length groups: a CTR model with ``length_groups=G`` (:class:`~tfmoe.models.ctr.base.CTRModel`) splits its batch
into ``G`` groups of rows of similar history width, each cut to its widest row
(:class:`~tfmoe.models.length_groups.LengthGroups`), and calls :meth:`MixtureOfSequences.call_grouped`. The router
runs in its three stages (:meth:`~tfmoe.layers.SessionThemeRouter.pool`, ``assign``, then the gathers)::

    per group    grid [b_g, M_w, P, d], M_w = min(M, ceil(w_g / P))  (session ids: min(M, w_g))  -> z [b_g, M_w, d_c]
    batch        z padded in front to [B, M, d_c], rows in batch order -> assignment, losses, statistics, restarts
    per group    session indices moved to the group's grid, cut to min(C, M_w) slots -> theme, short-term and
                 global experts (each cut to its widest row) -> fusion

so the embeddings, the grid, the pooling and the experts touch each row's width instead of ``L``, while the batch-level
load-balance and codebook losses, the statistics and the dead-code restarts see the batch's sessions exactly as
without groups: the logits, the losses and the gradients are those of the padded batch.

Example:
    >>> import numpy as np
    >>> from tfmoe.models.ctr.mixture_of_sequences import MixtureOfSequences
    >>> mos = MixtureOfSequences(max_len=12, backbone="din", session_length=3, num_themes=2)
    >>> sequence, mask = np.random.rand(1, 12, 4).astype("float32"), np.ones((1, 12), bool)
    >>> tuple(mos(sequence, mask, np.random.rand(1, 4).astype("float32")).shape)
    (1, 4)

References:
    * MoS: Lin et al., "Mixture of Sequence: Theme-Aware Mixture-of-Experts for Long-Sequence
      Recommendation", WWW 2026, https://arxiv.org/abs/2604.20858.
    * VQ-VAE: van den Oord, Vinyals, Kavukcuoglu, "Neural Discrete Representation Learning",
      NeurIPS 2017, https://arxiv.org/abs/1711.00937.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfmoe.layers import MultiScaleFusion, SessionGrouper, SessionThemeRouter, masking, select_target_themes
from tfmoe.layers.session_router import gather_theme_items
from tfmoe.models.ctr import inputs as ci
from tfmoe.models.ctr.experts import ExpertSet
from tfmoe.models.ctr.interest import InterestLayer
from tfmoe.utils import flops as fl
from tfmoe.utils import validation as v
from tfmoe.utils.xla import dim

SESSION_MODES = ("chunk", "session_ids", "time_gap")
THEME_MODES = ("sparse", "dense")
GLOBAL_EXPERT_MODES = ("full", "sessions")


def _pad_sessions(values, num_sessions: int):
    """``[b, M_w, ...]`` -> ``[b, M, ...]``: empty (zero, False) session slots in front, the static ``M`` restored."""
    pad = num_sessions - tf.shape(values)[1]
    padded = tf.pad(values, [[0, 0], [pad, 0]] + [[0, 0]] * (values.shape.rank - 2))
    return tf.ensure_shape(padded, [None, num_sessions, *values.shape[2:]])


def time_gap_session_ids(timestamps, mask, gap: int):
    """Session ids ``[B, L]``: +1 at each real position whose previous real position is > ``gap`` seconds older.

    Left padding is assumed (real positions are contiguous); ids at padding are meaningless.
    """
    t = tf.cast(timestamps, tf.int64)
    previous = tf.concat([t[:, :1], t[:, :-1]], axis=1)
    previous_real = tf.concat([tf.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1)
    new = tf.logical_and(mask, tf.logical_or(tf.logical_not(previous_real), t - previous > gap))
    return tf.cumsum(tf.cast(new, tf.int32), axis=1)


@keras.saving.register_keras_serializable(package="tfmoe")
class MixtureOfSequences(InterestLayer):
    """MoS around a backbone (see the module docstring for the method and every option)."""

    supports_length_groups = True

    def __init__(self, max_len, backbone="din", backbone_options=None, session_mode="chunk", session_length=10,
                 num_sessions=None, session_gap=1800, num_themes=4, sessions_per_theme=None, theme_mode="sparse",
                 active_themes=1, shared_experts=True, short_window=20, global_expert="full",
                 router_temperature=1.0, assignment="argmax", session_pooling="mean",
                 probability_scaling="multiply", target_weighting=True, load_balance_weight=1e-2,
                 diversity_weight=0.0, fusion_units=(64,), router="codebook", codebook_weight=1.0,
                 commitment_weight=0.0, **kwargs):
        super().__init__(max_len, backbone, backbone_options, **kwargs)
        owner = type(self).__name__
        self.session_mode = v.check_choice(owner, "session_mode", session_mode, SESSION_MODES)
        self.session_length = v.check_int(owner, "session_length", session_length, minimum=1)
        self.num_sessions = v.check_optional_int(owner, "num_sessions", num_sessions, minimum=1)
        self.session_gap = v.check_int(owner, "session_gap", session_gap, minimum=0)
        self.num_themes = v.check_int(owner, "num_themes", num_themes, minimum=1)
        sessions = self.num_sessions or math.ceil(self.max_len / self.session_length)
        self.sessions_per_theme = v.check_optional_int(owner, "sessions_per_theme", sessions_per_theme, minimum=1,
                                                       maximum=sessions)
        self.theme_mode = v.check_choice(owner, "theme_mode", theme_mode, THEME_MODES)
        self.active_themes = v.check_int(owner, "active_themes", active_themes, minimum=1, maximum=self.num_themes)
        self.shared_experts = v.check_bool(owner, "shared_experts", shared_experts)
        self.short_window = v.check_int(owner, "short_window", short_window, minimum=1)
        self.global_expert = v.check_choice(owner, "global_expert", global_expert, GLOBAL_EXPERT_MODES)
        self.target_weighting = v.check_bool(owner, "target_weighting", target_weighting)
        self.resolved = {
            "num_sessions": sessions,
            "sessions_per_theme": self.sessions_per_theme or math.ceil(sessions / self.num_themes),
            "short_window": min(self.short_window, self.max_len),
        }
        dtype = self.dtype_policy
        self.grouper = SessionGrouper(sessions, self.session_length,
                                      mode="chunk" if self.session_mode == "chunk" else "session",
                                      dtype=dtype, name="sessions")
        # the router validates its options (errors name SessionThemeRouter); they are read back from it
        self.theme_router = SessionThemeRouter(
            self.num_themes, self.resolved["sessions_per_theme"], temperature=router_temperature,
            assignment=assignment, pooling=session_pooling, probability_scaling=probability_scaling,
            load_balance_weight=load_balance_weight, diversity_weight=diversity_weight, router=router,
            codebook_weight=codebook_weight, commitment_weight=commitment_weight, dtype=dtype, name="theme_router",
        )
        self.router_temperature = self.theme_router.temperature
        self.assignment = self.theme_router.assignment
        self.session_pooling = self.theme_router.pooling
        self.probability_scaling = self.theme_router.probability_scaling
        self.load_balance_weight = self.theme_router.load_balance_weight
        self.diversity_weight = self.theme_router.diversity_weight
        self.router = self.theme_router.router
        self.codebook_weight = self.theme_router.codebook_weight
        self.commitment_weight = self.theme_router.commitment_weight
        self.theme_experts = ExpertSet(self.backbone, self.backbone_options, self.num_themes, self.shared_experts,
                                       dtype=dtype, name="theme_experts")
        self.short_backbone = self.make_backbone("short_expert")
        self.global_backbone = self.make_backbone("global_expert")
        self.fusion = MultiScaleFusion(hidden_units=fusion_units, dtype=dtype, name="fusion")
        self.fusion_units = list(self.fusion.hidden_units)

    @property
    def themes_run(self) -> int:
        """Theme experts computed per example."""
        sparse_shared = self.theme_mode == "sparse" and self.shared_experts
        return self.active_themes if sparse_shared else self.num_themes

    @property
    def themes_fused(self) -> int:
        """Theme outputs entering the fusion."""
        return self.active_themes if self.theme_mode == "sparse" else self.num_themes

    def _build(self, d):
        m, p = self.resolved["num_sessions"], self.session_length
        self.theme_router.build((None, m, p, d))
        self.theme_experts.build((None, None, None, d))
        self.short_backbone.build((None, None, d))
        self.global_backbone.build((None, None, d))
        self.fusion.build((None, 2 + self.themes_fused, self.output_width(d)), (None, d))

    def output_width(self, d):
        return self.theme_experts.output_width(d)

    def required_features(self):
        return {"session_ids": (ci.HISTORY_SESSION_IDS,), "time_gap": (ci.HISTORY_TIMESTAMPS,)}.get(
            self.session_mode, ())

    # ----- routing ------------------------------------------------------------------------------
    def session_ids(self, features, mask):
        """Session ids ``[B, L]`` of the session mode (``None`` in ``"chunk"`` mode)."""
        owner = type(self).__name__
        if self.session_mode == "session_ids":
            return ci.require(owner, features, ci.HISTORY_SESSION_IDS)
        if self.session_mode == "time_gap":
            return time_gap_session_ids(ci.require(owner, features, ci.HISTORY_TIMESTAMPS), mask, self.session_gap)
        return None

    def route(self, sequence, mask, target, features):
        """``(grid [B, M, P, d], item_mask, session_mask, router outputs)`` of the theme router."""
        grid, item_mask, session_mask = self.grouper(sequence, self.session_ids(features, mask), mask=mask)
        return grid, item_mask, session_mask, self.theme_router(grid, item_mask, target=target)

    def call(self, sequence, mask, target, features=None, training=None):
        return self._interests([(sequence, mask, target, features)], None, training)[0]

    def call_grouped(self, groups, plan, training=None):
        """Length groups (see the module docstring): each group's grid holds the sessions its width can, the router
        assigns the whole batch's sessions in one step, the experts and the fusion run per group."""
        return self._interests(groups, plan, training)

    def _interests(self, groups, plan, training):
        """The interests of ``groups`` (``(sequence, mask, target, features)`` each) that ``plan`` split from one
        batch (``None``: one group, the batch)."""
        reads = [self._read_sessions(sequence, mask, features, cut=plan is not None)
                 for sequence, mask, _, features in groups]
        assignments = self._assign(reads, plan, training)
        return [self._fuse(read, assigned, sequence, mask, target, training)
                for read, assigned, (sequence, mask, target, _) in zip(reads, assignments, groups)]

    def _read_sessions(self, sequence, mask, features, cut):
        """The session grid of a group and its pooled, projected sessions (router stage 1). With ``cut``, a history
        cut to a width ``w`` holds ``M_w = min(M, ceil(w / P))`` chunks (``min(M, w)`` sessions by id) and gets a grid
        of that many; else the grid has the ``M`` slots."""
        sessions = self.sessions_in_width(dim(sequence, 1)) if cut else None
        grid, item_mask, session_mask = self.grouper(sequence, self.session_ids(features, mask), mask=mask,
                                                     num_sessions=sessions)
        with tf.name_scope(self.theme_router.name):  # the router's stages, named as its calls are
            items, item_mask, valid, projected = self.theme_router.pool(grid, item_mask)
        return {"items": items, "item_mask": item_mask, "session_mask": session_mask, "valid": valid,
                "projected": projected, "sessions": sessions}

    def sessions_in_width(self, width):
        """``M_w``, the sessions a history of ``width`` items can fill, at most ``M``: ``ceil(width / P)`` chunks, or
        up to ``width`` sessions by id (``width``: an int, or a scalar tensor for a group's dynamic width)."""
        most = -(-width // self.session_length) if self.session_mode == "chunk" else width
        m = self.resolved["num_sessions"]
        return tf.minimum(most, m) if tf.is_tensor(most) else min(most, m)

    def _assign(self, reads, plan, training):
        """Router stage 2 on the whole batch: the groups' sessions padded in front to the ``M`` slots, in the batch's
        row order, then each group's share of the assignment, its session indices moved to its own grid and cut to
        the ``C_w = min(C, M_w)`` slots its sessions can fill (indices are time-sorted, unused slots first)."""
        with tf.name_scope(self.theme_router.name):
            if plan is None:
                return [self.theme_router.assign(reads[0]["projected"], reads[0]["valid"], training=training)]
            m, c = self.resolved["num_sessions"], self.resolved["sessions_per_theme"]
            routed = self.theme_router.assign(plan.merge([_pad_sessions(r["projected"], m) for r in reads]),
                                              plan.merge([_pad_sessions(r["valid"], m) for r in reads]),
                                              training=training)
        keys = ("session_indices", "selection_mask", "selection_scale", "theme_mask")
        parts = {key: plan.split(routed[key]) for key in keys}
        assignments = []
        for g, read in enumerate(reads):
            assigned = {key: parts[key][g] for key in keys}
            unfillable = c - tf.minimum(c, read["sessions"])  # leading slots no session of the group can fill
            indices = assigned["session_indices"][:, :, unfillable:]
            assigned["session_indices"] = tf.where(indices >= 0, indices - (m - read["sessions"]), indices)
            assigned["selection_mask"] = assigned["selection_mask"][:, :, unfillable:]
            assigned["selection_scale"] = assigned["selection_scale"][:, :, unfillable:]
            assignments.append(assigned)
        return assignments

    def themes(self, routed, target, training, cut_to_widest=False):
        """Theme expert outputs ``[B, K', d_o]``, their mask and their target weights ``p_{q,k}`` (``routed``: the
        router's outputs with ``session_items``, ``session_item_mask`` and ``target_probs``; ``cut_to_widest``: the
        experts read the subsequences cut to the widest, for a length group)."""
        if self.theme_mode == "sparse" and self.shared_experts:
            with tf.name_scope(self.theme_router.name):
                chosen = select_target_themes(routed, self.active_themes)
            out = self.theme_experts(chosen["theme_items"], chosen["theme_item_mask"], target, training=training,
                                     cut_to_widest=cut_to_widest)
            return out, chosen["theme_mask"], chosen["target_weights"]
        with tf.name_scope(self.theme_router.name):
            items, item_mask = gather_theme_items(routed["session_items"], routed["session_item_mask"],
                                                  routed["session_indices"], routed["selection_mask"],
                                                  routed["selection_scale"])
        out = self.theme_experts(items, item_mask, target, training=training, cut_to_widest=cut_to_widest)
        if self.theme_mode == "dense":
            return out, routed["theme_mask"], routed["target_probs"]
        top = tf.math.top_k(routed["target_probs"], k=self.active_themes)
        picked = tf.gather(out, top.indices, batch_dims=1)
        return picked, tf.gather(routed["theme_mask"], top.indices, batch_dims=1), top.values

    def _fuse(self, read, assigned, sequence, mask, target, training):
        """One group's experts (themes, short-term, global) and their fusion ``[b, d_out]``."""
        with tf.name_scope(self.theme_router.name):
            target_probs = self.theme_router.target_probabilities(target)
        routed = {**assigned, "session_items": read["items"], "session_item_mask": read["item_mask"],
                  "target_probs": target_probs}
        themes, theme_mask, weights = self.themes(routed, target, training, cut_to_widest=read["sessions"] is not None)
        if self.target_weighting:
            themes = themes * tf.cast(weights, themes.dtype)[..., None]
        w = self.resolved["short_window"]
        short = self.short_backbone(sequence[:, -w:], mask[:, -w:], target, training=training)
        if self.global_expert == "full":
            glob = self.global_backbone(sequence, mask, target, training=training)
        else:
            means = masking.masked_mean(read["items"], read["item_mask"], axis=2)  # [B, M, d]
            glob = self.global_backbone(means, read["session_mask"], target, training=training)
        experts = tf.concat([glob[:, None], short[:, None], tf.cast(themes, glob.dtype)], axis=1)
        always = tf.ones_like(mask[:, :1])  # the global and short-term experts always run
        expert_mask = tf.concat([always, always, theme_mask], axis=1)
        fused, _ = self.fusion(experts, target, expert_mask=expert_mask, training=training)
        return fused

    # ----- FLOPs and config ---------------------------------------------------------------------
    def flops(self, d, width=None):
        """Forward FLOPs per example by part; with ``width``, of a row of ``width`` history items scored in a length
        group of that width: its grid holds the ``M_w`` sessions such a row can fill (chunks: ``ceil(width / P)``;
        session ids: up to ``width`` sessions; at most ``M``), the theme experts read at most ``min(C, M_w)`` of
        them, the global expert ``width`` positions (``"sessions"``: its ``M_w`` sessions), the short-term one
        ``min(W, width)``. The router's assignment runs over the batch's ``M`` slots."""
        m, p = self.resolved["num_sessions"], self.session_length
        c, k = self.resolved["sessions_per_theme"], self.num_themes
        out = self.output_width(d)
        read = min(width or self.max_len, self.max_len)
        sessions = self.sessions_in_width(read)
        chosen = min(c, sessions)
        parts = {
            # session means, routing projection and prototypes (Einsum: not seen by the profiler),
            # scaling + masking of the K theme subsequences
            "router": (2 * sessions * p * d + fl.matmul_flops(sessions + 1, d, d) + fl.matmul_flops(m + 1, d, k)
                       + 2 * k * chosen * p * d),
            "theme_experts": self.theme_experts.flops(chosen * p, d, self.themes_run),
            "short_expert": self.short_backbone.flops(min(self.resolved["short_window"], read), d),
        }
        if self.global_expert == "full":
            parts["global_expert"] = self.global_backbone.flops(read, d)
        else:
            parts["global_expert"] = self.global_backbone.flops(sessions, d) + 2 * sessions * p * d
        experts = 2 + self.themes_fused
        gate = fl.mlp_flops(1, d + out, [*self.fusion_units, experts])
        weighting = self.themes_fused * out if self.target_weighting else 0
        parts["fusion"] = gate + 2 * experts * out + 5 * experts + weighting
        return parts

    def options(self):
        return {
            **super().options(),
            "session_mode": self.session_mode,
            "session_length": self.session_length,
            "num_sessions": self.num_sessions,
            "session_gap": self.session_gap,
            "num_themes": self.num_themes,
            "sessions_per_theme": self.sessions_per_theme,
            "theme_mode": self.theme_mode,
            "active_themes": self.active_themes,
            "shared_experts": self.shared_experts,
            "short_window": self.short_window,
            "global_expert": self.global_expert,
            "router_temperature": self.router_temperature,
            "assignment": self.assignment,
            "session_pooling": self.session_pooling,
            "probability_scaling": self.probability_scaling,
            "target_weighting": self.target_weighting,
            "load_balance_weight": self.load_balance_weight,
            "diversity_weight": self.diversity_weight,
            "fusion_units": list(self.fusion_units),
            "router": self.router,
            "codebook_weight": self.codebook_weight,
            "commitment_weight": self.commitment_weight,
        }
