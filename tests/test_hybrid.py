"""HybridMoEFeedForward (HyMoERec): fusion, alpha warm-up schedule, losses, masks, distribution."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmoe.layers.hybrid import HybridMoEFeedForward
from tfmoe.testing import mixed_precision_tolerance, run_layer_test


def _sigmoid(a):
    return 1.0 / (1.0 + math.exp(-a))


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


RNG = np.random.default_rng(3)
X = RNG.normal(size=(2, 6, 8)).astype("float32")
MASK = np.arange(6)[None, :] < np.array([[6], [4]])


def _built(**kwargs):
    keras.utils.set_random_seed(0)
    layer = HybridMoEFeedForward(**{"hidden_dim": 16, "num_experts": 4, "k": 2, **kwargs})
    layer.build(X.shape)
    return layer


def test_alpha_follows_sigmoid_times_linear_warmup_and_counts_training_calls_only():
    layer = _built(alpha_logit_init=0.3, warmup_steps=4)
    for step in range(7):
        assert int(layer.step.numpy()) == step
        assert float(layer.alpha()) == pytest.approx(_sigmoid(0.3) * min(1.0, step / 4), rel=1e-6)
        layer(X, training=False)  # inference never advances the schedule
        assert int(layer.step.numpy()) == step
        layer(X, training=True)
    no_warmup = _built(alpha_logit_init=-1.2, warmup_steps=0)
    assert float(no_warmup.alpha()) == pytest.approx(_sigmoid(-1.2), rel=1e-6)


def test_output_is_shared_ffn_plus_alpha_times_moe():
    layer = _built(alpha_logit_init=0.7, warmup_steps=2, capacity_factor=2.0)
    flat = X.reshape(-1, 8).astype(np.float64)
    w1, w2, b1, b2 = (np.asarray(v, np.float64) for v in layer.shared_ffn.get_weights())
    shared = (_gelu(flat @ w1 + b1) @ w2 + b2).reshape(X.shape)
    # Step 0 of the warm-up: the output is exactly the shared FFN.
    np.testing.assert_allclose(layer(X, training=True).numpy(), shared, atol=1e-5)
    # Step 1: alpha = sigmoid(0.7) / 2 times the top-2 mixture (capacity 2.0 never drops).
    moe = layer.moe
    logits = flat @ moe.router.kernel.numpy()
    top = np.argsort(-logits, axis=-1)[:, :2]
    gates = _softmax(np.take_along_axis(logits, top, -1))
    mixture = np.zeros_like(flat)
    bank = [
        np.asarray(w, np.float64)
        for w in (moe.experts.kernel_in, moe.experts.bias_in, moe.experts.kernel_out, moe.experts.bias_out)
    ]
    for t in range(len(flat)):
        for rank in range(2):
            e = top[t, rank]
            mixture[t] += gates[t, rank] * (
                _gelu(flat[t] @ bank[0][e] + bank[1][e]) @ bank[2][e] + bank[3][e]
            )
    alpha = _sigmoid(0.7) * 0.5
    expected = shared + alpha * mixture.reshape(X.shape)
    np.testing.assert_allclose(layer(X, training=False).numpy(), expected, atol=1e-5)


def test_entropy_load_balance_loss_is_added_with_its_weight():
    layer = _built(entropy_loss_weight=0.05, warmup_steps=0)
    layer(X, mask=MASK)
    flat = X.reshape(-1, 8)[MASK.reshape(-1)].astype(np.float64)
    mean_gate = _softmax(flat @ layer.moe.router.kernel.numpy()).mean(0)
    expected = 0.05 * np.sum(mean_gate * np.log(mean_gate))
    assert [float(v) for v in layer.losses] == pytest.approx([expected], rel=1e-5)
    assert _built(entropy_loss_weight=0.0).losses == []


def test_gradients_reach_alpha_shared_ffn_router_and_experts():
    layer = _built(warmup_steps=0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(X, mask=MASK, training=True))) + tf.add_n(layer.losses)
    grads = tape.gradient(loss, layer.trainable_variables)
    names = [v.path for v in layer.trainable_variables]
    for name, grad in zip(names, grads):
        assert grad is not None and np.abs(grad.numpy()).sum() > 0, name
    assert any(name.endswith("alpha_logit") for name in names)


def test_masked_positions_are_zero_and_influence_nothing():
    layer = _built(warmup_steps=0, routing="dense")
    base = layer(X, mask=MASK).numpy()
    other = X.copy()
    other[~MASK] = 1e4
    got = layer(other, mask=MASK).numpy()
    np.testing.assert_array_equal(got, base)
    assert np.all(got[~MASK] == 0)


def test_keras_fit_advances_the_step_once_per_batch_under_mirrored_strategy(mirrored_strategy):
    strategy = mirrored_strategy
    with strategy.scope():
        inputs = keras.Input((6, 8))
        layer = HybridMoEFeedForward(hidden_dim=8, num_experts=4, k=1, normalize="all", warmup_steps=10)
        model = keras.Model(inputs, layer(inputs))
        model.compile(keras.optimizers.Adam(0.01), "mse")
    x = np.random.default_rng(0).normal(size=(12, 6, 8)).astype("float32")
    history = model.fit(x, x, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(layer.step.numpy()) == 3
    assert [int(v.numpy()) for v in layer.step.value.values] == [3, 3]
    assert float(layer.alpha()) == pytest.approx(_sigmoid(float(layer.alpha_logit.numpy())) * 0.3, rel=1e-6)
    stats = layer.routing_statistics
    assert set(stats) == {"alpha", "step"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(warmup_steps=-1), r"HybridMoEFeedForward: `warmup_steps` must be an integer >= 0, got -1"),
        (dict(routing="expert_choice"), r"HybridMoEFeedForward: `routing` must be one of 'top_k', 'dense'"),
        (dict(k=5), r"HybridMoEFeedForward: MixtureOfExperts: `k` must be an integer in \[1, 4\], got 5"),
        (dict(entropy_loss_weight=-1.0), r"HybridMoEFeedForward: `entropy_loss_weight` .* got -1.0"),
        (dict(alpha_logit_init=float("inf")), r"HybridMoEFeedForward: `alpha_logit_init` .* got inf"),
        (dict(dropout=2.0), r"HybridMoEFeedForward: FeedForward: `dropout` .* got 2.0"),
        (dict(hidden_dim=0), r"HybridMoEFeedForward: `hidden_dim` must be an integer >= 1, got 0"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HybridMoEFeedForward(**{"hidden_dim": 8, "num_experts": 4, **kwargs})


def _factory():
    keras.utils.set_random_seed(1)
    return HybridMoEFeedForward(
        hidden_dim=12,
        num_experts=4,
        k=2,
        capacity_factor=2.0,
        warmup_steps=0,
        alpha_logit_init=0.5,
        dropout=0.1,
        z_loss_weight=0.001,
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    """The contract's own check asserts that *every* variable is float32; the step counter is an int64
    by design (an exact count of training calls), so this variant checks float variables only."""
    reference = _factory()
    expected = reference(X, MASK).numpy()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = _factory()
        layer(X, MASK)
        layer.set_weights(reference.get_weights())
        got = layer(X, MASK)
    finally:
        keras.config.set_dtype_policy(previous)
    assert got.dtype == policy.split("_")[1]
    for v in layer.weights:
        assert v.dtype == ("int64" if v.path.endswith("step") else "float32"), v.path
    # unit-scale outputs: mixed_precision_tolerance = 8 unit roundoffs of the compute dtype (see tfmoe.testing)
    tolerance = mixed_precision_tolerance(policy)
    np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=tolerance,
                               atol=tolerance * max(1.0, np.abs(expected).max()))


def test_contract(tmp_path):
    run_layer_test(_factory, (X, MASK), tmp_path, policies=())


def test_a_config_saved_by_tfmoe_0_1_loads_with_its_losses_under_their_names():
    """tfmoe 0.1 saved the entropy loss as `load_balance_weight` and the Switch loss as `switch_loss_weight`."""
    old = {**HybridMoEFeedForward(hidden_dim=8, num_experts=2, k=1).get_config(), "load_balance_weight": 0.05,
           "switch_loss_weight": 0.2}
    old.pop("entropy_loss_weight")
    layer = HybridMoEFeedForward.from_config(old)
    config = layer.get_config()
    assert (config["entropy_loss_weight"], config["load_balance_weight"]) == (0.05, 0.2)
    assert "switch_loss_weight" not in config
    assert (layer.moe.entropy_loss_weight, layer.moe.load_balance_weight) == (0.05, 0.2)
