"""MoS theme-aware session router: sessions -> themes (softmax or VQ codebook) -> static theme subsequences."""

from __future__ import annotations

import math
import warnings

import keras
import tensorflow as tf

from tfmoe.layers import losses, masking, routing_stats
from tfmoe.utils import validation as v
from tfmoe.utils.initializers import fresh_initializer
from tfmoe.utils.xla import dim

_MISSING = -1  # session index of an unused slot
ROUTERS = ("softmax", "codebook")
ASSIGNMENTS = ("argmax", "expert_choice")
POOLINGS = ("mean", "attention")
SIMILARITIES = ("dot", "cosine")
PROBABILITY_SCALINGS = ("multiply", "straight_through", "none")


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
        ``theme_item_mask [B, k_q, C*P]`` and ``theme_mask [B, k_q]``: the router outputs' at those
        themes, gathered from the sessions of the ``k_q`` themes alone (``session_items``), so that a
        compiled step that reads only these never builds the ``K`` themes' ``theme_items``.
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
    chosen = {
        name: tf.gather(router_outputs[name], top.indices, batch_dims=1)
        for name in ("session_indices", "selection_mask", "selection_scale", "theme_mask")
    }
    items, item_mask = gather_theme_items(
        router_outputs["session_items"], router_outputs["session_item_mask"], chosen["session_indices"],
        chosen["selection_mask"], chosen["selection_scale"],
    )
    return {"theme_indices": top.indices, "target_weights": top.values, "theme_items": items,
            "theme_item_mask": item_mask, "theme_mask": chosen["theme_mask"]}


def gather_theme_items(session_items, item_mask, session_indices, selection_mask, scale):
    """The subsequences of themes: ``(theme_items [B, T, C*P, d], theme_item_mask [B, T, C*P])``.

    ``session_indices [B, T, C]`` (-1 = unused slot) pick each theme's sessions from ``session_items
    [B, M, P, d]`` and ``item_mask [B, M, P]``; every picked session's items are multiplied by its
    ``scale [B, T, C]`` and zero where masked.
    """
    safe = tf.maximum(session_indices, 0)
    items = tf.gather(session_items, safe, batch_dims=1)  # [B, T, C, P, d]
    mask = tf.logical_and(tf.gather(item_mask, safe, batch_dims=1), selection_mask[..., None])
    items *= tf.cast(scale, items.dtype)[..., None, None]
    items = masking.apply_mask(items, mask)
    themes, slots = session_indices.shape[1], dim(session_indices, 2) * session_items.shape[2]
    return (tf.reshape(items, [-1, themes, slots, session_items.shape[-1]]),
            tf.reshape(mask, [-1, themes, slots]))


def _single_replica(owner: str) -> bool:
    """False (with a warning) inside a step of a multi-replica ``tf.distribute`` strategy.

    Dead-code restarts rewrite the codebook from the replica's own batch; keeping the replicas' copies
    identical would need a collective inside the forward pass, and under ``MirroredStrategy`` a
    collective there interleaves the replicas' calls and mixes their ``add_loss`` terms. So restarts are
    skipped there (the VQ losses still train the codebook, through all-reduced gradients).
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:  # Python values: decided while tracing
        return True
    warnings.warn(
        f"{owner}: dead-code restarts are skipped under a {context.num_replicas_in_sync}-replica strategy "
        "(they would make the replicas' codebooks differ)",
        stacklevel=3,
    )
    return False


def _matmul_last(x, kernel):
    """``x [..., a] @ kernel [a, b] -> [..., b]`` (a reshape and a matmul).

    Not ``tf.einsum("...a,ab->...b")``: with TensorFlow 2.16's oneDNN CPU kernels (the default on x86) that
    einsum returns wrong values for 2-D inputs of a few hundred rows or more (e.g. the target routing of a
    1,024-row batch), while the matmul is exact.
    """
    return tf.tensordot(x, tf.convert_to_tensor(kernel), axes=1)


def squared_distances(points, codes):
    """``||x - c_k||^2`` for float32 ``points [..., d]`` and ``codes [K, d]`` -> ``[..., K]`` (>= 0)."""
    points, codes = tf.cast(points, tf.float32), tf.cast(codes, tf.float32)
    cross = _matmul_last(points, tf.transpose(codes))
    norms = tf.reduce_sum(tf.square(points), axis=-1, keepdims=True)
    return tf.maximum(norms - 2.0 * cross + tf.reduce_sum(tf.square(codes), axis=-1), 0.0)


@keras.saving.register_keras_serializable(package="tfmoe")
class SessionThemeRouter(keras.layers.Layer):
    r"""Routes sessions to ``K`` learnable themes and gathers one static subsequence per theme (MoS).

    With session items ``e [B, M, P, d]``, item mask ``[B, M, P]``, projection ``W_s [d, d_c]``
    and prototypes ``c_k`` (rows of ``C [K, d_c]``)::

        s_m     = masked_mean_i e_{m,i}        (pooling="mean")
                  sum_i softmax_i(e_{m,i} . u / sqrt(d)) e_{m,i}   (pooling="attention", learnable u)
        z_m     = W_s^T s_m                    (z_m and c_k l2-normalised when similarity="cosine")
        router="softmax":   p_{m,k} = softmax_k( sim(z_m, c_k) / tau )    sim = dot product, or cosine
        router="codebook":  p_{m,k} = softmax_k( -||z_m - c_k||^2 / tau ),
                            so argmax_k p_{m,k} = the nearest prototype  k*_m = argmin_k ||z_m - c_k||^2
        score_{k,m} = p_{m,k} if session m is eligible for theme k else -inf
                  eligible: m is a real session and (assignment="argmax") argmax_j p_{m,j} = k,
                  or (assignment="expert_choice") any real session
        S_k     = top-C sessions by score_{k,.}, re-sorted by time (unused slots first, index -1)
        X^(k)   = concat_{m in S_k} w_{m,k} * session_m   [C*P, d]
                  w = p_{m,k} ("multiply"), 1 with the gradient of p ("straight_through"), or 1 ("none")

    Routing math runs in float32. Empty (fully padded) sessions get ``p_m = 0``, are never
    selected and are excluded from every statistic and loss; if a theme has fewer than ``C``
    eligible sessions the extra slots are masked. With a target ``e_q [B, d]`` the layer also
    returns ``p_{q,k}`` (the same formula with ``s_m`` replaced by ``e_q``) so a model can run only
    the target's top themes (see :func:`select_target_themes`). Auxiliary losses (``add_loss``,
    per replica):

        load_balance_weight * K * sum_k f_k P_k   (f_k: fraction of real sessions with argmax k,
                                                   P_k: their mean p_{.,k}; Switch/GShard)
        diversity_weight * ||C_n C_n^T - I||_F^2  (C_n: row-normalised prototypes)

    **Codebook router** (``router="codebook"``, VQ-VAE, van den Oord et al. 2017). Each real session
    is quantised to its nearest prototype; the layer returns the quantised sessions with the
    straight-through estimator and adds the VQ-VAE codebook and commitment losses, averaged over
    the ``N`` real sessions of the call (0 when there are none)::

        q_m = z_m + sg(c_{k*_m} - z_m)        forward value c_{k*_m}; d q_m / d z_m = I
        codebook_weight   * (1/N) sum_m ||sg(z_m) - c_{k*_m}||^2   (moves the prototypes to their sessions)
        commitment_weight * (1/N) sum_m ||z_m - sg(c_{k*_m})||^2   (keeps z_m near its prototype; beta)

    ``sg`` is stop-gradient. The codebook is learned through these losses, not by EMA updates: it
    stays an ordinary trainable weight, so the optimizer, checkpoints, mixed precision and
    ``tf.distribute`` (gradients all-reduced across replicas) treat it like every other weight, the
    loss weights are plain knobs, and the only state updated inside the call is the code usage below.
    (EMA updates converge faster in VQ-VAE's image models, but need per-replica cluster statistics
    to be all-reduced by hand and decouple the codebook from the learning-rate schedule.)

    Dead codes are restarted, in training calls only (``training=True``), inside any
    ``tf.function`` / XLA step (non-trainable variables, ``tf.where`` and ``assign``; skipped, with a
    warning, under a multi-replica ``tf.distribute`` strategy, where the replicas' codebooks would
    otherwise drift apart: there the codebook keeps its initializer's values until the VQ losses move
    it). Code ``k`` is dead when its usage ``u_k`` (share of real sessions whose
    nearest prototype is ``k``, an EMA with ``usage_decay`` over the training batches with real
    sessions) is below ``dead_code_threshold / K`` before the batch; a dead code is re-initialised
    to the projected embedding ``z`` of a random real session of the batch (distinct sessions for
    distinct codes; a code stays as it is if the batch has too few real sessions) and its usage is
    reset to ``1/K``. The usage starts at 0, so the first training batch initialises every code
    from the data (the data-dependent initialisation and re-initialisation of unused codes of
    Łańcucki et al. 2020): prototypes far from every session would otherwise never be chosen.

    The codebook router's gradient paths: the quantised sessions ``q`` (output
    ``quantized_sessions``, for a model that consumes session codes), the soft assignment ``p``
    through ``probability_scaling`` (a model that uses the gathered items, like MoS), the target's
    ``p_{q,k}``, and the two VQ losses.

    Args:
        num_themes: ``K``.
        sessions_per_theme: ``C`` (at most ``M``).
        temperature: ``tau > 0``.
        assignment: ``"argmax"`` (a theme only takes sessions whose top theme it is) or
            ``"expert_choice"`` (each theme takes its top-``C`` sessions; a session may feed several).
        pooling: ``"mean"`` or ``"attention"`` session representation.
        projection_dim: ``d_c``; default ``d``.
        similarity: ``"dot"`` or ``"cosine"`` (for the codebook router: Euclidean distances between
            the raw, or the l2-normalised, ``z_m`` and ``c_k``).
        probability_scaling: ``"multiply"``, ``"straight_through"`` or ``"none"`` (no gradient path
            from the gathered items to the router).
        load_balance_weight, diversity_weight: auxiliary loss weights (>= 0; 0 disables).
        router: ``"softmax"`` (prototype similarities, the default) or ``"codebook"`` (nearest
            prototype, VQ-VAE); the arguments below apply to ``"codebook"`` only.
        codebook_weight: weight of the codebook loss (>= 0; 0 disables).
        commitment_weight: ``beta``, weight of the commitment loss (>= 0; default 0.25 as in VQ-VAE;
            MoS uses 0: without a reconstruction loss it locks sessions to their first codes).
        dead_code_threshold: restart a code when its usage EMA falls under this fraction of the
            uniform share ``1/K`` (in ``[0, 1]``; 0 disables restarts).
        usage_decay: decay of the usage EMA, in ``[0, 1)``.
        track_statistics: keep the last call's statistics (:func:`theme_routing_statistics` plus
            ``diversity_loss``; with the codebook router also ``codebook_loss``, ``commitment_loss``
            (unweighted) and ``restarted_codes``) in ``routing_statistics``, a dict name ->
            non-trainable float32 variable, the protocol :class:`RoutingStatsLogger` reads.
        kernel_initializer, prototype_initializer: initializers of ``W_s`` (and ``u``) and ``C``.

    Call arguments:
        session_items: ``[B, M, P, d]`` (e.g. from :class:`SessionGrouper`).
        item_mask: ``[B, M, P]`` (``True`` = real item).
        target: optional ``[B, d]`` target embedding.
        training: restarts dead codes and updates the code usage when ``True`` (codebook router).

    Returns:
        dict: ``theme_items [B, K, C*P, d]``, ``theme_item_mask [B, K, C*P]``,
        ``session_indices [B, K, C]`` (int32, time-sorted, -1 for unused slots),
        ``selection_mask [B, K, C]``, ``selection_weights [B, K, C]`` (``p_{m,k}`` of the chosen
        sessions), ``selection_scale [B, K, C]`` (their items' factor, by ``probability_scaling``),
        ``session_items`` and ``session_item_mask`` (the grid read, cast to the compute dtype),
        ``theme_mask [B, K]`` (theme received at least one session),
        ``routing_probs [B, M, K]``, with a target ``target_probs [B, K]`` and, with the codebook
        router, ``session_codes [B, M]`` (int32 ``k*_m``, -1 for empty sessions) and
        ``quantized_sessions [B, M, d_c]`` (float32 ``q_m``, 0 for empty sessions).

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
        >>> vq = layers.SessionThemeRouter(num_themes=3, sessions_per_theme=2, router="codebook")
        >>> out = vq(items, np.ones((4, 5, 6), bool), training=True)
        >>> tuple(out["quantized_sessions"].shape), len(vq.losses)  # load balance, codebook, commitment
        ((4, 5, 8), 3)
        >>> codes = out["session_codes"].numpy()
        >>> bool((codes == out["routing_probs"].numpy().argmax(-1)).all())  # argmax p = nearest prototype
        True

    References:
        * MoS: Lin et al., "Mixture of Sequence: Theme-Aware Mixture-of-Experts for Long-Sequence
          Recommendation", WWW 2026, https://arxiv.org/abs/2604.20858 (what is known of it:
          ``docs/specs/mos.md``; its Sec. 4.1 cites VQ-VAE).
        * VQ-VAE: van den Oord, Vinyals, Kavukcuoglu, "Neural Discrete Representation Learning",
          NeurIPS 2017, https://arxiv.org/abs/1711.00937.
        * Dead-code restarts and data-dependent codebook initialisation: Łańcucki et al., "Robust
          Training of Vector Quantized Bottleneck Models", IJCNN 2020, https://arxiv.org/abs/2005.08520.
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
        router: str = "softmax",
        codebook_weight: float = 1.0,
        commitment_weight: float = 0.25,
        dead_code_threshold: float = 0.1,
        usage_decay: float = 0.9,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_themes = v.check_int(owner, "num_themes", num_themes, minimum=1)
        self.sessions_per_theme = v.check_int(owner, "sessions_per_theme", sessions_per_theme, minimum=1)
        self.temperature = v.check_float(owner, "temperature", temperature, minimum=0.0, min_inclusive=False)
        self.assignment = v.check_choice(owner, "assignment", assignment, ASSIGNMENTS)
        self.pooling = v.check_choice(owner, "pooling", pooling, POOLINGS)
        self.projection_dim = v.check_optional_int(owner, "projection_dim", projection_dim, minimum=1)
        self.similarity = v.check_choice(owner, "similarity", similarity, SIMILARITIES)
        self.probability_scaling = v.check_choice(
            owner, "probability_scaling", probability_scaling, PROBABILITY_SCALINGS
        )
        self.load_balance_weight = v.check_float(
            owner, "load_balance_weight", load_balance_weight, minimum=0.0
        )
        self.diversity_weight = v.check_float(owner, "diversity_weight", diversity_weight, minimum=0.0)
        self.track_statistics = v.check_bool(owner, "track_statistics", track_statistics)
        self.router = v.check_choice(owner, "router", router, ROUTERS)
        self.codebook_weight = v.check_float(owner, "codebook_weight", codebook_weight, minimum=0.0)
        self.commitment_weight = v.check_float(owner, "commitment_weight", commitment_weight, minimum=0.0)
        self.dead_code_threshold = v.check_float(
            owner, "dead_code_threshold", dead_code_threshold, minimum=0.0, maximum=1.0
        )
        self.usage_decay = v.check_float(
            owner, "usage_decay", usage_decay, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self._statistic_names = ()
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.prototype_initializer = keras.initializers.get(prototype_initializer)
        if self.router == "codebook":
            self._restart_seeds = keras.random.SeedGenerator(name="restart_seeds")

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
        if self.router == "codebook":
            self.code_usage = self.add_weight(
                name="code_usage",
                shape=(self.num_themes,),
                initializer="zeros",
                trainable=False,
                autocast=False,
            )
        if self.track_statistics:
            self._build_statistics()
        self.built = True

    def _build_statistics(self):
        stats = routing_stats.add_routing_statistics(self, self.num_themes)
        extra = [("mean_probs", (self.num_themes,)), ("selected_sessions", (self.num_themes,)), ("diversity_loss", ())]
        if self.router == "codebook":
            extra += [("codebook_loss", ()), ("commitment_loss", ()), ("restarted_codes", ())]
        for name, shape in extra:
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

    def project(self, representations):
        """``(z, C)``: ``z = W_s^T x`` for float32 ``x [..., d]`` and the prototypes ``C [K, d_c]``,
        both l2-normalised when ``similarity="cosine"`` (the space the themes live in)."""
        return self._project_sessions(representations), self._prototypes()

    def _project_sessions(self, representations):
        projected = _matmul_last(representations, self.projection_kernel)
        return tf.math.l2_normalize(projected, axis=-1) if self.similarity == "cosine" else projected

    def _prototypes(self):
        prototypes = tf.convert_to_tensor(self.prototypes)
        return tf.math.l2_normalize(prototypes, axis=-1) if self.similarity == "cosine" else prototypes

    def theme_logits(self, representations):
        """``sim(z, c_k) / tau`` (softmax) or ``-||z - c_k||^2 / tau`` (codebook) for float32 ``x [..., d]``
        -> ``[..., K]``."""
        return self._logits(*self.project(representations))

    def _logits(self, projected, prototypes):
        if self.router == "codebook":
            return -squared_distances(projected, prototypes) / self.temperature
        return _matmul_last(projected, tf.transpose(prototypes)) / self.temperature

    def quantize_sessions(self, projected, prototypes, session_mask=None):
        """Nearest-prototype quantisation of projected sessions ``z [B, M, d_c]`` (float32).

        Returns a dict: ``codes [B, M]`` (int32 ``argmin_k ||z_m - c_k||^2``, -1 where
        ``session_mask`` is False), ``quantized [B, M, d_c]`` (``z + sg(c_code - z)``, 0 at masked
        sessions), ``distances [B, M, K]`` and the unweighted ``codebook_loss`` and
        ``commitment_loss`` (means over the unmasked sessions, 0 if there are none).
        """
        projected = tf.cast(projected, tf.float32)
        prototypes = tf.cast(prototypes, tf.float32)
        if session_mask is None:
            session_mask = tf.ones(tf.shape(projected)[:-1], tf.bool)
        session_mask = masking.as_bool_mask(session_mask)
        distances = squared_distances(projected, prototypes)
        codes = tf.argmin(distances, axis=-1, output_type=tf.int32)
        chosen = tf.gather(prototypes, codes)
        valid = tf.cast(session_mask, tf.float32)[..., None]
        quantized = (projected + tf.stop_gradient(chosen - projected)) * valid
        count = tf.maximum(tf.reduce_sum(valid), 1.0)
        codebook_loss = tf.reduce_sum(tf.square(tf.stop_gradient(projected) - chosen) * valid) / count
        commitment_loss = tf.reduce_sum(tf.square(projected - tf.stop_gradient(chosen)) * valid) / count
        return {
            "codes": tf.where(session_mask, codes, _MISSING),
            "quantized": quantized,
            "distances": distances,
            "codebook_loss": codebook_loss,
            "commitment_loss": commitment_loss,
        }

    def _restart_dead_codes(self, projected, codes, session_valid):
        """Training step: re-initialises dead codes from random real sessions and updates the usage EMA.

        Graph-safe (no Python branching on tensors): every code is written with ``tf.where``.
        Returns the number of restarted codes (float32).
        """
        k = self.num_themes
        valid = tf.reshape(session_valid, [-1])
        flat_codes = tf.reshape(codes, [-1])
        counts = tf.reduce_sum(
            tf.one_hot(tf.where(valid, flat_codes, 0), k) * tf.cast(valid, tf.float32)[:, None], axis=0
        )
        # K distinct random real sessions (k extra padding candidates keep top_k valid for tiny batches).
        flat = tf.reshape(tf.stop_gradient(projected), [-1, projected.shape[-1]])
        noise = keras.random.uniform(tf.shape(valid), seed=self._restart_seeds)
        scores = tf.concat([tf.where(valid, noise, -1.0), -tf.ones([k])], axis=0)
        top = tf.math.top_k(scores, k=k)
        candidates = tf.gather(tf.concat([flat, tf.zeros([k, flat.shape[-1]])], axis=0), top.indices)
        usable = top.values >= 0.0
        sessions = tf.reduce_sum(counts)
        previous = tf.convert_to_tensor(self.code_usage)
        share = counts / tf.maximum(sessions, 1.0)
        usage = tf.where(sessions > 0, self.usage_decay * previous + (1.0 - self.usage_decay) * share, previous)
        dead = previous < self.dead_code_threshold / k  # all codes at the first training batch (usage 0)
        restart = tf.logical_and(tf.logical_and(dead, usable), sessions > 0)
        self.prototypes.assign(tf.where(restart[:, None], candidates, self.prototypes))
        self.code_usage.assign(tf.where(restart, 1.0 / k, usage))
        return tf.reduce_sum(tf.cast(restart, tf.float32))

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

    def _losses_and_statistics(self, routing_logits, routing_probs, session_valid, session_indices, codebook):
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
        if codebook is not None:
            stats.update({name: codebook[name] for name in ("codebook_loss", "commitment_loss", "restarted_codes")})
            if self.codebook_weight > 0:
                self.add_loss(self.codebook_weight * codebook["codebook_loss"])
            if self.commitment_weight > 0:
                self.add_loss(self.commitment_weight * codebook["commitment_loss"])
        if self.track_statistics:
            for name, variable in self.routing_statistics.items():
                variable.assign(tf.cast(stats[name], tf.float32))

    def call(self, session_items, item_mask, target=None, training=None):
        items, item_mask, session_valid, projected = self.pool(session_items, item_mask)
        routed = self.assign(projected, session_valid, training=training)
        theme_items, theme_item_mask = gather_theme_items(
            items, item_mask, routed["session_indices"], routed["selection_mask"], routed["selection_scale"]
        )
        outputs = {"theme_items": theme_items, "theme_item_mask": theme_item_mask, "session_items": items,
                   "session_item_mask": item_mask, **routed}
        if target is not None:
            outputs["target_probs"] = self.target_probabilities(target)
        return outputs

    # The three stages of a call, public for a model that splits its batch into groups of rows (MoS in length
    # groups): pool each group's sessions, assign the whole batch's sessions at once (the losses, statistics and
    # restarts are the batch's), gather each group's theme subsequences.
    def pool(self, session_items, item_mask):
        """Stage 1, row by row: ``(items, item_mask, session_valid [B, M], z [B, M, d_c])``: the grid cast to the
        compute dtype, its bool mask, the real sessions and their float32 projected representations
        ``z_m = W_s^T s_m`` (``M`` may be a narrower, dynamic, grid's than the layer was built with)."""
        items = tf.cast(session_items, self.compute_dtype)
        item_mask = masking.as_bool_mask(item_mask)
        session_valid = tf.reduce_any(item_mask, axis=-1)
        projected = self._project_sessions(self._pool_sessions(tf.cast(items, tf.float32), item_mask))
        return items, item_mask, session_valid, projected

    def assign(self, projected, session_valid, training=None):
        """Stage 2, over the batch: routes the projected sessions ``z [B, M, d_c]`` (float32, from :meth:`pool`;
        ``session_valid [B, M]``) to the themes, adds the auxiliary losses, records the statistics and (codebook
        router, ``training``) restarts dead codes. Returns the call's outputs but the gathered items:
        ``session_indices``, ``selection_mask``, ``selection_weights``, ``selection_scale``, ``theme_mask``,
        ``routing_probs`` and, with the codebook router, ``session_codes`` and ``quantized_sessions``."""
        prototypes = self._prototypes()
        codebook = None
        if self.router == "codebook":
            codebook = self.quantize_sessions(projected, prototypes, session_valid)
            routing_logits = -codebook["distances"] / self.temperature
            restarted = 0.0
            if training and self.dead_code_threshold > 0 and _single_replica(type(self).__name__):
                restarted = self._restart_dead_codes(projected, codebook["codes"], session_valid)
            codebook["restarted_codes"] = restarted
        else:
            routing_logits = self._logits(projected, prototypes)
        routing_probs = masking.masked_softmax(routing_logits, session_valid[..., None])
        indices, selection_mask, probs_by_theme = self._select(routing_probs, session_valid)
        self._losses_and_statistics(routing_logits, routing_probs, session_valid, indices, codebook)
        weights = tf.gather(probs_by_theme, tf.maximum(indices, 0), batch_dims=2) * tf.cast(selection_mask, tf.float32)
        outputs = {
            "session_indices": indices,
            "selection_mask": selection_mask,
            "selection_weights": weights,
            "selection_scale": self._scale(weights, selection_mask),
            "theme_mask": tf.reduce_any(selection_mask, axis=-1),
            "routing_probs": routing_probs,
        }
        if codebook is not None:
            outputs["session_codes"] = codebook["codes"]
            outputs["quantized_sessions"] = codebook["quantized"]
        return outputs

    def target_probabilities(self, target):
        """``p_{q,k} [B, K]`` of a target embedding ``[B, d]`` (row by row)."""
        target32 = tf.cast(target, tf.float32)
        if target32.shape.rank != 2 or target32.shape[-1] != self._feature_dim:
            raise ValueError(
                f"{type(self).__name__}: `target` must be [batch, {self._feature_dim}], "
                f"got shape {tuple(target32.shape)}"
            )
        return tf.nn.softmax(self.theme_logits(target32), axis=-1)

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
            router=self.router,
            codebook_weight=self.codebook_weight,
            commitment_weight=self.commitment_weight,
            dead_code_threshold=self.dead_code_threshold,
            usage_decay=self.usage_decay,
        )
        return config
