"""Keras conventions of tfmoe models: compile(metrics=...) / fit / evaluate / predict, the Keras metrics
(NDCG, HitRate, MRR, AUC, GAUC, LogLoss) against numpy references and the dataset evaluators, and presets."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_ctr_models import build as build_ctr
from test_ctr_models import random_features

from tfmoe.metrics import AUC, GAUC, MRR, NDCG, HitRate, LogLoss, evaluate_ctr, evaluate_ranking
from tfmoe.models import FAME, HyMoERec, SASRec, presets
from tfmoe.training import TrainConfig


def numpy_rank(scores, target, history=None):
    """0-based pessimistic rank of ``target`` among items 1..V-1 (minus the history, except the target)."""
    candidates = [j for j in range(1, len(scores)) if j != target and (history is None or j not in set(history))]
    return sum(scores[j] >= scores[target] for j in candidates)


def test_top_k_metrics_equal_a_numpy_loop_filtered_and_weighted():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(7, 12)).astype("float32")
    scores[2, 5] = scores[2, 4]  # a tie: counted against the target
    targets = rng.integers(1, 12, 7)
    history = rng.integers(0, 12, (7, 4))
    weights = rng.uniform(0.5, 2.0, 7)
    for filter_seen in (False, True):
        r = np.array([numpy_rank(scores[i], targets[i], history[i] if filter_seen else None) for i in range(7)])
        expected = {"NDCG@5": (r < 5) / np.log2(r + 2), "HR@3": (r < 3) * 1.0, "MRR@4": (r < 4) / (r + 1.0)}
        for metric in (NDCG(k=5, filter_seen=filter_seen), HitRate(k=3, filter_seen=filter_seen),
                       MRR(k=4, filter_seen=filter_seen)):
            metric.update_state(targets[:4], scores[:4], sample_weight=weights[:4], history=history[:4])
            metric.update_state(targets[4:], scores[4:], sample_weight=weights[4:], history=history[4:])
            want = np.sum(expected[metric.name] * weights) / weights.sum()
            np.testing.assert_allclose(float(metric.result()), want, rtol=1e-6, err_msg=metric.name)
            metric.reset_state()
            assert float(metric.result()) == 0.0


def test_metric_names_configs_and_errors():
    assert [m.name for m in (NDCG(), HitRate(k=20), MRR(k=5))] == ["NDCG@10", "HR@20", "MRR@5"]
    metric = NDCG(k=7, filter_seen=True, ties="optimistic")
    clone = NDCG.from_config(metric.get_config())
    assert (clone.k, clone.filter_seen, clone.ties, clone.name) == (7, True, "optimistic", "NDCG@7")
    with pytest.raises(ValueError, match=r"NDCG: `k` must be an integer >= 1, got 0"):
        NDCG(k=0)
    with pytest.raises(ValueError, match=r"HitRate: `filter_seen` must be True or False, got 'yes'"):
        HitRate(filter_seen="yes")
    with pytest.raises(ValueError, match=r"NDCG@10: filter_seen=True needs the users' seen items"):
        NDCG(filter_seen=True).update_state(np.array([1]), np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match=r"NDCG@10: the model's features need one of \['seen', 'history', 'items'\]"):
        NDCG(filter_seen=True).update_from_features({"other": np.zeros((1, 2))}, np.array([1]), np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"GAUC: needs user_ids=\[B\]"):
        GAUC(capacity=4).update_state(np.array([1.0]), np.array([0.5]))


def numpy_auc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


def test_ctr_metrics_equal_numpy():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 30).astype("float32")
    probs = np.round(rng.uniform(size=30), 1).astype("float32")  # rounded: ties
    users = rng.integers(0, 4, 30)
    auc, gauc, logloss = AUC(capacity=64), GAUC(capacity=64), LogLoss()
    for part in (slice(0, 13), slice(13, 30)):
        auc.update_state(labels[part], probs[part])
        gauc.update_state(labels[part], probs[part], user_ids=users[part])
        logloss.update_state(labels[part], probs[part])
    np.testing.assert_allclose(float(auc.result()), numpy_auc(labels, probs), rtol=1e-6)
    per_user = [(np.sum(users == u), numpy_auc(labels[users == u], probs[users == u])) for u in range(4)
                if 0 < labels[users == u].sum() < np.sum(users == u)]
    want = sum(n * a for n, a in per_user) / sum(n for n, _ in per_user)
    np.testing.assert_allclose(float(gauc.result()), want, rtol=1e-6)
    p = np.clip(probs.astype("float64"), 1e-7, 1 - 1e-7)
    np.testing.assert_allclose(float(logloss.result()), np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))),
                               rtol=1e-6)
    assert np.isnan(float(LogLoss().result()))


def next_item_data(batch=48, length=8, items=30, seed=0):
    rng = np.random.default_rng(seed)
    history = rng.integers(1, items + 1, (batch, length)).astype("int32")
    history[:5, :3] = 0  # left padding
    labels = np.concatenate([history[:, 1:], rng.integers(1, items + 1, (batch, 1))], 1).astype("int32")
    return {"history": history}, labels


@pytest.mark.parametrize("cls", [SASRec, FAME, HyMoERec])
def test_compile_fit_evaluate_predict_give_the_evaluators_numbers(cls):
    x, labels = next_item_data()
    keras.utils.set_random_seed(0)
    model = cls(num_items=30, max_len=8, hidden_dim=16)
    model.compile(optimizer="adam", metrics=[NDCG(k=10, filter_seen=True), HitRate(k=10), MRR(k=5, filter_seen=True)])
    history = model.fit(x, labels, batch_size=16, epochs=1, verbose=0).history
    assert sorted(history) == ["HR@10", "MRR@5", "NDCG@10", "loss"]
    targets = labels[:, -1]
    got = model.evaluate(x, targets, batch_size=16, verbose=0, return_dict=True)
    ds = tf.data.Dataset.from_tensor_slices((x, targets)).batch(16)
    filtered = evaluate_ranking(model.last_scores, ds, filter_seen=True, ks=(10,), mrr_ks=(5,))
    unfiltered = evaluate_ranking(model.last_scores, ds, filter_seen=False, ks=(10,), mrr_ks=(5,))
    np.testing.assert_allclose([got["NDCG@10"], got["MRR@5"], got["HR@10"]],
                               [filtered["NDCG@10"], filtered["MRR@5"], unfiltered["HR@10"]], rtol=1e-5)
    # the evaluation loss is the last position's: the same as labels that hold only the target there
    last_only = np.zeros_like(labels)
    last_only[:, -1] = targets
    np.testing.assert_allclose(got["loss"], model.evaluate(x, last_only, batch_size=16, verbose=0)[0], rtol=1e-5)
    scores = model.predict(x, batch_size=16, verbose=0)
    assert scores.shape == (48, 31) and np.all(np.isneginf(scores[:, 0]))
    np.testing.assert_allclose(scores[:, 1:], np.asarray(model.last_scores(x))[:, 1:], rtol=1e-5, atol=1e-5)


def test_metrics_see_the_last_position_scores_only():
    x, labels = next_item_data(batch=4)
    model = SASRec(num_items=30, max_len=8, hidden_dim=16)
    targets, scores = model.metric_inputs(tf.constant(labels), model(x))
    assert targets.numpy().tolist() == labels[:, -1].tolist() and scores.shape == (4, 31)
    np.testing.assert_allclose(scores.numpy()[:, 1:], np.asarray(model.last_scores(x))[:, 1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["din", "mos_din"])
def test_ctr_compile_evaluate_predict_give_evaluate_ctrs_numbers(name):
    x = random_features(batch=24, seed=4)
    x["user_id"] = np.arange(24, dtype="int32") % 5
    y = np.random.default_rng(2).integers(0, 2, 24).astype("float32")
    model = build_ctr(name)
    model.compile(optimizer="adam", metrics=[AUC(capacity=100), GAUC(capacity=100), LogLoss()])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    got = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    want = evaluate_ctr(model.probabilities, tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
    np.testing.assert_allclose([got[k] for k in ("AUC", "GAUC", "LogLoss")], [want[k] for k in ("AUC", "GAUC",
                                                                                               "LogLoss")], rtol=1e-5)
    np.testing.assert_allclose(model.predict(x, batch_size=8, verbose=0), np.asarray(model.probabilities(x)),
                               rtol=1e-6)


def test_from_preset_builds_the_presets_model_and_refuses_another_classes():
    model = HyMoERec.from_preset("hymoerec_beauty", num_items=40, hidden_dim=16)
    assert type(model) is HyMoERec and model.max_len == 50 and model.num_items == 40
    assert model.get_config()["num_experts"] == presets.get("hymoerec_beauty")["options"]["num_experts"]
    with pytest.raises(ValueError, match=r"HyMoERec.from_preset: preset 'sasrec_ml1m' builds a 'sasrec' model; "
                                         r"presets of HyMoERec: hymoerec_beauty, hymoerec_ml1m"):
        HyMoERec.from_preset("sasrec_ml1m", num_items=40)
    with pytest.raises(ValueError, match=r"unknown preset 'sasrec_imdb'; known presets: fame_beauty, "):
        SASRec.from_preset("sasrec_imdb", num_items=40)


def test_train_config_expands_a_preset_and_its_overrides_win():
    config = TrainConfig.from_dict({"data": {"dir": "d"}, "model": {"preset": "fame_ml1m", "dropout": 0.3}})
    assert config.model_name == "fame"
    assert config.model_options == {**presets.get("fame_ml1m")["options"], "dropout": 0.3}
    with pytest.raises(ValueError, match=r"`model.name` 'sasrec' contradicts `model.preset` 'fame_ml1m', a 'fame'"):
        TrainConfig.from_dict({"data": {"dir": "d"}, "model": {"preset": "fame_ml1m", "name": "sasrec"}})
    with pytest.raises(ValueError, match=r"unknown preset 'nope'"):
        TrainConfig.from_dict({"data": {"dir": "d"}, "model": {"preset": "nope"}})


def test_a_saved_compiled_model_loads_compiled_with_its_feature_metrics(tmp_path):
    from tfmoe.models import load_model

    x, labels = next_item_data(batch=16)
    model = SASRec(num_items=30, max_len=8, hidden_dim=16)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), metrics=[NDCG(k=5, filter_seen=True),
                                                                                  HitRate(k=10)])
    model.fit(x, labels, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = load_model(str(tmp_path / "m.keras"))
    assert loaded.compiled and float(loaded.optimizer.learning_rate) == pytest.approx(0.01)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    assert [(m.name, m.filter_seen) for m in loaded._own_metrics] == [("NDCG@5", True), ("HR@10", False)]
    want = model.evaluate(x, labels[:, -1], verbose=0, return_dict=True)
    assert loaded.evaluate(x, labels[:, -1], verbose=0, return_dict=True) == pytest.approx(want, rel=1e-5)


# abstract bases: subclassed, never built or saved themselves
UNREGISTERED_BASES = {"FeatureMetric", "TopKMetric", "SequenceLayer", "Backbone", "BackboneFamily", "InterestLayer"}


def test_every_public_tfmoe_layer_model_and_metric_is_registered_under_its_name():
    import importlib
    import inspect
    import pkgutil

    import tfmoe

    unregistered = []
    for info in pkgutil.walk_packages(tfmoe.__path__, "tfmoe."):
        if any(part in info.name for part in ("tfx", "serving", "commands", "cli", "testing")):
            continue
        module = importlib.import_module(info.name)
        for name, cls in vars(module).items():
            if (inspect.isclass(cls) and issubclass(cls, (keras.layers.Layer, keras.metrics.Metric))
                    and cls.__module__ == module.__name__ and not name.startswith("_")
                    and name not in UNREGISTERED_BASES
                    and keras.saving.get_registered_name(cls) != f"tfmoe>{name}"):
                unregistered.append(f"{module.__name__}.{name}")
    assert not unregistered, f"not registered as tfmoe>Name: {unregistered}"
