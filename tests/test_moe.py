"""MixtureOfExperts (dense, sparse top-k with capacity, dropless top-k, expert choice), losses, statistics, logger.

Every numeric check compares against an independent numpy implementation written with plain loops.
"""

import glob
import math
from fractions import Fraction

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmoe.layers.experts import FeedForward
from tfmoe.layers.moe import (
    MixtureOfExperts,
    combine_packed,
    combine_top_k,
    dispatch_packed,
    dispatch_to_buffers,
    plan_packed_dispatch,
    plan_top_k_dispatch,
)
from tfmoe.layers.routing_stats import RoutingStatsLogger, collect_routing_statistics
from tfmoe.testing import run_layer_test


# ---------------------------------------------------------------- numpy references
def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _expert(moe, e, x):
    b = moe.experts
    w1, b1 = b.kernel_in.numpy()[e].astype(np.float64), b.bias_in.numpy()[e]
    w2, b2 = b.kernel_out.numpy()[e].astype(np.float64), b.bias_out.numpy()[e]
    return _gelu(x @ w1 + b1) @ w2 + b2


def _router_logits(moe, x):
    return x.astype(np.float64) @ moe.router.kernel.numpy().astype(np.float64)


def numpy_top_k_moe(moe, x, mask, k, capacity_factor, normalize="selected"):
    """Capacity-limited top-k MoE with loops: first choices of all tokens, then second choices, ..."""
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mask = mask.reshape(-1)
    logits = _router_logits(moe, x)
    probs = _softmax(logits)
    experts = logits.shape[-1]
    choices = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    valid = np.flatnonzero(mask)
    capacity = min(len(valid), math.ceil(Fraction(capacity_factor) * k * len(valid) / experts))
    fill = np.zeros(experts, int)
    kept = np.zeros((len(x), k), bool)
    for rank in range(k):
        for t in valid:
            e = choices[t, rank]
            if fill[e] < capacity:
                fill[e] += 1
                kept[t, rank] = True
    if normalize == "selected":
        gates = _softmax(np.take_along_axis(logits, choices, -1))
    else:
        gates = np.take_along_axis(probs, choices, -1)
    y = np.zeros((len(x), moe.experts.kernel_out.shape[-1]))
    for t in valid:
        for rank in range(k):
            if kept[t, rank]:
                y[t] += gates[t, rank] * _expert(moe, choices[t, rank], x[t : t + 1])[0]
    counts = {
        "tokens": len(valid),
        "dropped_assignments": int(k * len(valid) - kept.sum()),
        "dropped_tokens": int(sum(1 for t in valid if not kept[t].any())),
    }
    return y, counts


def _randomize(layer, seed=0, scale=0.4):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(scale=scale, size=w.shape).astype(w.dtype) for w in layer.get_weights()])


def _stats(layer):
    return {name: np.asarray(v.numpy()) for name, v in layer.routing_statistics.items()}


def _seeded(factory, seed=5):
    def make():
        keras.utils.set_random_seed(seed)
        return factory()

    return make


RNG = np.random.default_rng(7)
X = RNG.normal(size=(3, 8, 6)).astype("float32")
MASK = np.arange(8)[None, :] < np.array([[8], [5], [2]])


# ---------------------------------------------------------------- dense
def test_dense_mixture_equals_numpy_mixture():
    moe = MixtureOfExperts(num_experts=4, hidden_dim=10, routing="dense")
    moe.build(X.shape)
    _randomize(moe, 1)
    flat = X.reshape(-1, 6).astype(np.float64)
    gates = _softmax(_router_logits(moe, flat))
    expected = sum(gates[:, e : e + 1] * _expert(moe, e, flat) for e in range(4)).reshape(3, 8, 6)
    np.testing.assert_allclose(moe(X).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(moe(X, mask=MASK).numpy(), expected * MASK[..., None], atol=1e-5)
    stats = _stats(moe)
    np.testing.assert_allclose(stats["expert_load"], gates[MASK.reshape(-1)].mean(0), atol=1e-6)
    assert stats["tokens"] == MASK.sum() and stats["dropped_tokens"] == 0


# ---------------------------------------------------------------- top-k
def test_top_1_over_identical_experts_equals_one_expert():
    moe = MixtureOfExperts(num_experts=4, hidden_dim=10, k=1, capacity_factor=4.0)
    ffn = FeedForward(hidden_dim=10)
    moe.build(X.shape)
    ffn.build(X.shape)
    _randomize(moe, 2)
    _randomize(ffn, 3)
    moe.experts.set_weights(
        [np.stack([w] * 4) for w in ffn.get_weights()[:2]]
        + [np.stack([w] * 4) for w in ffn.get_weights()[2:]]
    )
    np.testing.assert_allclose(moe(X).numpy(), ffn(X).numpy(), atol=1e-5)
    assert len(set(np.asarray(moe.router(X.reshape(-1, 6))["expert_indices"]).ravel())) > 1  # routes vary


@pytest.mark.parametrize("normalize", ["selected", "all"])
def test_sparse_top_k_with_ample_capacity_equals_dense_top_k(normalize):
    moe = MixtureOfExperts(num_experts=6, hidden_dim=9, k=2, capacity_factor=3.0, normalize=normalize)
    moe.build(X.shape)
    _randomize(moe, 4)
    expected, counts = numpy_top_k_moe(moe, X, np.ones(X.shape[:2], bool), 2, 3.0, normalize)
    assert counts["dropped_assignments"] == 0
    flat = X.reshape(-1, 6).astype(np.float64)
    logits = _router_logits(moe, flat)
    top = np.argsort(-logits, axis=-1)[:, :2]
    if normalize == "selected":
        selected = _softmax(np.take_along_axis(logits, top, -1))
    else:
        selected = np.take_along_axis(_softmax(logits), top, -1)
    gates = np.zeros_like(logits)  # the dense mixture restricted to each token's top-2 experts
    np.put_along_axis(gates, top, selected, -1)
    dense = sum(gates[:, e : e + 1] * _expert(moe, e, flat) for e in range(6))
    np.testing.assert_allclose(expected, dense, atol=1e-10)
    np.testing.assert_allclose(moe(X).numpy().reshape(-1, 6), dense, atol=1e-5)


def _hand_built_moe():
    """E=4, k=2, 8 tokens whose first/second choices are set through an identity router."""
    first = [0, 0, 0, 0, 0, 0, 1, 2]
    second = [1, 1, 1, 1, 1, 2, 2, 3]
    x = np.zeros((1, 8, 6), "float32")
    for t, (a, b) in enumerate(zip(first, second)):
        x[0, t, a], x[0, t, b] = 3.0, 2.0
        x[0, t, 4:] = np.random.default_rng(t).normal(size=2)
    moe = MixtureOfExperts(num_experts=4, hidden_dim=5, k=2, capacity_factor=1.0)  # C = ceil(2*8/4) = 4
    moe.build(x.shape)
    _randomize(moe, 5)
    moe.router.kernel.assign(np.vstack([np.eye(4), np.zeros((2, 4))]).astype("float32"))
    return moe, x


def test_capacity_overflow_is_counted_exactly_on_a_hand_built_case():
    moe, x = _hand_built_moe()
    y = moe(x).numpy()[0]
    # Expert 0 takes first choices of tokens 0-3 (4 and 5 overflow); expert 1 has token 6 first, then
    # second choices of tokens 0-2 (3 and 4 overflow); token 4 loses both assignments.
    kept = {0: [0, 1], 1: [0, 1], 2: [0, 1], 3: [0], 4: [], 5: [2], 6: [1, 2], 7: [2, 3]}
    gate_first, gate_second = _softmax(np.array([3.0, 2.0]))
    choice_gate = {t: {} for t in range(8)}
    first = [0, 0, 0, 0, 0, 0, 1, 2]
    for t in range(8):
        for e in kept[t]:
            choice_gate[t][e] = gate_first if e == first[t] else gate_second
    for t in range(8):
        expected = sum(
            g * _expert(moe, e, x[0, t : t + 1].astype(np.float64))[0] for e, g in choice_gate[t].items()
        )
        np.testing.assert_allclose(y[t], expected if kept[t] else np.zeros(6), atol=1e-5)
    stats = _stats(moe)
    assert stats["dropped_assignments"] == 4 and stats["dropped_tokens"] == 1 and stats["tokens"] == 8
    assert stats["dropped_fraction"] == pytest.approx(4 / 16) and stats[
        "dropped_token_fraction"
    ] == pytest.approx(1 / 8)
    np.testing.assert_allclose(stats["expert_load"], np.array([6, 6, 3, 1]) / 16)  # before capacity
    reference, counts = numpy_top_k_moe(moe, x, np.ones((1, 8), bool), 2, 1.0)
    np.testing.assert_allclose(y, reference, atol=1e-5)
    assert counts == {"tokens": 8, "dropped_assignments": 4, "dropped_tokens": 1}


def test_padding_does_not_change_capacity_outputs_or_statistics():
    moe, x = _hand_built_moe()
    expected, expected_stats = moe(x).numpy()[0], _stats(moe)
    # Interleave 5 padding tokens holding large values: static buffers grow, capacity stays at 4.
    padded = np.zeros((1, 13, 6), "float32")
    mask = np.zeros((1, 13), bool)
    positions = [0, 2, 3, 5, 6, 8, 11, 12]
    padded[0, positions], mask[0, positions] = x[0], True
    padded[0, ~mask[0]] = 50.0
    y = moe(padded, mask=mask).numpy()[0]
    np.testing.assert_allclose(y[positions], expected, atol=1e-6)
    assert np.all(y[~mask[0]] == 0)
    for name, value in _stats(moe).items():
        np.testing.assert_allclose(value, expected_stats[name], atol=1e-6, err_msg=name)


def test_dispatch_plan_priority_is_rank_major_then_token_order():
    indices = np.array([[1, 0], [0, 1], [0, 2], [-1, -1], [0, 1]], "int32")  # token 3 is padding
    plan = plan_top_k_dispatch(indices, num_experts=3, capacity=2)
    # Rank 0: expert 0 <- tokens 1, 2 (token 4 overflows); expert 1 <- token 0.
    # Rank 1: expert 0 is full (token 0 dropped); expert 1 <- token 1 (token 4 overflows);
    # expert 2 <- token 2.
    np.testing.assert_array_equal(
        plan.assignment_kept.numpy(), [[True, True, True, False, False], [False, True, True, False, False]]
    )
    np.testing.assert_array_equal(plan.assignment_routed.numpy()[:, 3], [False, False])
    np.testing.assert_array_equal(plan.slot_used.numpy(), [[True, True], [True, True], [True, False]])
    np.testing.assert_array_equal(plan.slot_token.numpy()[plan.slot_used.numpy()], [1, 2, 0, 1, 2])
    slots = plan.assignment_slot.numpy()[plan.assignment_kept.numpy()]
    np.testing.assert_array_equal(slots, [2, 0, 1, 3, 4])  # e * C + position


def test_sparse_top_k_with_mask_matches_loop_reference_and_jit():
    moe = MixtureOfExperts(num_experts=4, hidden_dim=7, k=2, capacity_factor=0.75)
    moe.build(X.shape)
    _randomize(moe, 6, scale=1.0)
    expected, counts = numpy_top_k_moe(moe, X, MASK, 2, 0.75)
    assert counts["dropped_assignments"] > 0  # the case exercises overflow
    eager = moe(X, mask=MASK).numpy()
    eager_stats = _stats(moe)
    np.testing.assert_allclose(eager.reshape(-1, 6), expected, atol=1e-5)
    for name in counts:
        assert eager_stats[name] == counts[name], name
    jit = tf.function(lambda x, m: moe(x, mask=m), jit_compile=True)(X, MASK).numpy()
    np.testing.assert_allclose(jit, eager, atol=1e-5)
    for name, value in _stats(moe).items():
        np.testing.assert_allclose(value, eager_stats[name], atol=1e-6, err_msg=name)


def test_sparse_dispatch_builds_no_tokens_by_experts_by_capacity_tensor():
    tokens, experts = 256, 16
    moe = MixtureOfExperts(num_experts=experts, hidden_dim=16, k=2, capacity_factor=1.25)
    x = tf.TensorSpec((tokens, 8), tf.float32)
    graph = tf.function(lambda t: moe(t)).get_concrete_function(x).graph
    capacity = moe.capacity(tokens)
    largest = max(
        out.shape.num_elements() or 0 for op in graph.get_operations() for out in op.outputs if out.shape.rank
    )
    assert largest < tokens * experts * capacity / 10, largest  # buffers are [E, C, h], not [T, E, C]
    assert largest == experts * capacity * 16  # the expert hidden buffer is the largest tensor


def test_dispatch_and_combine_gradients_equal_plain_gather_gradients():
    rng = np.random.default_rng(12)
    indices = np.stack([rng.permutation(5)[:2] for _ in range(9)]).astype("int32")
    indices[4] = -1  # a masked token
    plan = plan_top_k_dispatch(indices, num_experts=5, capacity=3)  # some assignments overflow
    assert not plan.assignment_kept.numpy()[plan.assignment_routed.numpy()].all()
    x = tf.constant(rng.normal(size=(9, 4)), tf.float32)
    gates = tf.constant(rng.random((9, 2)), tf.float32)
    weights = tf.constant(rng.normal(size=(5, 3, 4)), tf.float32)

    def run(dispatch, combine):
        with tf.GradientTape() as tape:
            tape.watch([x, gates, weights])
            buffers = dispatch(x)
            y = combine(tf.tanh(buffers * weights))
            loss = tf.reduce_sum(y * tf.sin(tf.range(36, dtype=tf.float32)).numpy().reshape(9, 4))
        return [tf.convert_to_tensor(t) for t in (y, *tape.gradient(loss, [x, gates, weights]))]

    def plain_combine(out):
        rows = tf.gather(tf.reshape(out, [-1, 4]), plan.assignment_slot)
        w = tf.where(plan.assignment_kept, tf.transpose(gates), 0.0)
        return tf.einsum("kto,kt->to", rows, w)

    custom = run(lambda t: dispatch_to_buffers(t, plan), lambda out: combine_top_k(out, plan, gates))
    plain = run(lambda t: tf.gather(t, plan.slot_token), plain_combine)
    for got, expected in zip(custom, plain):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6)
    assert np.abs(custom[1].numpy()).sum() > 0 and np.all(custom[1].numpy()[4] == 0)


# ---------------------------------------------------------------- dropless top-k
def test_dropless_equals_numpy_top_k_without_capacity_and_top_k_with_a_no_drop_capacity():
    x = np.random.default_rng(3).normal(size=(5, 16, 6)).astype("float32")
    mask = np.arange(16)[None, :] < np.array([[16], [11], [3], [16], [7]])
    moe = MixtureOfExperts(num_experts=4, hidden_dim=7, k=2, routing="dropless", load_balance_weight=0.01)
    moe.build(x.shape)
    _randomize(moe, 21, scale=1.0)
    buffered = MixtureOfExperts(num_experts=4, hidden_dim=7, k=2, capacity_factor=2.0, load_balance_weight=0.01)
    buffered.build(x.shape)
    buffered.set_weights(moe.get_weights())
    expected, counts = numpy_top_k_moe(moe, x, mask, 2, 2.0)
    assert counts["dropped_assignments"] == 0
    weights = tf.sin(tf.range(np.prod(x.shape), dtype=tf.float32))

    def run(layer, inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = layer(inputs, mask=mask, training=True)
            loss = tf.reduce_sum(tf.reshape(out, [-1]) * weights) + tf.add_n(layer.losses)
        return out, tape.gradient(loss, [inputs, *layer.trainable_variables])

    got, grads = run(moe, tf.constant(x))
    stats = _stats(moe)
    # the buffered reference under XLA: outside XLA, capacity_factor = E / k would send it through the packed
    # dispatch of "dropless" too, and the comparison would be the code with itself
    reference, reference_grads = tf.function(lambda t: run(buffered, t), jit_compile=True)(tf.constant(x))
    reference_stats = _stats(buffered)
    np.testing.assert_allclose(got.numpy().reshape(-1, 6), expected, atol=1e-5)
    np.testing.assert_allclose(got.numpy(), reference.numpy(), atol=1e-5)
    assert stats["dropped_assignments"] == 0 and stats["tokens"] == mask.sum()
    for name, value in reference_stats.items():
        np.testing.assert_allclose(stats[name], value, rtol=1e-6, atol=1e-6, err_msg=name)
    for g, r in zip(grads, reference_grads):
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(r).numpy(), atol=1e-5)
    assert np.abs(grads[0].numpy()[~mask]).max() == 0  # masked tokens get no gradient


def test_top_k_with_a_no_drop_capacity_packs_outside_xla_and_keeps_buffers_under_xla():
    """capacity_factor >= E / k: eager/graph top-k runs the packed dispatch (k T expert rows), XLA the buffers
    (E T rows); both are the same function: outputs, gradients and statistics agree."""
    x = np.random.default_rng(8).normal(size=(4, 12, 6)).astype("float32")
    mask = np.arange(12)[None, :] < np.array([[12], [9], [2], [5]])
    moe = MixtureOfExperts(num_experts=4, hidden_dim=7, k=2, capacity_factor=2.0, load_balance_weight=0.01)
    moe.build(x.shape)
    _randomize(moe, 22, scale=1.0)

    # A loss linear in the output: a curved one (out * sin(out)) multiplies the output's float32 rounding by |out|
    # (~50 here) before it reaches the gradients, so they would compare rounding noise, not the dispatch.
    weights = tf.constant(np.random.default_rng(9).normal(size=x.shape[:2] + (6,)).astype("float32"))

    def run(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = moe(inputs, mask=mask)
            loss = tf.reduce_sum(out * weights) + tf.add_n(moe.losses)
        return out, tape.gradient(loss, [inputs, *moe.trainable_variables])

    eager = run(tf.constant(x))
    eager_stats = _stats(moe)
    xla = tf.function(run, jit_compile=True)(tf.constant(x))
    np.testing.assert_allclose(eager[0].numpy(), xla[0].numpy(), rtol=1e-5, atol=1e-5)
    for g, r in zip(eager[1], xla[1]):
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(r).numpy(), rtol=1e-4,
                                   atol=1e-5)
    for name, value in _stats(moe).items():  # z_loss is ~22: a few float32 ulps (1.2e-7 relative) of reordering
        np.testing.assert_allclose(eager_stats[name], value, rtol=1e-6, atol=1e-6, err_msg=name)
    expected, _ = numpy_top_k_moe(moe, x, mask, 2, 2.0)
    np.testing.assert_allclose(eager[0].numpy().reshape(-1, 6), expected, rtol=1e-5, atol=1e-5)


def test_packed_dispatch_and_combine_gradients_equal_plain_gather_gradients():
    rng = np.random.default_rng(13)
    indices = np.stack([rng.permutation(5)[:2] for _ in range(9)]).astype("int32")
    indices[4] = -1  # a masked token
    plan = plan_packed_dispatch(indices, num_experts=5)
    counts = plan.rows_per_expert.numpy()
    assert counts.tolist() == [*np.bincount(indices[indices >= 0], minlength=5), 2]
    # rows are sorted by expert: row j belongs to the expert whose segment holds j
    row_expert = np.repeat(np.arange(6), counts)
    flat = indices.T.reshape(-1)  # rank-major assignments
    assert [flat[a] if flat[a] >= 0 else 5 for a in plan.row_assignment.numpy()] == row_expert.tolist()
    x = tf.constant(rng.normal(size=(9, 4)), tf.float32)
    gates = tf.constant(rng.random((9, 2)), tf.float32)
    weights = tf.constant(rng.normal(size=(18, 4)), tf.float32)

    def run(dispatch, combine):
        with tf.GradientTape() as tape:
            tape.watch([x, gates, weights])
            y = combine(tf.tanh(dispatch(x) * weights))
            loss = tf.reduce_sum(y * tf.sin(tf.range(36, dtype=tf.float32)).numpy().reshape(9, 4))
        return [tf.convert_to_tensor(t) for t in (y, *tape.gradient(loss, [x, gates, weights]))]

    def plain_combine(rows):
        per_assignment = tf.gather(rows, plan.assignment_row)
        w = tf.where(plan.assignment_routed, tf.transpose(gates), 0.0)
        return tf.einsum("kto,kt->to", per_assignment, w)

    def plain_dispatch(t):  # masked assignments' rows carry no gradient to their token
        rows = tf.gather(t, plan.row_token)
        routed_row = tf.gather(tf.reshape(plan.assignment_routed, [-1]), plan.row_assignment)
        return tf.where(routed_row[:, None], rows, tf.stop_gradient(rows))

    custom = run(lambda t: dispatch_packed(t, plan), lambda rows: combine_packed(rows, plan, gates))
    plain = run(plain_dispatch, plain_combine)
    for got, expected in zip(custom, plain):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-6)
    assert np.abs(custom[1].numpy()).sum() > 0 and np.all(custom[1].numpy()[4] == 0)


# ---------------------------------------------------------------- expert choice
def test_expert_choice_moe_equals_numpy():
    moe = MixtureOfExperts(num_experts=4, hidden_dim=7, routing="expert_choice", k=1, capacity_factor=1.5)
    moe.build(X.shape)
    _randomize(moe, 8)
    got = moe(X, mask=MASK).numpy()
    expected = np.zeros_like(got, dtype=np.float64)
    picked = np.zeros(MASK.shape, bool)
    for b in range(3):
        probs = _softmax(_router_logits(moe, X[b]))
        n = int(MASK[b].sum())
        used = min(n, math.ceil(Fraction(1.5) * n / 4))
        for e in range(4):
            order = np.argsort(-np.where(MASK[b], probs[:, e], -1.0), kind="stable")[:used]
            for t in order:
                expected[b, t] += probs[t, e] * _expert(moe, e, X[b, t : t + 1].astype(np.float64))[0]
                picked[b, t] = True
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert _stats(moe)["dropped_tokens"] == (MASK & ~picked).sum()
    np.testing.assert_allclose(_stats(moe)["expert_load"], np.full(4, 0.25))


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("routing", ["top_k", "dense", "expert_choice", "dropless"])
def test_masked_tokens_change_neither_outputs_nor_statistics(routing):
    keras.utils.set_random_seed(0)  # initial weights independent of the tests run before
    moe = MixtureOfExperts(num_experts=4, hidden_dim=6, routing=routing, k=2, capacity_factor=0.5)
    mask = np.arange(8)[None, :] < np.array([[6], [5], [2]])
    base = moe(X, mask=mask).numpy()
    base_stats = _stats(moe)
    assert routing != "top_k" or base_stats["dropped_tokens"] > 0  # capacity binds
    other = X.copy()
    other[~mask] = np.nan  # even NaN padding cannot leak
    got = moe(other, mask=mask).numpy()
    np.testing.assert_array_equal(got, base)
    assert np.all(got[~mask] == 0)
    for name, value in _stats(moe).items():
        np.testing.assert_array_equal(value, base_stats[name], err_msg=name)
    # Removing trailing padding (a shorter static shape) changes nothing either.
    short = moe(X[:, :6], mask=mask[:, :6]).numpy()
    np.testing.assert_allclose(short, base[:, :6], atol=1e-6)
    for name, value in _stats(moe).items():
        np.testing.assert_allclose(value, base_stats[name], atol=1e-6, err_msg=name)


def test_keras_implicit_mask_is_used_and_propagated():
    ids = np.array([[3, 4, 5, 0], [6, 0, 0, 0]])
    inputs = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(10, 6, mask_zero=True)(inputs)
    moe = MixtureOfExperts(num_experts=4, hidden_dim=8)
    outputs = moe(embedded)
    assert outputs._keras_mask is not None
    model = keras.Model(inputs, outputs)
    got = model(ids).numpy()
    assert np.all(got[ids == 0] == 0) and np.all(np.abs(got[ids != 0]).sum(-1) > 0)
    assert _stats(moe)["tokens"] == 4


# ---------------------------------------------------------------- losses
def test_uniform_routing_gives_switch_loss_one_and_known_loss_values():
    moe = MixtureOfExperts(
        num_experts=4, hidden_dim=4, k=2, load_balance_weight=0.1, z_loss_weight=0.01, entropy_loss_weight=0.5
    )
    moe.build(X.shape)
    moe.router.kernel.assign(np.zeros((6, 4), "float32"))  # every probability is 1/4
    moe(X, mask=MASK)
    stats = _stats(moe)
    assert stats["load_balance_loss"] == pytest.approx(1.0)
    assert stats["z_loss"] == pytest.approx(np.log(4.0) ** 2, rel=1e-6)
    assert stats["entropy_loss"] == pytest.approx(-np.log(4.0), rel=1e-6)
    assert stats["router_entropy"] == pytest.approx(np.log(4.0), rel=1e-6)
    np.testing.assert_allclose(
        sorted(float(v) for v in moe.losses),
        sorted([0.1, 0.01 * np.log(4.0) ** 2, -0.5 * np.log(4.0)]),
        rtol=1e-6,
    )


def test_losses_equal_numpy_for_skewed_routing_and_zero_weights_add_nothing():
    moe = MixtureOfExperts(num_experts=4, hidden_dim=4, k=1, normalize="all", load_balance_weight=1.0)
    moe.build(X.shape)
    _randomize(moe, 9, scale=1.5)
    moe(X, mask=MASK)
    flat = X.reshape(-1, 6)[MASK.reshape(-1)]
    logits = _router_logits(moe, flat)
    probs = _softmax(logits)
    f = np.bincount(logits.argmax(-1), minlength=4) / len(flat)
    p = probs.mean(0)
    expected = 4 * np.sum(f * p)
    assert expected > 1.05  # skewed
    assert [float(v) for v in moe.losses] == pytest.approx([expected], rel=1e-5)
    stats = _stats(moe)
    assert stats["z_loss"] == pytest.approx(np.mean(np.log(np.exp(logits).sum(-1)) ** 2), rel=1e-5)
    assert stats["entropy_loss"] == pytest.approx(np.sum(p * np.log(p)), rel=1e-5)
    quiet = MixtureOfExperts(num_experts=4, hidden_dim=4, load_balance_weight=0.0)
    quiet(X)
    assert quiet.losses == []


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("routing", ["top_k", "dense", "expert_choice", "dropless"])
def test_gradients_reach_router_and_every_used_expert(routing):
    moe = MixtureOfExperts(
        num_experts=4, hidden_dim=6, routing=routing, k=2, capacity_factor=2.0, load_balance_weight=0.0
    )
    moe.build(X.shape)
    _randomize(moe, 10)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(moe(X, mask=MASK, training=True)))
    grads = dict(zip([v.path for v in moe.trainable_variables], tape.gradient(loss, moe.trainable_variables)))
    router_grad = grads[moe.router.kernel.path].numpy()
    assert np.abs(router_grad).sum() > 0
    kernel_grad = grads[moe.experts.kernel_in.path].numpy()
    assert all(np.abs(kernel_grad[e]).sum() > 0 for e in range(4))
    assert all(np.all(np.isfinite(g.numpy())) for g in grads.values())


# ---------------------------------------------------------------- statistics under distribution
def test_statistics_under_mirrored_strategy_are_per_replica():
    strategy = tf.distribute.MirroredStrategy()
    x = np.random.default_rng(0).normal(size=(4, 5, 6)).astype("float32")
    mask = np.arange(5)[None, :] < np.array([[5], [3], [2], [1]])
    with strategy.scope():
        moe = MixtureOfExperts(num_experts=4, hidden_dim=5, k=2)
        moe(x, mask=mask)
    dataset = tf.data.Dataset.from_tensor_slices((x, mask)).batch(4)
    step = tf.function(lambda inputs: strategy.run(lambda a, b: moe(a, mask=b, training=True), args=inputs))
    step(next(iter(strategy.experimental_distribute_dataset(dataset))))
    assert _stats(moe)["tokens"] == mask[:2].sum()  # replica 0 saw the first half of the batch
    copies = [float(v.numpy()) for v in moe.routing_statistics["tokens"].value.values]
    assert copies == [mask[:2].sum(), mask[2:].sum()]


# ---------------------------------------------------------------- logger
def _read_scalars(log_dir):
    values = {}
    for path in glob.glob(f"{log_dir}/events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    values.setdefault(value.tag, []).append(
                        (event.step, float(tf.make_ndarray(value.tensor)))
                    )
    return values


def test_routing_stats_logger_writes_every_moe_layer(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 6))
    hidden = MixtureOfExperts(num_experts=4, hidden_dim=8, name="moe_a")(inputs)
    outputs = MixtureOfExperts(num_experts=3, hidden_dim=8, routing="dense", name="moe_b")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse")
    logger = RoutingStatsLogger(str(tmp_path), update_freq=1)
    x = np.random.default_rng(0).normal(size=(8, 5, 6)).astype("float32")
    model.fit(x, x, batch_size=4, epochs=1, verbose=0, callbacks=[logger])
    scalars = _read_scalars(str(tmp_path))
    current = collect_routing_statistics(model)
    assert set(current) == {"moe_a", "moe_b"}
    for layer, stats in current.items():
        assert [step for step, _ in scalars[f"routing/{layer}/tokens"]] == [1, 2]
        assert scalars[f"routing/{layer}/tokens"][-1][1] == 20.0
        for e, load in enumerate(stats["expert_load"]):
            assert scalars[f"routing/{layer}/expert_load/expert_{e}"][-1][1] == pytest.approx(float(load))
        assert scalars[f"routing/{layer}/dropped_fraction"][-1][1] == pytest.approx(
            float(stats["dropped_fraction"])
        )


def test_routing_stats_logger_arguments():
    with pytest.raises(
        ValueError, match=r"RoutingStatsLogger: `update_freq` must be one of 'epoch'; got 'batch'"
    ):
        RoutingStatsLogger("/tmp/x", update_freq="batch")
    with pytest.raises(ValueError, match=r"RoutingStatsLogger: `update_freq` must be an integer >= 1, got 0"):
        RoutingStatsLogger("/tmp/x", update_freq=0)
    with pytest.raises(ValueError, match=r"RoutingStatsLogger: `log_dir` must be a non-empty string"):
        RoutingStatsLogger("")


# ---------------------------------------------------------------- validation and contract
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(routing="switch"),
            r"MixtureOfExperts: `routing` must be one of 'top_k', 'dense', 'expert_choice', 'dropless'; got 'switch'",
        ),
        (dict(k=9), r"MixtureOfExperts: `k` must be an integer in \[1, 8\], got 9"),
        (
            dict(capacity_factor=0.0),
            r"MixtureOfExperts: `capacity_factor` must be a finite number > 0.0, got 0.0",
        ),
        (dict(load_balance_weight=-0.1), r"MixtureOfExperts: `load_balance_weight` .* got -0.1"),
        (dict(z_loss_weight=float("nan")), r"MixtureOfExperts: `z_loss_weight` .* got nan"),
        (dict(temperature=-1.0), r"MixtureOfExperts: `temperature` .* got -1.0"),
        (
            dict(normalize="none"),
            r"MixtureOfExperts: `normalize` must be one of 'selected', 'all'; got 'none'",
        ),
        (dict(track_statistics=1), r"MixtureOfExperts: `track_statistics` must be True or False, got 1"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixtureOfExperts(**{"num_experts": 8, "hidden_dim": 4, **kwargs})


def test_expert_choice_needs_sequences():
    with pytest.raises(
        ValueError, match=r"MixtureOfExperts: routing='expert_choice' needs inputs \[batch, length, dim\]"
    ):
        MixtureOfExperts(num_experts=2, hidden_dim=4, routing="expert_choice")(np.ones((3, 4), "float32"))


X_CONTRACT = np.random.default_rng(11).normal(size=(4, 5, 6)).astype("float32")
MASK_CONTRACT = np.arange(5)[None, :] < np.array([[5], [3], [4], [2]])


@pytest.mark.parametrize(
    "factory",
    [
        # capacity_factor = E / k never drops, so each replica's half-batch routes like the full batch.
        lambda: MixtureOfExperts(
            num_experts=4,
            hidden_dim=8,
            k=2,
            capacity_factor=2.0,
            dropout=0.1,
            z_loss_weight=0.001,
            entropy_loss_weight=0.01,
        ),
        lambda: MixtureOfExperts(num_experts=3, hidden_dim=8, routing="dense", output_dim=5),
        lambda: MixtureOfExperts(
            num_experts=4, hidden_dim=8, routing="expert_choice", k=1, capacity_factor=1.0
        ),
    ],
    ids=["top_k", "dense", "expert_choice"],
)
def test_moe_contract(factory, tmp_path):
    run_layer_test(_seeded(factory), (X_CONTRACT, MASK_CONTRACT), tmp_path)


def test_dropless_under_xla_raises_a_clear_error():
    """jit_compile=True (a tf.function or a compiled Keras model) gets tfmoe's message, not a compiler trace."""
    layer = MixtureOfExperts(num_experts=4, hidden_dim=8, k=2, routing="dropless", name="moe")
    layer(X_CONTRACT)  # eager works
    with pytest.raises(ValueError, match=r"'moe': routing='dropless' cannot be compiled by XLA.*capacity_factor >= "
                                         r"num_experts / k = 2"):
        tf.function(lambda x: layer(x), jit_compile=True)(X_CONTRACT)
    model = keras.Sequential([keras.Input(X_CONTRACT.shape[1:]), layer])
    model.compile("sgd", "mse", jit_compile=True)
    with pytest.raises(ValueError, match="cannot be compiled by XLA"):
        model.fit(X_CONTRACT, np.zeros_like(X_CONTRACT), epochs=1, verbose=0)
    assert tf.function(lambda x: layer(x))(X_CONTRACT).shape == X_CONTRACT.shape  # a plain graph works


def test_dropless_contract_without_xla(tmp_path):
    # everything but jit_compile: the experts' row counts are data-dependent shapes (documented)
    make = _seeded(lambda: MixtureOfExperts(num_experts=4, hidden_dim=8, k=2, routing="dropless", dropout=0.1))
    run_layer_test(make, (X_CONTRACT, MASK_CONTRACT), tmp_path, jit=False)
