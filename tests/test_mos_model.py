"""The MoS interest layer's own logic (``MixtureOfSequences.themes`` / ``call``) against numpy loop references.

The session router and grouper have their own tests (test_session_router.py); here their outputs
(``model.interest.route``) are the input, and the reference recomputes, example by example, what MoS does
with them: which themes run for the target (sparse: the ``k_q`` largest ``p_{q,k}``; dense: all),
the gather of the target's themes when every theme has its own expert (``shared_experts=False``),
``target_weighting`` (theme outputs scaled by ``p_{q,k}``), the short-term and global experts and
the fusion gate (masked softmax over the available experts) and the head. The inputs have empty,
short and full histories (padding) and more sessions than the themes can hold (overflow).
"""

import keras
import numpy as np
import pytest
from test_ctr_models import N_CATS, N_ITEMS, random_features

from tfmoe.models.ctr import MoSDIN

L = 12
BASE = {"embedding_dim": 8, "category_dim": 4, "mlp_units": [8], "session_length": 3, "num_sessions": 4,
        "num_themes": 3, "sessions_per_theme": 1, "short_window": 4, "fusion_units": [8],
        "backbone_options": {"attention_units": [6]}, "router": "softmax"}
LENGTHS = [0, 2, 5, 9, 12, 12]


def build(**options):
    keras.utils.set_random_seed(0)
    model = MoSDIN(num_items=N_ITEMS, max_len=L, num_categories=N_CATS, **{**BASE, **options})
    rng = np.random.default_rng(1)  # a sharper router than the initial one: varied themes per row
    model.router.set_weights([rng.normal(scale=2.0, size=w.shape).astype("float32")
                              for w in model.router.get_weights()])
    return model


def relu(x):
    return np.maximum(x, 0.0)


def masked_softmax(logits, mask):
    if not mask.any():
        return np.zeros_like(logits)
    e = np.where(mask, np.exp(logits - logits[mask].max()), 0.0)
    return e / e.sum()


def dense(layer, x):
    return x @ layer.kernel.numpy().astype(np.float64) + layer.bias.numpy()


def numpy_din(backbone, seq, mask, q):
    """DIN target attention over the real positions of one sequence (0 when there is none)."""
    seq = seq[mask].astype(np.float64)
    if not len(seq):
        return np.zeros(q.shape[-1])
    h = np.concatenate([seq, np.broadcast_to(q, seq.shape), seq - q, seq * q], axis=-1)
    for layer in backbone.hidden_layers:
        h = relu(dense(layer, h))
    scores = dense(backbone.score_layer, h)[:, 0]
    return masked_softmax(scores, np.ones(len(scores), bool)) @ seq


def numpy_mos(model, x):
    """``(interest [B, d], logits [B], themes run per row)`` with loops over examples and themes."""
    mos = model.interest
    sequence, mask, target = model.encode(x)
    grid, item_mask, session_mask, routed = mos.route(sequence, mask, target, x)
    seq, mask, q = sequence.numpy(), mask.numpy(), target.numpy().astype(np.float64)
    items, item_masks = routed["theme_items"].numpy(), routed["theme_item_mask"].numpy()
    theme_mask, p = routed["theme_mask"].numpy(), routed["target_probs"].numpy().astype(np.float64)
    backbones = mos.theme_experts.backbones
    w = mos.resolved["short_window"]
    interests, logits, chosen = [], [], []
    for b in range(seq.shape[0]):
        if mos.theme_mode == "sparse":  # the target's k_q most probable themes, most probable first
            themes = sorted(range(mos.num_themes), key=lambda k: (-p[b, k], k))[: mos.active_themes]
        else:
            themes = list(range(mos.num_themes))
        chosen.append(themes)
        outputs = []
        for k in themes:
            expert = backbones[0] if mos.shared_experts else backbones[k]  # theme k's own expert
            out = numpy_din(expert, items[b, k], item_masks[b, k], q[b])
            outputs.append(out * p[b, k] if mos.target_weighting else out)
        short = numpy_din(mos.short_backbone, seq[b, -w:], mask[b, -w:], q[b])
        if mos.global_expert == "full":
            glob = numpy_din(mos.global_backbone, seq[b], mask[b], q[b])
        else:  # the expert reads the session means
            g, gm = grid.numpy()[b].astype(np.float64), item_mask.numpy()[b]
            means = np.stack([g[m][gm[m]].mean(0) if gm[m].any() else np.zeros(g.shape[-1])
                              for m in range(g.shape[0])])
            glob = numpy_din(mos.global_backbone, means, session_mask.numpy()[b], q[b])
        experts = np.stack([glob, short, *outputs])
        expert_mask = np.array([True, True, *theme_mask[b, themes]])
        hidden = np.concatenate([q[b], experts[expert_mask].mean(0)])
        for layer in mos.fusion._hidden_layers:
            hidden = relu(dense(layer, hidden))
        gate = masked_softmax(dense(mos.fusion._gate_layer, hidden), expert_mask)
        interest = gate @ experts
        interests.append(interest)
        z = np.concatenate([interest, q[b], interest * q[b]])
        for layer in model.head.hidden_layers:
            z = relu(dense(layer, z))
        logits.append(dense(model.head.logit_layer, z)[0])
    return np.stack(interests), np.array(logits), chosen


CASES = {
    "sparse, 1 theme": {},
    "sparse, 2 themes, unweighted": {"active_themes": 2, "target_weighting": False},
    "sparse, own experts (gather)": {"active_themes": 2, "shared_experts": False},
    "sparse, own experts, 1 theme": {"shared_experts": False},
    "dense, own experts": {"theme_mode": "dense", "shared_experts": False},
    "dense, session-mean global expert": {"theme_mode": "dense", "global_expert": "sessions",
                                          "sessions_per_theme": 2},
    "session ids": {"session_mode": "session_ids", "active_themes": 2},
}


@pytest.mark.parametrize("case", list(CASES))
def test_interest_and_logits_equal_a_numpy_loop_reference(case):
    model, x = build(**CASES[case]), random_features(lengths=LENGTHS, seed=2)
    sequence, mask, target = model.encode(x)
    interest, logits, chosen = numpy_mos(model, x)
    mos = model.interest
    np.testing.assert_allclose(mos(sequence, mask, target, x, training=False).numpy(), interest,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model(x).numpy(), logits, rtol=1e-4, atol=1e-5)
    routed = model.routing(x)
    if mos.theme_mode == "sparse":  # the themes MoS fuses are the reference's, in the same order
        themes, mask_out, weights = mos.themes(routed, target, False)
        assert themes.shape[1] == mos.active_themes
        p = routed["target_probs"].numpy()
        np.testing.assert_allclose(weights.numpy(), np.take_along_axis(p, np.array(chosen), axis=1), rtol=1e-6)
        np.testing.assert_array_equal(mask_out.numpy(),
                                      np.take_along_axis(routed["theme_mask"].numpy(), np.array(chosen), axis=1))
    # the inputs exercise what they should: an all-padding row, and more sessions than the themes hold
    assert not routed["theme_mask"].numpy()[0].any()
    probs, sessions = routed["routing_probs"].numpy(), routed["routing_probs"].numpy().sum(-1) > 0
    per_theme = [np.bincount(probs[b][sessions[b]].argmax(-1), minlength=mos.num_themes) for b in range(len(LENGTHS))]
    assert max(c.max() for c in per_theme) > mos.resolved["sessions_per_theme"]


def test_sparse_with_every_theme_is_dense_in_the_targets_order():
    """``active_themes = K`` runs the same experts on the same subsequences as dense mode, ordered by ``p_{q,k}``;
    with a fusion gate that does not depend on the slot order the two models are the same function."""
    x = random_features(lengths=LENGTHS, seed=4)
    for shared in (True, False):
        sparse = build(active_themes=3, shared_experts=shared)
        dense = build(theme_mode="dense", shared_experts=shared)
        dense.set_weights(sparse.get_weights())
        _, _, target = sparse.encode(x)
        routed = sparse.routing(x)
        order = np.argsort(-routed["target_probs"].numpy(), axis=1, kind="stable")
        got = sparse.interest.themes(routed, target, False)
        want = dense.interest.themes(routed, target, False)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g.numpy(), np.take_along_axis(w.numpy(), order.reshape(
                order.shape + (1,) * (w.ndim - 2)), axis=1), rtol=1e-5, atol=1e-6)
        gate = sparse.interest.fusion._gate_layer  # the same logit for every theme slot: the gate ignores their order
        kernel, bias = gate.kernel.numpy(), gate.bias.numpy()
        kernel[:, 2:] = kernel[:, 2:3]
        bias[2:] = bias[2]
        for model in (sparse, dense):
            model.interest.fusion._gate_layer.set_weights([kernel, bias])
        np.testing.assert_allclose(sparse(x).numpy(), dense(x).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sparse(x).numpy(), numpy_mos(sparse, x)[1], rtol=1e-4, atol=1e-5)
