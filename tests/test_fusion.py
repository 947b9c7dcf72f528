"""MultiScaleFusion (MoS): query-conditioned gate over global, short-term and theme experts."""

import numpy as np
import pytest

from tfmoe.layers.fusion import MultiScaleFusion
from tfmoe.testing import run_layer_test

ACTIVATIONS = {"relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh}


def numpy_fusion(layer, experts, query, mask):
    """Reference forward pass from the layer's weights (looked up by name)."""
    w = {"/".join(x.path.split("/")[-2:]): np.asarray(x.numpy(), np.float64) for x in layer.weights}
    experts, query = experts.astype(np.float64), query.astype(np.float64)
    m = np.ones(experts.shape[:2], bool) if mask is None else mask
    z = query
    if layer.gate_inputs == "query_and_experts":
        summary = (experts * m[..., None]).sum(1) / np.maximum(m.sum(1, keepdims=True), 1)
        z = np.concatenate([query, summary], axis=-1)
    for i in range(len(layer.hidden_units)):
        z = ACTIVATIONS[layer.activation](z @ w[f"gate_hidden_{i}/kernel"] + w[f"gate_hidden_{i}/bias"])
    logits = z @ w["gate_logits/kernel"] + w["gate_logits/bias"]
    n = layer.num_ungated_experts if layer.combine == "concat" else 0
    gated, gated_mask = experts[:, n:], m[:, n:]
    e = np.where(gated_mask, np.exp(logits - logits.max(-1, keepdims=True)), 0.0)
    gate = e / np.maximum(e.sum(-1, keepdims=True), 1e-30)
    mixed = np.einsum("bs,bsd->bd", gate, gated)
    if n == 0:
        return mixed, gate
    passed = experts[:, :n] * m[:, :n, None]
    fused = np.concatenate([passed.reshape(len(experts), -1), mixed], axis=-1)
    return fused, np.concatenate([m[:, :n].astype(np.float64), gate], axis=-1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    experts = rng.normal(size=(4, 5, 6)).astype("float32")  # global, short-term, 3 themes
    query = rng.normal(size=(4, 3)).astype("float32")
    mask = np.ones((4, 5), bool)
    mask[0, 3] = False
    mask[1, [0, 4]] = False
    mask[2, 2:] = False  # every theme expert masked
    return experts, query, mask


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_units": [8]},
        {"hidden_units": [8, 4], "activation": "tanh", "gate_inputs": "query"},
        {"hidden_units": [], "combine": "concat"},
        {"hidden_units": [7], "combine": "concat", "num_ungated_experts": 1, "gate_inputs": "query"},
        {"hidden_units": [3], "combine": "concat", "num_ungated_experts": 4},
    ],
)
@pytest.mark.parametrize("use_mask", [True, False])
def test_matches_numpy_reference(data, kwargs, use_mask):
    experts, query, mask = data
    mask = mask if use_mask else None
    layer = MultiScaleFusion(**kwargs)
    fused, gate = layer(experts, query, expert_mask=mask)
    ref_fused, ref_gate = numpy_fusion(layer, experts, query, mask)
    np.testing.assert_allclose(fused, ref_fused, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gate, ref_gate, rtol=1e-5, atol=1e-7)
    assert gate.dtype == "float32"


def test_masked_experts_get_zero_gate_and_never_influence_the_output(data):
    experts, query, mask = data
    layer = MultiScaleFusion(hidden_units=[8])
    fused, gate = layer(experts, query, mask)
    np.testing.assert_array_equal(gate.numpy()[~mask], 0.0)
    np.testing.assert_allclose(gate.numpy().sum(-1), [1.0, 1.0, 1.0, 1.0], rtol=1e-6)
    noisy = np.where(mask[..., None], experts, 1e4).astype("float32")
    fused2, gate2 = layer(noisy, query, mask)
    np.testing.assert_allclose(fused2, fused, rtol=1e-6)
    np.testing.assert_allclose(gate2, gate, rtol=1e-6)


def test_concat_mode_with_all_theme_experts_masked_is_finite(data):
    experts, query, mask = data
    fused, gate = MultiScaleFusion(combine="concat")(experts, query, mask)
    assert fused.shape == (4, 18)
    np.testing.assert_array_equal(fused.numpy()[2, 12:], 0.0)  # no theme expert: zero mixture
    np.testing.assert_array_equal(gate.numpy()[2], [1.0, 1.0, 0.0, 0.0, 0.0])
    assert np.all(np.isfinite(fused.numpy()))


def test_dropout_only_in_training(data):
    experts, query, _ = data
    layer = MultiScaleFusion(hidden_units=[32], dropout=0.5, seed=1)
    inference = layer(experts, query, training=False)[1].numpy()
    np.testing.assert_array_equal(layer(experts, query)[1].numpy(), inference)
    assert not np.allclose(layer(experts, query, training=True)[1].numpy(), inference)


@pytest.mark.parametrize("combine", ["weighted_sum", "concat"])
def test_contract(tmp_path, data, combine):
    experts, query, mask = data
    run_layer_test(
        lambda: MultiScaleFusion(hidden_units=[8], combine=combine, dropout=0.1),
        (experts, query, mask),
        tmp_path,
        output_dtype=["compute", "float32"],  # the fused output; the gate g, a float32 softmax
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_units": [8, 0]}, r"MultiScaleFusion: `hidden_units\[1\]` must be an integer >= 1, got 0"),
        ({"hidden_units": 8}, r"`hidden_units` must be a list of integers, got 8"),
        ({"activation": "nope"}, r"`activation` must be a Keras activation name, got 'nope'"),
        (
            {"gate_inputs": "experts"},
            r"`gate_inputs` must be one of 'query_and_experts', 'query'; got 'experts'",
        ),
        ({"combine": "sum"}, r"`combine` must be one of 'weighted_sum', 'concat'; got 'sum'"),
        ({"num_ungated_experts": -1}, r"`num_ungated_experts` must be an integer >= 0, got -1"),
        ({"dropout": 1.5}, r"`dropout` must be a finite number in \[0.0, 1.0\), got 1.5"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiScaleFusion(**kwargs)


def test_concat_needs_a_gated_expert(data):
    experts, query, _ = data
    with pytest.raises(
        ValueError, match=r"needs more experts than `num_ungated_experts` \(5\), got 5 experts"
    ):
        MultiScaleFusion(combine="concat", num_ungated_experts=5)(experts, query)
