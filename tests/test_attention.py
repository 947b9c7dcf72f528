"""MultiHeadMoEAttention (FAME) and the shared mask helpers, checked against numpy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmoe.layers import masking
from tfmoe.layers.attention import MultiHeadMoEAttention
from tfmoe.testing import run_layer_test


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _weights(layer):
    return {w.path.split("/")[-1]: np.asarray(w.numpy(), np.float64) for w in layer.weights}


def numpy_moe_attention(x, mask, w, causal=True):
    """FAME attention, one position, head and expert at a time (independent of the layer's einsums)."""
    batch, length, _ = x.shape
    heads, experts, _, dk = w["query_kernel"].shape
    head_out = np.zeros((batch, length, heads, dk))
    beta = np.zeros((batch, length, heads, experts))
    router_logits = np.zeros((batch, length, heads, experts))
    for b in range(batch):
        for i in range(length):
            if not mask[b, i]:
                continue
            keys = [j for j in range(length) if mask[b, j] and (j <= i or not causal)]
            for h in range(heads):
                k = np.stack([x[b, j] @ w["key_kernel"][h] + w["key_bias"][h] for j in keys])
                val = np.stack([x[b, j] @ w["value_kernel"][h] + w["value_bias"][h] for j in keys])
                expert_out = []
                for n in range(experts):
                    q = x[b, i] @ w["query_kernel"][h, n] + w["query_bias"][h, n]
                    expert_out.append(_softmax(k @ q / np.sqrt(dk)) @ val)
                logits = np.concatenate(expert_out) @ w["router_kernel"][h] + w["router_bias"][h]
                router_logits[b, i, h] = logits
                beta[b, i, h] = _softmax(logits)
                head_out[b, i, h] = sum(beta[b, i, h, n] * expert_out[n] for n in range(experts))
    y = head_out.reshape(batch, length, heads * dk) @ w["output_kernel"] + w["output_bias"]
    return y * mask[..., None], head_out, beta, router_logits


def numpy_multi_head_attention(x, mask, wq, bq, wk, bk, wv, bv, wo, bo):
    """Ordinary causal multi-head attention, vectorised: wq/wk/wv [H, d, dk], wo [H*dk, d_out]."""
    q = np.einsum("bld,hdk->bhlk", x, wq) + bq[None, :, None]
    k = np.einsum("bld,hdk->bhlk", x, wk) + bk[None, :, None]
    val = np.einsum("bld,hdk->bhlk", x, wv) + bv[None, :, None]
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    length = x.shape[1]
    allowed = np.tril(np.ones((length, length), bool))[None, None] & mask[:, None, None, :]
    probs = _softmax(np.where(allowed, scores, -1e30))  # fully padded rows: compared nowhere
    heads = np.transpose(probs @ val, (0, 2, 1, 3)).reshape(x.shape[0], length, -1)
    return heads @ wo + bo


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 8)).astype("float32")
    mask = np.ones((4, 6), bool)
    mask[0, :2] = False  # left padding
    mask[1, :5] = False  # a single real item
    mask[2] = False  # fully padded row
    return x, mask


def _random_biases(layer, seed=1):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        if "bias" in w.path:
            w.assign(rng.normal(scale=0.3, size=w.shape).astype("float32"))


def test_matches_numpy_reference(data):
    x, mask = data
    layer = MultiHeadMoEAttention(
        num_heads=2,
        num_experts=3,
        head_dim=3,
        output_dim=5,
        return_head_outputs=True,
        return_router_probs=True,
    )
    layer(x, mask=mask)
    _random_biases(layer)
    y, heads, beta = layer(x, mask=mask)
    ref_y, ref_heads, ref_beta, _ = numpy_moe_attention(x.astype(np.float64), mask, _weights(layer))
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(heads, ref_heads, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(beta, ref_beta, rtol=1e-4, atol=1e-6)
    assert y.shape == (4, 6, 5) and heads.shape == (4, 6, 2, 3) and beta.shape == (4, 6, 2, 3)


def test_single_expert_is_ordinary_multi_head_attention(data):
    x, _ = data
    mask = np.ones((4, 6), bool)
    mask[0, :3] = False
    layer = MultiHeadMoEAttention(num_heads=2, num_experts=1)
    layer(x, mask=mask)
    _random_biases(layer, seed=2)
    w = _weights(layer)
    expected = numpy_multi_head_attention(
        x.astype(np.float64),
        mask,
        w["query_kernel"][:, 0],
        w["query_bias"][:, 0],
        w["key_kernel"],
        w["key_bias"],
        w["value_kernel"],
        w["value_bias"],
        w["output_kernel"],
        w["output_bias"],
    )
    got = layer(x, mask=mask).numpy()
    np.testing.assert_allclose(got[mask], expected[mask], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[~mask], 0.0)


def test_tracked_router_statistics_match_numpy(data):
    x, mask = data
    layer = MultiHeadMoEAttention(num_heads=2, num_experts=3)
    layer(x, mask=mask)
    _random_biases(layer, seed=4)
    layer(x, mask=mask)
    stats = {name: variable.numpy() for name, variable in layer.routing_statistics.items()}
    _, _, beta, logits = numpy_moe_attention(x.astype(np.float64), mask, _weights(layer))
    beta, logits = beta[mask], logits[mask]  # [T, H, N] over real positions only
    mean = beta.mean(0)  # [H, N]
    load = np.stack([np.bincount(beta[:, h].argmax(-1), minlength=3) / len(beta) for h in range(2)])
    tokens = mask.sum()
    expected = {
        "tokens": tokens,
        "expert_load": mean.reshape(-1),
        "router_entropy": -(beta * np.log(beta)).sum(-1).mean(),
        "load_balance_loss": np.mean(3 * (load * mean).sum(-1)),
        "z_loss": np.mean(np.log(np.exp(logits).sum(-1)) ** 2),
        "entropy_loss": np.mean((mean * np.log(mean)).sum(-1)),
        "dropped_assignments": 0,
        "dropped_tokens": 0,
        "dropped_fraction": 0,
        "dropped_token_fraction": 0,
    }
    assert set(stats) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(stats[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    untracked = MultiHeadMoEAttention(num_heads=2, num_experts=3, track_statistics=False)
    untracked(x)
    assert untracked.routing_statistics == {} and not untracked.non_trainable_weights


def test_causality_future_tokens_do_not_change_earlier_outputs(data):
    x, _ = data
    layer = MultiHeadMoEAttention(num_heads=2, num_experts=2, return_router_probs=True)
    y, beta = layer(x)
    changed = x.copy()
    changed[:, 4:] += 10.0
    y2, beta2 = layer(changed)
    np.testing.assert_allclose(y2[:, :4], y[:, :4], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(beta2[:, :4], beta[:, :4], rtol=1e-6, atol=1e-7)
    assert not np.allclose(y2[:, 4:], y[:, 4:])
    # Without the causal mask, earlier positions do see the future.
    bidirectional = MultiHeadMoEAttention(num_heads=2, num_experts=2, use_causal_mask=False)
    assert not np.allclose(bidirectional(changed)[:, :4], bidirectional(x)[:, :4])


def test_padding_rows_are_zero_and_never_influence_other_positions(data):
    x, mask = data
    layer = MultiHeadMoEAttention(
        num_heads=2, num_experts=3, use_causal_mask=False, return_head_outputs=True, return_router_probs=True
    )
    layer(x, mask=mask)
    _random_biases(layer)
    outputs = layer(x, mask=mask)
    noisy = np.where(mask[..., None], x, 1e3 * np.random.default_rng(5).normal(size=x.shape)).astype(
        "float32"
    )
    noisy_outputs = layer(noisy, mask=mask)
    for out, noisy_out in zip(outputs, noisy_outputs):
        out, noisy_out = out.numpy(), noisy_out.numpy()
        assert np.all(np.isfinite(out))
        np.testing.assert_array_equal(out[~mask], 0.0)  # padded and fully padded rows
        np.testing.assert_allclose(noisy_out, out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs[2].numpy()[mask].sum(-1), 1.0, rtol=1e-6)


def test_gradients_reach_expert_queries_and_router(data):
    x, mask = data
    layer = MultiHeadMoEAttention(num_heads=2, num_experts=3)
    layer(x, mask=mask)
    _random_biases(layer)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(x, mask=mask)))
    grads = dict(
        zip(
            [w.path.split("/")[-1] for w in layer.trainable_weights],
            tape.gradient(loss, layer.trainable_weights),
        )
    )
    assert set(grads) >= {"query_kernel", "router_kernel", "router_bias", "key_kernel", "value_kernel"}
    query_grad = grads["query_kernel"].numpy()
    for h in range(2):
        for n in range(3):
            assert np.abs(query_grad[h, n]).sum() > 0, f"no gradient for expert query ({h}, {n})"
    assert np.abs(grads["router_kernel"].numpy()).sum() > 0
    assert np.abs(grads["router_bias"].numpy()).sum() > 0


def test_attention_dropout_only_in_training(data):
    x, mask = data
    layer = MultiHeadMoEAttention(num_heads=2, num_experts=2, dropout=0.5, seed=3)
    inference = layer(x, mask=mask, training=False).numpy()
    np.testing.assert_array_equal(layer(x, mask=mask).numpy(), inference)
    trained = layer(x, mask=mask, training=True).numpy()
    assert not np.allclose(trained[mask], inference[mask])
    np.testing.assert_array_equal(trained[~mask], 0.0)


def test_without_output_projection_returns_concatenated_heads(data):
    x, mask = data
    layer = MultiHeadMoEAttention(
        num_heads=2, num_experts=2, head_dim=5, use_output_projection=False, return_head_outputs=True
    )
    y, heads = layer(x, mask=mask)
    assert y.shape == (4, 6, 10)
    np.testing.assert_array_equal(y.numpy(), heads.numpy().reshape(4, 6, 10))
    assert not any("output" in w.path for w in layer.weights)


def test_keras_mask_propagates_from_embedding():
    ids = np.array([[0, 0, 3, 4, 5], [0, 1, 2, 3, 4]])
    embedding = keras.layers.Embedding(10, 8, mask_zero=True)
    attention = MultiHeadMoEAttention(num_heads=2, num_experts=2)
    y = attention(embedding(ids))
    np.testing.assert_array_equal(y._keras_mask.numpy(), ids != 0)
    np.testing.assert_allclose(y, attention(embedding(ids), mask=ids != 0), rtol=1e-6)
    np.testing.assert_array_equal(y.numpy()[ids == 0], 0.0)


def test_dynamic_sequence_length_in_a_functional_model(data):
    x, mask = data
    layer = MultiHeadMoEAttention(num_heads=2, num_experts=2)
    inputs, valid = keras.Input(shape=(None, 8)), keras.Input(shape=(None,), dtype="bool")
    model = keras.Model([inputs, valid], layer(inputs, mask=valid))
    for length in (6, 3):
        np.testing.assert_allclose(
            model([x[:, :length], mask[:, :length]]), layer(x[:, :length], mask=mask[:, :length]), rtol=1e-6
        )


def test_contract(tmp_path, data):
    x, mask = data
    run_layer_test(
        lambda: MultiHeadMoEAttention(
            num_heads=2, num_experts=3, dropout=0.1, return_head_outputs=True, return_router_probs=True
        ),
        (x, mask),
        tmp_path,
        output_dtype=["compute", "compute", "float32"],  # output, head outputs, router probabilities (float32)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"num_heads": 0, "num_experts": 2},
            r"MultiHeadMoEAttention: `num_heads` must be an integer >= 1, got 0",
        ),
        ({"num_heads": 2, "num_experts": 1.5}, r"`num_experts` must be an integer >= 1, got 1.5"),
        (
            {"num_heads": 2, "num_experts": 2, "dropout": 1.0},
            r"`dropout` must be a finite number in \[0.0, 1.0\)",
        ),
        ({"num_heads": 2, "num_experts": 2, "head_dim": 0}, r"`head_dim` must be an integer >= 1, got 0"),
        (
            {"num_heads": 2, "num_experts": 2, "use_causal_mask": 1},
            r"`use_causal_mask` must be True or False",
        ),
        (
            {"num_heads": 2, "num_experts": 2, "output_dim": 4, "use_output_projection": False},
            r"`output_dim` needs use_output_projection=True, got output_dim=4",
        ),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiHeadMoEAttention(**kwargs)


def test_query_key_value_initializer_reaches_those_kernels_only():
    layer = MultiHeadMoEAttention(num_heads=2, num_experts=2, query_key_value_initializer="zeros")
    layer(np.ones((1, 3, 8), "float32"))
    for kernel in (layer.query_kernel, layer.key_kernel, layer.value_kernel):
        assert not np.any(kernel.numpy()), kernel.path
    assert np.any(layer.output_kernel.numpy()) and np.any(layer.router_kernel.numpy())
    config = layer.get_config()
    assert config["query_key_value_initializer"]["class_name"] == "Zeros"
    assert MultiHeadMoEAttention.from_config(config).get_config() == config
    assert MultiHeadMoEAttention(num_heads=2, num_experts=1).get_config()["query_key_value_initializer"] is None
    with pytest.raises(ValueError, match=r"MultiHeadMoEAttention: invalid `query_key_value_initializer` 'nope'"):
        MultiHeadMoEAttention(num_heads=2, num_experts=1, query_key_value_initializer="nope")


def test_features_must_divide_into_heads():
    with pytest.raises(ValueError, match=r"input features \(7\) must be divisible by `num_heads` \(2\)"):
        MultiHeadMoEAttention(num_heads=2, num_experts=2)(np.zeros((1, 3, 7), "float32"))


# ---------------------------------------------------------------------------------------------------
# tfmoe.layers.masking


def test_attention_mask_combines_padding_and_causality():
    valid = np.array([[False, True, True, True]])
    got = masking.attention_mask(valid, causal=True).numpy()[0]
    expected = np.tril(np.ones((4, 4), bool)) & valid[0][None, :] & valid[0][:, None]
    np.testing.assert_array_equal(got, expected)
    assert masking.attention_mask(None) is None
    np.testing.assert_array_equal(masking.causal_mask(2, 4).numpy(), [[1, 1, 1, 0], [1, 1, 1, 1]])
    cross = masking.attention_mask(
        np.array([[True, False]]), key_mask=np.array([[True, True, False]])
    ).numpy()
    np.testing.assert_array_equal(cross[0], [[1, 1, 0], [0, 0, 0]])


def test_masked_softmax_and_mean():
    logits = np.array([[1.0, 2.0, 3.0], [5.0, -1.0, 0.5]], "float32")
    mask = np.array([[True, False, True], [False, False, False]])
    probs = masking.masked_softmax(logits, mask).numpy()
    e = np.exp([1.0, 3.0])
    np.testing.assert_allclose(probs[0], [e[0] / e.sum(), 0.0, e[1] / e.sum()], rtol=1e-6)
    np.testing.assert_array_equal(probs[1], 0.0)
    half = masking.masked_softmax(tf.constant(logits, tf.float16), mask)
    assert half.dtype == tf.float16
    loose = masking.masked_softmax(logits, mask, zero_empty_rows=False).numpy()  # the caller zeroes empty rows
    np.testing.assert_array_equal(loose[0], probs[0])
    assert np.all(np.isfinite(loose[1]))
    values = np.arange(24, dtype="float32").reshape(2, 3, 4)
    mean = masking.masked_mean(values, mask, axis=1).numpy()
    np.testing.assert_allclose(mean[0], (values[0, 0] + values[0, 2]) / 2)
    np.testing.assert_array_equal(mean[1], 0.0)
    np.testing.assert_array_equal(masking.apply_mask(values, mask).numpy()[0, 1], 0.0)
    np.testing.assert_allclose(
        masking.masked_sum(values, mask, axis=1).numpy()[0], values[0, 0] + values[0, 2]
    )


def test_masked_softmax_broadcasts_a_smaller_mask_along_the_named_axis():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 3, 4, 5)).astype("float32")  # e.g. [B, H, Lq, Lk]
    mask = rng.random((2, 1, 4, 5)) < 0.6
    mask[0, 0, 1] = False  # one empty row
    expected = np.where(mask, np.exp(logits), 0.0)
    expected = np.divide(expected, expected.sum(-1, keepdims=True), out=np.zeros_like(expected),
                         where=expected.sum(-1, keepdims=True) > 0)
    np.testing.assert_allclose(masking.masked_softmax(logits, mask).numpy(), expected, rtol=1e-5, atol=1e-7)
    # a lower-rank mask aligns to the trailing axes (numpy broadcasting): axis=1 still names the logits' axis 1
    keys = rng.random((3, 4)) < 0.7
    keys[0] = True  # no empty column
    got = masking.masked_softmax(logits, keys[:, :, None], axis=1).numpy()
    reference = np.where(keys[None, :, :, None], np.exp(logits), 0.0)
    np.testing.assert_allclose(got, reference / reference.sum(1, keepdims=True), rtol=1e-5)
