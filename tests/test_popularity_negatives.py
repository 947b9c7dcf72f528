"""CTR rows with popularity negatives: a popularity-only scorer, which uniform negatives reward, falls to about
chance, so the task measures personalisation; negatives still exclude every touched item."""

import numpy as np
import pytest
import tensorflow as tf

from tfmoe.data import samples, schema

NUM_ITEMS, USERS, LENGTH = 300, 3000, 12


def zipf_logs(seed=0):
    """Each user's items and target: distinct items drawn from one Zipf(1) popularity, as in rating logs where a
    user meets an item once (MovieLens). The target is then a popular item the user had not touched yet."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, NUM_ITEMS + 1)
    draws = np.stack([rng.choice(np.arange(1, NUM_ITEMS + 1), size=LENGTH + 1, replace=False,
                                 p=weights / weights.sum()) for _ in range(USERS)])
    counts = np.bincount(draws.ravel(), minlength=NUM_ITEMS + 1)
    features = {schema.USER_ID: tf.range(USERS, dtype=tf.int64),
                schema.ITEMS: tf.RaggedTensor.from_tensor(tf.constant(draws[:, :-1], tf.int64)),
                schema.TARGET: tf.constant(draws[:, -1], tf.int64)}
    return features, counts


def auc(scores, labels):
    """Mann-Whitney AUC with ties counted half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).mean()
    return greater + 0.5 * (pos[:, None] == neg[None, :]).mean()


@pytest.mark.parametrize(("negatives", "low", "high"), [("uniform", 0.75, 1.0), ("popularity", 0.42, 0.58)])
def test_a_popularity_scorer_is_near_chance_only_against_popularity_negatives(negatives, low, high):
    features, counts = zipf_logs()
    sampling = samples.CTRSampling(num_negatives=1, negatives=negatives)
    rows, labels = samples.ctr_eval(features, 8, NUM_ITEMS, sampling, sequence_features=(), item_counts=counts)
    scores = counts[rows[samples.TARGET_ITEM].numpy()].astype(float)
    value = auc(scores, labels.numpy())
    assert low <= value <= high, f"{negatives} negatives: popularity AUC {value:.3f} outside [{low}, {high}]"


def test_popularity_negatives_exclude_the_touched_items():
    features, counts = zipf_logs(seed=1)
    sampling = samples.CTRSampling(num_negatives=3, negatives="popularity")
    rows, labels = samples.ctr_eval(features, 8, NUM_ITEMS, sampling, sequence_features=(), item_counts=counts)
    targets = rows[samples.TARGET_ITEM].numpy().reshape(USERS, 4)
    touched = np.concatenate([features[schema.ITEMS].to_tensor().numpy(), features[schema.TARGET].numpy()[:, None]],
                             axis=1)
    for user in range(USERS):
        assert not set(targets[user, 1:]) & set(touched[user]), f"user {user} got a touched negative"
    assert (counts[targets[:, 1:]] > 0).all()


def test_popularity_negatives_need_the_counts():
    features, _ = zipf_logs()
    with pytest.raises(ValueError, match=r"negatives='popularity'\) needs `item_counts`"):
        samples.ctr_eval(features, 8, NUM_ITEMS, samples.CTRSampling(negatives="popularity"), sequence_features=())
    with pytest.raises(ValueError, match="`negatives` must be one of"):
        samples.CTRSampling(negatives="hard")


def test_counts_of_another_catalogue_size_are_named():
    features, counts = zipf_logs()
    with pytest.raises(ValueError, match=r"item_counts: must have shape \[num_items \+ 1 = 301\], got \(300,\)"):
        samples.ctr_eval(features, 8, NUM_ITEMS, samples.CTRSampling(negatives="popularity"), sequence_features=(),
                         item_counts=counts[:-1])
