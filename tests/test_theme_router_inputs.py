"""Bad or unusual input to MoS's theme routing, each with its defined behaviour (both routers).

* a session longer than ``P``: its ``P`` most recent items are routed, the older ones are not;
* more sessions than ``M``: the ``M`` most recent sessions are routed, the older ones are not;
* an all-padding row: no session, no assignment, no contribution to any loss, finite logits;
* a single-session user: its one session goes to one theme; the other themes stay empty;
* out-of-order or equal timestamps: the data side refuses time going backwards (``gap_session_ids``);
  in the model (``session_mode="time_gap"``) a step back or no step never opens a session;
* a session feature the model needs but the batch lacks: a ``ValueError`` naming it.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmoe.data.sessions import gap_session_ids
from tfmoe.models import registry
from tfmoe.models.ctr import time_gap_session_ids

ROUTERS = ["softmax", "codebook"]
L, P, M = 12, 3, 3


def build(router, **extra):
    keras.utils.set_random_seed(0)
    options = {"embedding_dim": 8, "mlp_units": [8], "session_mode": "session_ids", "session_length": P,
               "num_sessions": M, "num_themes": 3, "sessions_per_theme": 2, "short_window": 4, "router": router}
    return registry.build_model("mos_din", num_items=40, max_len=L, **{**options, **extra})


def features(history, session_ids=None, timestamps=None):
    history = np.asarray(history, "int32")
    out = {"history": history, "target_item": np.full(len(history), 5, "int32")}
    if session_ids is not None:
        out["history_session_ids"] = np.asarray(session_ids, "int32")
    if timestamps is not None:
        out["history_timestamps"] = np.asarray(timestamps, "int64")
    return out


def expected_routing(model, grid_ids):
    """The router applied to a hand-built grid of item ids ``[B, M, P]`` (0 = empty slot)."""
    grid_ids = np.asarray(grid_ids, "int32")
    grid = model.embedding(grid_ids.reshape(len(grid_ids), -1)).numpy().reshape(*grid_ids.shape, -1)
    return model.router(grid * (grid_ids != 0)[..., None], grid_ids != 0)


@pytest.mark.parametrize("router", ROUTERS)
def test_long_sessions_keep_their_last_items_and_old_sessions_drop_out(router):
    model = build(router)
    # 4 sessions > M = 3 (the oldest, [1, 2], drops out); the session [3..7] has 5 items > P = 3 (3, 4 drop out)
    x = features([[0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], [[0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 3, 3]])
    sequence, mask, _ = model.encode(x)
    ids = model.grouper(tf.cast(x["history"], tf.float32)[..., None], model._session_ids(x, mask), mask=mask)[0]
    grid = [[[5, 6, 7], [0, 0, 8], [0, 9, 10]]]
    np.testing.assert_array_equal(ids.numpy()[..., 0], grid)
    got, expected = model.routing(x), expected_routing(model, grid)
    np.testing.assert_allclose(got["routing_probs"], expected["routing_probs"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got["session_indices"], expected["session_indices"])
    assert got["routing_probs"].shape == (1, M, 3) and (got["routing_probs"].numpy().sum(-1) > 0).all()


@pytest.mark.parametrize("router", ROUTERS)
def test_all_padding_rows_get_no_assignment_and_no_loss(router):
    model = build(router)
    real = features([[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]], [[0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3]])
    empty = features([[0] * L], [[0] * L])
    both = {k: np.concatenate([real[k], empty[k]]) for k in real}
    model(both)
    losses = [float(t) for t in model.losses]
    model(real)
    np.testing.assert_allclose([float(t) for t in model.losses], losses, rtol=1e-5)  # the empty row adds nothing
    assert np.isfinite(model(both, training=True).numpy()).all()
    routed = model.routing(both)
    np.testing.assert_array_equal(routed["routing_probs"].numpy()[1], 0.0)
    np.testing.assert_array_equal(routed["session_indices"].numpy()[1], -1)
    assert not routed["theme_mask"].numpy()[1].any()
    if router == "codebook":
        np.testing.assert_array_equal(routed["session_codes"].numpy()[1], -1)
    only_empty = model(empty, training=True)
    assert np.isfinite(only_empty.numpy()).all() and all(float(t) == 0.0 for t in model.losses)


@pytest.mark.parametrize("router", ROUTERS)
def test_a_single_session_user_feeds_one_theme(router):
    model = build(router)
    x = features([[0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]], [[0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4]])
    routed = model.routing(x)
    probs = routed["routing_probs"].numpy()[0]
    np.testing.assert_array_equal(probs[:2], 0.0)  # M - 1 empty session slots
    theme = int(probs[2].argmax())
    np.testing.assert_array_equal(routed["theme_mask"].numpy()[0], np.arange(3) == theme)
    np.testing.assert_array_equal(routed["session_indices"].numpy()[0, theme], [-1, 2])
    assert np.isfinite(model(x).numpy()).all()


def test_a_single_session_batch_restarts_only_one_code():
    model = build("codebook")
    x = features([[0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]], [[0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4]])
    model(x)
    initial = model.router.prototypes.numpy().copy()
    model(x, training=True)  # the first training batch initialises the codebook from its sessions: one here
    changed = np.abs(model.router.prototypes.numpy() - initial).max(-1) > 0
    assert changed.sum() == 1
    np.testing.assert_allclose(model.router.code_usage.numpy()[changed], 1 / 3)


def test_timestamps_going_backwards_are_refused_by_the_data_side():
    with pytest.raises(ValueError) as error:
        gap_session_ids([100, 200, 150, 4000], gap_seconds=1800)
    assert str(error.value) == "gap_session_ids: timestamps must be non-decreasing; position 2 has 150 after 200"
    np.testing.assert_array_equal(gap_session_ids([100, 100, 100, 2000, 2000], gap_seconds=1800), [0, 0, 0, 1, 1])


def test_time_gap_sessions_with_out_of_order_and_equal_timestamps():
    """In the model a backwards step or a zero gap never opens a session; the next gap counts from the last row."""
    t = np.array([[0, 0, 1000, 1000, 1000, 500, 5000, 4000, 9000, 9000, 20000, 19999]], "int64")
    mask = np.ones_like(t, bool)
    mask[0, :2] = False
    ids = time_gap_session_ids(t, mask, 1800).numpy()[0, 2:]
    np.testing.assert_array_equal(ids, [1, 1, 1, 1, 2, 2, 3, 3, 4, 4])
    for router in ROUTERS:
        model = build(router, session_mode="time_gap", session_gap=1800)
        x = features([[0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], timestamps=t)
        routed = model.routing(x)  # sessions [1, 2, 3, 4] [5, 6] [7, 8] [9, 10]: the M = 3 most recent are routed
        expected = expected_routing(model, [[[0, 5, 6], [0, 7, 8], [0, 9, 10]]])
        np.testing.assert_allclose(routed["routing_probs"], expected["routing_probs"], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(routed["session_indices"], expected["session_indices"])


@pytest.mark.parametrize(("mode", "missing"), [("session_ids", "history_session_ids"),
                                               ("time_gap", "history_timestamps")])
def test_a_missing_session_feature_is_named(mode, missing):
    model = build("codebook", session_mode=mode)
    x = features([[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]])
    message = f"MoSDIN: features have no {missing!r} (got keys ['history', 'target_item'])"
    with pytest.raises(ValueError, match=re.escape(message)):
        model(x)
    with pytest.raises(ValueError, match=re.escape(message)):
        model.routing(x)
    assert missing.removeprefix("history_") in model.input_sequence_features()  # the trainer requests it


def test_mos_passes_the_router_through_its_config():
    model = build("codebook", codebook_weight=0.5, commitment_weight=0.1)
    config = model.get_config()
    assert (config["router"], config["codebook_weight"], config["commitment_weight"]) == ("codebook", 0.5, 0.1)
    clone = type(model).from_config(config)
    assert clone.router.router == "codebook" and clone.router.commitment_weight == 0.1
    x = features([[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]], [[0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3]])
    model(x, training=True)
    assert len(model.losses) == 3  # load balance, codebook, commitment
    message = "MoSDIN: SessionThemeRouter: `router` must be one of 'softmax', 'codebook'; got 'kmeans'"
    with pytest.raises(ValueError, match=re.escape(message)):
        build("kmeans")
