"""Routers (softmax, top-k, expert choice) and capacity, checked against numpy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmoe.layers.routers import ExpertChoiceRouter, SoftmaxRouter, TopKRouter, capacity_never_drops, expert_capacity
from tfmoe.testing import run_layer_test


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _numpy(outputs):
    return {key: np.asarray(value) for key, value in outputs.items()}


def _seeded(factory, seed=3):
    def make():
        keras.utils.set_random_seed(seed)
        return factory()

    return make


def _logits(router, x, temperature=1.0):
    w = router.kernel.numpy().astype(np.float64)
    return x.astype(np.float64) @ w / temperature


RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 6, 8)).astype("float32")
MASK = np.arange(6)[None, :] < np.array([[6], [4], [1], [5]])


# ---------------------------------------------------------------- capacity
@pytest.mark.parametrize(
    "tokens, experts, factor, k, expected",
    [
        (8192, 8, 1.25, 2, 2560),
        (10, 4, 1.25, 1, 4),
        (10, 4, 1.0, 2, 5),
        (7, 2, 10.0, 1, 7),
        (3, 8, 1.0, 1, 1),
        (100, 3, 0.3, 1, 10),
        (0, 4, 1.25, 2, 0),
    ],
)
def test_expert_capacity_matches_formula(tokens, experts, factor, k, expected):
    assert expert_capacity(tokens, experts, factor, k) == expected
    assert int(expert_capacity(tf.constant(tokens), experts, factor, k)) == expected


def test_expert_capacity_tensor_equals_python_on_a_range():
    tokens = np.arange(0, 300)
    got = expert_capacity(tf.constant(tokens), 6, 1.25, 2).numpy()
    assert got.tolist() == [expert_capacity(int(t), 6, 1.25, 2) for t in tokens]


# ---------------------------------------------------------------- softmax router
def test_softmax_router_equals_numpy_softmax_and_masks_padding():
    router = SoftmaxRouter(num_experts=3, temperature=2.0)
    out = _numpy(router(X, mask=MASK))
    probs = _softmax(_logits(router, X, 2.0)) * MASK[..., None]
    np.testing.assert_allclose(out["router_probs"], probs, atol=1e-6)
    np.testing.assert_allclose(out["combine_weights"], probs, atol=1e-6)
    np.testing.assert_array_equal(out["dispatch_mask"], np.broadcast_to(MASK[..., None], probs.shape))
    np.testing.assert_array_equal(out["expert_indices"][MASK], np.tile(np.arange(3), (MASK.sum(), 1)))
    assert (out["expert_indices"][~MASK] == -1).all()
    np.testing.assert_allclose(out["router_logits"], _logits(router, X, 2.0) * MASK[..., None], atol=1e-5)


# ---------------------------------------------------------------- top-k router
@pytest.mark.parametrize("normalize", ["selected", "all"])
def test_top_k_router_equals_numpy(normalize):
    router = TopKRouter(num_experts=5, k=2, normalize=normalize, temperature=0.5, use_bias=True)
    router.build(X.shape)
    router.bias.assign(np.array([0.1, -0.2, 0.3, 0.0, 0.05], "float32"))
    out = _numpy(router(X, mask=MASK))
    logits = _logits(router, X, 1.0) + router.bias.numpy()
    logits = logits / 0.5
    probs = _softmax(logits)
    order = np.argsort(-logits, axis=-1)[..., :2]
    top = np.take_along_axis(logits, order, -1)
    gates = _softmax(top) if normalize == "selected" else np.take_along_axis(probs, order, -1)
    combine = np.zeros_like(probs)
    np.put_along_axis(combine, order, gates, -1)
    m = MASK[..., None]
    np.testing.assert_array_equal(out["expert_indices"], np.where(m, order, -1))
    np.testing.assert_allclose(out["expert_gates"], gates * m, atol=1e-6)
    np.testing.assert_allclose(out["combine_weights"], combine * m, atol=1e-6)
    np.testing.assert_allclose(out["router_probs"], probs * m, atol=1e-6)
    np.testing.assert_array_equal(out["dispatch_mask"], (combine > 0) * m)
    if normalize == "selected":
        np.testing.assert_allclose(out["expert_gates"].sum(-1), MASK.astype(float), atol=1e-6)


def test_top_k_router_padding_changes_nothing_else():
    router = TopKRouter(num_experts=4, k=2)
    base = _numpy(router(X, mask=MASK))
    noisy = X.copy()
    noisy[~MASK] = 1e6
    other = _numpy(router(noisy, mask=MASK))
    for key in base:
        np.testing.assert_array_equal(base[key][MASK], other[key][MASK])
        assert np.all(other[key][~MASK] == (-1 if key == "expert_indices" else 0))


def test_top_k_noise_only_in_training_and_seeded():
    def make():
        keras.utils.set_random_seed(1)
        return TopKRouter(num_experts=6, k=2, noise_std=3.0, seed=7)

    a, b = make(), make()
    clean = _numpy(a(X))
    np.testing.assert_array_equal(_numpy(a(X, training=False))["combine_weights"], clean["combine_weights"])
    noisy_a = _numpy(a(X, training=True))
    noisy_b = _numpy(b(X, training=True))
    np.testing.assert_allclose(noisy_a["combine_weights"], noisy_b["combine_weights"])  # same seed
    assert not np.array_equal(noisy_a["expert_indices"], clean["expert_indices"])  # std 3 moves choices
    np.testing.assert_allclose(noisy_a["router_logits"], clean["router_logits"])  # logits stay clean
    again = _numpy(a(X, training=True))
    assert not np.array_equal(again["combine_weights"], noisy_a["combine_weights"])  # fresh noise per call


def test_top_k_noise_works_under_jit_in_training():
    router = _seeded(lambda: TopKRouter(num_experts=6, k=2, noise_std=3.0, seed=7))()
    clean = _numpy(router(X))
    noisy = tf.function(lambda x: router(x, training=True), jit_compile=True)
    first, second = _numpy(noisy(X)), _numpy(noisy(X))
    assert not np.array_equal(first["expert_indices"], clean["expert_indices"])
    assert not np.array_equal(first["combine_weights"], second["combine_weights"])  # the seed state advances


def test_router_math_is_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        router = TopKRouter(num_experts=4, k=2)
        out = router(X)
    finally:
        keras.config.set_dtype_policy(previous)
    assert router.kernel.dtype == "float32"
    for key in ("router_logits", "router_probs", "combine_weights", "expert_gates"):
        assert out[key].dtype == tf.float32


# ---------------------------------------------------------------- expert choice
def _numpy_expert_choice(router, x, mask, factor):
    probs = _softmax(_logits(router, x)) * mask[..., None]
    batch, length, experts = probs.shape
    capacity = expert_capacity(length, experts, factor)
    indices = -np.ones((batch, experts, capacity), int)
    gates = np.zeros((batch, experts, capacity))
    for b in range(batch):
        used = expert_capacity(int(mask[b].sum()), experts, factor)
        for e in range(experts):
            scores = np.where(mask[b], probs[b, :, e], -1.0)
            order = np.argsort(-scores, kind="stable")[:used]
            indices[b, e, :used] = order
            gates[b, e, :used] = probs[b, order, e]
    return probs, indices, gates


def test_expert_choice_picks_exactly_capacity_tokens_per_expert():
    router = ExpertChoiceRouter(num_experts=4, capacity_factor=2.0)
    out = _numpy(router(X, mask=MASK))
    probs, indices, gates = _numpy_expert_choice(router, X, MASK, 2.0)
    assert out["token_indices"].shape == (4, 4, 3)  # C = ceil(2 * 6 / 4)
    np.testing.assert_array_equal(out["token_indices"], indices)
    np.testing.assert_allclose(out["token_gates"], gates, atol=1e-6)
    np.testing.assert_allclose(out["router_probs"], probs, atol=1e-6)
    for b, valid in enumerate(MASK.sum(1)):
        per_expert = (out["token_indices"][b] >= 0).sum(-1)
        assert (per_expert == expert_capacity(int(valid), 4, 2.0)).all()
        assert MASK[b][out["token_indices"][b][out["token_indices"][b] >= 0]].all()  # never padding
    dispatch = out["dispatch_mask"]
    assert dispatch.sum() == sum(4 * expert_capacity(int(v), 4, 2.0) for v in MASK.sum(1))
    for b in range(4):
        for e in range(4):
            chosen = indices[b, e][indices[b, e] >= 0]
            np.testing.assert_array_equal(np.flatnonzero(dispatch[b, :, e]), np.sort(chosen))
            np.testing.assert_allclose(out["combine_weights"][b, chosen, e], probs[b, chosen, e], atol=1e-6)


def test_expert_choice_padding_changes_nothing():
    router = ExpertChoiceRouter(num_experts=3, capacity_factor=1.0)
    base = _numpy(router(X, mask=MASK))
    noisy = X.copy()
    noisy[~MASK] = -7.0
    other = _numpy(router(noisy, mask=MASK))
    for key in ("token_indices", "token_gates", "combine_weights", "dispatch_mask"):
        np.testing.assert_array_equal(base[key], other[key])


def test_expert_choice_routes_a_sequence_of_dynamic_length_as_a_static_one():
    router = ExpertChoiceRouter(num_experts=4, capacity_factor=2.0)
    static = _numpy(router(X, mask=MASK))
    spec = [tf.TensorSpec([None, None, X.shape[-1]], tf.float32), tf.TensorSpec([None, None], tf.bool)]
    dynamic = tf.function(lambda x, m: router(x, mask=m), input_signature=spec)  # a length group's width
    out = _numpy(dynamic(tf.constant(X), tf.constant(MASK)))
    assert out["token_indices"].shape == (4, 4, 3)  # C = ceil(2 * 6 / 4), computed in the graph
    for key in ("token_indices", "token_gates", "combine_weights", "dispatch_mask"):
        np.testing.assert_array_equal(out[key], static[key])


def test_expert_choice_rejects_non_sequence_inputs():
    with pytest.raises(ValueError, match=r"ExpertChoiceRouter: inputs must be \[batch, length, dim\]"):
        ExpertChoiceRouter(num_experts=2)(np.ones((3, 4), "float32"))


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: TopKRouter(num_experts=4, k=5), r"TopKRouter: `k` must be an integer in \[1, 4\], got 5"),
        (lambda: TopKRouter(num_experts=0), r"TopKRouter: `num_experts` must be an integer >= 1, got 0"),
        (
            lambda: TopKRouter(num_experts=4, normalize="sum"),
            r"TopKRouter: `normalize` must be one of .*'sum'",
        ),
        (lambda: TopKRouter(num_experts=4, noise_std=-1.0), r"TopKRouter: `noise_std` .* got -1.0"),
        (lambda: TopKRouter(num_experts=4, seed=-3), r"TopKRouter: `seed` must be an integer >= 0, got -3"),
        (lambda: SoftmaxRouter(num_experts=4, temperature=0.0), r"SoftmaxRouter: `temperature` .* got 0.0"),
        (lambda: SoftmaxRouter(num_experts=2.5), r"SoftmaxRouter: `num_experts` must be an integer .*2.5"),
        (lambda: ExpertChoiceRouter(num_experts=4, capacity_factor=0), r"`capacity_factor` .* got 0"),
        (
            lambda: SoftmaxRouter(num_experts=4, use_bias="yes"),
            r"SoftmaxRouter: `use_bias` must be True or False",
        ),
    ],
)
def test_invalid_arguments_raise(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_mask_shape_is_checked():
    with pytest.raises(ValueError, match=r"TopKRouter: `mask` must have the leading shape"):
        TopKRouter(num_experts=4)(X, mask=np.ones((4, 5), bool))


# ---------------------------------------------------------------- contract
X_CONTRACT = np.random.default_rng(5).normal(size=(4, 5, 8)).astype("float32")


@pytest.mark.parametrize(
    "factory",
    [
        lambda: SoftmaxRouter(num_experts=3, use_bias=True),
        lambda: TopKRouter(num_experts=4, k=2, normalize="all", noise_std=0.5, seed=2, temperature=0.7),
        lambda: ExpertChoiceRouter(num_experts=4, capacity_factor=1.5),
    ],
    ids=["softmax", "top_k", "expert_choice"],
)
def test_router_contract(factory, tmp_path):
    # routing math runs in float32 under any policy: every floating output is float32
    run_layer_test(_seeded(factory), (X_CONTRACT,), tmp_path, output_dtype="float32")


MASK_CONTRACT = np.arange(5)[None, :] < np.array([[5], [2], [4], [1]])


@pytest.mark.parametrize(
    "factory",
    [lambda: TopKRouter(num_experts=4, k=3), lambda: ExpertChoiceRouter(num_experts=4)],
    ids=["top_k", "expert_choice"],
)
def test_router_contract_with_mask(factory, tmp_path):
    run_layer_test(_seeded(factory), (X_CONTRACT, MASK_CONTRACT), tmp_path, output_dtype="float32")


@pytest.mark.parametrize("num_experts,k", [(4, 2), (5, 3), (7, 3), (8, 1)])
def test_capacity_never_drops_exactly_when_every_capacity_is_all_tokens(num_experts, k):
    for factor in [0.5, 1.0, 1.25, num_experts / k - 1e-3, num_experts / k, num_experts / k + 1e-3, 4.0]:
        all_tokens = all(expert_capacity(t, num_experts, factor, k) == t for t in [*range(1, 200), 10**6, 10**9])
        assert capacity_never_drops(num_experts, factor, k) == all_tokens, (factor, num_experts, k)
