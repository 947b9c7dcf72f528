"""FAME and HyMoERec in their degenerate settings compute SASRec: build both, map the weights, compare the scores.

FAME with 1 head, 1 expert query, ``item_projection="slice"`` (the one head scores with the whole item embedding)
and ``mix="logits"``: the head gate is a softmax over one head, so it is 1 whatever its weights, and the facet block
is a post-LayerNorm transformer block without an attention output projection. It equals a ``norm="post"`` SASRec
whose last block has the facet block's weights and an identity output projection.

HyMoERec before its warm-up has ``alpha = sigmoid(a) * min(1, t / warmup_steps) = 0`` at ``t = 0``: every block's
FFN is its shared dense FFN, so it equals SASRec with those FFN weights.
"""

import numpy as np
import pytest

from tfmoe.models import FAME, HyMoERec, SASRec

N_ITEMS, MAX_LEN = 30, 7
COMMON = {"num_items": N_ITEMS, "max_len": MAX_LEN, "hidden_dim": 8, "num_blocks": 2, "num_heads": 1,
          "dropout": 0.1, "norm": "post", "activation": "relu", "inner_dim": 8}
ITEMS = {"history": np.array([[0, 0, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5, 4, 3], [0, 0, 0, 0, 0, 1, 2]], "int32")}

# FAME weight -> SASRec weight. Blocks 1..n-1 are the same layers under the same paths; the facet block is the
# last SASRec block: its attention's query/key/value/router weights, LayerNorms and FFN' (head_ffn) map one to one.
FACET_TO_LAST_BLOCK = {
    "facet_head/facet_block/attention/query_kernel": "sequence_encoder/block_1/attention/query_kernel",
    "facet_head/facet_block/attention/key_kernel": "sequence_encoder/block_1/attention/key_kernel",
    "facet_head/facet_block/attention/value_kernel": "sequence_encoder/block_1/attention/value_kernel",
    "facet_head/facet_block/attention/query_bias": "sequence_encoder/block_1/attention/query_bias",
    "facet_head/facet_block/attention/key_bias": "sequence_encoder/block_1/attention/key_bias",
    "facet_head/facet_block/attention/value_bias": "sequence_encoder/block_1/attention/value_bias",
    "facet_head/facet_block/attention/router_kernel": "sequence_encoder/block_1/attention/router_kernel",
    "facet_head/facet_block/attention/router_bias": "sequence_encoder/block_1/attention/router_bias",
    "facet_head/facet_block/attention_norm/gamma": "sequence_encoder/block_1/attention_norm/gamma",
    "facet_head/facet_block/attention_norm/beta": "sequence_encoder/block_1/attention_norm/beta",
    "facet_head/facet_block/ffn_norm/gamma": "sequence_encoder/block_1/ffn_norm/gamma",
    "facet_head/facet_block/ffn_norm/beta": "sequence_encoder/block_1/ffn_norm/beta",
    "facet_head/facet_block/head_ffn/kernel_in": "sequence_encoder/block_1/ffn/kernel_in",
    "facet_head/facet_block/head_ffn/kernel_out": "sequence_encoder/block_1/ffn/kernel_out",
    "facet_head/facet_block/head_ffn/bias_in": "sequence_encoder/block_1/ffn/bias_in",
    "facet_head/facet_block/head_ffn/bias_out": "sequence_encoder/block_1/ffn/bias_out",
}
# SASRec weights with no FAME counterpart: the last block's attention output projection, set to the identity.
IDENTITY_OUTPUT = {"sequence_encoder/block_1/attention/output_kernel": lambda shape: np.eye(shape[0]),
                   "sequence_encoder/block_1/attention/output_bias": np.zeros}
# FAME weights with no SASRec counterpart: the head gate (a softmax over one head is 1) and routing statistics.
FAME_ONLY = ("facet_head/facet_block/head_gate/", "facet_head/facet_block/attention/expert_load",
             "facet_head/facet_block/attention/tokens", "facet_head/facet_block/attention/dropped",
             "facet_head/facet_block/attention/router_entropy", "facet_head/facet_block/attention/load_balance_loss",
             "facet_head/facet_block/attention/z_loss", "facet_head/facet_block/attention/entropy_loss")


def by_path(model):
    return {w.path: w for w in model.weights}


def transplant(source, target, mapping, skip=()):
    """Copies every weight of ``source`` to ``target`` at ``mapping.get(path, path)``; each target weight is set
    exactly once (the rest of ``target`` must be set by the caller)."""
    targets, done = by_path(target), set()
    for path, weight in by_path(source).items():
        if path.startswith(skip):
            continue
        dest = mapping.get(path, path)
        assert dest in targets, f"no counterpart for {path}"
        assert tuple(targets[dest].shape) == tuple(weight.shape), path
        targets[dest].assign(weight.numpy())
        done.add(dest)
    return set(targets) - done


def degenerate_fame(**overrides):
    return FAME(**COMMON, num_experts=1, item_projection="slice", facet_inner_dim=8, mix="logits", **overrides)


def fame_as_sasrec(fame):
    sasrec = SASRec(**COMMON)
    unset = transplant(fame, sasrec, FACET_TO_LAST_BLOCK, skip=FAME_ONLY)
    assert unset == set(IDENTITY_OUTPUT)
    weights = by_path(sasrec)
    for path, make in IDENTITY_OUTPUT.items():
        weights[path].assign(make(tuple(weights[path].shape)))
    return sasrec


def test_degenerate_fame_is_sasrec_with_the_facet_block_as_last_block():
    fame = degenerate_fame()
    gate = by_path(fame)["facet_head/facet_block/head_gate/kernel"]
    gate.assign(np.random.default_rng(0).normal(size=gate.shape))  # any gate weights: one head gets weight 1
    sasrec = fame_as_sasrec(fame)
    np.testing.assert_allclose(fame.last_scores(ITEMS).numpy()[:, 1:], sasrec.last_scores(ITEMS).numpy()[:, 1:],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fame.sequence_scores(ITEMS).numpy(), sasrec.sequence_scores(ITEMS).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_the_comparison_sees_a_wrong_mapping():
    """Scaling the identity output projection breaks the equality: the comparison can fail."""
    fame = degenerate_fame()
    sasrec = fame_as_sasrec(fame)
    kernel = by_path(sasrec)["sequence_encoder/block_1/attention/output_kernel"]
    kernel.assign(1.5 * kernel.numpy())
    assert not np.allclose(fame.last_scores(ITEMS).numpy()[:, 1:], sasrec.last_scores(ITEMS).numpy()[:, 1:],
                           atol=1e-3)


# HyMoERec weight -> SASRec weight: each block's shared FFN is SASRec's FFN; alpha, the step counter, the router
# and the experts have no counterpart.
SHARED_FFN = {f"sequence_encoder/block_{b}/ffn/shared_ffn/{name}": f"sequence_encoder/block_{b}/ffn/{name}"
              for b in range(2) for name in ("kernel_in", "kernel_out", "bias_in", "bias_out")}
HYMOEREC_ONLY = tuple(f"sequence_encoder/block_{b}/ffn/{name}" for b in range(2)
                      for name in ("alpha_logit", "step", "moe/"))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_hymoerec_with_its_routed_branch_off_is_sasrec(norm):
    hymoerec = HyMoERec(**{**COMMON, "norm": norm}, num_experts=4, k=2, warmup_steps=100)
    sasrec = SASRec(**{**COMMON, "norm": norm})
    assert transplant(hymoerec, sasrec, SHARED_FFN, skip=HYMOEREC_ONLY) == set()
    assert all(float(block.ffn.alpha()) == 0.0 for block in hymoerec.sequence_encoder.transformer_blocks)
    np.testing.assert_allclose(hymoerec.last_scores(ITEMS).numpy()[:, 1:], sasrec.last_scores(ITEMS).numpy()[:, 1:],
                               rtol=1e-5, atol=1e-5)
    # once warmed up, the experts count: the same weights give other scores
    for block in hymoerec.sequence_encoder.transformer_blocks:
        block.ffn.step.assign(100)
    assert not np.allclose(hymoerec.last_scores(ITEMS).numpy()[:, 1:], sasrec.last_scores(ITEMS).numpy()[:, 1:],
                           atol=1e-4)
