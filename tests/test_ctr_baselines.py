"""The GShard CTR baseline's own dispatch (capacity, priority, padding) against a numpy loop reference."""

import math
from fractions import Fraction

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmoe.models.ctr import GShardDIN

L, D, N_ITEMS = 12, 8, 40
LENGTHS = [0, 1, 5, 9, 12, 12]


def numpy_gshard_dispatch(expert_indices, combine_weights, mask, num_experts, capacity_factor, k):
    """Per example and expert: the kept ``{token: gate}``, built with loops.

    Expert ``e`` of example ``b`` takes at most ``C_b = min(n_b, ceil(capacity_factor * k * n_b / E))`` of the
    real tokens that chose it (``n_b`` real tokens): first choices before second choices, the most recent
    first within a choice rank; the rest overflow and are dropped.
    """
    out = []
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        capacity = min(n, math.ceil(Fraction(str(capacity_factor)) * k * n / num_experts))
        row = []
        for e in range(num_experts):
            candidates = [(rank, -t) for t in range(mask.shape[1]) if mask[b, t]
                          for rank in range(k) if expert_indices[b, t, rank] == e]
            kept = [-neg_t for _, neg_t in sorted(candidates)[:capacity]]
            row.append({t: float(combine_weights[b, t, e]) for t in kept})
        out.append(row)
    return out


def features(seed=0):
    rng = np.random.default_rng(seed)
    real = np.arange(L)[None, :] >= L - np.array(LENGTHS)[:, None]
    return {"history": np.where(real, rng.integers(1, N_ITEMS + 1, real.shape), 0).astype("int32"),
            "target_item": rng.integers(1, N_ITEMS + 1, len(LENGTHS)).astype("int32")}


@pytest.mark.parametrize("num_experts, k, capacity_factor", [(4, 2, 0.5), (3, 2, 1.0), (4, 1, 1.25), (2, 2, 0.25)])
def test_gshard_dispatch_equals_a_numpy_loop_reference(num_experts, k, capacity_factor):
    keras.utils.set_random_seed(0)
    model = GShardDIN(num_items=N_ITEMS, max_len=L, embedding_dim=D, mlp_units=[8], num_experts=num_experts, k=k,
                      capacity_factor=capacity_factor, backbone_options={"attention_units": [4]})
    rng = np.random.default_rng(1)  # a sharp router: clear, varied choices
    moe = model.interest
    moe.router.set_weights([rng.normal(scale=3.0, size=w.shape).astype("float32") for w in moe.router.get_weights()])
    x = features()
    sequence, mask, _ = model.encode(x)
    route = moe.router(sequence, mask=mask, training=False)
    indices, gates = (t.numpy() for t in moe.dispatch(sequence, mask, training=False))
    expected = numpy_gshard_dispatch(route["expert_indices"].numpy(), route["combine_weights"].numpy(),
                                     mask.numpy(), num_experts, capacity_factor, k)
    overflow = 0
    for b in range(len(LENGTHS)):
        for e in range(num_experts):
            used = indices[b, e] >= 0
            got = dict(zip(indices[b, e][used].tolist(), gates[b, e][used].tolist()))
            assert sorted(got) == sorted(expected[b][e]), (b, e)
            for t, gate in expected[b][e].items():
                assert got[t] == pytest.approx(gate, rel=1e-6), (b, e, t)
            np.testing.assert_array_equal(gates[b, e][~used], 0.0)  # unused slots carry no gate
            chose = (route["expert_indices"].numpy()[b] == e).any(-1) & mask.numpy()[b]
            overflow += int(chose.sum()) - len(got)
    assert not (indices[0] >= 0).any()  # the all-padding row dispatches nothing
    if capacity_factor * k < num_experts:
        assert overflow > 0  # the case really drops tokens
    # the interest is the sum of the experts that received a token, on their time-ordered, gate-scaled tokens
    tokens = sequence.numpy()
    experts = moe.experts.backbones
    target = model.encode(x)[2]
    expected_interest = np.zeros((len(LENGTHS), model.interest_dim), "float32")
    for b in range(len(LENGTHS)):
        for e in range(num_experts):
            kept = sorted(expected[b][e])
            if not kept:
                continue
            sub = np.stack([tokens[b, t] * expected[b][e][t] for t in kept])[None]
            expected_interest[b] += experts[e](sub, np.ones((1, len(kept)), bool), target[b:b + 1]).numpy()[0]
    np.testing.assert_allclose(moe(sequence, mask, target, x, training=False).numpy(), expected_interest,
                               rtol=1e-5, atol=1e-6)


def test_gshard_dispatch_under_xla_equals_eager():
    keras.utils.set_random_seed(0)
    model = GShardDIN(num_items=N_ITEMS, max_len=L, embedding_dim=D, mlp_units=[8], num_experts=3, k=2,
                      capacity_factor=0.5, backbone_options={"attention_units": [4]})
    x = features(seed=2)
    sequence, mask, _ = model.encode(x)
    eager = model.interest.dispatch(sequence, mask, training=False)
    compiled = tf.function(lambda s, m: model.interest.dispatch(s, m, training=False), jit_compile=True)(sequence,
                                                                                                         mask)
    np.testing.assert_array_equal(compiled[0].numpy(), eager[0].numpy())
    np.testing.assert_allclose(compiled[1].numpy(), eager[1].numpy(), rtol=1e-6)
