"""SessionThemeRouter (MoS): exact routing and selection against numpy, masking, losses, gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmoe.layers.routing_stats import collect_routing_statistics
from tfmoe.layers.session_router import (
    SessionThemeRouter,
    prototype_diversity_loss,
    select_target_themes,
    theme_routing_statistics,
)
from tfmoe.testing import run_layer_test


@pytest.fixture(autouse=True)
def _deterministic_weights():
    """Discrete selections depend on the random initial weights: fix them per test."""
    keras.utils.set_random_seed(1234)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _weights(layer):
    return {w.path.split("/")[-1]: np.asarray(w.numpy(), np.float64) for w in layer.weights}


def numpy_session_logits(layer, items, item_mask):
    """Session representations (mean or attention pooling) -> theme logits ``[B, M, K]``."""
    w = _weights(layer)
    items = items.astype(np.float64)
    valid = item_mask.any(-1)
    if layer.pooling == "mean":
        count = np.maximum(item_mask.sum(-1, keepdims=True), 1)
        reps = (items * item_mask[..., None]).sum(2) / count
    else:
        scores = np.where(item_mask, items @ w["pooling_query"] / np.sqrt(items.shape[-1]), -np.inf)
        scores = np.where(valid[..., None], scores, 0.0)
        reps = np.einsum("bmp,bmpd->bmd", _softmax(scores) * item_mask, items)
    return numpy_theme_logits(layer, reps)


def numpy_projection(layer, x):
    """``(z, C)`` of the layer's theme space (l2-normalised for cosine similarity)."""
    w = _weights(layer)
    proj, protos = x @ w["projection_kernel"], w["prototypes"]
    if layer.similarity == "cosine":
        proj = proj / np.maximum(np.linalg.norm(proj, axis=-1, keepdims=True), 1e-6)  # empty sessions: 0
        protos = protos / np.linalg.norm(protos, axis=-1, keepdims=True)
    return proj, protos


def numpy_theme_logits(layer, x):
    proj, protos = numpy_projection(layer, x)
    if layer.router == "codebook":  # minus squared Euclidean distances to the prototypes
        return -((proj[..., None, :] - protos) ** 2).sum(-1) / layer.temperature
    return proj @ protos.T / layer.temperature


def numpy_session_embeddings(layer, items, item_mask):
    """Projected session means ``z [B, M, d_c]`` (mean pooling)."""
    count = np.maximum(item_mask.sum(-1, keepdims=True), 1)
    reps = (items.astype(np.float64) * item_mask[..., None]).sum(2) / count
    return numpy_projection(layer, reps)


def numpy_route(layer, items, item_mask, target=None):
    """Independent reference of the layer's outputs (loops over batch rows, themes and sessions)."""
    batch, num_sessions, session_length, d = items.shape
    num_themes, capacity = layer.num_themes, layer.sessions_per_theme
    valid = item_mask.any(-1)
    probs = _softmax(numpy_session_logits(layer, items, item_mask)) * valid[..., None]
    out = {"session_items": items, "session_item_mask": item_mask}  # the grid read
    items = items.astype(np.float64)
    out.update({
        "session_indices": np.full((batch, num_themes, capacity), -1),
        "selection_weights": np.zeros((batch, num_themes, capacity)),
        "selection_scale": np.zeros((batch, num_themes, capacity)),
        "theme_items": np.zeros((batch, num_themes, capacity * session_length, d)),
        "theme_item_mask": np.zeros((batch, num_themes, capacity * session_length), bool),
        "routing_probs": probs,
    })
    for b in range(batch):
        for k in range(num_themes):
            eligible = [
                m
                for m in range(num_sessions)
                if valid[b, m] and (layer.assignment == "expert_choice" or np.argmax(probs[b, m]) == k)
            ]
            chosen = sorted(sorted(eligible, key=lambda m: (-probs[b, m, k], m))[:capacity])
            for slot, m in enumerate(chosen, start=capacity - len(chosen)):
                scale = {"multiply": probs[b, m, k]}.get(layer.probability_scaling, 1.0)
                span = slice(slot * session_length, (slot + 1) * session_length)
                out["session_indices"][b, k, slot] = m
                out["selection_weights"][b, k, slot] = probs[b, m, k]
                out["selection_scale"][b, k, slot] = scale
                out["theme_items"][b, k, span] = items[b, m] * scale * item_mask[b, m][:, None]
                out["theme_item_mask"][b, k, span] = item_mask[b, m]
    out["selection_mask"] = out["session_indices"] >= 0
    out["theme_mask"] = out["selection_mask"].any(-1)
    if layer.router == "codebook":
        z, protos = numpy_session_embeddings(layer, items, item_mask)
        distances = ((z[..., None, :] - protos) ** 2).sum(-1)
        out["session_codes"] = np.where(valid, distances.argmin(-1), -1)
        out["quantized_sessions"] = protos[distances.argmin(-1)] * valid[..., None]
    if target is not None:
        out["target_probs"] = _softmax(numpy_theme_logits(layer, target.astype(np.float64)))
    return out


def _batch(seed=0, batch=6, num_sessions=5, session_length=3, d=4):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(batch, num_sessions, session_length, d)).astype("float32")
    mask = rng.random((batch, num_sessions, session_length)) > 0.3
    mask[0, 1] = False  # an empty session
    mask[1, :3] = False  # three empty sessions: fewer eligible sessions than slots
    mask[2] = False  # a user with no history at all
    target = rng.normal(size=(batch, d)).astype("float32")
    return items, mask, target


def _assert_matches(got, expected):
    assert set(got) == set(expected)
    for key, value in expected.items():
        if np.asarray(value).dtype.kind == "f":
            np.testing.assert_allclose(got[key].numpy(), value, rtol=1e-4, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(got[key].numpy(), value, err_msg=key)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"assignment": "argmax"},
        {"assignment": "expert_choice", "pooling": "attention", "projection_dim": 6},
        {"assignment": "argmax", "similarity": "cosine", "temperature": 0.5, "probability_scaling": "none"},
        {"assignment": "expert_choice", "probability_scaling": "straight_through", "sessions_per_theme": 4},
        {"router": "codebook"},
        {"router": "codebook", "similarity": "cosine", "temperature": 0.5, "projection_dim": 6},
        {"router": "codebook", "assignment": "expert_choice", "probability_scaling": "straight_through"},
    ],
)
def test_matches_numpy_reference(kwargs):
    items, mask, target = _batch()
    kwargs = {"num_themes": 3, "sessions_per_theme": 2, **kwargs}
    layer = SessionThemeRouter(**kwargs)
    got = layer(items, mask, target)
    _assert_matches(got, numpy_route(layer, items, mask, target))
    selection = got["selection_mask"].numpy()
    assert not selection[2].any()  # a user with no sessions routes nothing
    assert np.all(got["routing_probs"].numpy()[2] == 0)


def test_padding_and_empty_sessions_never_leak():
    items, mask, _ = _batch(seed=1)
    layer = SessionThemeRouter(
        num_themes=3, sessions_per_theme=2, assignment="expert_choice", pooling="attention"
    )
    out = layer(items, mask)
    noisy = np.where(mask[..., None], items, 1e4).astype("float32")
    noisy_out = layer(noisy, mask)  # every output but the grid it echoes is blind to padded values
    np.testing.assert_array_equal(noisy_out.pop("session_items").numpy(), noisy)
    _assert_matches(noisy_out, {k: v.numpy() for k, v in out.items() if k != "session_items"})
    valid = mask.any(-1)
    chosen = out["session_indices"].numpy()
    for b, k, c in zip(*np.nonzero(out["selection_mask"].numpy())):
        assert valid[b, chosen[b, k, c]], "an empty session was routed"
    np.testing.assert_array_equal(out["routing_probs"].numpy()[~valid], 0.0)
    np.testing.assert_array_equal(out["theme_items"].numpy()[~out["theme_item_mask"].numpy()], 0.0)
    # The load-balance loss sees only real sessions.
    probs = out["routing_probs"].numpy()[valid]
    load = np.bincount(probs.argmax(-1), minlength=3) / len(probs)
    (balance,) = layer.losses
    np.testing.assert_allclose(balance, 1e-2 * 3 * np.sum(load * probs.mean(0)), rtol=1e-5)


@pytest.mark.parametrize("assignment", ["argmax", "expert_choice"])
def test_tracked_statistics_match_numpy_over_real_sessions(assignment):
    items, mask, _ = _batch(seed=1)
    # One session per theme: rows with 4+ real sessions must leave some out in "argmax" mode.
    layer = SessionThemeRouter(
        num_themes=3, sessions_per_theme=1, assignment=assignment, diversity_weight=0.1
    )
    layer(items[:3], mask[:3])
    out = layer(items, mask)  # the variables hold the last call's values
    stats = {name: variable.numpy() for name, variable in layer.routing_statistics.items()}
    valid = mask.any(-1)
    probs = out["routing_probs"].numpy()[valid]
    logits = numpy_session_logits(layer, items, mask)[valid]
    chosen = out["session_indices"].numpy()
    taken = np.zeros_like(valid)
    for b, k, c in zip(*np.nonzero(chosen >= 0)):
        taken[b, chosen[b, k, c]] = True
    dropped = np.sum(valid & ~taken)
    load, mean = np.bincount(probs.argmax(-1), minlength=3) / len(probs), probs.mean(0)
    c = _weights(layer)["prototypes"]
    c = c / np.linalg.norm(c, axis=-1, keepdims=True)
    routed = valid.sum() if assignment == "argmax" else np.sum(chosen >= 0)
    expected = {
        "expert_load": load,
        "mean_probs": mean,
        "selected_sessions": (chosen >= 0).sum(-1).mean(0),
        "tokens": valid.sum(),
        "dropped_tokens": dropped,
        "dropped_assignments": dropped if assignment == "argmax" else 0,
        "dropped_fraction": (dropped if assignment == "argmax" else 0) / routed,
        "dropped_token_fraction": dropped / valid.sum(),
        "router_entropy": -(probs * np.log(probs)).sum(-1).mean(),
        "load_balance_loss": 3 * np.sum(load * mean),
        "z_loss": np.mean(np.log(np.exp(logits).sum(-1)) ** 2),
        "entropy_loss": np.sum(mean * np.log(mean)),
        "diversity_loss": np.sum((c @ c.T - np.eye(3)) ** 2),
    }
    assert set(stats) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(stats[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    assert stats["dropped_tokens"] > 0


def test_statistics_follow_the_shared_protocol():
    items, mask, _ = _batch(seed=2)
    inputs = [keras.Input(shape=items.shape[1:]), keras.Input(shape=mask.shape[1:], dtype="bool")]
    router = SessionThemeRouter(num_themes=3, sessions_per_theme=2, name="themes")
    model = keras.Model(inputs, router(*inputs)["theme_items"])
    model([items, mask])
    collected = collect_routing_statistics(model)
    assert set(collected["themes"]) == set(router.routing_statistics)
    assert collected["themes"]["tokens"] == mask.any(-1).sum()
    silent = SessionThemeRouter(num_themes=3, sessions_per_theme=2, track_statistics=False)
    silent(items, mask)
    assert silent.routing_statistics == {} and not silent.non_trainable_weights


def test_auxiliary_losses():
    items, mask, _ = _batch(seed=2)
    layer = SessionThemeRouter(
        num_themes=3, sessions_per_theme=2, load_balance_weight=0.5, diversity_weight=0.2
    )
    layer(items, mask)
    balance, diversity = layer.losses
    c = _weights(layer)["prototypes"]
    c = c / np.linalg.norm(c, axis=-1, keepdims=True)
    np.testing.assert_allclose(diversity, 0.2 * np.sum((c @ c.T - np.eye(3)) ** 2), rtol=1e-4, atol=1e-7)
    assert float(balance) > 0
    protos = np.array([[1.0, 0.0], [1.0, 1.0]], "float32")
    np.testing.assert_allclose(prototype_diversity_loss(protos), 2 * 0.5, rtol=1e-6)  # off-diagonal 1/sqrt(2)
    silent = SessionThemeRouter(num_themes=3, sessions_per_theme=2, load_balance_weight=0.0)
    silent(items, mask)
    assert silent.losses == []


@pytest.mark.parametrize("scaling", ["multiply", "straight_through", "none"])
def test_gradients_reach_the_router_through_the_theme_items(scaling):
    items, mask, _ = _batch(seed=3)
    layer = SessionThemeRouter(
        num_themes=3,
        sessions_per_theme=2,
        probability_scaling=scaling,
        load_balance_weight=0.0,
        pooling="attention",
    )
    layer(items, mask)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(items, mask)["theme_items"] * np.linspace(-1, 1, 4).astype("float32"))
    grads = dict(
        zip(
            [w.path.split("/")[-1] for w in layer.trainable_weights],
            tape.gradient(loss, layer.trainable_weights),
        )
    )
    for name in ("projection_kernel", "prototypes", "pooling_query"):
        if scaling == "none":
            assert grads[name] is None, f"{name} got a gradient without probability scaling"
        else:
            assert np.abs(grads[name].numpy()).sum() > 0, f"no gradient reached {name}"


def test_straight_through_keeps_item_values():
    items, mask, _ = _batch(seed=4)
    straight = SessionThemeRouter(num_themes=3, sessions_per_theme=2, probability_scaling="straight_through")
    plain = SessionThemeRouter.from_config({**straight.get_config(), "probability_scaling": "none"})
    out = straight(items, mask)
    plain(items, mask)
    plain.set_weights(straight.get_weights())
    np.testing.assert_allclose(out["theme_items"], plain(items, mask)["theme_items"], rtol=1e-6)


def test_target_routing_matches_numpy_and_is_optional():
    items, mask, target = _batch(seed=5)
    layer = SessionThemeRouter(num_themes=4, sessions_per_theme=3, similarity="cosine")
    with_target = layer(items, mask, target=target)
    expected = numpy_route(layer, items, mask, target)["target_probs"]
    np.testing.assert_allclose(with_target["target_probs"], expected, rtol=1e-5)
    assert "target_probs" not in layer(items, mask)
    with pytest.raises(
        ValueError, match=r"SessionThemeRouter: `target` must be \[batch, 4\], got shape \(6, 3\)"
    ):
        layer(items, mask, target=target[:, :3])


def test_select_target_themes_keeps_the_targets_top_themes():
    items, mask, target = _batch(seed=7)
    out = SessionThemeRouter(num_themes=4, sessions_per_theme=2)(items, mask, target=target)
    chosen = select_target_themes(out, num_active_themes=2)
    probs = out["target_probs"].numpy()
    expected = np.argsort(-probs, axis=-1, kind="stable")[:, :2]
    np.testing.assert_array_equal(chosen["theme_indices"].numpy(), expected)
    np.testing.assert_allclose(chosen["target_weights"], np.take_along_axis(probs, expected, -1), rtol=1e-6)
    rows = np.arange(len(items))[:, None]
    for name in ("theme_items", "theme_item_mask", "theme_mask"):
        np.testing.assert_array_equal(chosen[name].numpy(), out[name].numpy()[rows, expected], err_msg=name)
    with pytest.raises(
        ValueError, match=r"select_target_themes: `num_active_themes` must be an integer in \[1, 4\]"
    ):
        select_target_themes(out, num_active_themes=5)
    del out["target_probs"]
    with pytest.raises(ValueError, match=r"has no 'target_probs'; call the router with a target"):
        select_target_themes(out, 1)


def _clustered_sessions(rng, batch=32, num_sessions=6, session_length=4, d=8, num_clusters=3):
    centers = np.linalg.qr(rng.normal(size=(d, d)))[0][:num_clusters] * 3.0
    clusters = rng.integers(0, num_clusters, size=(batch, num_sessions))
    items = centers[clusters][:, :, None, :] + 0.3 * rng.normal(size=(batch, num_sessions, session_length, d))
    return items.astype("float32"), np.ones((batch, num_sessions, session_length), bool), clusters


def _theme_cluster_pairs(out, clusters):
    indices, selected = out["session_indices"].numpy(), out["selection_mask"].numpy()
    return {(k, clusters[b, indices[b, k, c]]) for b, k, c in zip(*np.nonzero(selected))}


def _one_cluster_per_theme(pairs, count=3):
    """Every theme takes sessions of a single cluster, and the themes cover all clusters."""
    return len(pairs) == count and len({k for k, _ in pairs}) == count and len({c for _, c in pairs}) == count


def test_themes_become_coherent_after_brief_training():
    """Sessions from 3 separated clusters: after training (load balance + a sharpening term) each theme
    selects sessions of exactly one cluster and the 3 themes cover the 3 clusters."""
    items, mask, clusters = _clustered_sessions(np.random.default_rng(0))
    keras.utils.set_random_seed(0)
    router = SessionThemeRouter(
        num_themes=3, sessions_per_theme=2, similarity="cosine", temperature=0.2, load_balance_weight=1.0
    )
    assert not _one_cluster_per_theme(
        _theme_cluster_pairs(router(items, mask), clusters)
    )  # at initialisation
    optimizer = keras.optimizers.Adam(0.05)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            probs = router(items, mask)["routing_probs"]
            sharpen = -tf.reduce_mean(tf.reduce_sum(probs * tf.math.log(probs + 1e-9), -1))
            loss = tf.add_n(router.losses) + 0.3 * sharpen
        optimizer.apply_gradients(
            zip(tape.gradient(loss, router.trainable_weights), router.trainable_weights)
        )

    for _ in range(60):
        train_step()
    pairs = _theme_cluster_pairs(router(items, mask), clusters)
    assert _one_cluster_per_theme(pairs), f"(theme, cluster) pairs after training: {sorted(pairs)}"


def test_auxiliary_losses_enter_the_training_loss_of_a_model():
    items, mask, _ = _batch(seed=6)
    router = SessionThemeRouter(
        num_themes=3, sessions_per_theme=2, load_balance_weight=0.5, diversity_weight=0.1
    )
    inputs = [keras.Input(shape=items.shape[1:]), keras.Input(shape=mask.shape[1:], dtype="bool")]
    pooled = keras.layers.GlobalAveragePooling2D()(router(*inputs)["theme_items"])
    model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
    model.compile(keras.optimizers.SGD(0.01), "mse")
    labels = np.ones((len(items), 1), "float32")
    model.fit([items, mask], labels, batch_size=len(items), epochs=2, verbose=0)
    assert len(model.losses) == 2
    mse = np.mean((model.predict([items, mask], verbose=0) - labels) ** 2)
    router(items, mask)  # recompute the auxiliary losses with the current weights
    expected = mse + sum(float(x) for x in router.losses)
    np.testing.assert_allclose(model.evaluate([items, mask], labels, verbose=0), expected, rtol=1e-5)


def test_contract(tmp_path):
    # Separated clusters keep the discrete selection identical under mixed precision.
    items, mask, _ = _clustered_sessions(
        np.random.default_rng(1), batch=4, num_sessions=5, session_length=3, d=4
    )
    mask[0, 1] = False
    mask[1, 2, :2] = False
    target = items[:, -1, 0] + 0.1
    run_layer_test(
        lambda: SessionThemeRouter(
            num_themes=3,
            sessions_per_theme=2,
            assignment="expert_choice",
            pooling="attention",
            diversity_weight=0.1,
        ),
        (items, mask, target),
        tmp_path,
        # by key: routing_probs, selection_scale, selection_weights: float32 routing math; session_items (the grid
        # read): the compute dtype; target_probs: float32; theme_items: the compute dtype
        output_dtype=["float32", "float32", "float32", "compute", "float32", "compute"],
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_themes": 0}, r"SessionThemeRouter: `num_themes` must be an integer >= 1, got 0"),
        ({"temperature": 0.0}, r"`temperature` must be a finite number > 0.0, got 0.0"),
        ({"assignment": "top1"}, r"`assignment` must be one of 'argmax', 'expert_choice'; got 'top1'"),
        ({"pooling": "max"}, r"`pooling` must be one of 'mean', 'attention'; got 'max'"),
        ({"similarity": "l2"}, r"`similarity` must be one of 'dot', 'cosine'; got 'l2'"),
        (
            {"probability_scaling": "gumbel"},
            r"`probability_scaling` must be one of 'multiply', 'straight_through'",
        ),
        ({"load_balance_weight": -1.0}, r"`load_balance_weight` must be a finite number >= 0.0, got -1.0"),
        ({"projection_dim": 0}, r"`projection_dim` must be an integer >= 1, got 0"),
        ({"router": "vq"}, r"SessionThemeRouter: `router` must be one of 'softmax', 'codebook'; got 'vq'"),
        ({"router": None}, r"`router` must be one of 'softmax', 'codebook'; got None"),
        ({"codebook_weight": -0.1}, r"`codebook_weight` must be a finite number >= 0.0, got -0.1"),
        ({"commitment_weight": float("nan")}, r"`commitment_weight` must be a finite number >= 0.0, got nan"),
        ({"dead_code_threshold": 1.5}, r"`dead_code_threshold` must be a finite number in \[0.0, 1.0\], got 1.5"),
        ({"usage_decay": 1.0}, r"`usage_decay` must be a finite number in \[0.0, 1.0\), got 1.0"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SessionThemeRouter(**{"num_themes": 3, "sessions_per_theme": 2, **kwargs})


def test_capacity_cannot_exceed_sessions():
    items, mask, _ = _batch()
    with pytest.raises(
        ValueError, match=r"`sessions_per_theme` must be <= the number of sessions \(5\), got 6"
    ):
        SessionThemeRouter(num_themes=2, sessions_per_theme=6)(items, mask)


def test_static_shapes_are_required():
    with pytest.raises(
        ValueError, match=r"with static sessions, items and features, got shape \(None, 5, None, 4\)"
    ):
        SessionThemeRouter(num_themes=2, sessions_per_theme=2)(
            keras.Input(shape=(5, None, 4)), keras.Input(shape=(5, None), dtype="bool")
        )


def test_statistics_function_derives_the_session_mask():
    probs = np.array([[[0.7, 0.3], [0.0, 0.0], [0.2, 0.8]]], "float32")
    stats = theme_routing_statistics(probs, np.array([[[0], [-1]]]))
    np.testing.assert_allclose(stats["expert_load"], [0.5, 0.5])
    np.testing.assert_allclose(stats["mean_probs"], [0.45, 0.55], rtol=1e-6)
    assert float(stats["tokens"]) == 2 and float(stats["dropped_tokens"]) == 1 and float(stats["z_loss"]) == 0


# ----- codebook router (VQ-VAE) ---------------------------------------------------------------------------
def _codebook(**kwargs):
    return SessionThemeRouter(**{"num_themes": 3, "sessions_per_theme": 2, "router": "codebook", **kwargs})


def test_codebook_assigns_each_session_its_nearest_prototype():
    """Hand-placed prototypes and identity projection: the codes are the numpy argmin, padding gets -1."""
    items, mask, _ = _batch(seed=8, d=4)
    layer = _codebook(load_balance_weight=0.0)
    layer(items, mask)
    layer.projection_kernel.assign(np.eye(4, dtype="float32"))
    protos = np.array([[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0.5, 0.5]], "float32")
    layer.prototypes.assign(protos)
    out = layer(items, mask)
    valid = mask.any(-1)
    means = (items * mask[..., None]).sum(2) / np.maximum(mask.sum(-1, keepdims=True), 1)
    distances = ((means[..., None, :] - protos) ** 2).sum(-1)
    np.testing.assert_array_equal(out["session_codes"].numpy(), np.where(valid, distances.argmin(-1), -1))
    np.testing.assert_allclose(out["quantized_sessions"], protos[distances.argmin(-1)] * valid[..., None], atol=1e-6)
    np.testing.assert_allclose(out["routing_probs"], _softmax(-distances) * valid[..., None], rtol=1e-5, atol=1e-7)
    assert set(out["session_codes"].numpy()[valid]) == {0, 1, 2}  # the batch exercises every code


def test_straight_through_gradient_is_the_upstream_gradient():
    rng = np.random.default_rng(9)
    layer = _codebook()
    layer(*_batch()[:2])
    z = tf.constant(rng.normal(size=(4, 5, 4)), tf.float32)
    mask = rng.random((4, 5)) > 0.3
    upstream = tf.constant(rng.normal(size=(4, 5, 4)), tf.float32)
    protos = tf.convert_to_tensor(layer.prototypes)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([z, protos])
        out = layer.quantize_sessions(z, protos, mask)
        total = tf.reduce_sum(out["quantized"] * upstream)
    np.testing.assert_allclose(tape.gradient(total, z), upstream.numpy() * mask[..., None], rtol=1e-6)
    assert tape.gradient(total, protos) is None  # the codes enter only through the stop-gradient
    # forward value: the nearest prototype
    nearest = ((z.numpy()[..., None, :] - protos.numpy()) ** 2).sum(-1).argmin(-1)
    np.testing.assert_allclose(out["quantized"], protos.numpy()[nearest] * mask[..., None], atol=1e-6)


def test_codebook_and_commitment_losses():
    items, mask, _ = _batch(seed=10)
    layer = _codebook(load_balance_weight=0.5, codebook_weight=0.7, commitment_weight=0.3)
    layer(items, mask)
    balance, codebook, commitment = layer.losses
    z, protos = numpy_session_embeddings(layer, items, mask)
    valid = mask.any(-1)
    nearest = ((z[..., None, :] - protos) ** 2).sum(-1).argmin(-1)
    expected = ((z - protos[nearest]) ** 2).sum(-1)[valid].mean()  # mean over real sessions only
    np.testing.assert_allclose(codebook, 0.7 * expected, rtol=1e-5)
    np.testing.assert_allclose(commitment, 0.3 * expected, rtol=1e-5)
    stats = layer.routing_statistics
    np.testing.assert_allclose([stats["codebook_loss"], stats["commitment_loss"]], [expected] * 2, rtol=1e-5)
    # the codebook loss moves only the prototypes, the commitment loss only the session embeddings
    with tf.GradientTape(persistent=True) as tape:
        layer(items, mask)
        _, codebook, commitment = layer.losses
    kernel, prototypes = layer.projection_kernel, layer.prototypes
    norm = lambda grad: float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(grad))))  # gathered rows: IndexedSlices
    assert tape.gradient(codebook, kernel) is None and norm(tape.gradient(codebook, prototypes)) > 0
    assert tape.gradient(commitment, prototypes) is None and norm(tape.gradient(commitment, kernel)) > 0
    # weights 0 add no loss; the softmax router adds none of the two
    quiet = _codebook(load_balance_weight=0.0, codebook_weight=0.0, commitment_weight=0.0)
    quiet(items, mask)
    assert quiet.losses == []
    softmax = SessionThemeRouter(num_themes=3, sessions_per_theme=2, commitment_weight=5.0)
    softmax(items, mask)
    assert len(softmax.losses) == 1 and "codebook_loss" not in softmax.routing_statistics


def test_codebook_padding_sessions_and_empty_rows_never_count():
    items, mask, _ = _batch(seed=11)
    layer = _codebook(load_balance_weight=0.1, commitment_weight=0.25)
    out = layer(items, mask)
    losses = [float(x) for x in layer.losses]
    noisy = np.where(mask[..., None], items, 1e4).astype("float32")
    noisy_out = layer(noisy, mask)  # every output but the grid it echoes is blind to padded values
    np.testing.assert_array_equal(noisy_out.pop("session_items").numpy(), noisy)
    _assert_matches(noisy_out, {k: v.numpy() for k, v in out.items() if k != "session_items"})
    np.testing.assert_allclose([float(x) for x in layer.losses], losses, rtol=1e-6)
    # extra all-padding rows: no assignment, same losses
    padded_items = np.concatenate([items, np.full_like(items[:2], 7.0)])
    padded_mask = np.concatenate([mask, np.zeros_like(mask[:2])])
    padded = layer(padded_items, padded_mask)
    np.testing.assert_allclose([float(x) for x in layer.losses], losses, rtol=1e-5)
    np.testing.assert_array_equal(padded["session_codes"].numpy()[-2:], -1)
    np.testing.assert_array_equal(padded["quantized_sessions"].numpy()[-2:], 0.0)
    np.testing.assert_array_equal(padded["routing_probs"].numpy()[-2:], 0.0)
    assert not padded["selection_mask"].numpy()[-2:].any()
    # a batch without any real session: every loss is 0, nothing is NaN
    empty = layer(items, np.zeros_like(mask))
    assert [float(x) for x in layer.losses] == [0.0, 0.0, 0.0]
    assert all(np.isfinite(v.numpy()).all() for v in empty.values() if v.dtype.is_floating)


def _real_session_embeddings(layer, items, mask):
    z, _ = numpy_session_embeddings(layer, items, mask)
    return z[mask.any(-1)].astype("float32")


def _is_one_of(vector, candidates):
    return np.abs(candidates - vector).max(-1).min() < 1e-5


def test_first_training_call_initialises_the_codebook_from_real_sessions():
    items, mask, _ = _batch(seed=12)
    layer = _codebook(num_themes=4)
    layer(items, mask)  # inference: no restart, no usage update
    initial = layer.prototypes.numpy().copy()
    np.testing.assert_array_equal(layer.code_usage.numpy(), 0.0)
    layer(items, mask, training=False)
    np.testing.assert_array_equal(layer.prototypes.numpy(), initial)
    layer(items, mask, training=True)
    codes = layer.prototypes.numpy()
    sessions = _real_session_embeddings(layer, items, mask)
    assert all(_is_one_of(c, sessions) for c in codes), "a code was not set to a real session's embedding"
    assert len({tuple(np.round(c, 5)) for c in codes}) == 4  # four distinct sessions
    np.testing.assert_allclose(layer.code_usage.numpy(), 0.25)
    assert float(layer.routing_statistics["restarted_codes"].numpy()) == 4


@pytest.mark.parametrize("compiled", [False, True])
def test_dead_codes_restart_inside_a_compiled_step(compiled):
    """Codes 2 and 3 far from every session: their usage decays under the threshold and they restart."""
    items, mask, _ = _batch(seed=13)
    layer = _codebook(num_themes=4, dead_code_threshold=0.5, usage_decay=0.5)
    layer(items, mask)
    far = np.array([[1e3] * 4, [-1e3] * 4], "float32")
    call = lambda: layer(items, mask, training=True)["session_codes"]
    step = tf.function(call, jit_compile=True) if compiled else call
    layer.prototypes.assign(np.concatenate([layer.prototypes.numpy()[:2], far]))
    layer.code_usage.assign([0.5, 0.3, 0.2, 0.2])  # alive: 0.5 * 0.25 = 0.125 is the threshold
    before = layer.prototypes.numpy().copy()
    codes = step().numpy()
    valid = mask.any(-1)
    share = np.bincount(codes[valid], minlength=4) / valid.sum()
    assert share[2:].sum() == 0  # nobody chose the far codes
    after = layer.prototypes.numpy()
    np.testing.assert_array_equal(after, before)  # usage was above the threshold before this batch
    np.testing.assert_allclose(layer.code_usage.numpy(), 0.5 * np.array([0.5, 0.3, 0.2, 0.2]) + 0.5 * share,
                               rtol=1e-6)
    step()  # now u_2 = u_3 = 0.1 < 0.125: both restart from real sessions; codes 0 and 1 are kept
    after = layer.prototypes.numpy()
    np.testing.assert_array_equal(after[:2], before[:2])
    sessions = _real_session_embeddings(layer, items, mask)
    assert _is_one_of(after[2], sessions) and _is_one_of(after[3], sessions)
    np.testing.assert_allclose(layer.code_usage.numpy()[2:], 0.25)
    assert float(layer.routing_statistics["restarted_codes"].numpy()) == 2


def test_restarts_need_real_sessions():
    items, mask, _ = _batch(seed=14)
    layer = _codebook(num_themes=4)
    layer(items, mask)
    initial = layer.prototypes.numpy().copy()
    layer(items, np.zeros_like(mask), training=True)  # no real session: nothing to restart from
    np.testing.assert_array_equal(layer.prototypes.numpy(), initial)
    np.testing.assert_array_equal(layer.code_usage.numpy(), 0.0)
    one = np.zeros_like(mask)
    one[3, 2, 0] = True  # a single real session (one item): only one code can restart
    layer(items, one, training=True)
    changed = np.abs(layer.prototypes.numpy() - initial).max(-1) > 0
    assert changed.sum() == 1
    np.testing.assert_allclose(layer.prototypes.numpy()[changed][0], _real_session_embeddings(layer, items, one)[0],
                               rtol=1e-5)
    np.testing.assert_allclose(layer.code_usage.numpy()[changed], 0.25)
    disabled = _codebook(num_themes=4, dead_code_threshold=0.0)
    disabled(items, mask)
    initial = disabled.prototypes.numpy().copy()
    disabled(items, mask, training=True)
    np.testing.assert_array_equal(disabled.prototypes.numpy(), initial)


def test_restarts_are_skipped_under_a_multi_replica_strategy(mirrored_strategy):
    items, mask, _ = _batch(seed=15, batch=8)
    with mirrored_strategy.scope():
        layer = _codebook(num_themes=4)
        layer(items[:2], mask[:2])
    initial = layer.prototypes.numpy().copy()
    dist = mirrored_strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((items, mask)).batch(8))

    @tf.function
    def step(inputs):
        return mirrored_strategy.run(lambda a, b: layer(a, b, training=True)["session_codes"], args=inputs)

    with pytest.warns(UserWarning, match=r"dead-code restarts are skipped under a 2-replica strategy"):
        step(next(iter(dist)))
    np.testing.assert_array_equal(layer.prototypes.numpy(), initial)


def test_codebook_config_round_trip_and_from_config():
    layer = _codebook(codebook_weight=0.4, commitment_weight=0.1, dead_code_threshold=0.2, usage_decay=0.8)
    config = layer.get_config()
    assert {k: config[k] for k in ("router", "codebook_weight", "commitment_weight", "dead_code_threshold",
                                   "usage_decay")} == {"router": "codebook", "codebook_weight": 0.4,
                                                       "commitment_weight": 0.1, "dead_code_threshold": 0.2,
                                                       "usage_decay": 0.8}
    clone = SessionThemeRouter.from_config(config)
    assert clone.get_config() == config and clone.router == "codebook"
    assert SessionThemeRouter(num_themes=3, sessions_per_theme=2).get_config()["router"] == "softmax"


def test_codebook_contract(tmp_path):
    items, mask, _ = _clustered_sessions(np.random.default_rng(1), batch=4, num_sessions=5, session_length=3, d=4)
    mask[0, 1] = False
    mask[1, 2, :2] = False
    target = items[:, -1, 0] + 0.1
    # by key: quantized_sessions (the float32 codebook's vectors), routing_probs, selection_scale, selection_weights:
    # float32; session_items (the grid read): the compute dtype; target_probs: float32; theme_items: compute
    run_layer_test(lambda: _codebook(commitment_weight=0.25), (items, mask, target), tmp_path,
                   output_dtype=["float32", "float32", "float32", "float32", "compute", "float32", "compute"])


def test_codebook_distances_are_float32_under_mixed_precision():
    items, mask, target = _batch(seed=16)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = _codebook()
        out = layer(items, mask, target=target, training=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert out["theme_items"].dtype == tf.float16
    for name in ("routing_probs", "quantized_sessions", "target_probs"):
        assert out[name].dtype == tf.float32, name
    assert all(loss.dtype == tf.float32 for loss in layer.losses)
    assert layer.prototypes.dtype == "float32" and layer.code_usage.dtype == "float32"


@pytest.mark.parametrize("router", ["softmax", "codebook"])
def test_target_routing_of_a_large_batch_matches_numpy(router):
    """1,024 target rows: TensorFlow 2.16's oneDNN ``einsum("...d,dc->...c")`` gets 2-D inputs of this size wrong."""
    rng = np.random.default_rng(17)
    layer = SessionThemeRouter(num_themes=8, sessions_per_theme=2, router=router)
    items, mask, _ = _batch(d=16)
    layer(items, mask)
    target = rng.normal(size=(1024, 16)).astype("float32")
    out = layer(items[:1].repeat(1024, 0), mask[:1].repeat(1024, 0), target=target)
    np.testing.assert_allclose(out["target_probs"], _softmax(numpy_theme_logits(layer, target)), rtol=1e-4, atol=1e-6)


def test_a_codebook_router_learns_clustered_sessions():
    """Three separated clusters: a few VQ training steps give one cluster per code (data-initialised codebook)."""
    items, mask, clusters = _clustered_sessions(np.random.default_rng(0))
    keras.utils.set_random_seed(0)
    router = _codebook(load_balance_weight=0.0)
    router(items, mask)
    optimizer = keras.optimizers.Adam(0.05)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            router(items, mask, training=True)
            loss = tf.add_n(router.losses)
        optimizer.apply_gradients(zip(tape.gradient(loss, router.trainable_weights), router.trainable_weights))

    for _ in range(30):
        train_step()
    codes = router(items, mask)["session_codes"].numpy()
    pairs = set(zip(codes.ravel().tolist(), clusters.ravel().tolist()))
    assert _one_cluster_per_theme(pairs), f"(code, cluster) pairs after training: {sorted(pairs)}"
