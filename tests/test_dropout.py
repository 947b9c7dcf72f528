"""BitDropout: 16-bit random draws, the rounded rate, inverted scaling, seeds, gradients and the layer contract."""

import numpy as np
import pytest
import tensorflow as tf

from tfmoe.layers import BitDropout
from tfmoe.testing import run_layer_test

X = np.random.default_rng(0).normal(size=(2, 3, 5)).astype("float32")


def test_drops_the_rounded_rate_and_scales_what_it_keeps():
    layer = BitDropout(0.1, seed=7)
    assert layer.threshold == 6554 and layer.applied_rate == 6554 / 65536
    x = np.full((1001, 999), 3.0, "float32")  # odd element count: the last 32-bit word is half used
    out = layer(x, training=True).numpy()
    dropped = out == 0
    # 1e6 Bernoulli(0.1) draws: the standard deviation of the fraction is 3e-4
    assert abs(dropped.mean() - layer.applied_rate) < 2e-3
    np.testing.assert_allclose(out[~dropped], 3.0 / (1 - 6554 / 65536), rtol=1e-6)
    assert abs(out.mean() - 3.0) < 0.02  # the mean is preserved in expectation


def test_identity_unless_training_and_fresh_bits_per_call():
    layer = BitDropout(0.5, seed=1)
    np.testing.assert_array_equal(layer(X).numpy(), X)
    np.testing.assert_array_equal(layer(X, training=False).numpy(), X)
    np.testing.assert_array_equal(BitDropout(0.0)(X, training=True).numpy(), X)
    first, second = layer(X, training=True).numpy(), layer(X, training=True).numpy()
    assert not np.array_equal(first == 0, second == 0)
    np.testing.assert_array_equal(BitDropout(0.5, seed=1)(X, training=True).numpy(), first)  # seeded: repeatable


def test_gradient_is_the_kept_mask_times_the_scale():
    layer = BitDropout(0.3, seed=2)
    x = tf.constant(X)
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, training=True)
    grad = tape.gradient(out, x).numpy()
    kept = out.numpy() != 0
    np.testing.assert_allclose(grad, kept / (1 - layer.applied_rate), rtol=1e-6)


def test_trains_under_xla_and_keeps_the_dtype():
    layer = BitDropout(0.25, seed=3)
    out = tf.function(lambda x: layer(x, training=True), jit_compile=True)(tf.constant(X)).numpy()
    assert 0 < (out == 0).sum() < X.size
    half = BitDropout(0.25, seed=3, dtype="mixed_float16")(X, training=True)
    assert half.dtype == tf.float16


@pytest.mark.parametrize("rate", [-0.1, 1.0, "0.1"])
def test_rejects_a_bad_rate(rate):
    with pytest.raises((ValueError, TypeError), match="BitDropout.*rate"):
        BitDropout(rate)


def test_contract(tmp_path):
    run_layer_test(lambda: BitDropout(0.2, seed=4), (X,), tmp_path)
