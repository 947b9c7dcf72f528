r"""Paired bootstrap over users of the AUC and GAUC difference between two models, averaged over seeds.

Both models (``a``, ``b``) are scored on the same impressions (rows): user ids ``u_i``, labels ``y_i`` and, per seed
``k``, scores ``s^a_{k,i}`` and ``s^b_{k,i}``. A bootstrap replicate draws ``U`` users with replacement from the
``U`` users of the test set; user ``u`` drawn ``c_u`` times contributes its rows ``c_u`` times, that is with
weight ``w_i = c_{u_i}``. Per replicate and seed:

* ``AUC = sum_{i pos, j neg} w_i w_j ([s_i > s_j] + 1/2 [s_i = s_j]) / (sum_pos w * sum_neg w)``;
* ``GAUC = sum_u c_u n_u AUC_u / sum_u c_u n_u`` over the users with both labels (``n_u`` their impressions;
  a user's own AUC does not change when the user is drawn again);

then ``diff = mean_k metric(a, k) - mean_k metric(b, k)``. The point estimate is the difference on the data as it
is (every ``c_u = 1``); the interval holds the central ``confidence`` share of the replicates' differences
(percentile bootstrap). The same draws serve both models and every seed: the comparison is paired.

Example:
    >>> import numpy as np
    >>> users = np.array([1, 1, 2, 2, 3, 3])
    >>> labels = np.array([1, 0, 1, 0, 1, 0])
    >>> a = [np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])]   # every pair right
    >>> b = [np.array([0.9, 0.1, 0.2, 0.8, 0.7, 0.3])]   # user 2's pair wrong
    >>> out = paired_bootstrap(users, labels, a, b, num_samples=200, seed=0)
    >>> round(out["gauc_diff"], 4), round(out["auc_diff"], 4)   # GAUC 1 - 2/3; AUC 1 - 6/9
    (0.3333, 0.3333)
    >>> out["gauc_ci95"][0] >= 0.0
    True
"""

from __future__ import annotations

import numpy as np

from tfmoe.utils import validation as v

_OWNER = "paired_bootstrap"


def _tie_blocks(scores: np.ndarray):
    """``(order, starts)``: the rows sorted by score and the first index of each block of equal scores."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1]]))
    return order, starts


def weighted_auc(labels, scores, weights) -> np.ndarray:
    """AUC of ``labels`` ``[N]`` and ``scores`` ``[N]`` under each row of ``weights`` ``[R, N]`` (``[N]``: one):
    ``[R]`` float64 (NaN where a class has zero weight). Ties count one half."""
    labels = np.asarray(labels, np.float64)
    weights = np.asarray(weights, np.float64)
    single = weights.ndim == 1
    weights = np.atleast_2d(weights)
    order, starts = _tie_blocks(np.asarray(scores, np.float64))
    y, w = labels[order], weights[:, order]
    pos = np.add.reduceat(w * y, starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - y), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight of strictly lower scores
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
    out[(total_pos == 0) | (total_neg == 0)] = np.nan
    return out[0] if single else out


def per_user_auc(user_index, labels, scores, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """``(auc [U], impressions [U])`` of users ``0..U-1`` (``user_index`` [N] in that range); AUC is NaN for a user
    without both labels."""
    user_index = np.asarray(user_index)
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    order = np.lexsort((scores, user_index))  # by user, then score
    u, y, s = user_index[order], labels[order], scores[order]
    starts = np.flatnonzero(np.concatenate([[True], (u[1:] != u[:-1]) | (s[1:] != s[:-1])]))
    block_user = u[starts]
    pos = np.add.reduceat(y, starts)
    neg = np.add.reduceat(1.0 - y, starts)
    user_neg_before = np.zeros(num_users)
    cum_neg = np.cumsum(neg) - neg  # over all earlier blocks, across users
    first_block = np.flatnonzero(np.concatenate([[True], block_user[1:] != block_user[:-1]]))
    user_neg_before[block_user[first_block]] = cum_neg[first_block]
    below = cum_neg - user_neg_before[block_user]
    wins = np.bincount(block_user, pos * (below + 0.5 * neg), minlength=num_users)
    user_pos = np.bincount(block_user, pos, minlength=num_users)
    user_neg = np.bincount(block_user, neg, minlength=num_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = wins / (user_pos * user_neg)
    auc[(user_pos == 0) | (user_neg == 0)] = np.nan
    return auc, user_pos + user_neg


def weighted_gauc(user_auc, impressions, counts) -> np.ndarray:
    """GAUC ``[R]`` of users with per-user ``user_auc`` ``[U]`` (NaN: one label only, left out) and ``impressions``
    ``[U]`` under user multiplicities ``counts`` ``[R, U]``."""
    defined = ~np.isnan(user_auc)
    weights = np.asarray(counts, np.float64)[:, defined] * impressions[defined]
    with np.errstate(invalid="ignore", divide="ignore"):
        return weights @ user_auc[defined] / weights.sum(axis=1)


def user_counts(num_users: int, num_samples: int, seed: int) -> np.ndarray:
    """``[num_samples, num_users]`` multiplicities of ``num_users`` users drawn with replacement, per replicate."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_users, np.full(num_users, 1.0 / num_users), size=num_samples)


def _check_runs(name: str, runs, size: int) -> list[np.ndarray]:
    if isinstance(runs, np.ndarray) or not isinstance(runs, (list, tuple)) or not runs:
        raise ValueError(f"{_OWNER}: `{name}` must be a non-empty list of score arrays (one per seed), got "
                         f"{type(runs).__name__}")
    out = []
    for k, scores in enumerate(runs):
        scores = np.asarray(scores, np.float64)
        if scores.shape != (size,):
            raise ValueError(f"{_OWNER}: `{name}[{k}]` has shape {scores.shape}; the impressions have ({size},)")
        if not np.isfinite(scores).all():
            raise ValueError(f"{_OWNER}: `{name}[{k}]` holds a non-finite score")
        out.append(scores)
    return out


def _interval(values: np.ndarray, confidence: float) -> list[float]:
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.nanquantile(values, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def paired_bootstrap(users, labels, scores_a, scores_b, num_samples: int = 1000, seed: int = 0,
                     confidence: float = 0.95, chunk: int = 64) -> dict:
    """``metric(a) - metric(b)`` of the seed-averaged AUC and GAUC with percentile intervals from resampled users.

    Args:
        users: ``[N]`` user id of each impression (any integers).
        labels: ``[N]`` 0/1 labels.
        scores_a, scores_b: lists (one per seed; the lists may differ in length) of ``[N]`` scores.
        num_samples: bootstrap replicates.
        seed: seeds the user draws.
        confidence: the interval's coverage (0.95: the 2.5% and 97.5% quantiles).
        chunk: replicates computed at once (memory ``chunk * N`` floats).

    Returns ``{"auc_diff", "auc_ci95", "gauc_diff", "gauc_ci95", "auc_a", "auc_b", "gauc_a", "gauc_b",
    "num_samples", "users", "impressions"}`` (``*_ci95`` holds the ``confidence`` interval as ``[lo, hi]``).
    """
    users = np.asarray(users)
    labels = np.asarray(labels)
    if users.ndim != 1 or labels.shape != users.shape or users.size == 0:
        raise ValueError(f"{_OWNER}: `users` and `labels` must be non-empty and of the same shape [N], got "
                         f"{users.shape} and {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{_OWNER}: `labels` must be 0 or 1, got {np.unique(labels)[:5].tolist()}")
    a = _check_runs("scores_a", scores_a, users.size)
    b = _check_runs("scores_b", scores_b, users.size)
    v.check_int(_OWNER, "num_samples", num_samples, minimum=1)
    v.check_int(_OWNER, "seed", seed, minimum=0)
    v.check_int(_OWNER, "chunk", chunk, minimum=1)
    v.check_float(_OWNER, "confidence", confidence, minimum=0.0, maximum=1.0, min_inclusive=False,
                  max_inclusive=False)
    ids, user_index = np.unique(users, return_inverse=True)
    num_users = ids.size
    per_user = {name: [per_user_auc(user_index, labels, s, num_users) for s in runs] for name, runs in
                (("a", a), ("b", b))}
    ones = np.ones((1, num_users))

    def seed_means(counts):
        rows = counts[:, user_index]
        out = {}
        for name, runs in (("a", a), ("b", b)):
            out[f"auc_{name}"] = np.mean([weighted_auc(labels, s, rows) for s in runs], axis=0)
            out[f"gauc_{name}"] = np.mean([weighted_gauc(auc, n, counts) for auc, n in per_user[name]], axis=0)
        return out

    point = {k: float(x[0]) for k, x in seed_means(ones).items()}
    draws = user_counts(num_users, num_samples, seed)
    auc_diffs, gauc_diffs = [], []
    for start in range(0, num_samples, chunk):
        means = seed_means(draws[start:start + chunk])
        auc_diffs.append(means["auc_a"] - means["auc_b"])
        gauc_diffs.append(means["gauc_a"] - means["gauc_b"])
    auc_diffs, gauc_diffs = np.concatenate(auc_diffs), np.concatenate(gauc_diffs)
    return {"auc_diff": point["auc_a"] - point["auc_b"], "auc_ci95": _interval(auc_diffs, confidence),
            "gauc_diff": point["gauc_a"] - point["gauc_b"], "gauc_ci95": _interval(gauc_diffs, confidence),
            **point, "num_samples": int(num_samples), "users": int(num_users), "impressions": int(users.size)}
