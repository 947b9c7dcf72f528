"""TWIN and TransAct backbones against numpy loop references (DIN's is in test_ctr_models.py).

The references loop over the examples and see only each row's real positions: padding is never
computed with, so a padding leak (a padded key in a softmax, a padded token in the pool or the
top-k) makes them differ.
"""

import math

import numpy as np
import pytest

from tfmoe.models.ctr import TransActEncoder, TwinAttention

D = 6
# rows: all padding, 1 real item, 3 real, all 7 real (left padding, like the CTR inputs)
LENGTHS = [0, 1, 3, 7]


def inputs(length=7, seed=0):
    rng = np.random.default_rng(seed)
    seq = rng.normal(size=(len(LENGTHS), length, D)).astype("float32")
    mask = np.arange(length)[None, :] >= length - np.array(LENGTHS)[:, None]
    seq = np.where(mask[..., None], seq, 0.0).astype("float32")  # zero at padding, like CTRModel.encode
    target = rng.normal(size=(len(LENGTHS), D)).astype("float32")
    return seq, mask, target


def randomize(layer, seed):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in layer.get_weights()])


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ----- TWIN --------------------------------------------------------------------------------------------------
def numpy_twin(layer, seq, mask, target):
    wk, wq, wv = (np.asarray(p.kernel, np.float64) for p in (layer.key_projection, layer.query_projection,
                                                            layer.value_projection))
    wo, bo = np.asarray(layer.output_projection.kernel, np.float64), np.asarray(layer.output_projection.bias)
    h = layer.num_heads
    dh = wk.shape[1] // h
    out = []
    for b in range(seq.shape[0]):
        real = seq[b][mask[b]].astype(np.float64)  # [n, d]
        keys = (real @ wk).reshape(-1, h, dh)
        query = (target[b].astype(np.float64) @ wq).reshape(h, dh)
        scores = np.einsum("nhd,hd->nh", keys, query) / math.sqrt(dh)  # [n, H]
        # GSU: the top_k real behaviours by the head-mean score (ties: the earlier one, like tf.math.top_k)
        kept = sorted(range(len(real)), key=lambda i: (-scores[i].mean(), i))[: layer.top_k]
        context = np.zeros((h, dh))
        if kept:  # ESU: per-head softmax over the kept behaviours, values W_v e_i
            weights = softmax(scores[kept], axis=0)  # [k, H]
            values = (real[kept] @ wv).reshape(-1, h, dh)
            context = np.einsum("kh,khd->hd", weights, values)
        out.append(context.reshape(-1) @ wo + bo)
    return np.stack(out)


@pytest.mark.parametrize("top_k, heads, head_dim, output_dim", [(3, 2, None, None), (50, 3, 4, 5), (1, 1, None, 4)])
def test_twin_equals_a_numpy_loop_reference(top_k, heads, head_dim, output_dim):
    seq, mask, target = inputs()
    layer = TwinAttention(top_k=top_k, num_heads=heads, head_dim=head_dim, output_dim=output_dim)
    layer(seq, mask, target)
    randomize(layer, 1)
    got = layer(seq, mask, target).numpy()
    np.testing.assert_allclose(got, numpy_twin(layer, seq, mask, target), rtol=1e-4, atol=1e-5)
    # the row with no real item: context 0, so the output is the projection's bias
    np.testing.assert_allclose(got[0], layer.output_projection.bias.numpy(), atol=1e-6)


def test_twin_retrieval_drops_the_least_relevant_behaviour():
    """With top_k = n - 1 the output must not depend on the behaviour with the lowest relevance."""
    seq, mask, target = inputs(seed=3)
    layer = TwinAttention(top_k=6, num_heads=2)
    layer(seq, mask, target)
    randomize(layer, 2)
    wk, wq = layer.key_projection.kernel.numpy(), layer.query_projection.kernel.numpy()
    relevance = np.einsum("nhd,hd->nh", (seq[3] @ wk).reshape(7, 2, -1), (target[3] @ wq).reshape(2, -1)).mean(-1)
    worst = int(np.argmin(relevance))
    changed = seq.copy()
    changed[3, worst] *= 1.01  # still the least relevant (relevance is linear in e_i), but a different value
    assert np.argmin(np.einsum("nhd,hd->nh", (changed[3] @ wk).reshape(7, 2, -1),
                               (target[3] @ wq).reshape(2, -1)).mean(-1)) == worst
    np.testing.assert_allclose(layer(changed, mask, target).numpy()[3], layer(seq, mask, target).numpy()[3],
                               rtol=1e-6, atol=1e-6)


# ----- TransAct ---------------------------------------------------------------------------------------------------
def _dense(layer, x):
    return x @ np.asarray(layer.kernel, np.float64) + np.asarray(layer.bias, np.float64)


def _layer_norm(layer, x, eps=1e-6):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * np.asarray(layer.gamma) + np.asarray(layer.beta)


def numpy_transact(layer, seq, mask, target):
    h = layer.num_heads
    out = []
    for b in range(seq.shape[0]):
        q = target[b].astype(np.float64)
        tokens = np.concatenate([seq[b][mask[b]].astype(np.float64), q[None]], axis=0)  # real items, then target
        if layer.early_fusion:
            tokens = np.concatenate([tokens, np.broadcast_to(q, tokens.shape)], axis=-1)
        x = _dense(layer.input_projection, tokens)  # [n + 1, dm]
        t, dm = x.shape
        dh = dm // h
        for i in range(layer.num_layers):
            def attention(y, i=i, t=t, dm=dm, dh=dh):
                qkv = _dense(layer.qkv_layers[i], y).reshape(t, 3, h, dh)
                context = np.zeros((t, h, dh))
                for head in range(h):
                    scores = qkv[:, 0, head] @ qkv[:, 1, head].T / math.sqrt(dh)
                    context[:, head] = softmax(scores) @ qkv[:, 2, head]
                return _dense(layer.attention_outputs[i], context.reshape(t, dm))

            def ffn(y, i=i):
                return _dense(layer.ffn_outputs[i], np.maximum(_dense(layer.ffn_inputs[i], y), 0.0))

            for norm, f in ((layer.attention_norms[i], attention), (layer.ffn_norms[i], ffn)):
                x = x + f(_layer_norm(norm, x)) if layer.norm == "pre" else _layer_norm(norm, x + f(x))
        pooled = x[:-1].max(axis=0) if t > 1 else np.zeros(dm)  # max over the real items; 0 for none
        out.append(np.concatenate([x[-1], pooled]))
    return np.stack(out)


@pytest.mark.parametrize("options", [
    {"num_heads": 2},
    {"num_heads": 3, "model_dim": 9, "num_layers": 2, "ffn_dim": 5, "norm": "post"},
    {"num_heads": 1, "early_fusion": False, "num_layers": 2},
])
def test_transact_equals_a_numpy_loop_reference(options):
    seq, mask, target = inputs()
    layer = TransActEncoder(**options)
    layer(seq, mask, target)
    randomize(layer, 4)
    for norms in (layer.attention_norms, layer.ffn_norms):  # LayerNorm scale near 1, so no row is degenerate
        for norm in norms:
            norm.gamma.assign(1.0 + 0.2 * norm.gamma.numpy())
    got = layer(seq, mask, target).numpy()
    assert got.shape == (len(LENGTHS), layer.output_width(D))
    np.testing.assert_allclose(got, numpy_transact(layer, seq, mask, target), rtol=1e-4, atol=1e-4)
    dm = got.shape[1] // 2
    np.testing.assert_array_equal(got[0, dm:], 0.0)  # no real item: the pool is zero
