"""Next-item loss switch (tfmoe.models.losses) vs numpy references."""

import numpy as np
import pytest

from tfmoe.models import losses

RNG = np.random.default_rng(0)
B, L, D, V = 3, 4, 5, 9  # V = num_items + 1
HIDDEN = RNG.normal(size=(B, L, D)).astype("float32")
TABLE = RNG.normal(size=(V, D)).astype("float32")
LABELS = np.array([[0, 3, 4, 8], [0, 0, 1, 2], [5, 5, 6, 7]])


def numpy_ce_per_position(hidden, table, labels):
    logits = hidden @ table.T
    logits[..., 0] = -np.inf
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = log_z - np.take_along_axis(logits, labels[..., None], -1)[..., 0]
    return nll[labels != 0]


def numpy_ce(hidden, table, labels):
    return numpy_ce_per_position(hidden, table, labels).mean()


def numpy_sampled(hidden, table, labels, negatives, log_q, remove_hits=True):
    out = []
    for b, t in zip(*np.nonzero(labels)):
        y, h = labels[b, t], hidden[b, t]
        pos = h @ table[y] - log_q[y]
        neg = np.array([h @ table[n] - log_q[n] for n in negatives])
        if remove_hits:
            neg = neg[np.asarray(negatives) != y]
        logits = np.concatenate([[pos], neg])
        out.append(np.log(np.exp(logits).sum()) - pos)
    return np.mean(out)


def test_full_softmax_matches_numpy_and_ignores_padding():
    got = float(losses.softmax_cross_entropy(HIDDEN, TABLE, LABELS))
    np.testing.assert_allclose(got, numpy_ce(HIDDEN, TABLE, LABELS), rtol=1e-5)
    assert float(losses.softmax_cross_entropy(HIDDEN, TABLE, np.zeros_like(LABELS))) == 0.0


def numpy_ce_grad(hidden, table, labels):
    """d mean-CE / d hidden: (softmax - onehot) @ table at real positions / N, zero at padding."""
    logits = hidden @ table.T
    logits[..., 0] = -np.inf
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p[np.arange(B)[:, None], np.arange(L)[None], labels] -= 1.0
    grad = (p @ table) * (labels != 0)[..., None]
    return grad / (labels != 0).sum()


@pytest.mark.parametrize("jit_compile", [False, True])
def test_full_softmax_gradients_match_numpy_and_skip_padding(jit_compile):
    """Only the real positions are scored (dynamic gather): gradients, also under XLA, match the dense reference."""
    import tensorflow as tf

    loss = tf.function(losses.softmax_cross_entropy, jit_compile=jit_compile)
    hidden = tf.constant(HIDDEN)
    with tf.GradientTape() as tape:
        tape.watch(hidden)
        value = loss(hidden, TABLE, LABELS)
    np.testing.assert_allclose(float(value), numpy_ce(HIDDEN, TABLE, LABELS), rtol=1e-5)
    grad = tape.gradient(value, hidden).numpy()
    np.testing.assert_allclose(grad, numpy_ce_grad(HIDDEN, TABLE, LABELS), rtol=1e-4, atol=1e-6)
    assert not grad[LABELS == 0].any()


def test_sampled_softmax_with_all_items_equals_full_softmax():
    log_q = np.full(V, -np.log(V - 1), "float32")
    every_item = np.arange(1, V)
    got = float(losses.sampled_softmax_cross_entropy(HIDDEN, TABLE, LABELS, every_item, log_q))
    np.testing.assert_allclose(got, numpy_ce(HIDDEN, TABLE, LABELS), rtol=1e-5)
    # The uniform log Q cancels: any constant gives the same loss.
    shifted = float(losses.sampled_softmax_cross_entropy(HIDDEN, TABLE, LABELS, every_item, log_q + 5.0))
    np.testing.assert_allclose(shifted, got, rtol=1e-6)
    # Without removing the accidental hit the positive is counted twice: log(Z + e^s_y) - s_y = log(1 + e^CE).
    kept = float(losses.sampled_softmax_cross_entropy(HIDDEN, TABLE, LABELS, every_item, log_q, False))
    expected = np.log1p(np.exp(numpy_ce_per_position(HIDDEN, TABLE, LABELS))).mean()
    np.testing.assert_allclose(kept, expected, rtol=1e-5)


def test_sampled_softmax_logq_correction_matches_numpy():
    q = RNG.uniform(0.1, 1.0, size=V)
    q[0] = 0
    log_q = np.log(np.maximum(q / q.sum(), 1e-30)).astype("float32")
    negatives = np.array([1, 3, 3, 7, 8, 2])
    for remove in (True, False):
        got = float(losses.sampled_softmax_cross_entropy(HIDDEN, TABLE, LABELS, negatives, log_q, remove))
        np.testing.assert_allclose(got, numpy_sampled(HIDDEN, TABLE, LABELS, negatives, log_q, remove), rtol=1e-5)


def test_bce_matches_numpy_with_fixed_negatives():
    negatives = RNG.integers(1, V, size=(B, L))
    pos = np.einsum("bld,bld->bl", HIDDEN, TABLE[LABELS])
    neg = np.einsum("bld,bld->bl", HIDDEN, TABLE[negatives])
    per = np.log1p(np.exp(-pos)) + np.log1p(np.exp(neg))
    got = float(losses.bce_one_negative(HIDDEN, TABLE, LABELS, negatives))
    np.testing.assert_allclose(got, per[LABELS != 0].mean(), rtol=1e-5)


def test_uniform_negatives_exclude_the_positive_and_cover_the_rest():
    labels = np.full((400, 5), 3)
    draws = losses.uniform_negatives_excluding(labels, num_items=6, seed=7).numpy()
    assert draws.min() >= 1 and draws.max() <= 6 and not np.any(draws == 3)
    counts = np.bincount(draws.ravel(), minlength=7)[[1, 2, 4, 5, 6]]
    assert counts.min() > 0.8 * 400  # 2000 draws over 5 items: ~400 each


def test_next_item_loss_switch_is_seeded_and_samples_the_proposal():
    freqs = np.array([0, 0, 1, 1, 1, 1, 0, 0, 96], float)
    a = losses.NextItemLoss(8, kind="sampled_softmax", num_negatives=500, proposal="frequency",
                            item_frequencies=freqs, seed=3)
    b = losses.NextItemLoss(8, kind="sampled_softmax", num_negatives=500, proposal="frequency",
                            item_frequencies=freqs, seed=3)
    na, nb = a.sample_negatives().numpy(), b.sample_negatives().numpy()
    np.testing.assert_array_equal(na, nb)
    assert set(np.unique(na)) <= {2, 3, 4, 5, 8} and np.mean(na == 8) > 0.9
    uniform = losses.NextItemLoss(8, kind="sampled_softmax", num_negatives=200, seed=1).sample_negatives().numpy()
    assert uniform.min() >= 1 and uniform.max() <= 8
    for kind in losses.KINDS:
        value = float(losses.NextItemLoss(8, kind=kind, num_negatives=4, seed=0)(HIDDEN, TABLE, LABELS))
        assert np.isfinite(value) and value > 0
    full = losses.NextItemLoss(8)(HIDDEN, TABLE, LABELS)
    np.testing.assert_allclose(float(full), numpy_ce(HIDDEN, TABLE, LABELS), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "hinge"}, "kind"),
        ({"num_negatives": 0}, "num_negatives"),
        ({"proposal": "frequency"}, "item_frequencies"),
        ({"proposal": "frequency", "item_frequencies": [1, 2]}, "item_frequencies"),
        ({"item_frequencies": np.ones(9)}, "item_frequencies"),
        ({"seed": -1}, "seed"),
    ],
)
def test_loss_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.NextItemLoss(8, **kwargs)
