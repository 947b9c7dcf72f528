"""Full-ranking metrics (tfmoe.metrics.ranking) vs hand-computed cases and a numpy reference."""

import numpy as np
import pytest
import tensorflow as tf

from tfmoe.metrics import RankingMetrics, evaluate_ranking, metrics_from_ranks, ranks


def numpy_rank(scores, target, history=None, ties="pessimistic"):
    excluded = {0, target}
    if history is not None:
        excluded |= {int(i) for i in history if i != target}
    t = scores[target]
    others = [scores[v] for v in range(len(scores)) if v not in excluded]
    if not np.isfinite(t):
        return len(others)
    return sum(s >= t for s in others) if ties == "pessimistic" else sum(s > t for s in others)


def numpy_metrics(rank_values, ks=(5, 10, 20), mrr_ks=(10,)):
    r = np.asarray(rank_values, float)
    out = {}
    for k in ks:
        out[f"HR@{k}"] = np.mean(r < k)
        out[f"NDCG@{k}"] = np.mean(np.where(r < k, 1.0 / np.log2(r + 2), 0.0))
    for k in mrr_ks:
        out[f"MRR@{k}"] = np.mean(np.where(r < k, 1.0 / (r + 1), 0.0))
    return out


def test_hand_computed_ranks_filtering_and_ties():
    #                    pad  1    2    3    4    5
    scores = np.array([[9.0, 0.5, 0.8, 0.5, 0.9, 0.1]], "float32")
    # target 1 (0.5): items 2, 4 higher, item 3 ties; padding (9.0) never counts.
    assert ranks(scores, [1]).numpy().tolist() == [3]
    assert ranks(scores, [1], ties="optimistic").numpy().tolist() == [2]
    # history [0, 4, 1]: 4 is filtered; 1 is the target and stays ranked.
    assert ranks(scores, [1], history=[[0, 4, 1]]).numpy().tolist() == [2]
    assert ranks(scores, [4], history=[[4, 4, 2]]).numpy().tolist() == [0]


def test_constant_scores_rank_last_and_nan_is_worst():
    scores = np.zeros((1, 6), "float32")
    assert ranks(scores, [3]).numpy().tolist() == [4]  # pessimistic: all 4 other items tie
    scores[0, 3] = np.nan
    assert ranks(scores, [3], ties="optimistic").numpy().tolist() == [4]
    scores[0, 3] = -np.inf
    assert ranks(scores, [3], history=[[1, 0]]).numpy().tolist() == [3]


def test_hand_computed_metric_values():
    values = metrics_from_ranks(np.array([0, 1, 4, 9, 10]), ks=(5, 10), mrr_ks=(10,))
    np.testing.assert_allclose(values["HR@5"].numpy(), [1, 1, 1, 0, 0])
    np.testing.assert_allclose(values["NDCG@10"].numpy(), [1, 1 / np.log2(3), 1 / np.log2(6), 1 / np.log2(11), 0])
    np.testing.assert_allclose(values["MRR@10"].numpy(), [1, 0.5, 0.2, 0.1, 0], rtol=1e-6)


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_random_cases_match_numpy(ties):
    rng = np.random.default_rng(0)
    b, v, length = 64, 40, 7
    scores = rng.integers(0, 8, size=(b, v)).astype("float32")  # many ties
    targets = rng.integers(1, v, size=b)
    history = rng.integers(0, v, size=(b, length))
    history[:5, -1] = targets[:5]  # target also seen
    for hist in (None, history):
        expected = [numpy_rank(scores[i], targets[i], None if hist is None else hist[i], ties) for i in range(b)]
        got = ranks(scores, targets, history=hist, ties=ties).numpy()
        np.testing.assert_array_equal(got, expected)
        metric = RankingMetrics(ties=ties)
        metric.update_state(targets[:30], scores[:30], history=None if hist is None else hist[:30])
        metric.update_state(targets[30:], scores[30:], history=None if hist is None else hist[30:])
        ref = numpy_metrics(expected)
        for name, value in metric.result().items():
            np.testing.assert_allclose(float(value), ref[name], rtol=1e-6, err_msg=name)


def test_evaluate_ranking_streams_batches_and_filters():
    rng = np.random.default_rng(1)
    b, v = 50, 30
    histories = rng.integers(0, v, size=(b, 5)).astype("int32")
    targets = rng.integers(1, v, size=b).astype("int32")
    table = rng.normal(size=(v, v)).astype("float32")  # scores depend on the last history item

    def scores_fn(features):
        return tf.gather(tf.constant(table), features["history"][:, -1])

    ds = tf.data.Dataset.from_tensor_slices(({"history": histories}, targets)).batch(16)
    for filter_seen in (True, False):
        out = evaluate_ranking(scores_fn, ds, filter_seen=filter_seen)
        expected = [
            numpy_rank(table[histories[i, -1]], targets[i], histories[i] if filter_seen else None) for i in range(b)
        ]
        ref = numpy_metrics(expected)
        assert out["count"] == b
        for name in ref:
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-6, err_msg=name)


def test_metric_reset_weights_and_validation():
    metric = RankingMetrics(ks=(1,), mrr_ks=())
    scores = np.array([[0, 1, 0], [0, 0, 1]], "float32")
    metric.update_state([1, 1], scores, sample_weight=[3.0, 1.0])
    assert float(metric.result()["HR@1"]) == pytest.approx(0.75)
    metric.reset_state()
    metric.update_state([2], scores[:1])
    assert float(metric.result()["HR@1"]) == 0.0
    with pytest.raises(ValueError, match="ties"):
        RankingMetrics(ties="random")
    with pytest.raises(ValueError, match="ks"):
        RankingMetrics(ks=(0,))


def test_evaluate_ranking_filters_the_whole_seen_history_not_only_the_input_window():
    # the model sees the last 2 items; "seen" holds all 6 (right-padded); items 1-4 seen before the window
    scores = np.array([[0.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]], "float32")
    features = {"history": np.array([[5, 6]], "int32"), "seen": np.array([[1, 2, 3, 4, 5, 6, 0]], "int32")}
    ds = tf.data.Dataset.from_tensor_slices((features, np.array([7], "int32"))).batch(1)

    def scores_fn(f):
        return tf.constant(scores)

    # target 7 (score 0.3): window-only filtering leaves 1-4 above it (rank 4); the whole history leaves none
    assert evaluate_ranking(scores_fn, ds)["NDCG@5"] == pytest.approx(1.0)
    window_only = ds.map(lambda f, y: ({"history": f["history"]}, y))
    assert evaluate_ranking(scores_fn, window_only)["NDCG@5"] == pytest.approx(1 / np.log2(6))
