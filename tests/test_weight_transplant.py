"""Weights of the next-item presets, saved by variable path (tests/fixtures/transplant/, written by
tests/fixtures/make_transplant_fixtures.py), assigned to the composed models compute the same outputs."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

from tfmoe.models.variable_paths import assign_top_level_weights, scoped_path

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_transplant_fixtures as fixtures  # noqa: E402

# every top-level prefix of the fixtures and its path in the composed model, written out
EXPECTED_MAPPING = {
    "item_encoder/item_embeddings": "sequence_encoder/item_encoder/item_embeddings",
    "item_encoder/position_embeddings": "sequence_encoder/item_encoder/position_embeddings",
    "block_0/attention/query_kernel": "sequence_encoder/block_0/attention/query_kernel",
    "block_1/ffn/moe/router/kernel": "sequence_encoder/block_1/ffn/moe/router/kernel",
    "final_norm/gamma": "sequence_encoder/final_norm/gamma",
    "facet_block/item_projection": "facet_head/facet_block/item_projection",
    "facet_block/head_gate/kernel": "facet_head/facet_block/head_gate/kernel",
    "proposal_log_q": "proposal_log_q",
}


def test_the_path_mapping():
    assert {old: scoped_path(old) for old in EXPECTED_MAPPING} == EXPECTED_MAPPING


@pytest.mark.parametrize("preset", fixtures.PRESETS)
def test_saved_weights_reproduce_the_saved_outputs(preset):
    saved = np.load(FIXTURES / "transplant" / f"{preset}.npz")
    model = fixtures.build(preset)
    assign_top_level_weights(model, {key[len("weight:"):]: saved[key] for key in saved.files
                                     if key.startswith("weight:")})
    features, labels = {"history": saved["input_history"]}, saved["labels"]
    last = np.asarray(model.last_scores(features))
    assert np.array_equal(np.isfinite(last), np.isfinite(saved["last_scores"]))
    finite = np.isfinite(last)
    np.testing.assert_allclose(last[finite], saved["last_scores"][finite], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.sequence_scores(features, training=False), saved["sequence_scores"],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.compute_loss(features, labels, training=False), saved["loss"],
                               rtol=1e-5, atol=1e-5)


def test_a_weight_that_matches_no_variable_is_an_error():
    saved = np.load(FIXTURES / "transplant" / "sasrec_beauty.npz")
    weights = {key[len("weight:"):]: saved[key] for key in saved.files if key.startswith("weight:")}
    weights["block_9/ffn/kernel_in"] = weights.pop("block_0/ffn/kernel_in")
    with pytest.raises(ValueError, match=r"block_9/ffn/kernel_in.*sequence_encoder/block_0/ffn/kernel_in"):
        assign_top_level_weights(fixtures.build("sasrec_beauty"), weights)
