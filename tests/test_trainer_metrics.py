"""The trainer's metrics are ``model.evaluate`` with the compiled task metrics, and equal the streamed
``evaluate_ranking`` / ``evaluate_ctr`` on the same rows: on one device, under a 2-replica
``MirroredStrategy``, and with ``jit_compile=True``."""

import keras
import numpy as np
import pytest
from test_ctr_models import MOS, TINY
from test_dataset import write_prepared
from test_training import config, prepared  # noqa: F401  (the module's prepared next-item data)

from tfmoe.data import dataset
from tfmoe.metrics import AUC, GAUC, Count, LogLoss, evaluate_ctr, evaluate_ranking
from tfmoe.models import registry
from tfmoe.training import train
from tfmoe.training.evaluation import task_evaluation
from tfmoe.training.trainer import evaluate_best

L = 12


def test_next_item_run_reports_the_streamed_ranking_metrics_of_its_best_model(prepared, tmp_path):  # noqa: F811
    result = train(config(prepared, tmp_path, training={"epochs": 2, "verbose": 0}))
    test_ds = dataset.make_dataset(prepared, "test", max_len=12, batch_size=50)
    expected = evaluate_ranking(result.model.last_scores, test_ds, filter_seen=True)
    assert result.test_metrics["count"] == expected["count"] == 240
    for name, value in expected.items():
        assert result.test_metrics[name] == pytest.approx(value, abs=1e-6), name
    assert {"HR@5", "NDCG@20", "MRR@10", "loss"} <= set(result.test_metrics)
    # validation ran inside fit and its numbers are the ones early stopping read
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert all(h["val_seconds"] > 0 and h["train_seconds"] > 0 for h in result.history)
    assert result.history[result.best_epoch]["val_NDCG@10"] == pytest.approx(result.valid_metrics["NDCG@10"], abs=1e-6)
    # the reported validation metrics are fit's at the best epoch, and a fresh pass over the best model agrees
    rescored = evaluate_best(config(prepared, tmp_path, training={"epochs": 2, "verbose": 0}), splits=["valid"])
    assert set(rescored["valid"]) == set(result.valid_metrics)
    for name, value in rescored["valid"].items():
        assert result.valid_metrics[name] == pytest.approx(value, abs=1e-6), name
    # the same protocol on demand, unfiltered through the config
    unfiltered = evaluate_best(config(prepared, tmp_path, training={"epochs": 2, "verbose": 0},
                                      evaluation={"filter_seen": False}), splits=["test"])["test"]
    expected = evaluate_ranking(result.model.last_scores, test_ds, filter_seen=False)
    assert unfiltered["NDCG@10"] == pytest.approx(expected["NDCG@10"], abs=1e-6)


@pytest.fixture(scope="module")
def ctr_rows(tmp_path_factory):
    rng = np.random.default_rng(0)
    sequences = {u: rng.choice(np.arange(1, 61), size=n, replace=False).tolist()
                 for u, n in enumerate(rng.integers(3, 20, 40), start=1)}
    root = write_prepared(str(tmp_path_factory.mktemp("ctr")), sequences, shards=1, num_items=60)
    return dataset.make_dataset(root, "valid", "ctr", max_len=L, batch_size=6,
                                sequence_features=("timestamps", "categories", "session_ids"))


def ctr_model(**compile_options):
    keras.utils.set_random_seed(3)
    model = registry.build_model("mos_din", num_items=60, max_len=L, num_categories=8,
                                 **{**TINY, **MOS, "session_mode": "session_ids"})
    model.compile(metrics=[AUC(), GAUC(), LogLoss(), Count()], **compile_options)
    return model


def assert_equal_to_streamed(model, got, rows):
    expected = evaluate_ctr(model.probabilities, rows)
    assert got["count"] == expected["count"] == 80
    for name in ("AUC", "GAUC", "LogLoss"):
        assert got[name] == pytest.approx(expected[name], abs=1e-5), name


def test_compiled_ctr_metrics_equal_the_streamed_ones(ctr_rows):
    model = ctr_model()
    assert_equal_to_streamed(model, model.evaluate(ctr_rows, return_dict=True, verbose=0), ctr_rows)
    assert model.evaluate(ctr_rows, return_dict=True, verbose=0)["count"] == 80  # evaluate resets the rows


def test_compiled_ctr_metrics_under_two_replicas_see_every_row_once(ctr_rows, mirrored_strategy):
    with mirrored_strategy.scope():
        model = ctr_model()
    got = model.evaluate(ctr_rows, return_dict=True, verbose=0)
    assert_equal_to_streamed(model, got, ctr_rows)


def test_exact_ctr_metrics_leave_xla_to_the_training_step(ctr_rows):
    model = ctr_model(optimizer="adam", jit_compile=True)
    history = model.fit(ctr_rows, epochs=1, verbose=0).history
    # evaluation-only metrics are not updated (nor re-sorted) by training steps
    assert "loss" in history and not {"AUC", "GAUC"} & set(history)
    assert_equal_to_streamed(model, model.evaluate(ctr_rows, return_dict=True, verbose=0), ctr_rows)
    assert model.jit_compile is True


def test_ctr_rows_past_the_capacity_make_the_result_nan_not_an_approximation():
    metric = AUC(capacity=3)
    metric.update_state(np.array([1, 0]), np.array([0.9, 0.1]))
    assert float(metric.result()) == 1.0
    metric.update_state(np.array([1, 0]), np.array([0.2, 0.8]))  # 4 rows > 3
    assert np.isnan(float(metric.result()))
    metric.reset_state()
    metric.update_state(np.array([0, 1]), np.array([0.3, 0.7]))
    assert float(metric.result()) == 1.0


def test_task_metrics_name_what_the_trainer_reports():
    next_item = task_evaluation("next_item").metrics(SimpleConfig(filter_seen=True))
    assert [m.name for m in next_item] == ["HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR@10",
                                           "count"]
    assert all(m.filter_seen for m in next_item[:-1])
    assert [m.name for m in task_evaluation("ctr").metrics(SimpleConfig())] == ["AUC", "GAUC", "LogLoss", "count"]


class SimpleConfig:
    def __init__(self, filter_seen=True):
        self.evaluation = type("Evaluation", (), {"filter_seen": filter_seen})()
