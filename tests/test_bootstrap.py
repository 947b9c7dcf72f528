"""tfmoe.metrics.bootstrap: weighted AUC, per-user AUC and the paired user bootstrap against plain references."""

import itertools

import numpy as np
import pytest

from tfmoe.metrics import bootstrap


def pairwise_auc(labels, scores):
    """Every (positive, negative) pair counted by hand: 1 when the positive scores higher, 1/2 on a tie."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return float("nan")
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))


def expanded(users, labels, scores, counts):
    """The rows of a replicate written out: user ``u`` drawn ``c`` times appears as ``c`` separate copies."""
    ids = np.unique(users)
    rows = []
    for index, user in enumerate(ids):
        for copy in range(counts[index]):
            rows += [((user, copy), y, s) for u, y, s in zip(users, labels, scores) if u == user]
    return rows


def reference_metrics(users, labels, scores, counts):
    rows = expanded(users, labels, scores, counts)
    auc = pairwise_auc([y for _, y, _ in rows], [s for _, _, s in rows])
    num, den = 0.0, 0.0
    for group in dict.fromkeys(g for g, _, _ in rows):
        y = [r[1] for r in rows if r[0] == group]
        s = [r[2] for r in rows if r[0] == group]
        if 0 < sum(y) < len(y):
            num += len(y) * pairwise_auc(y, s)
            den += len(y)
    return auc, num / den


def _data(seed=0, users=7, per_user=6):
    rng = np.random.default_rng(seed)
    u = np.repeat(np.arange(users) * 10 + 3, per_user)
    y = rng.integers(0, 2, u.size)
    y[::per_user] = 1
    y[1::per_user] = 0
    scores = np.round(rng.random(u.size) + 0.3 * y, 1)  # rounded: ties occur
    return u, y, scores


def test_weighted_auc_matches_the_pairwise_count_with_ties_and_weights():
    u, y, s = _data()
    assert bootstrap.weighted_auc(y, s, np.ones(y.size)) == pytest.approx(pairwise_auc(y, s))
    counts = np.array([[2, 0, 1, 3, 0, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    got = bootstrap.weighted_auc(y, s, counts[:, np.unique(u, return_inverse=True)[1]])
    for k in range(2):
        assert got[k] == pytest.approx(reference_metrics(u, y, s, counts[k])[0])
    assert np.isnan(bootstrap.weighted_auc(np.ones(3), np.arange(3.0), np.ones(3)))


def test_per_user_auc_and_gauc_match_the_reference():
    u, y, s = _data(seed=1)
    ids, index = np.unique(u, return_inverse=True)
    y[u == ids[2]] = 1  # a user with one label only: left out of GAUC
    auc, impressions = bootstrap.per_user_auc(index, y, s, ids.size)
    for k, user in enumerate(ids):
        assert np.isnan(auc[k]) if k == 2 else auc[k] == pytest.approx(pairwise_auc(y[u == user], s[u == user]))
    assert impressions.tolist() == [6] * ids.size
    counts = np.array([[0, 2, 1, 1, 0, 2, 1]])
    assert bootstrap.weighted_gauc(auc, impressions, counts)[0] == pytest.approx(reference_metrics(u, y, s,
                                                                                                    counts[0])[1])


def test_paired_bootstrap_replicates_match_explicit_resampling():
    u, y, _ = _data(seed=2, users=5, per_user=4)
    rng = np.random.default_rng(3)
    a = [np.round(rng.random(y.size) + 0.5 * y, 2) for _ in range(3)]
    b = [np.round(rng.random(y.size) + 0.2 * y, 2) for _ in range(2)]
    out = bootstrap.paired_bootstrap(u, y, a, b, num_samples=40, seed=5, chunk=7)
    draws = bootstrap.user_counts(5, 40, 5)
    auc_diffs, gauc_diffs = [], []
    for counts in draws:
        ra = [reference_metrics(u, y, s, counts) for s in a]
        rb = [reference_metrics(u, y, s, counts) for s in b]
        auc_diffs.append(np.mean([m[0] for m in ra]) - np.mean([m[0] for m in rb]))
        gauc_diffs.append(np.mean([m[1] for m in ra]) - np.mean([m[1] for m in rb]))
    assert out["auc_ci95"] == pytest.approx(np.nanquantile(auc_diffs, [0.025, 0.975]).tolist())
    assert out["gauc_ci95"] == pytest.approx(np.nanquantile(gauc_diffs, [0.025, 0.975]).tolist())
    ones = np.ones(5, int)
    point_a = [reference_metrics(u, y, s, ones) for s in a]
    point_b = [reference_metrics(u, y, s, ones) for s in b]
    assert out["auc_diff"] == pytest.approx(np.mean([m[0] for m in point_a]) - np.mean([m[0] for m in point_b]))
    assert out["gauc_diff"] == pytest.approx(np.mean([m[1] for m in point_a]) - np.mean([m[1] for m in point_b]))
    assert out["users"] == 5 and out["impressions"] == 20 and out["num_samples"] == 40


def test_hand_computed_case_and_identical_models():
    users, labels = np.array([1, 1, 2, 2]), np.array([1, 0, 1, 0])
    same = [np.array([0.9, 0.1, 0.4, 0.6])]
    out = bootstrap.paired_bootstrap(users, labels, same, same, num_samples=50)
    assert out["auc_diff"] == 0.0 and out["auc_ci95"] == [0.0, 0.0] and out["gauc_ci95"] == [0.0, 0.0]
    assert out["auc_a"] == pytest.approx(0.75) and out["gauc_a"] == pytest.approx(0.5)  # pairs 1, 1, 1, 0


def test_bad_input_is_named():
    users, labels = np.array([1, 1]), np.array([1, 0])
    with pytest.raises(ValueError, match=r"`scores_b\[0\]` has shape \(3,\)"):
        bootstrap.paired_bootstrap(users, labels, [np.zeros(2)], [np.zeros(3)])
    with pytest.raises(ValueError, match="`scores_a` must be a non-empty list"):
        bootstrap.paired_bootstrap(users, labels, np.zeros(2), [np.zeros(2)])
    with pytest.raises(ValueError, match="`labels` must be 0 or 1"):
        bootstrap.paired_bootstrap(users, np.array([2, 0]), [np.zeros(2)], [np.zeros(2)])
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap.paired_bootstrap(users, labels, [np.array([np.nan, 0])], [np.zeros(2)])
    with pytest.raises(ValueError, match="num_samples"):
        bootstrap.paired_bootstrap(users, labels, [np.zeros(2)], [np.zeros(2)], num_samples=0)
