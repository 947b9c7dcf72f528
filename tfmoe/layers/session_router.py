"""MoS theme-aware session router: sessions -> learnable themes -> static theme subsequences."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfmoe.layers import losses, masking, routing_stats
from tfmoe.utils import validation as v
from tfmoe.utils.initializers import fresh_initializer

_MISSING = -1  # session index of an unused slot


def prototype_diversity_loss(prototypes):
    """``||C_n C_n^T - I||_F^2`` for the row-normalised prototypes ``C_n`` (0 iff orthonormal)."""
    normalised = tf.math.l2_normalize(tf.cast(prototypes, tf.float32), axis=-1)
    gram = tf.matmul(normalised, normalised, transpose_b=True)
    return tf.reduce_sum(tf.square(gram - tf.eye(tf.shape(gram)[0])))


def theme_routing_statistics(
    routing_probs, session_indices, assignment: str = "argmax", session_mask=None, routing_logits=None
) -> dict:
    """Routing statistics of one router call, over real sessions only (padding never counts).

    Same names and meaning as :func:`tfmoe.layers.routing_stats.routing_statistics` with
    token = session and expert = theme, plus two theme-specific entries:

    * ``expert_load [K]``: fraction of real sessions whose top theme is ``k`` (the Switch ``f_k``);
    * ``tokens``: real sessions; ``dropped_tokens``: real sessions no theme selected;
    * ``routed_assignments`` / ``dropped_assignments``: ``"argmax"``: one per real session / those
      left out because their theme was full; ``"expert_choice"``: filled slots / 0;
    * ``router_entropy``, ``load_balance_loss`` (unweighted Switch loss), ``z_loss`` (0 without
      ``routing_logits``), ``entropy_loss`` (``sum_k m_k log m_k``);
    * ``mean_probs [K]``: mean ``p_{m,k}``; ``selected_sessions [K]``: mean sessions per theme and row.

    Args:
        routing_probs: ``[B, M, K]`` (zero rows for empty sessions).
        session_indices: ``[B, K, C]`` chosen sessions (-1 for unused slots).
        assignment: the router's ``assignment``.
        session_mask: ``[B, M]`` real sessions; default: rows of ``routing_probs`` with a positive sum.
        routing_logits: optional ``[B, M, K]`` logits for the z-loss.
    """
    routing_probs = tf.cast(routing_probs, tf.float32)
    if session_mask is None:
        session_mask = tf.reduce_sum(routing_probs, axis=-1) > 0
    num_sessions, num_themes = routing_probs.shape[1], routing_probs.shape[-1]
    dispatch = tf.one_hot(tf.argmax(routing_probs, axis=-1), num_themes)
    filled = session_indices >= 0
    taken = tf.reduce_any(
        tf.one_hot(session_indices, num_sessions, on_value=True, off_value=False), axis=[1, 2]
    )
    sessions = tf.reduce_sum(tf.cast(session_mask, tf.int32))
    dropped = tf.reduce_sum(tf.cast(tf.logical_and(session_mask, tf.logical_not(taken)), tf.int32))
    if assignment == "argmax":
        routed, dropped_assignments = sessions, dropped
    else:
        routed, dropped_assignments = tf.reduce_sum(tf.cast(filled, tf.int32)), 0
    z_loss = 0.0 if routing_logits is None else losses.router_z_loss(routing_logits, session_mask)
    stats = routing_stats.routing_statistics(
        tokens=sessions,
        routed_assignments=routed,
        dropped_assignments=dropped_assignments,
        dropped_tokens=dropped,
        expert_load=losses.expert_load(dispatch, session_mask),
        router_entropy=losses.router_entropy(routing_probs, session_mask),
        load_balance_loss=losses.switch_load_balance_loss(routing_probs, dispatch, session_mask),
        z_loss=z_loss,
        entropy_loss=losses.entropy_balance_loss(routing_probs, session_mask),
    )
    stats["mean_probs"] = losses.masked_mean_over_tokens(routing_probs, session_mask)
    stats["selected_sessions"] = tf.reduce_mean(tf.reduce_sum(tf.cast(filled, tf.float32), axis=-1), axis=0)
    return stats


def select_target_themes(router_outputs: dict, num_active_themes: int) -> dict:
    """Keeps the target's ``k_q`` most probable themes (MoS switch R1: run only those theme experts).

    Args:
        router_outputs: the dict returned by :class:`SessionThemeRouter` called with a ``target``.
        num_active_themes: ``k_q`` in ``[1, K]``.

    Returns:
        dict with ``theme_indices [B, k_q]`` (by decreasing ``p_{q,k}``), ``target_weights [B, k_q]``
        (their ``p_{q,k}``), and the gathered ``theme_items [B, k_q, C*P, d]``,
        ``theme_item_mask [B, k_q, C*P]`` and ``theme_mask [B, k_q]``.
    """
    if "target_probs" not in router_outputs:
        raise ValueError(
            "select_target_themes: `router_outputs` has no 'target_probs'; call the router with a target"
        )
    num_themes = router_outputs["target_probs"].shape[-1]
    k = v.check_int(
        "select_target_themes", "num_active_themes", num_active_themes, minimum=1, maximum=num_themes
    )
    top = tf.math.top_k(router_outputs["target_probs"], k=k)
    selected = {
        name: tf.gather(router_outputs[name], top.indices, batch_dims=1)
        for name in ("theme_items", "theme_item_mask", "theme_mask")
    }
    return {"theme_indices": top.indices, "target_weights": top.values, **selected}


@keras.saving.register_keras_serializable(package="tfmoe")
class SessionThemeRouter(keras.layers.Layer):
    r"""Routes sessions to ``K`` learnable themes and gathers one static subsequence per theme (MoS).

    With session items ``e [B, M, P, d]``, item mask ``[B, M, P]``, projection ``W_s [d, d_c]``
    and prototypes ``c_k`` (rows of ``C [K, d_c]``)::

        s_m     = masked_mean_i e_{m,i}        (pooling="mean")
                  sum_i softmax_i(e_{m,i} . u / sqrt(d)) e_{m,i}   (pooling="attention", learnable u)
        p_{m,k} = softmax_k( sim(W_s^T s_m, c_k) / tau )    sim = dot product, or cosine
        score_{k,m} = p_{m,k} if session m is eligible for theme k else -inf
                  eligible: m is a real session and (assignment="argmax") argmax_j p_{m,j} = k,
                  or (assignment="expert_choice") any real session
        S_k     = top-C sessions by score_{k,.}, re-sorted by time (unused slots first, index -1)
        X^(k)   = concat_{m in S_k} w_{m,k} * session_m   [C*P, d]
                  w = p_{m,k} ("multiply"), 1 with the gradient of p ("straight_through"), or 1 ("none")

    Routing math runs in float32. Empty (fully padded) sessions get ``p_m = 0``, are never
    selected and are excluded from every statistic and loss; if a theme has fewer than ``C``
    eligible sessions the extra slots are masked. With a target ``e_q [B, d]`` the layer also
    returns ``p_{q,k} = softmax_k(sim(W_s^T e_q, c_k) / tau)`` so a model can run only the
    target's top themes (see :func:`select_target_themes`). Auxiliary losses (``add_loss``, per replica):

        load_balance_weight * K * sum_k f_k P_k   (f_k: fraction of real sessions with argmax k,
                                                   P_k: their mean p_{.,k}; Switch/GShard)
        diversity_weight * ||C_n C_n^T - I||_F^2  (C_n: row-normalised prototypes)

    Args:
        num_themes: ``K``.
        sessions_per_theme: ``C`` (at most ``M``).
        temperature: ``tau > 0``.
        assignment: ``"argmax"`` (a theme only takes sessions whose top theme it is) or
            ``"expert_choice"`` (each theme takes its top-``C`` sessions; a session may feed several).
        pooling: ``"mean"`` or ``"attention"`` session representation.
        projection_dim: ``d_c``; default ``d``.
        similarity: ``"dot"`` or ``"cosine"``.
        probability_scaling: ``"multiply"``, ``"straight_through"`` or ``"none"`` (no gradient path
            from the gathered items to the router).
        load_balance_weight, diversity_weight: auxiliary loss weights (>= 0; 0 disables).
        track_statistics: keep the last call's statistics (:func:`theme_routing_statistics` plus
            ``diversity_loss``) in ``routing_statistics``, a dict name -> non-trainable float32
            variable, the protocol :class:`RoutingStatsLogger` reads.
        kernel_initializer, prototype_initializer: initializers of ``W_s`` (and ``u``) and ``C``.

    Call arguments:
        session_items: ``[B, M, P, d]`` (e.g. from :class:`SessionGrouper`).
        item_mask: ``[B, M, P]`` (``True`` = real item).
        target: optional ``[B, d]`` target embedding.

    Returns:
        dict: ``theme_items [B, K, C*P, d]``, ``theme_item_mask [B, K, C*P]``,
        ``session_indices [B, K, C]`` (int32, time-sorted, -1 for unused slots),
        ``selection_mask [B, K, C]``, ``selection_weights [B, K, C]`` (``p_{m,k}`` of the chosen
        sessions), ``theme_mask [B, K]`` (theme received at least one session),
        ``routing_probs [B, M, K]`` and, with a target, ``target_probs [B, K]``.

    Example:
        >>> import numpy as np
        >>> from tfmoe import layers
        >>> router = layers.SessionThemeRouter(num_themes=3, sessions_per_theme=2)
        >>> items = np.random.rand(4, 5, 6, 8).astype("float32")
        >>> out = router(items, np.ones((4, 5, 6), bool), target=np.random.rand(4, 8).astype("float32"))
        >>> tuple(out["theme_items"].shape), tuple(out["target_probs"].shape)
        ((4, 3, 12, 8), (4, 3))
        >>> float(router.routing_statistics["tokens"].numpy())  # last call's statistics: 20 sessions
        20.0
    """

    def __init__(
        self,
        num_themes: int,
        sessions_per_theme: int,
        temperature: float = 1.0,
        assignment: str = "argmax",
        pooling: str = "mean",
        projection_dim: int | None = None,
        similarity: str = "dot",
        probability_scaling: str = "multiply",
        load_balance_weight: float = 1e-2,
        diversity_weight: float = 0.0,
        track_statistics: bool = True,
        kernel_initializer="glorot_uniform",
        prototype_initializer="orthogonal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_themes = v.check_int(owner, "num_themes", num_themes, minimum=1)
        self.sessions_per_theme = v.check_int(owner, "sessions_per_theme", sessions_per_theme, minimum=1)
        self.temperature = v.check_float(owner, "temperature", temperature, minimum=0.0, min_inclusive=False)
        self.assignment = v.check_choice(owner, "assignment", assignment, ("argmax", "expert_choice"))
        self.pooling = v.check_choice(owner, "pooling", pooling, ("mean", "attention"))
        self.projection_dim = v.check_optional_int(owner, "projection_dim", projection_dim, minimum=1)
        self.similarity = v.check_choice(owner, "similarity", similarity, ("dot", "cosine"))
        self.probability_scaling = v.check_choice(
            owner, "probability_scaling", probability_scaling, ("multiply", "straight_through", "none")
        )
        self.load_balance_weight = v.check_float(
            owner, "load_balance_weight", load_balance_weight, minimum=0.0
        )
        self.diversity_weight = v.check_float(owner, "diversity_weight", diversity_weight, minimum=0.0)
        self.track_statistics = v.check_bool(owner, "track_statistics", track_statistics)
        self._statistic_names = ()
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.prototype_initializer = keras.initializers.get(prototype_initializer)

    def build(self, session_items_shape):
        owner = type(self).__name__
        if len(session_items_shape) != 4 or None in tuple(session_items_shape)[1:]:
            raise ValueError(
                f"{owner}: `session_items` must be [batch, sessions, items, features] with static "
                f"sessions, items and features, got shape {tuple(session_items_shape)}"
            )
        num_sessions, d = int(session_items_shape[1]), int(session_items_shape[-1])
        if self.sessions_per_theme > num_sessions:
            raise ValueError(
                f"{owner}: `sessions_per_theme` must be <= the number of sessions ({num_sessions}), "
                f"got {self.sessions_per_theme}"
            )
        self._feature_dim = d
        projection_dim = self.projection_dim or d
        # Routing runs in float32 under mixed precision: these weights are never autocast.
        self.projection_kernel = self.add_weight(
            name="projection_kernel",
            shape=(d, projection_dim),
            initializer=fresh_initializer(self.kernel_initializer, "projection_kernel"),
            autocast=False,
        )
        self.prototypes = self.add_weight(
            name="prototypes",
            shape=(self.num_themes, projection_dim),
            initializer=fresh_initializer(self.prototype_initializer, "prototypes"),
            autocast=False,
        )
        if self.pooling == "attention":
            self.pooling_query = self.add_weight(
                name="pooling_query",
                shape=(d,),
                initializer=fresh_initializer(self.kernel_initializer, "pooling_query"),
                autocast=False,
            )
        if self.track_statistics:
            self._build_statistics()
        self.built = True

    def _build_statistics(self):
        stats = routing_stats.add_routing_statistics(self, self.num_themes)
        for name, shape in (
            ("mean_probs", (self.num_themes,)),
            ("selected_sessions", (self.num_themes,)),
            ("diversity_loss", ()),
        ):
            stats[name] = self.add_weight(
                name=name, shape=shape, initializer="zeros", trainable=False, autocast=False
            )
        self._statistic_names = tuple(stats)
        for name, variable in stats.items():  # plain attributes: add_weight already tracks them
            object.__setattr__(self, f"_stat_{name}", variable)

    @property
    def routing_statistics(self) -> dict:
        """Last call's routing statistics: name -> non-trainable float32 variable (empty if not tracked)."""
        return {name: getattr(self, f"_stat_{name}") for name in self._statistic_names}

    def _pool_sessions(self, items32, item_mask):
        """Session representations ``[B, M, d]`` (float32) from items ``[B, M, P, d]``."""
        if self.pooling == "mean":
            return masking.masked_mean(items32, item_mask, axis=2)
        scores = tf.einsum("bmpd,d->bmp", items32, self.pooling_query) / math.sqrt(self._feature_dim)
        weights = masking.masked_softmax(scores, item_mask)
        return tf.einsum("bmp,bmpd->bmd", weights, items32)

    def theme_logits(self, representations):
        """``sim(W_s^T x, c_k) / tau`` for float32 ``x [..., d]`` -> ``[..., K]``."""
        projected = tf.einsum("...d,dc->...c", representations, self.projection_kernel)
        prototypes = self.prototypes
        if self.similarity == "cosine":
            projected = tf.math.l2_normalize(projected, axis=-1)
            prototypes = tf.math.l2_normalize(prototypes, axis=-1)
        return tf.einsum("...c,kc->...k", projected, prototypes) / self.temperature

    def _select(self, routing_probs, session_valid):
        """Time-sorted top-``C`` sessions per theme: indices ``[B, K, C]`` (-1 unused) and their mask."""
        probs_by_theme = tf.transpose(routing_probs, [0, 2, 1])  # [B, K, M]
        eligible = tf.broadcast_to(session_valid[:, None, :], tf.shape(probs_by_theme))
        if self.assignment == "argmax":
            top_theme = tf.argmax(routing_probs, axis=-1, output_type=tf.int32)  # [B, M]
            themes = tf.range(self.num_themes, dtype=tf.int32)[None, :, None]
            eligible = tf.logical_and(eligible, tf.equal(top_theme[:, None, :], themes))
        scores = tf.where(eligible, probs_by_theme, -1.0)
        top = tf.math.top_k(scores, k=self.sessions_per_theme)
        indices = tf.sort(tf.where(top.values >= 0.0, top.indices, _MISSING), axis=-1)
        return indices, indices >= 0, probs_by_theme

    def _scale(self, weights, selection_mask):
        """Per-session factor applied to the gathered items (gradient path to the router)."""
        if self.probability_scaling == "multiply":
            return weights
        selected = tf.cast(selection_mask, tf.float32)
        if self.probability_scaling == "straight_through":
            return selected * (1.0 + weights - tf.stop_gradient(weights))  # forward 1, gradient of p
        return selected

    def _losses_and_statistics(self, routing_logits, routing_probs, session_valid, session_indices):
        """Adds the weighted auxiliary losses and records the statistics (one pass over the values)."""
        stats = {}
        if self.track_statistics:
            stats = theme_routing_statistics(
                routing_probs, session_indices, self.assignment, session_valid, routing_logits
            )
        elif self.load_balance_weight > 0:
            dispatch = tf.one_hot(tf.argmax(routing_probs, axis=-1), self.num_themes)
            stats["load_balance_loss"] = losses.switch_load_balance_loss(
                routing_probs, dispatch, session_valid
            )
        if self.diversity_weight > 0 or self.track_statistics:
            stats["diversity_loss"] = prototype_diversity_loss(self.prototypes)
        if self.load_balance_weight > 0:
            self.add_loss(self.load_balance_weight * stats["load_balance_loss"])
        if self.diversity_weight > 0:
            self.add_loss(self.diversity_weight * stats["diversity_loss"])
        if self.track_statistics:
            for name, variable in self.routing_statistics.items():
                variable.assign(stats[name])

    def call(self, session_items, item_mask, target=None):
        dtype = self.compute_dtype
        items = tf.cast(session_items, dtype)
        item_mask = masking.as_bool_mask(item_mask)
        session_valid = tf.reduce_any(item_mask, axis=-1)  # [B, M]

        representations = self._pool_sessions(tf.cast(items, tf.float32), item_mask)
        routing_logits = self.theme_logits(representations)
        routing_probs = masking.masked_softmax(routing_logits, session_valid[..., None])
        indices, selection_mask, probs_by_theme = self._select(routing_probs, session_valid)
        self._losses_and_statistics(routing_logits, routing_probs, session_valid, indices)
        safe = tf.maximum(indices, 0)
        weights = tf.gather(probs_by_theme, safe, batch_dims=2) * tf.cast(selection_mask, tf.float32)
        theme_items = tf.gather(items, safe, batch_dims=1)  # [B, K, C, P, d]
        theme_item_mask = tf.logical_and(tf.gather(item_mask, safe, batch_dims=1), selection_mask[..., None])
        theme_items *= tf.cast(self._scale(weights, selection_mask), dtype)[..., None, None]
        theme_items = masking.apply_mask(theme_items, theme_item_mask)

        num_themes, slots = self.num_themes, self.sessions_per_theme * items.shape[2]
        outputs = {
            "theme_items": tf.reshape(theme_items, [-1, num_themes, slots, items.shape[-1]]),
            "theme_item_mask": tf.reshape(theme_item_mask, [-1, num_themes, slots]),
            "session_indices": indices,
            "selection_mask": selection_mask,
            "selection_weights": weights,
            "theme_mask": tf.reduce_any(selection_mask, axis=-1),
            "routing_probs": routing_probs,
        }
        if target is not None:
            target32 = tf.cast(target, tf.float32)
            if target32.shape.rank != 2 or target32.shape[-1] != self._feature_dim:
                raise ValueError(
                    f"{type(self).__name__}: `target` must be [batch, {self._feature_dim}], "
                    f"got shape {tuple(target32.shape)}"
                )
            outputs["target_probs"] = tf.nn.softmax(self.theme_logits(target32), axis=-1)
        return outputs

    def compute_mask(self, session_items, previous_mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            num_themes=self.num_themes,
            sessions_per_theme=self.sessions_per_theme,
            temperature=self.temperature,
            assignment=self.assignment,
            pooling=self.pooling,
            projection_dim=self.projection_dim,
            similarity=self.similarity,
            probability_scaling=self.probability_scaling,
            load_balance_weight=self.load_balance_weight,
            diversity_weight=self.diversity_weight,
            track_statistics=self.track_statistics,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            prototype_initializer=keras.initializers.serialize(self.prototype_initializer),
        )
        return config
