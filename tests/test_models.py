"""Next-item models (SASRec, HyMoERec, FAME): shapes, masks, maths vs numpy, serialization, learning."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmoe.metrics import evaluate_ranking
from tfmoe.models import FAME, HyMoERec, SASRec, TransformerBlock
from tfmoe.models.fame import FacetBlock
from tfmoe.testing import assert_independent_initial_weights, mixed_precision_tolerance
from tfmoe.utils.initializers import torch_in_projection

N_ITEMS, MAX_LEN = 40, 10
TINY = {"num_items": N_ITEMS, "max_len": MAX_LEN, "hidden_dim": 16, "num_heads": 2, "dropout": 0.0, "inner_dim": 32}
MODELS = {
    "sasrec": (SASRec, {}),
    "sasrec_post": (SASRec, {"norm": "post", "num_blocks": 1}),
    # the original SASRec code: residual from LN(x), absolute positions, ReLU, N(0, 0.02) weights
    "sasrec_original": (SASRec, {"norm": "sasrec", "positions": "absolute", "activation": "relu",
                                 "initializer_range": 0.02}),
    "hymoerec": (HyMoERec, {"num_experts": 4, "k": 2}),
    "fame": (FAME, {"num_experts": 3}),
    "fame_probs": (FAME, {"num_experts": 2, "mix": "probs", "norm": "post"}),
    "fame_variant": (FAME, {"num_experts": 2, "facet_inner_dim": 12, "facet_norm": "pre", "item_projection": "slice"}),
    # W_f drawn from N(0, 0.02^2) instead of started as head-chunk selectors (the default)
    "fame_random_w_f": (FAME, {"num_experts": 2, "item_projection_init": "random", "initializer_range": 0.02}),
}


def make(name, **overrides):
    cls, extra = MODELS[name]
    keras.utils.set_random_seed(0)
    return cls(**{**TINY, **extra, **overrides})


def batch(rng, size=4, length=MAX_LEN, min_real=2):
    items = rng.integers(1, N_ITEMS + 1, size=(size, length))
    for row, real in enumerate(rng.integers(min_real, length + 1, size=size)):
        items[row, : length - real] = 0
    return items.astype("int32")


@pytest.mark.parametrize("name", list(MODELS))
def test_shapes_causality_and_padding_invariance(name):
    model, rng = make(name), np.random.default_rng(1)
    items = batch(rng)
    seq = model.sequence_scores({"history": items}).numpy()
    last = model.last_scores({"items": items}).numpy()
    assert seq.shape == (4, MAX_LEN, N_ITEMS + 1) and last.shape == (4, N_ITEMS + 1)
    assert seq.dtype == np.float32 and np.all(np.isneginf(last[:, 0])) and np.all(np.isfinite(last[:, 1:]))
    np.testing.assert_allclose(last[:, 1:], seq[:, -1, 1:], atol=1e-5)
    # Causality: changing item j changes nothing before j.
    changed = items.copy()
    changed[:, 6] = changed[:, 6] % N_ITEMS + 1
    seq2 = model.sequence_scores(changed).numpy()
    np.testing.assert_allclose(seq2[:, :6], seq[:, :6], atol=1e-5)
    assert np.abs(seq2[:, 6:] - seq[:, 6:]).max() > 1e-4
    # Padding invariance: more left padding (shorter tensor) gives the same last scores.
    short = items[:, 3:]
    short[:, 0] = 0
    full = np.concatenate([np.zeros((4, 3), "int32"), short], axis=1)
    np.testing.assert_allclose(model.last_scores(short).numpy()[:, 1:], model.last_scores(full).numpy()[:, 1:],
                               atol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "fame", "hymoerec"])
def test_every_weight_gets_its_own_random_initial_values(name):
    """Regression: one unseeded initializer per layer made W_Q = W_K = W_V = W_O and position i = item i."""
    assert_independent_initial_weights(make(name))


def test_sasrec_scores_are_hidden_dot_tied_embeddings():
    model = make("sasrec")
    items = batch(np.random.default_rng(2))
    hidden = model.sequence_representation({"history": items}).numpy()
    table = model.item_embeddings.numpy()
    np.testing.assert_allclose(model.sequence_scores(items).numpy(), hidden @ table.T, rtol=1e-4, atol=1e-5)
    assert np.all(hidden[items == 0] == 0)


@pytest.mark.parametrize("mix", ["logits", "probs"])
@pytest.mark.parametrize("item_projection", ["dense", "slice"])
def test_fame_head_mixture_matches_numpy(mix, item_projection):
    model = make("fame", mix=mix, item_projection=item_projection, item_projection_init="random")  # W_f not chunks
    items = batch(np.random.default_rng(3))
    out = model(items)
    heads, gates = out["heads"].numpy(), out["gates"].numpy()  # [B, L, H, d'], [B, L, H]
    assert heads.shape == (4, MAX_LEN, 2, 8)
    np.testing.assert_allclose(gates[items != 0].sum(-1), 1.0, rtol=1e-5)
    table = model.item_embeddings.numpy()
    if item_projection == "dense":
        sub = np.einsum("vd,hdk->hvk", table, model.facet_block.item_projection_kernel.numpy())
    else:  # e_v^(h) = the h-th 8-wide chunk of e_v, no W_f
        assert model.facet_block.item_projection_kernel is None
        assert not any("item_projection" in w.path for w in model.weights)
        sub = np.stack([table[:, :8], table[:, 8:]])
    per_head = np.einsum("blhk,hvk->blhv", heads, sub)  # s^(h)(v)
    if mix == "logits":
        expected = np.einsum("blh,blhv->blv", gates, per_head)
    else:
        per_head[..., 0] = -np.inf
        probs = np.exp(per_head - per_head.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        with np.errstate(divide="ignore"):
            expected = np.log(np.einsum("blh,blhv->blv", gates, probs))
    got = model.sequence_scores(items).numpy()
    real = items != 0
    np.testing.assert_allclose(got[real][:, 1:], expected[real][:, 1:], rtol=1e-4, atol=1e-5)
    if mix == "probs":
        np.testing.assert_allclose(np.exp(got[real][:, 1:]).sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("mix", ["logits", "probs"])
def test_fame_chunks_init_starts_as_the_slice_projection_and_learns_from_there(mix):
    """item_projection_init="chunks": W_f^(h) selects the h-th chunk, so the scores at initialisation are those of
    item_projection="slice" with the same weights, and W_f is still a trained weight."""
    dense = make("fame_random_w_f", mix=mix, item_projection_init="chunks")
    sliced = make("fame_random_w_f", mix=mix, item_projection="slice")
    assert make("fame").facet_block.item_projection_init == "chunks"  # the default
    projection = dense.facet_block.item_projection_kernel.numpy()
    expected = np.zeros((2, 16, 8), "float32")
    for head in range(2):
        expected[head, head * 8:(head + 1) * 8] = np.eye(8)
    np.testing.assert_array_equal(projection, expected)
    assert dense.facet_block.item_projection_kernel.trainable
    sliced_weights = {w.path: w for w in sliced.weights}
    for weight in dense.weights:
        if weight.path in sliced_weights:
            sliced_weights[weight.path].assign(weight)
    items = batch(np.random.default_rng(5))
    real = items != 0
    np.testing.assert_allclose(dense.sequence_scores(items).numpy()[real][:, 1:],
                               sliced.sequence_scores(items).numpy()[real][:, 1:], rtol=1e-5, atol=1e-6)
    # the random draw under initializer_range 0.02 shrinks the sub-embeddings by about 0.02 sqrt(d) (d = 16: 0.08)
    random = make("fame_random_w_f", mix=mix).facet_block.item_projection_kernel.numpy()
    table = dense.item_embeddings.numpy()
    ratio = np.linalg.norm(table @ random[0]) / np.linalg.norm(table @ projection[0])
    assert 0.04 < ratio < 0.16, ratio


def test_head_chunks_rejects_a_shape_that_is_not_heads_by_chunks():
    from tfmoe.utils.initializers import HeadChunks

    with pytest.raises(ValueError, match=r"HeadChunks: shape must be \[H, H \* d', d'\], got \(2, 5, 2\)"):
        HeadChunks()((2, 5, 2))


# tests/test_model_contract.py runs tfmoe.testing's model contract (save/load, config, XLA, mixed precision,
# MirroredStrategy) on SASRec, FAME and HyMoERec; the FAME variants it leaves out are saved and loaded here.
@pytest.mark.parametrize("name", ["fame_probs", "fame_variant", "fame_random_w_f"])
def test_keras_save_load_and_config_round_trip(name, tmp_path):
    model = make(name)
    items = batch(np.random.default_rng(4))
    labels = np.where(items > 0, items % N_ITEMS + 1, 0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit({"history": items}, labels, epochs=1, verbose=0)  # move weights (and MoE step counters)
    expected = model.last_scores(items).numpy()
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.last_scores(items).numpy(), expected)
    clone = type(model).from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone.last_scores(items).numpy()[:, 1:], expected[:, 1:], rtol=1e-6)


def test_frequency_proposal_is_saved_with_the_weights(tmp_path):
    freqs = np.arange(N_ITEMS + 1, dtype=float)
    model = make("sasrec", loss="sampled_softmax", proposal="frequency", item_frequencies=freqs, num_negatives=8)
    path = str(tmp_path / "freq.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.next_item_loss.log_q.numpy(), model.next_item_loss.log_q.numpy())
    assert loaded.next_item_loss.log_q.numpy()[N_ITEMS] == pytest.approx(np.log(N_ITEMS / freqs.sum()), rel=1e-5)


def test_hymoerec_blocks_warmup_and_load_balance_loss():
    model = make("hymoerec", moe_blocks=1, warmup_steps=4, entropy_loss_weight=0.1)
    kinds = [block.ffn_type for block in model.transformer_blocks]
    assert kinds == ["dense", "hybrid_moe"]
    ffn = model.transformer_blocks[1].ffn
    assert float(ffn.alpha()) == 0.0
    items = batch(np.random.default_rng(5))
    model(items, training=True)
    assert len(model.losses) >= 1 and float(sum(model.losses)) < 0  # lambda * sum m log m <= 0
    assert float(ffn.alpha()) == pytest.approx(0.5 * 0.25)


@pytest.mark.parametrize("name", ["sasrec", "fame", "hymoerec"])
def test_the_model_dtype_policy_reaches_every_sub_layer(name):
    """dtype="mixed_bfloat16" on the model (the global policy float32) reaches every layer inside it."""
    model = make(name, dtype="mixed_bfloat16")
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    kinds = {type(layer).__name__ for layer in layers}
    assert {"LayerNormalization", "Dropout", "TransformerBlock", "SequenceEncoder"} <= kinds
    assert [(layer.name, layer.dtype_policy.name) for layer in layers
            if layer.dtype_policy.name != "mixed_bfloat16"] == []
    assert model.sequence_encoder.final_norm.compute_dtype == "bfloat16"
    scores = model.last_scores(batch(np.random.default_rng(6)))
    assert scores.dtype == tf.float32 and np.all(np.isfinite(scores.numpy()[:, 1:]))


def test_mixed_precision_scores_and_loss_are_float32():
    reference = make("fame", item_dropout=0.1)  # float32
    items = batch(np.random.default_rng(6))
    labels = np.where(items > 0, items % N_ITEMS + 1, 0)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = make("fame", item_dropout=0.1)
        model(items)
        model.set_weights(reference.get_weights())
        scores = model.last_scores(items)
        assert scores.dtype == tf.float32
        loss = model.compute_loss(items, labels, model(items, training=True))
        assert loss.dtype == tf.float32 and np.isfinite(float(loss))
        # against the float32 model (no dropout outside training): float16 rounds each step's output to 2^-11
        # relative; a few blocks put ~16 roundings on the scores' path, each of the scores' scale
        tolerance = mixed_precision_tolerance("mixed_float16", roundings=16)
        want = reference.last_scores(items).numpy()[:, 1:]
        np.testing.assert_allclose(scores.numpy()[:, 1:], want, rtol=tolerance,
                                   atol=tolerance * np.abs(want).max())
        got = float(model.compute_loss(items, labels, model(items), training=False))
        assert got == pytest.approx(float(reference.compute_loss(items, labels, reference(items), training=False)),
                                    rel=tolerance)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("length_groups", [1, 3])
def test_bfloat16_sasrec_scores_and_bce_loss_match_float32_within_the_rounding_tolerance(length_groups):
    """The speed option of benchmarks/train_speed.py (sasrec_peer_bf16): mixed_bfloat16 against the float32 path.
    bfloat16 rounds to 2^-8 relative; 2 blocks put ~16 roundings on the scores' path (each of their scale)."""
    options = {"loss": "bce", "norm": "sasrec", "positions": "absolute", "activation": "relu",
               "length_groups": length_groups, "seed": 4}
    reference = make("sasrec", **options)
    model = make("sasrec", dtype="mixed_bfloat16", **options)
    model.set_weights(reference.get_weights())
    items = batch(np.random.default_rng(9))
    labels = np.where(items > 0, items % N_ITEMS + 1, 0)
    tolerance = mixed_precision_tolerance("mixed_bfloat16", roundings=16)
    want, got = reference.last_scores(items).numpy()[:, 1:], model.last_scores(items).numpy()[:, 1:]
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * np.abs(want).max())
    losses = []
    for m in (reference, model):
        keras.utils.set_random_seed(0)  # the same negatives
        losses.append(float(m.compute_loss(items, labels, m(items), training=False)))
    assert losses[1] == pytest.approx(losses[0], rel=tolerance)


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
def test_trains_under_mirrored_strategy_with_gather_only_losses(loss, mirrored_strategy):
    # Both losses only gather rows of the item table; the replicas' sparse gradients differ in size. Item dropout
    # draws its masks from a seed generator inside the replicas.
    strategy = mirrored_strategy
    with strategy.scope():
        model = make("hymoerec", loss=loss, num_negatives=8, seed=2, item_dropout=0.2)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
    items = batch(np.random.default_rng(8), size=8)
    labels = np.where(items > 0, items % N_ITEMS + 1, 0)
    history = model.fit({"history": items}, labels, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert all(np.isfinite(history))


@pytest.mark.slow
def test_hymoerec_dropless_routing_trains_like_top_k_with_its_no_drop_capacity():
    """Dropless (packed dispatch, eager) against top-k with capacity E / k under XLA, where top-k really runs its
    static per-expert buffers (outside XLA it would run the same packed code as dropless)."""
    top_k, dropless = make("hymoerec"), make("hymoerec", routing="dropless")
    dropless.set_weights(top_k.get_weights())
    items = batch(np.random.default_rng(10), size=6)
    labels = np.where(items > 0, items % N_ITEMS + 1, 0)
    buffered_scores = tf.function(top_k.last_scores, jit_compile=True)(tf.constant(items))
    np.testing.assert_allclose(dropless.last_scores(items)[:, 1:], buffered_scores.numpy()[:, 1:], atol=1e-5)

    def loss_and_grads(model, inputs):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(inputs, labels, model(inputs, training=True), training=True)
        return [loss] + [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]

    grads = [[t.numpy() for t in tf.function(lambda x: loss_and_grads(top_k, x), jit_compile=True)(
                 tf.constant(items))],
             [t.numpy() for t in loss_and_grads(dropless, tf.constant(items))]]
    np.testing.assert_allclose(grads[1][0], grads[0][0], rtol=1e-5)
    for got, expected in zip(grads[1][1:], grads[0][1:]):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert type(dropless).from_config(dropless.get_config()).routing == "dropless"


@pytest.mark.parametrize("name", ["sasrec", "hymoerec", "fame", "fame_probs"])
def test_item_dropout_drops_the_scoring_table_in_training_only(name):
    rate = 0.5
    model = make(name, item_dropout=rate, seed=3)
    table = model.item_embeddings.numpy()
    np.testing.assert_array_equal(model.scoring_table(training=False), table)
    dropped = model.scoring_table(training=True).numpy()
    kept = dropped != 0
    assert 0.4 < kept.mean() < 0.6  # ~1 - rate of the entries survive, scaled by 1 / (1 - rate)
    np.testing.assert_allclose(dropped[kept], table[kept] / (1 - rate), rtol=1e-6)
    assert not np.array_equal(model.scoring_table(training=True).numpy(), dropped)  # a new mask every step

    # the training loss is the loss of the dropped table (checked by handing the model a known table) ...
    items = batch(np.random.default_rng(9))
    labels = np.where(items > 0, items % N_ITEMS + 1, 0)
    output = model(items, training=False)
    plain = make(name, seed=3)  # same weights (same seed), no item dropout
    plain(items, training=False)  # the same auxiliary (load-balance) losses as `model`'s last call
    model.scoring_table = lambda training=False: dropped if training else table
    plain.scoring_table = lambda training=False: dropped
    np.testing.assert_allclose(float(model.compute_loss(items, labels, output, training=True)),
                               float(plain.compute_loss(items, labels, output, training=False)), rtol=1e-5)
    # ... and scoring, evaluation and the loss outside training use the table as it is
    del model.scoring_table, plain.scoring_table
    np.testing.assert_allclose(float(model.compute_loss(items, labels, output, training=False)),
                               float(plain.compute_loss(items, labels, output, training=False)), rtol=1e-6)
    np.testing.assert_array_equal(model.last_scores(items), plain.last_scores(items))
    assert make(name).item_dropout_seed is None and make(name).get_config()["item_dropout"] == 0.0
    assert type(model).from_config(model.get_config()).item_dropout == rate


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (SASRec, {"num_items": 1}, "num_items"),
        (SASRec, {"hidden_dim": 10, "num_heads": 3}, "num_heads"),
        (SASRec, {"loss": "hinge"}, "hinge"),
        (SASRec, {"norm": "middle"}, "norm"),
        (SASRec, {"positions": "sinusoidal"}, "positions"),
        (SASRec, {"initializer_range": 0.0}, "initializer_range"),
        (SASRec, {"dropout": 1.0}, "dropout"),
        (SASRec, {"item_dropout": -0.1}, "item_dropout"),
        (HyMoERec, {"item_dropout": 1.0}, "item_dropout"),
        (SASRec, {"activation": max}, "activation"),
        (HyMoERec, {"num_experts": 2, "k": 3}, "`k`"),
        (HyMoERec, {"moe_blocks": 3}, "moe_blocks"),
        (FAME, {"mix": "sum"}, "mix"),
        (FAME, {"mix": "probs", "loss": "bce"}, "probs"),
        (FAME, {"num_blocks": 0}, "num_blocks"),
        (FAME, {"facet_norm": "sasrec"}, "facet_norm"),
        (FAME, {"item_projection": "tied"}, "item_projection"),
        (FAME, {"item_projection_init": "identity"}, "item_projection_init"),
        (FacetBlock, {"item_projection_init": None}, "item_projection_init"),
        (FAME, {"facet_inner_dim": 0}, "facet_inner_dim"),
        (TransformerBlock, {"ffn": "dense", "ffn_options": {"k": 1}}, "ffn_options"),
        (TransformerBlock, {"attention_output_dropout": 1.0}, "attention_output_dropout"),
        (SASRec, {"attention_dropout": 1.0}, "attention_dropout"),
        (FacetBlock, {"attention_dropout": -0.1}, "attention_dropout"),
        (SASRec, {"attention_output_dropout": "none"}, "attention_output_dropout"),
        (FAME, {"attention_output_dropout": -0.5}, "attention_output_dropout"),
        (SASRec, {"layer_norm_epsilon": 0.0}, "layer_norm_epsilon"),
        (SASRec, {"attention_initializer": "nope"}, "SASRec: invalid `attention_initializer` 'nope'"),
        (FacetBlock, {"kernel_initializer": 3.5}, "FacetBlock: invalid `kernel_initializer` 3.5"),
    ],
)
def test_validated_arguments(cls, kwargs, match):
    base = {} if cls in (TransformerBlock, FacetBlock) else {"num_items": 10, "max_len": 4, "hidden_dim": 8}
    with pytest.raises(ValueError, match=match):
        cls(**{**base, **kwargs})


def _layer_norm(x, eps=1e-6):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)  # gamma 1, beta 0 at initialisation


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_facet_block_matches_numpy(norm):
    """post: a = LN(x_h + f_h), F = LN(a + FFN'(a)); pre: a = x_h + f_h, F = LN(a + FFN'(LN(a))); g = softmax(W_g F)."""
    block = FacetBlock(num_heads=2, num_experts=3, inner_dim=5, norm=norm)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 6)).astype("float32")
    mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], bool)
    block.build(x.shape)
    for w in block.weights:
        if "bias" in w.path:
            w.assign(rng.normal(size=w.shape).astype("float32") * 0.1)
    heads_out, gates_out = (t.numpy() for t in block(x, mask=mask))
    _, f = block.attention(x, mask=mask)  # the MoE attention itself: tests/test_attention.py
    a = x.reshape(2, 4, 2, 3) + f.numpy()
    ffn = block.ffn

    def ffn_np(z):
        return np.maximum(z @ ffn.kernel_in.numpy() + ffn.bias_in.numpy(), 0.0) @ ffn.kernel_out.numpy() + \
            ffn.bias_out.numpy()

    assert ffn.kernel_in.shape == (3, 5)  # d' -> inner_dim, shared by the heads
    if norm == "post":
        a = _layer_norm(a)
        expected = _layer_norm(a + ffn_np(a))
    else:
        expected = _layer_norm(a + ffn_np(_layer_norm(a)))
    expected *= mask[..., None, None]
    np.testing.assert_allclose(heads_out, expected, rtol=1e-4, atol=1e-5)
    logits = expected.reshape(2, 4, 6) @ block.gate.kernel.numpy() + block.gate.bias.numpy()
    gates = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(gates_out, gates / gates.sum(-1, keepdims=True) * mask[..., None], rtol=1e-4,
                               atol=1e-6)


def test_sasrec_norm_block_matches_numpy():
    """norm="sasrec": q = LN(x); y = q + Attn(q, keys/values x); z = LN(y); out = z + FFN(z), causal."""
    block = TransformerBlock(num_heads=1, inner_dim=6, norm="sasrec", activation="relu")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4)).astype("float32")
    mask = np.array([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], bool)
    x[0, 0] = 0.0
    block.build(x.shape)
    for w in block.weights:  # non-zero biases so that every term is exercised
        if "bias" in w.path:
            w.assign(rng.normal(size=w.shape).astype("float32") * 0.1)
    out = block(x, mask=mask).numpy()
    a = block.attention
    wq, wk, wv = a.query_kernel.numpy()[0, 0], a.key_kernel.numpy()[0], a.value_kernel.numpy()[0]
    bq, bk, bv = a.query_bias.numpy()[0, 0], a.key_bias.numpy()[0], a.value_bias.numpy()[0]
    f = block.ffn
    q = _layer_norm(x)
    scores = ((q @ wq + bq) @ (x @ wk + bk).transpose(0, 2, 1)) / np.sqrt(4)
    allowed = np.tril(np.ones((5, 5), bool))[None] & mask[:, None, :] & mask[:, :, None]
    probs = np.exp(np.where(allowed, scores, -1e9) - np.where(allowed, scores, -1e9).max(-1, keepdims=True)) * allowed
    probs = probs / np.maximum(probs.sum(-1, keepdims=True), 1e-30)  # a padded query row attends to nothing
    y = q + (probs @ (x @ wv + bv)) @ a.output_kernel.numpy() + a.output_bias.numpy()
    z = _layer_norm(y)
    hidden = np.maximum(z @ f.kernel_in.numpy() + f.bias_in.numpy(), 0.0)
    expected = (z + hidden @ f.kernel_out.numpy() + f.bias_out.numpy()) * mask[..., None]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(block(x, mask=mask, last_only=True)[:, 0], out[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer", ["transformer", "facet"])
def test_attention_output_dropout_acts_on_the_attention_output_only(layer):
    """With the FFN's kernels at zero the FFN adds nothing, so in training the block's output differs from
    inference only through the attention-output dropout: none at rate 0, some at the default (``dropout``)."""
    x = np.random.default_rng(0).normal(size=(4, 6, 8)).astype("float32")

    def outputs(**rates):
        keras.utils.set_random_seed(0)
        if layer == "transformer":
            block = TransformerBlock(num_heads=2, inner_dim=6, dropout=0.5, attention_dropout=0.0, **rates)
        else:
            block = FacetBlock(num_heads=2, num_experts=2, dropout=0.5, attention_dropout=0.0, **rates)
        block.build(x.shape)
        for w in block.ffn.weights:
            w.assign(np.zeros(w.shape, "float32"))
        first = lambda out: out[0] if isinstance(out, tuple) else out  # FacetBlock: (heads, gates)
        return first(block(x, training=True)).numpy(), first(block(x, training=False)).numpy(), block

    trained, inferred, block = outputs(attention_output_dropout=0.0)
    np.testing.assert_allclose(trained, inferred, rtol=1e-5, atol=1e-6)
    assert block.get_config()["attention_output_dropout"] == 0.0
    trained, inferred, block = outputs()
    assert np.abs(trained - inferred).max() > 1e-2
    assert block.get_config()["attention_output_dropout"] is None


@pytest.mark.parametrize("name", ["sasrec", "hymoerec", "fame"])
def test_model_attention_output_dropout_reaches_every_block(name):
    model = make(name, dropout=0.3, attention_output_dropout=0.0)
    blocks_ = list(model.transformer_blocks) + ([model.facet_block] if name == "fame" else [])
    assert blocks_ and all(b.attention_output_dropout_layer.rate == 0.0 for b in blocks_)
    assert type(model).from_config(model.get_config()).get_config()["attention_output_dropout"] == 0.0
    assert all(b.attention_output_dropout_layer.rate == 0.3 for b in make(name, dropout=0.3).transformer_blocks)


def test_absolute_positions_count_real_items():
    """positions="absolute": the k-th real item gets P[k - 1], whatever the padding before it."""
    from tfmoe.models.blocks import ItemEncoder

    encoder = ItemEncoder(num_items=9, max_len=5, hidden_dim=3, positions="absolute", scale_embeddings=False)
    items = np.array([[0, 0, 4, 5, 6], [1, 2, 3, 4, 5], [0, 0, 0, 0, 7]])
    x, mask = encoder(items)
    table, positions = encoder.item_embeddings.numpy(), encoder.position_embeddings.numpy()
    expected = np.zeros((3, 5, 3), "float32")
    for row in range(3):
        real = np.flatnonzero(items[row])
        for k, i in enumerate(real):
            expected[row, i] = table[items[row, i]] + positions[k]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6, atol=1e-6)
    recency, _ = ItemEncoder.from_config({**encoder.get_config(), "positions": "recency"})(items[:1, 2:])
    assert encoder.get_config()["positions"] == "absolute" and recency.shape == (1, 3, 3)


def test_initializer_range_draws_every_weight_from_one_normal():
    model = SASRec(num_items=2000, max_len=50, hidden_dim=32, initializer_range=0.02)
    for weight in model.weights:
        values = weight.numpy()
        if values.size >= 1000 and "norm" not in weight.path:
            assert abs(values.std() - 0.02) < 0.002, weight.path
    assert_independent_initial_weights(model)
    assert SASRec.from_config(model.get_config()).initializer_range == 0.02


@pytest.mark.parametrize("name", ["sasrec", "hymoerec", "fame"])
def test_attention_initializer_reaches_query_key_value_kernels_only(name):
    limit = torch_in_projection(64)["config"]["maxval"]
    model = make(name, hidden_dim=64, inner_dim=64, num_blocks=2, initializer_range=0.02,
                 attention_initializer=torch_in_projection(64))
    qkv = [w for w in model.weights if w.path.rsplit("/", 1)[-1] in ("query_kernel", "key_kernel", "value_kernel")]
    assert len(qkv) == 6  # two blocks (FAME: one block and the facet block) x query, key, value
    for weight in qkv:  # U(-a, a): |w| <= a, std a / sqrt(3)
        values = weight.numpy()
        assert np.abs(values).max() <= limit and abs(values.std() - limit / np.sqrt(3)) < 0.1 * limit, weight.path
    for weight in model.weights:
        if weight.path.endswith(("output_kernel", "kernel_in", "kernel_out")) and weight.numpy().size >= 1000:
            assert abs(weight.numpy().std() - 0.02) < 0.003, weight.path
    assert_independent_initial_weights(model)  # every block its own draw, though all share one config
    config = model.get_config()
    assert config["attention_initializer"]["config"]["maxval"] == limit
    keras.utils.set_random_seed(0)
    restored = type(model).from_config(config)
    assert restored.get_config() == config
    assert make(name).get_config()["attention_initializer"] is None


@pytest.mark.parametrize("name", ["sasrec", "sasrec_original", "hymoerec", "fame"])
def test_layer_norm_epsilon_reaches_every_layer_norm(name):
    model = make(name, layer_norm_epsilon=1e-8)
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.LayerNormalization)]
    # two per block (FAME: its facet block too) and the final one
    assert len(norms) == 2 * model.num_blocks + 1 and {norm.epsilon for norm in norms} == {1e-8}
    assert type(model).from_config(model.get_config()).get_config()["layer_norm_epsilon"] == 1e-8
    assert {n.epsilon for n in make(name)._flatten_layers() if isinstance(n, keras.layers.LayerNormalization)} == {
        1e-6}


@pytest.mark.parametrize("layer", [TransformerBlock, FacetBlock])
def test_blocks_pass_the_attention_initializer_to_their_attention(layer):
    block = layer(num_heads=2, attention_initializer="zeros")
    block(np.ones((1, 3, 8), "float32"))
    assert not np.any(block.attention.key_kernel.numpy()) and np.any(block.attention.output_kernel.numpy()
                                                                      if layer is TransformerBlock
                                                                      else block.attention.router_kernel.numpy())
    config = block.get_config()
    assert layer.from_config(config).get_config() == config
    with pytest.raises(ValueError, match=rf"{layer.__name__}: invalid `attention_initializer` 'nope'"):
        layer(num_heads=2, attention_initializer="nope")


def successor_data(rng, n_items, rows, length):
    """Deterministic successor pattern: item i is followed by i % n_items + 1; random starts and left padding."""
    starts = rng.integers(1, n_items + 1, size=rows)
    full = (starts[:, None] - 1 + np.arange(length + 1)[None]) % n_items + 1
    real = rng.integers(2, length + 1, size=rows)
    keep = np.arange(length)[None] >= (length - real)[:, None]
    history = np.where(keep, full[:, :-1], 0).astype("int32")
    labels = np.where(keep, full[:, 1:], 0).astype("int32")
    return history, labels, full[:, -1].astype("int32")


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("sasrec", {}),
        ("sasrec", {"loss": "sampled_softmax", "num_negatives": 16, "seed": 1}),
        ("sasrec", {"loss": "bce", "seed": 1}),
        ("hymoerec", {"warmup_steps": 20}),
        ("fame", {}),
    ],
)
def test_learns_planted_successor_pattern(name, overrides):
    rng = np.random.default_rng(0)
    model = make(name, **overrides)
    history, labels, _ = successor_data(rng, N_ITEMS, 64 * 60, MAX_LEN)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit({"history": history}, labels, batch_size=64, epochs=1, verbose=0, shuffle=False)
    test_history, _, targets = successor_data(np.random.default_rng(9), N_ITEMS, 256, MAX_LEN)
    ds = tf.data.Dataset.from_tensor_slices(({"history": test_history}, targets)).batch(128)
    result = evaluate_ranking(model.last_scores, ds, filter_seen=True)
    assert result["HR@10"] > 0.9, result  # chance: 10 / 40 = 0.25
    assert result["NDCG@10"] > 0.6, result


def test_plugs_into_the_data_sample_builders():
    from tfmoe.data import samples

    records = {"user_id": tf.constant([1, 2], tf.int64), "items": tf.ragged.constant([[3, 4, 5, 6], [7, 8]], tf.int64)}
    features, labels = samples.next_item_train(records, max_len=MAX_LEN, sequence_features=())
    model = make("sasrec")
    output = model(features, training=True)
    loss = model.compute_loss(features, labels, output)
    # numpy: full softmax over the items 1..V-1 (column 0 is padding), mean over the labelled positions
    logits = output.numpy().astype(np.float64) @ model.item_embeddings.numpy().astype(np.float64).T
    logits[..., 0] = -np.inf
    log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    labels_np = np.asarray(labels)
    real = labels_np != 0
    assert real.sum() == 4  # 3 + 1 next-item labels
    expected = -np.take_along_axis(log_probs, labels_np[..., None].astype(int), axis=-1)[..., 0][real].mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    eval_records = {**records, "target": tf.constant([7, 9], tf.int64)}
    eval_features, targets = samples.next_item_eval(eval_records, max_len=MAX_LEN, sequence_features=())
    assert model.last_scores(eval_features).shape == (2, N_ITEMS + 1) and targets.shape == (2,)


def test_sequences_longer_than_max_len_are_rejected():
    with pytest.raises(ValueError, match="max_len"):
        make("sasrec").last_scores(np.ones((1, MAX_LEN + 1), "int32"))


@pytest.mark.parametrize("name, overrides", [("sasrec", {}), ("sasrec", {"norm": "post"}), ("sasrec_original", {}),
                                             ("hymoerec", {"norm": "sasrec"}),
                                             ("fame", {}), ("fame", {"num_blocks": 1, "mix": "probs"})])
def test_last_scores_compute_only_the_last_position_yet_equal_the_full_pass(name, overrides):
    from tfmoe.models.sasrec import last_position, mask_padding_column

    model = make(name, **overrides)
    history = batch(np.random.default_rng(3), size=5)
    history[1] = 0
    history[1, -1] = 7  # a single item
    full = mask_padding_column(model.output_scores(last_position(model({"history": history}, training=False))))
    np.testing.assert_allclose(model.last_scores({"history": history}), full, rtol=1e-5, atol=1e-5)
    block = model.transformer_blocks[-1] if model.transformer_blocks else None
    if block is not None and name != "fame":  # the final block really returns one position
        x = np.random.default_rng(0).normal(size=(2, MAX_LEN, 16)).astype("float32")
        assert tuple(block(x, last_only=True).shape) == (2, 1, 16)
        np.testing.assert_allclose(block(x, last_only=True)[:, 0], block(x)[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "hymoerec", "fame"])
def test_trains_on_batches_of_varying_length(name):
    """Length-bucketed training batches have a dynamic time dimension (shorter than max_len)."""
    model = make(name)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(0)
    batches = [(batch(rng, length=n), batch(rng, length=n)) for n in (4, 7, MAX_LEN)]
    spec = ({"history": tf.TensorSpec([None, None], tf.int32)}, tf.TensorSpec([None, None], tf.int32))
    ds = tf.data.Dataset.from_generator(lambda: (({"history": h.astype("int32")}, y.astype("int32"))
                                                 for h, y in batches), output_signature=spec)
    assert np.isfinite(model.fit(ds, epochs=1, verbose=0).history["loss"][0])


def test_mirrored_training_equals_single_device_training(mirrored_strategy):
    """SASRec with the full softmax (no sampled negatives, no dropout): two replicas of half the global batch take
    the same SGD steps as one device on the whole batch; the loss is a mean over the global batch's items."""
    # full rows: the loss is a mean over each replica's labelled items, which equals the global batch's mean
    # only when both halves hold as many items
    items = batch(np.random.default_rng(8), size=16, min_real=MAX_LEN)
    labels = items % N_ITEMS + 1
    single = make("sasrec", dropout=0.0)
    single.compile(optimizer=keras.optimizers.SGD(0.1))
    single({"history": items})
    with mirrored_strategy.scope():
        mirrored = make("sasrec", dropout=0.0)
        mirrored.compile(optimizer=keras.optimizers.SGD(0.1))
        mirrored({"history": items})
    mirrored.set_weights(single.get_weights())
    losses = [model.fit({"history": items}, labels, batch_size=8, epochs=2, shuffle=False, verbose=0).history["loss"]
              for model in (single, mirrored)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    # float32 all-reduce order; SGD, not Adam, whose m / sqrt(v) blows near-zero gradients' noise up to lr-sized steps
    for a, b in zip(single.trainable_weights, mirrored.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_a_task_composed_from_a_backbone_and_a_head_saves_and_loads(tmp_path):
    from tfmoe.layers import HybridMoEFeedForward
    from tfmoe.models import FacetHead, NextItemTask, SequenceEncoder

    keras.utils.set_random_seed(0)
    backbone = SequenceEncoder(num_items=N_ITEMS, max_len=MAX_LEN, hidden_dim=16, num_heads=2, num_blocks=2,
                               feedforward=[None, HybridMoEFeedForward(hidden_dim=32, num_experts=2, k=1)])
    assert [block.ffn_type for block in backbone.transformer_blocks] == ["dense", "hybrid_moe"]
    task = NextItemTask(backbone, head=FacetHead(FacetBlock(num_heads=2, num_experts=2), mix="probs"))
    items = batch(np.random.default_rng(4))
    path = str(tmp_path / "task.keras")
    task.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.scoring_head).__name__ == "FacetHead" and loaded.scoring_head.mix == "probs"
    as_json = lambda config: json.loads(json.dumps(config))  # shapes: tuples saved as lists
    assert as_json(loaded.sequence_encoder.get_config()) == as_json(backbone.get_config())
    np.testing.assert_allclose(loaded.last_scores(items), task.last_scores(items), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="sequence_representation needs"):
        task.sequence_representation(items)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"feedforward": [None]}, "one layer or None per block"),
    ({"num_blocks": -1}, "num_blocks"),
    ({"hidden_dim": 10, "num_heads": 3}, "num_heads"),
])
def test_sequence_encoder_validates_its_arguments(kwargs, match):
    from tfmoe.models import SequenceEncoder

    with pytest.raises(ValueError, match=match):
        SequenceEncoder(**{"num_items": 10, "max_len": 4, "hidden_dim": 8, **kwargs})


def test_a_task_needs_a_sequence_encoder_and_a_scoring_head():
    from tfmoe.models import NextItemTask, SequenceEncoder

    with pytest.raises(ValueError, match="`backbone` must be a SequenceEncoder"):
        NextItemTask(keras.layers.Dense(4))
    with pytest.raises(ValueError, match="`head` must be None or a layer with query"):
        NextItemTask(SequenceEncoder(num_items=10, max_len=4, hidden_dim=8), head=keras.layers.Dense(4))


def test_models_store_each_argument_under_its_own_name():
    model = make("hymoerec", dropout=0.1, loss="sampled_softmax", num_negatives=8, seed=3)
    assert (model.dropout, model.num_negatives, model.seed, model.loss_kind) == (0.1, 8, 3, "sampled_softmax")
    assert model.sequence_encoder.dropout == 0.1 and model.encoder.dropout == 0.1
    assert all(block.dropout == 0.1 for block in model.transformer_blocks)
    config = model.get_config()
    assert all(getattr(model, key) == value for key, value in config.items()
               if key not in ("name", "trainable", "loss", "attention_initializer"))


@pytest.mark.parametrize("cls", [FAME, HyMoERec])
def test_signatures_list_the_sasrec_arguments_their_kwargs_take(cls):
    import inspect

    parameters = inspect.signature(cls.__init__).parameters
    assert parameters["hidden_dim"].default == 64 and parameters["dropout"].default == 0.2
    assert parameters["seed"].kind is inspect.Parameter.KEYWORD_ONLY and "kwargs" in parameters
    assert parameters["num_heads"].default == (2 if cls is FAME else 1)
