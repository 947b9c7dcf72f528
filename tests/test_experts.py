"""FeedForward and ExpertBank checked against numpy feed-forward networks."""

import keras
import numpy as np
import pytest

from tfmoe.layers.experts import ExpertBank, FeedForward, per_expert_initializer
from tfmoe.testing import run_layer_test


def _gelu(x):
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def _relu(x):
    return np.maximum(x, 0.0)


def _numpy_ffn(x, w1, b1, w2, b2, act):
    return act(x @ w1 + b1) @ w2 + b2


def _randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32") for w in layer.get_weights()])


def _seeded(factory, seed=4):
    def make():
        keras.utils.set_random_seed(seed)
        return factory()

    return make


RNG = np.random.default_rng(1)
X = RNG.normal(size=(2, 5, 6)).astype("float32")


# ---------------------------------------------------------------- FeedForward
def test_feed_forward_equals_numpy_and_zeroes_masked_positions():
    ffn = FeedForward(hidden_dim=12, output_dim=4, activation="gelu")
    ffn.build(X.shape)
    _randomize(ffn)
    w1, w2, b1, b2 = (
        ffn.kernel_in.numpy(),
        ffn.kernel_out.numpy(),
        ffn.bias_in.numpy(),
        ffn.bias_out.numpy(),
    )
    expected = _numpy_ffn(X.astype(np.float64), w1, b1, w2, b2, _gelu)
    np.testing.assert_allclose(ffn(X).numpy(), expected, atol=1e-5)
    mask = np.array([[True, True, False, True, False], [True] * 5])
    got = ffn(X, mask=mask).numpy()
    np.testing.assert_allclose(got, expected * mask[..., None], atol=1e-5)
    assert ffn.compute_mask(X, mask) is mask


def test_feed_forward_dropout_only_in_training():
    ffn = FeedForward(hidden_dim=64, dropout=0.5)
    np.testing.assert_array_equal(ffn(X, training=False).numpy(), ffn(X).numpy())
    assert not np.allclose(ffn(X, training=True).numpy(), ffn(X).numpy())


def test_feed_forward_in_a_masked_keras_model_propagates_the_mask():
    ids = np.array([[3, 4, 0, 0], [5, 0, 0, 0]])
    inputs = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(10, 6, mask_zero=True)(inputs)
    outputs = FeedForward(hidden_dim=8)(embedded)
    model = keras.Model(inputs, outputs)
    got = model(ids).numpy()
    assert np.all(got[ids == 0] == 0) and np.all(np.abs(got[ids != 0]).sum(-1) > 0)


# ---------------------------------------------------------------- ExpertBank
def _bank_weights(bank):
    return [np.asarray(w, np.float64) for w in (bank.kernel_in, bank.bias_in, bank.kernel_out, bank.bias_out)]


def test_expert_bank_buffers_run_each_expert_on_its_own_row():
    bank = ExpertBank(num_experts=3, hidden_dim=7, output_dim=5, activation="relu")
    buffers = RNG.normal(size=(3, 4, 6)).astype("float32")
    bank.build(buffers.shape)
    _randomize(bank, 2)
    w1, b1, w2, b2 = _bank_weights(bank)
    got = bank(buffers).numpy()
    for e in range(3):
        np.testing.assert_allclose(
            got[e], _numpy_ffn(buffers[e], w1[e], b1[e], w2[e], b2[e], _relu), atol=1e-5
        )


def test_expert_bank_dense_mixture_equals_numpy_mixture():
    bank = ExpertBank(num_experts=4, hidden_dim=9)
    bank.build(X.shape)
    _randomize(bank, 3)
    w1, b1, w2, b2 = _bank_weights(bank)
    gates = RNG.random(size=(2, 5, 4)).astype("float32")
    expected = sum(gates[..., e : e + 1] * _numpy_ffn(X, w1[e], b1[e], w2[e], b2[e], _gelu) for e in range(4))
    np.testing.assert_allclose(bank(X, gates).numpy(), expected, atol=1e-5)
    # The same experts through buffers: broadcasting the tokens to every expert.
    buffers = np.broadcast_to(X.reshape(1, 10, 6), (4, 10, 6))
    per_expert = bank(buffers).numpy().reshape(4, 2, 5, 6)
    np.testing.assert_allclose(np.einsum("bte,ebto->bto", gates, per_expert), expected, atol=1e-5)


def test_expert_bank_initializer_gives_each_expert_dense_variance():
    bank = ExpertBank(num_experts=8, hidden_dim=256)
    bank.build((None, 128))
    limit = np.sqrt(6.0 / (128 + 256))  # Glorot uniform of one [128, 256] Dense kernel
    for e in range(8):
        slice_ = bank.kernel_in.numpy()[e]
        assert abs(slice_.std() - limit / np.sqrt(3.0)) < 0.02 * limit
        assert np.abs(slice_).max() <= limit
    assert not np.allclose(bank.kernel_in.numpy()[0], bank.kernel_in.numpy()[1])
    other = per_expert_initializer(keras.initializers.RandomNormal(stddev=0.5), 8)
    assert isinstance(other, keras.initializers.RandomNormal) and other.stddev == 0.5


def test_expert_bank_rejects_wrong_buffers_and_gates():
    bank = ExpertBank(num_experts=3, hidden_dim=4)
    with pytest.raises(
        ValueError, match=r"ExpertBank: buffers must have shape \[num_experts=3, capacity, dim\]"
    ):
        bank(np.ones((2, 4, 6), "float32"))
    with pytest.raises(ValueError, match=r"ExpertBank: gates must end with num_experts=3"):
        bank(X, np.ones((2, 5, 2), "float32"))


@pytest.mark.parametrize(
    "factory, message",
    [
        (
            lambda: ExpertBank(num_experts=0, hidden_dim=4),
            r"ExpertBank: `num_experts` must be an integer >= 1, got 0",
        ),
        (
            lambda: ExpertBank(num_experts=2, hidden_dim=-1),
            r"ExpertBank: `hidden_dim` must be an integer >= 1, got -1",
        ),
        (
            lambda: FeedForward(hidden_dim=4, dropout=1.0),
            r"FeedForward: `dropout` must be .*\[0.0, 1.0\), got 1.0",
        ),
        (
            lambda: FeedForward(hidden_dim=4, output_dim=0),
            r"FeedForward: `output_dim` must be an integer >= 1, got 0",
        ),
        (
            lambda: FeedForward(hidden_dim=4, activation="nope"),
            r"FeedForward: invalid activation or initializer",
        ),
        (lambda: FeedForward(hidden_dim="4"), r"FeedForward: `hidden_dim` must be an integer >= 1, got '4'"),
    ],
)
def test_invalid_arguments_raise(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


# ---------------------------------------------------------------- contract
def test_feed_forward_contract(tmp_path):
    mask = np.array([[True, True, True, False, False], [True, False, True, True, True]])
    run_layer_test(_seeded(lambda: FeedForward(hidden_dim=16, dropout=0.1)), (X, mask), tmp_path)


def test_expert_bank_mixture_contract(tmp_path):
    gates = np.random.default_rng(2).random((2, 5, 3)).astype("float32")
    run_layer_test(
        _seeded(lambda: ExpertBank(num_experts=3, hidden_dim=8, dropout=0.1)), (X, gates), tmp_path
    )


def test_expert_bank_buffers_contract(tmp_path):
    # Buffers are [E, C, d]: axis 0 is the expert axis, not a batch axis that MirroredStrategy could
    # split, so the distributed check runs on the mixture mode above.
    buffers = np.random.default_rng(3).normal(size=(3, 4, 6)).astype("float32")
    run_layer_test(
        _seeded(lambda: ExpertBank(num_experts=3, hidden_dim=8)), (buffers,), tmp_path, mirrored=False
    )
