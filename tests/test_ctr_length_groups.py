"""CTR models in length groups (``length_groups=G``): the single-backbone models score, and train with the loss and
gradients, as on the padded batch; so does MoS, whose groups read session grids cut to their widths while its router
assigns the whole batch's sessions at once (losses, statistics, restarts), and so do the token-routed baselines,
routing each group at its width with one load-balance loss over the batch; under XLA they score the batch as it
is; an interest layer without groups is refused; the option is validated and round-trips."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmoe.models import registry
from tfmoe.models.length_groups import call_in_length_groups

L, N_ITEMS = 12, 30
LENGTHS = [0, 1, 4, 7, 11, 12, 3, 5]  # an empty row, a full one, and widths in between
MODELS = [("din", {}), ("twin", {"backbone_options": {"top_k": 5}}), ("transact", {})]
MOS = {"session_length": 3, "num_themes": 2, "short_window": 4}
MOS_MODELS = [("mos_din", {**MOS, "router": "softmax"}), ("mos_din", {**MOS, "session_mode": "session_ids"}),
              ("mos_din", {**MOS, "global_expert": "sessions"}),
              ("mos_twin", {**MOS, "backbone_options": {"top_k": 5}}), ("mos_transact", MOS)]
MOS_IDS = ["mos_din-softmax", "mos_din-codebook-session_ids", "mos_din-sessions", "mos_twin", "mos_transact"]
TOKEN_ROUTED = {"num_experts": 3}
BALANCED = {**TOKEN_ROUTED, "load_balance_weight": 0.5}
BASELINES = [("gshard_din", BALANCED, 2), ("gshard_din", BALANCED, 8), ("gshard_din", {**TOKEN_ROUTED, "k": 1}, 3),
             ("expert_choice_din", TOKEN_ROUTED, 3),
             ("gshard_twin", {**TOKEN_ROUTED, "backbone_options": {"top_k": 2}}, 3),
             ("expert_choice_transact", {**TOKEN_ROUTED, "capacity_factor": 1.0}, 3)]
BASELINE_IDS = ["gshard_din-2", "gshard_din-8", "gshard_din-k1-3", "expert_choice_din-3", "gshard_twin-3",
                "expert_choice_transact-3"]


def features(lengths=LENGTHS, seed=0):
    rng = np.random.default_rng(seed)
    history = np.zeros((len(lengths), L), np.int64)
    sessions = np.full((len(lengths), L), -1, np.int64)
    for row, n in enumerate(lengths):
        history[row, L - n:] = rng.integers(1, N_ITEMS + 1, n)
        sessions[row, L - n:] = np.sort(rng.integers(0, 3, n))
    return {"history": history, "history_session_ids": sessions, "history_length": np.array(lengths, np.int64),
            "target_item": rng.integers(1, N_ITEMS + 1, len(lengths))}


def pair(name, options, groups):
    """``(padded, grouped)``: the same model, weights and random states (MoS's dead-code restarts draw sessions)
    without and with ``groups`` length groups."""
    keras.utils.set_random_seed(1)
    padded = registry.build_model(name, num_items=N_ITEMS, max_len=L, embedding_dim=8, **options)
    grouped = registry.build_model(name, num_items=N_ITEMS, max_len=L, embedding_dim=8, length_groups=groups,
                                   **options)
    for mine, theirs in zip(grouped.variables, padded.variables, strict=True):
        mine.assign(theirs)
    return padded, grouped


def loss_and_gradients(model, x, y, graph=False):
    """The training loss and gradients, eagerly or (``graph``) in a ``tf.function``, as ``fit`` runs them (the
    groups' widths are then dynamic)."""
    def run():
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, y, model(x, training=True))
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]

    loss, gradients = tf.function(run)() if graph else run()
    return float(loss), [g.numpy() for g in gradients]


def assert_scores_as_padded(padded, grouped, x):
    """The grouped model's probabilities are the padded model's, eagerly and in a ``tf.function``."""
    np.testing.assert_allclose(grouped.probabilities(x).numpy(), padded.probabilities(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(tf.function(grouped.probabilities)(x).numpy(), padded.probabilities(x).numpy(),
                               atol=1e-6)


def assert_trains_as_padded(padded, grouped, x, y, graph=False):
    """One training step of each has the same loss (the BCE and the auxiliary losses) and gradients; eagerly, the
    same auxiliary losses one by one."""
    loss, gradients = loss_and_gradients(padded, x, y, graph=graph)
    grouped_loss, grouped_gradients = loss_and_gradients(grouped, x, y, graph=graph)
    assert grouped_loss == pytest.approx(loss, rel=1e-6)
    if not graph:
        assert len(grouped.losses) == len(padded.losses)
        for got, expected in zip(grouped.losses, padded.losses):
            assert float(got) == pytest.approx(float(expected), rel=1e-6, abs=1e-9)
    for expected, got in zip(gradients, grouped_gradients):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("groups", [2, 3, 8])
@pytest.mark.parametrize("name, options", MODELS, ids=[m for m, _ in MODELS])
def test_inference_in_length_groups_scores_as_the_padded_batch(name, options, groups):
    padded, grouped = pair(name, options, groups)
    x = features()
    np.testing.assert_allclose(grouped.probabilities(x).numpy(), padded.probabilities(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(grouped.predict(x, batch_size=5, verbose=0), padded.predict(x, batch_size=5, verbose=0),
                               atol=1e-6)


@pytest.mark.parametrize("name, options", MODELS, ids=[m for m, _ in MODELS])
def test_training_in_groups_has_the_padded_loss_and_gradients(name, options):
    padded, grouped = pair(name, options, 3)
    assert_trains_as_padded(padded, grouped, features(), tf.constant([1, 0, 1, 1, 0, 1, 0, 0], tf.float32))


@pytest.mark.parametrize("groups", [2, 8])
@pytest.mark.parametrize("name, options", MOS_MODELS, ids=MOS_IDS)
def test_mos_in_length_groups_scores_trains_and_regularises_as_the_padded_batch(name, options, groups):
    padded, grouped = pair(name, options, groups)
    x, y = features(), tf.constant([1, 0, 1, 1, 0, 1, 0, 0], tf.float32)
    assert_scores_as_padded(padded, grouped, x)
    assert_trains_as_padded(padded, grouped, x, y)  # the BCE and the router's batch-level losses
    assert len(grouped.losses) > 0
    # a second training step, in a tf.function, from the states (codebook, code usage, restart seeds) the first left
    assert_trains_as_padded(padded, grouped, x, y, graph=True)
    for mine, theirs in zip(grouped.non_trainable_variables, padded.non_trainable_variables, strict=True):
        np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=1e-5, atol=1e-6, err_msg=mine.path)


def test_mos_cuts_each_groups_grid_and_experts_to_its_width_and_routes_the_whole_batch_at_once():
    _, grouped = pair("mos_din", MOS, 3)
    mos = grouped.interest
    widths = {"global": [], "short": [], "themes": [], "grid": [], "assigned": []}
    for key, layer in (("global", mos.global_backbone), ("short", mos.short_backbone),
                       ("themes", mos.theme_experts.backbones[0])):
        call = layer.call
        layer.call = lambda sequence, *a, _call=call, _key=key, **k: (widths[_key].append(sequence.shape[1]),
                                                                      _call(sequence, *a, **k))[1]
    group, assign = mos.grouper.call, mos.theme_router.assign

    def grid(*args, **kwargs):
        out = group(*args, **kwargs)
        widths["grid"].append(out[0].shape[1])
        return out

    def assign_batch(z, valid, **kwargs):
        widths["assigned"].append(tuple(z.shape[:2]))
        return assign(z, valid, **kwargs)

    mos.grouper.call, mos.theme_router.assign = grid, assign_batch
    x = features()
    grouped.probabilities(x)
    row_widths = sorted(int(n) for n in x["history_length"])
    assert len(widths["global"]) == 3 and max(widths["global"]) == row_widths[-1] == L
    assert min(widths["global"]) < L and sum(widths["global"]) < 3 * L  # cut groups, not the padded batch
    # each group's grid: the ceil(w / P) chunks of its width (at most M = 12 / 3 = 4), not the padded batch's 4
    p, m = MOS["session_length"], 4
    assert widths["grid"] == [min(m, -(-w // p)) for w in widths["global"]] and min(widths["grid"]) < m
    assert widths["assigned"] == [(len(row_widths), m)]  # one assignment of the whole batch's sessions
    window = MOS["short_window"]
    assert len(widths["short"]) == 3 and max(widths["short"]) == window and min(widths["short"]) < window
    # one theme of ceil(12 / 3) / 2 = 2 sessions of 3 slots, cut to its widest row; the empty row's is one slot wide
    assert len(widths["themes"]) == 3 and max(widths["themes"]) <= 6 and min(widths["themes"]) == 1
    padded_flops, flops_at_3 = grouped.analytic_flops(), grouped.analytic_flops(3)
    assert grouped.analytic_flops(L) == padded_flops
    for part in ("inputs", "router", "global_expert", "short_expert", "theme_experts"):
        assert flops_at_3[part] < padded_flops[part], part
    assert flops_at_3["theme_experts"] == mos.theme_experts.flops(3, 8, 1)  # one session of 3 slots
    assert grouped.get_config()["length_groups"] == 3
    assert type(grouped).from_config(grouped.get_config()).length_groups == 3


@pytest.mark.parametrize("name, options, groups", BASELINES, ids=BASELINE_IDS)
def test_token_routed_baselines_in_length_groups_score_and_train_as_the_padded_batch(name, options, groups):
    padded, grouped = pair(name, options, groups)
    x, y = features(), tf.constant([1, 0, 1, 1, 0, 1, 0, 0], tf.float32)
    assert_scores_as_padded(padded, grouped, x)
    assert_trains_as_padded(padded, grouped, x, y)  # the BCE and GShard's load-balance loss
    assert len(grouped.losses) == int(name.startswith("gshard"))  # one load-balance loss, not one per group
    assert_trains_as_padded(padded, grouped, x, y, graph=True)  # the groups' widths and buffers dynamic


def test_token_routed_groups_route_at_their_widths():
    _, grouped = pair("gshard_din", BALANCED, 3)
    moe, seen = grouped.interest, {"routed": [], "experts": []}
    route, expert = moe.route, moe.experts.backbones[0].call

    def route_group(sequence, mask, training=None):
        out = route(sequence, mask, training)
        seen["routed"].append((sequence.shape[1], out[0].shape[-1]))
        return out

    moe.route = route_group
    moe.experts.backbones[0].call = lambda sequence, *a, **k: (seen["experts"].append(sequence.shape[1]),
                                                                expert(sequence, *a, **k))[1]
    grouped.probabilities(features())
    widths = [w for w, _ in seen["routed"]]
    assert len(widths) == 3 and max(widths) == L and min(widths) < L
    # each group's buffer: C = min(w, ceil(1.25 * 2 * w / 3)); the padded batch's at the widest group only
    assert [c for _, c in seen["routed"]] == [min(w, -(-5 * w // 6)) for w in widths]
    assert len(seen["experts"]) == 3 and min(seen["experts"]) < moe.capacity
    padded_flops, flops_at_3 = grouped.analytic_flops(), grouped.analytic_flops(3)
    assert grouped.analytic_flops(L) == padded_flops
    for part in ("inputs", "router", "experts"):
        assert flops_at_3[part] < padded_flops[part], part
    assert flops_at_3["experts"] == moe.experts.flops(3, 8) + 2 * 3 * 3 * 8  # C = min(3, ceil(2.5)) = 3 at w = 3


def test_an_interest_layer_without_groups_is_refused():
    from tfmoe.models.ctr.base import CTRModel
    from tfmoe.models.ctr.interest import SingleBackboneInterest

    class CoupledRows(SingleBackboneInterest):
        supports_length_groups = False

    with pytest.raises(ValueError, match=r"`length_groups` \(2\) needs an interest layer") as error:
        CTRModel(num_items=N_ITEMS, max_len=L, interest=CoupledRows(max_len=L), length_groups=2)
    assert "CoupledRows" in str(error.value) and "use length_groups=1" in str(error.value)


def test_xla_scores_the_batch_as_it_is():
    padded, grouped = pair("din", {}, 4)
    x = {k: tf.constant(v) for k, v in features().items()}
    compiled = tf.function(lambda f: grouped.probabilities(f), jit_compile=True)
    np.testing.assert_allclose(compiled(x).numpy(), padded.probabilities(x).numpy(), atol=1e-6)


def test_compile_refuses_xla_and_auto_compiles_without_it():
    _, grouped = pair("din", {}, 2)
    with pytest.raises(ValueError, match=r"jit_compile=True cannot compile length_groups=2"):
        grouped.compile(optimizer="adam", jit_compile=True)
    grouped.compile(optimizer="adam")
    assert grouped.jit_compile is False


def test_fit_trains_in_groups():
    _, grouped = pair("din", {}, 3)
    grouped.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = features(LENGTHS * 4)
    y = np.tile([1, 0, 1, 1, 0, 1, 0, 0], 4).astype(np.float32)
    history = grouped.fit(x, y, batch_size=16, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]


def test_the_option_is_validated_and_round_trips():
    model = registry.build_model("twin", num_items=N_ITEMS, max_len=L, embedding_dim=8, length_groups=4)
    assert model.length_groups == 4 and model.get_config()["length_groups"] == 4
    restored = type(model).from_config(model.get_config())
    assert restored.length_groups == 4
    assert registry.build_model("din", num_items=N_ITEMS, max_len=L).length_groups == 1
    with pytest.raises(ValueError, match="length_groups") as error:
        registry.build_model("din", num_items=N_ITEMS, max_len=L, length_groups=0)
    assert "DIN" in str(error.value) and "0" in str(error.value)


def test_history_features_are_cut_and_the_others_follow_their_rows():
    seen = []

    def call(rows):
        seen.append({k: v.numpy() for k, v in rows.items()})
        return tf.cast(rows["target_item"], tf.float32)

    x = features([2, 9, 0, 5])
    out = call_in_length_groups(call, x, 2, x["history"] != 0)
    np.testing.assert_array_equal(out.numpy(), x["target_item"].astype(np.float32))  # back in row order
    assert sum(len(part["target_item"]) for part in seen) == 4
    for part in seen:
        width = part["history"].shape[1]
        assert part["history_session_ids"].shape[1] == width and part["history_length"].max() <= width
        assert part["history_length"].ndim == 1
        row = {int(t): i for i, t in enumerate(x["target_item"])}
        for k, target in enumerate(part["target_item"]):
            np.testing.assert_array_equal(part["history"][k], x["history"][row[int(target)], L - width:])
