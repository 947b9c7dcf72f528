"""SessionGrouper and the session grid functions, checked exactly against a numpy reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmoe.layers import sessions
from tfmoe.layers.sessions import SessionGrouper
from tfmoe.testing import run_layer_test


def numpy_group(session_ids, mask, num_sessions, session_length, mode="session"):
    """Reference: lists of real positions per session, last M sessions / last P items, right-aligned."""
    batch, length = mask.shape
    positions = np.zeros((batch, num_sessions, session_length), np.int64)
    item_mask = np.zeros((batch, num_sessions, session_length), bool)
    for b in range(batch):
        real = [i for i in range(length) if mask[b, i]]
        groups = []
        if mode == "session":
            for i in real:
                if groups and session_ids[b, groups[-1][-1]] == session_ids[b, i]:
                    groups[-1].append(i)
                else:
                    groups.append([i])
        else:
            for end in range(len(real), 0, -session_length):
                groups.insert(0, real[max(0, end - session_length) : end])
        for slot, group in zip(range(num_sessions - 1, -1, -1), reversed(groups)):
            kept = group[-session_length:]
            positions[b, slot, session_length - len(kept) :] = kept
            item_mask[b, slot, session_length - len(kept) :] = True
    return positions, item_mask, item_mask.any(-1)


def _random_history(rng, batch, length, max_sessions, holes=False):
    session_ids = np.sort(rng.integers(0, max_sessions, size=(batch, length)), axis=1) + 100
    lengths = rng.integers(0, length + 1, size=batch)
    mask = np.arange(length)[None, :] >= (length - lengths)[:, None]  # left padding
    if holes:
        mask &= rng.random((batch, length)) > 0.3
    return session_ids, mask


@pytest.mark.parametrize(
    ("length", "num_sessions", "session_length", "holes"),
    [(12, 3, 2, False), (12, 5, 4, True), (4, 6, 3, False), (9, 1, 9, True)],
)
def test_session_mode_matches_numpy(length, num_sessions, session_length, holes):
    rng = np.random.default_rng(length + num_sessions)
    session_ids, mask = _random_history(rng, 16, length, max_sessions=6, holes=holes)
    got = sessions.session_positions(
        session_ids, mask, num_sessions=num_sessions, session_length=session_length
    )
    expected = numpy_group(session_ids, mask, num_sessions, session_length)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g.numpy(), e)


@pytest.mark.parametrize(("length", "num_sessions", "session_length"), [(12, 3, 4), (10, 4, 3), (5, 2, 2)])
def test_chunk_mode_matches_numpy(length, num_sessions, session_length):
    rng = np.random.default_rng(length)
    _, mask = _random_history(rng, 16, length, max_sessions=2, holes=True)
    got = sessions.chunk_positions(mask, num_sessions=num_sessions, session_length=session_length)
    expected = numpy_group(None, mask, num_sessions, session_length, mode="chunk")
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g.numpy(), e)


def test_hand_computed_example_and_jit():
    ids = np.array([[0, 0, 11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26, 27, 28]])
    session_ids = np.array([[0, 0, 5, 5, 5, 6, 7, 7], [1, 1, 1, 1, 2, 3, 3, 3]])
    grouper = SessionGrouper(num_sessions=3, session_length=2)
    fn = tf.function(lambda a, s, m: grouper(a, s, mask=m), jit_compile=True)
    grid, item_mask, session_mask = fn(tf.constant(ids), tf.constant(session_ids), tf.constant(ids != 0))
    np.testing.assert_array_equal(
        grid.numpy(), [[[12, 13], [0, 14], [15, 16]], [[23, 24], [0, 25], [27, 28]]]
    )
    np.testing.assert_array_equal(item_mask.numpy(), grid.numpy() != 0)
    np.testing.assert_array_equal(session_mask.numpy(), [[True, True, True], [True, True, True]])


def test_embeddings_grid_and_extra_features():
    rng = np.random.default_rng(1)
    session_ids, mask = _random_history(rng, 6, 10, max_sessions=4)
    values = rng.normal(size=(6, 10, 3)).astype("float32")
    categories = rng.integers(1, 50, size=(6, 10))
    grouper = SessionGrouper(num_sessions=3, session_length=3, return_positions=True)
    grid, item_mask, session_mask, positions = grouper(values, session_ids, mask)
    ref_pos, ref_items, ref_sessions = numpy_group(session_ids, mask, 3, 3)
    expected = np.where(ref_items[..., None], values[np.arange(6)[:, None, None], ref_pos], 0.0)
    np.testing.assert_array_equal(grid.numpy(), expected)
    np.testing.assert_array_equal(session_mask.numpy(), ref_sessions)
    cat_grid = sessions.gather_grid(categories, positions, item_mask).numpy()
    np.testing.assert_array_equal(
        cat_grid, np.where(ref_items, categories[np.arange(6)[:, None, None], ref_pos], 0)
    )


def test_chunk_mode_defaults_and_mask_propagation():
    ids = np.array([[0, 0, 0, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7]])
    embedding = keras.layers.Embedding(10, 2, mask_zero=True)
    grouper = SessionGrouper(num_sessions=None, session_length=3, mode="chunk")
    grid, item_mask, session_mask = grouper(embedding(ids))  # mask comes from the embedding
    expected_ids = np.array([[[0, 0, 0], [0, 0, 4], [5, 6, 7]], [[0, 0, 1], [2, 3, 4], [5, 6, 7]]])
    assert grid.shape == (2, 3, 3, 2)  # ceil(7 / 3) chunks
    np.testing.assert_array_equal(item_mask.numpy(), expected_ids != 0)
    np.testing.assert_array_equal(session_mask.numpy(), [[False, True, True], [True, True, True]])
    ids_grid = SessionGrouper(None, 3, mode="chunk")(ids, mask=ids != 0)[0].numpy()
    np.testing.assert_array_equal(ids_grid, expected_ids)


def test_contract_session_mode(tmp_path):
    rng = np.random.default_rng(2)
    session_ids, mask = _random_history(rng, 4, 8, max_sessions=4, holes=True)
    values = rng.normal(size=(4, 8, 3)).astype("float32")
    run_layer_test(
        lambda: SessionGrouper(3, 2, return_positions=True), (values, session_ids, mask), tmp_path
    )


def test_contract_chunk_mode(tmp_path):
    values = np.random.default_rng(3).normal(size=(4, 8, 3)).astype("float32")
    run_layer_test(lambda: SessionGrouper(None, 3, mode="chunk"), (values,), tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"num_sessions": None, "session_length": 2},
            r"SessionGrouper: `num_sessions` is required in mode='session'",
        ),
        (
            {"num_sessions": 0, "session_length": 2},
            r"SessionGrouper: `num_sessions` must be an integer >= 1, got 0",
        ),
        ({"num_sessions": 2, "session_length": -1}, r"`session_length` must be an integer >= 1, got -1"),
        (
            {"num_sessions": 2, "session_length": 2, "mode": "time"},
            r"`mode` must be one of 'session', 'chunk'; got 'time'",
        ),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SessionGrouper(**kwargs)


def test_session_mode_needs_session_ids():
    with pytest.raises(ValueError, match=r"SessionGrouper: mode='session' needs `session_ids`, got None"):
        SessionGrouper(2, 2)(np.zeros((1, 4, 2), "float32"))
