"""Length groups (tfmoe.models.length_groups): the grouped encoding equals the encoding of the padded batch."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmoe.models import FAME, HyMoERec, SASRec
from tfmoe.models.length_groups import cheapest_group_starts, encode_in_length_groups, row_widths

N_ITEMS, MAX_LEN = 40, 11


def left_padded(rows: int, seed: int, length: int = MAX_LEN) -> np.ndarray:
    """Histories of every length 0..L (some rows empty), left-padded."""
    rng = np.random.default_rng(seed)
    items = np.zeros((rows, length), "int32")
    for row in range(rows):
        n = rng.integers(0, length + 1)
        items[row, length - n:] = rng.integers(1, N_ITEMS + 1, n)
    return items


def row_wise_encoding(rows):
    """A row-wise encoder whose output at a position depends on the position's distance from the row's end and on
    the row's items: a cut-off padding column would change it."""
    rows = tf.convert_to_tensor(rows)
    width = tf.shape(rows)[1]
    from_end = tf.cast(width - 1 - tf.range(width), tf.float32)
    x = tf.cast(rows, tf.float32)
    h = tf.stack([x, tf.cumsum(x, axis=1), x * 0 + from_end[None]], axis=-1)
    mask = tf.not_equal(rows, 0)
    return h * tf.cast(mask, tf.float32)[..., None], mask


def test_row_widths_count_from_the_first_real_item():
    items = np.array([[0, 0, 0, 0], [0, 3, 0, 4], [1, 2, 3, 4], [0, 0, 0, 9]])
    assert row_widths(items).numpy().tolist() == [0, 3, 4, 1]  # an inner zero does not shorten a row


def split_work(widths, starts, position_cost):
    return sum((b - a) * max(widths[b - 1], 1) * (max(widths[b - 1], 1) + position_cost)
               for a, b in zip(starts, starts[1:]) if b > a)


@pytest.mark.parametrize("groups,position_cost", [(1, 0.0), (2, 0.0), (3, 10.0), (4, 150.0), (6, 3.0)])
def test_the_split_is_the_least_work_of_every_split(groups, position_cost):
    rng = np.random.default_rng(groups)
    for _ in range(5):
        widths = np.sort(rng.integers(0, 60, 9))
        starts = cheapest_group_starts(widths, groups, position_cost).numpy().tolist()
        assert starts[0] == 0 and starts[-1] == 9 and starts == sorted(starts) and len(starts) == groups + 1
        brute = min(split_work(widths, [0, *cut, 9], position_cost)
                    for cut in itertools.combinations_with_replacement(range(10), groups - 1))
        assert split_work(widths, starts, position_cost) == pytest.approx(brute)


def test_more_groups_than_rows_leave_groups_empty():
    assert cheapest_group_starts([3, 5], 4).numpy().tolist()[-1] == 2
    assert split_work([3, 5], cheapest_group_starts([3, 5], 4).numpy().tolist(), 0.0) == 9 + 25


@pytest.mark.parametrize("groups", [1, 2, 3, 8, 20])
@pytest.mark.parametrize("last_only", [False, True])
def test_the_grouped_encoding_equals_the_whole_batch_encoding(groups, last_only):
    items = left_padded(13, seed=groups)
    expected, expected_mask = row_wise_encoding(items)
    if last_only:
        expected, expected_mask = expected[:, -1:], expected_mask[:, -1:]
        encode = lambda rows: tuple(t[:, -1:] for t in row_wise_encoding(rows))
    else:
        encode = row_wise_encoding
    h, mask = encode_in_length_groups(encode, items, groups, last_only=last_only)
    np.testing.assert_array_equal(h.numpy(), expected.numpy())
    np.testing.assert_array_equal(mask.numpy(), expected_mask.numpy())
    assert h.shape.as_list() == list(expected.shape)


def test_each_group_is_cut_to_its_widest_row():
    seen = []

    def encode(rows):
        seen.append(tuple(rows.shape.as_list()))
        return row_wise_encoding(rows)

    items = np.zeros((4, 6), "int32")
    for row, width in enumerate([6, 1, 4, 2]):
        items[row, 6 - width:] = 5
    encode_in_length_groups(encode, items, groups=2)
    assert seen == [(2, 2), (2, 6)]  # widths sorted 1, 2 | 4, 6


def pair(cls, groups, **options):
    """The same model with and without length groups, the same weights."""
    plain = cls(num_items=N_ITEMS, max_len=MAX_LEN, hidden_dim=8, seed=3, **options)
    grouped = cls.from_config({**plain.get_config(), "length_groups": groups})
    grouped.set_weights(plain.get_weights())
    return plain, grouped


MODELS = [
    (SASRec, {"num_blocks": 2, "positions": "recency", "norm": "pre"}),
    (SASRec, {"num_blocks": 2, "positions": "absolute", "norm": "sasrec", "loss": "bce"}),
    (FAME, {"num_blocks": 2, "num_heads": 2, "num_experts": 2}),
]


@pytest.mark.parametrize("cls,options", MODELS)
def test_models_with_length_groups_score_and_train_as_without(cls, options):
    items = left_padded(10, seed=1)
    labels = np.concatenate([items[:, 1:], np.full((10, 1), 7, "int32")], axis=1) * (items != 0)
    plain, grouped = pair(cls, 3, dropout=0.0, **options)
    np.testing.assert_allclose(grouped.last_scores({"history": items}), plain.last_scores({"history": items}),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grouped.sequence_representation({"history": items}),
                               plain.sequence_representation({"history": items}), rtol=1e-5, atol=1e-5)
    losses = []
    for model in (plain, grouped):
        keras.utils.set_random_seed(0)  # the same BCE negatives
        losses.append(float(model.compute_loss({"history": items}, labels, training=True)))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.parametrize("cls,options", MODELS[:2])
def test_the_gradient_with_length_groups_is_the_padded_batch_gradient(cls, options):
    items = left_padded(10, seed=2)
    labels = np.concatenate([items[:, 1:], np.full((10, 1), 7, "int32")], axis=1) * (items != 0)
    gradients = []
    for model in pair(cls, 4, dropout=0.0, **options):
        keras.utils.set_random_seed(0)
        with tf.GradientTape() as tape:
            loss = model.compute_loss({"history": items}, labels, training=True)
        gradients.append([tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_variables)])
    for plain, grouped in zip(*gradients):
        np.testing.assert_allclose(grouped, plain, rtol=1e-4, atol=1e-6)


def test_fit_trains_with_length_groups_and_jit_compile_is_refused():
    items = left_padded(32, seed=4)
    labels = np.concatenate([items[:, 1:], np.full((32, 1), 7, "int32")], axis=1) * (items != 0)
    model = SASRec(num_items=N_ITEMS, max_len=MAX_LEN, hidden_dim=8, length_groups=4, seed=0)
    model.compile(optimizer="adam")
    assert model.jit_compile is False  # "auto": the dynamic widths cannot compile
    before = model.evaluate({"history": items}, labels, verbose=0)
    model.fit({"history": items}, labels, batch_size=8, epochs=3, verbose=0)
    assert model.evaluate({"history": items}, labels, verbose=0) < before
    with pytest.raises(ValueError, match=r"jit_compile=True cannot compile length_groups=4"):
        model.compile(optimizer="adam", jit_compile=True)


def test_code_compiled_by_xla_encodes_the_batch_as_it_is():
    """A serving signature exported with jit_compile: under XLA the encoder encodes the batch as it is."""
    items = left_padded(6, seed=5)
    plain, grouped = pair(SASRec, 3)
    scores = tf.function(lambda x: grouped.last_scores({"history": x}), jit_compile=True)(items)
    np.testing.assert_allclose(scores, plain.last_scores({"history": items}), rtol=1e-5, atol=1e-5)


def test_length_groups_are_validated_and_saved():
    with pytest.raises(ValueError, match=r"SASRec: .*`length_groups` must be an integer >= 1, got 0"):
        SASRec(num_items=N_ITEMS, max_len=MAX_LEN, length_groups=0)
    with pytest.raises(ValueError, match=r"HyMoERec: .*`length_groups` \(2\) needs the default FFN"):
        HyMoERec(num_items=N_ITEMS, max_len=MAX_LEN, hidden_dim=8, length_groups=2)
    model = SASRec(num_items=N_ITEMS, max_len=MAX_LEN, hidden_dim=8, length_groups=3)
    assert model.length_groups == 3 and model.get_config()["length_groups"] == 3
    assert SASRec.from_config(model.get_config()).sequence_encoder.length_groups == 3
