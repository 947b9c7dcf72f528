"""benchmarks/ctr_references.py: the reference scorers against numpy, and no validation or test item in the
co-occurrence counts."""

import doctest
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import ctr_references


def test_the_docstring_examples_hold():
    assert doctest.testmod(ctr_references).failed == 0


def test_cooccurrence_scores_are_the_mean_similarity_to_the_real_history_items():
    rng = np.random.default_rng(0)
    similarity = rng.random((8, 8)).astype(np.float32)
    history = np.array([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 0]])
    target = np.array([5, 7, 2])
    got = ctr_references.CooccurrenceScorer(similarity).probabilities({"history": history, "target_item": target})
    expected = [similarity[5, [3, 4]].mean(), similarity[7, [1, 2, 3, 4]].mean(), 0.0]  # an empty history scores 0
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    counts = np.arange(8)
    pop = ctr_references.PopularityScorer(counts).probabilities({"history": history, "target_item": target})
    np.testing.assert_array_equal(pop.numpy(), [5, 7, 2])


def test_only_the_training_range_enters_the_counts():
    # 20 items: k = 2, validation = positions 16-17, test = 18-19; items 8 and 9 appear only there
    sequence = np.array([1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 1, 2, 8, 8, 9, 9])
    matrix = ctr_references.training_range_matrix([sequence], 9, 0.1)
    assert matrix[0].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    similarity = ctr_references.cosine_similarity(matrix)
    assert np.all(similarity[8] == 0) and np.all(similarity[:, 9] == 0) and np.all(np.diag(similarity) == 0)
    np.testing.assert_allclose(similarity[1, 2], 1.0)


def test_the_report_renders_a_row_per_split_and_scorer_with_buckets_in_length_order():
    from benchmarks import report

    def values(auc):
        buckets = {name: {"AUC": auc + i / 100} for i, name in enumerate(["201-1000", "<=200", ">1000"])}
        return {"overall": {"AUC": auc, "GAUC": auc - 0.01}, "buckets": buckets}

    metrics = {"train_popularity_auc": 0.61,
               **{split: {"popularity": values(0.5), "cooccurrence": values(0.58)} for split in ("valid", "test")}}
    text = report.reference_table(metrics)
    assert "| split | scorer | AUC | GAUC | AUC <=200 | AUC 201-1000 | AUC >1000 |" in text
    assert "| test | cooccurrence | 0.58 | 0.57 | 0.59 | 0.58 | 0.6 |" in text
    assert text.count("| valid |") == text.count("| test |") == 2 and "training draws: 0.61" in text


def test_a_run_on_tiny_data_writes_a_record_per_column_whose_popularity_auc_is_recomputed_by_hand(tmp_path,
                                                                                                  monkeypatch):
    import subprocess

    from benchmarks import ctr_impressions, long_ctr, records
    from tfmoe.data import dataset, synthetic
    from tfmoe.data.samples import CTRSampling

    data = synthetic.generate(synthetic.preset_config("tiny", seed=2))
    raw = synthetic.write_files(data, tmp_path / "raw")
    prepared = tmp_path / "data" / "ml-1m"
    subprocess.run([str(pathlib.Path(sys.executable).parent / "tfmoe"), "prepare", "--format", "tfmoe-synthetic",
                    "--input", raw[synthetic.INTERACTIONS_FILE], "--out", str(prepared), "--progress", "off"],
                   check=True, capture_output=True)
    monkeypatch.setattr(long_ctr.paths, "SHARED_DATA", str(tmp_path / "no-shared-data"))  # hash the prepared data
    written = ctr_references.run(["ml-1m-ctr-pop", "ml-1m-ctr-uniform"], [50], str(tmp_path / "data"),
                                 str(tmp_path / "records"), command=["benchmarks/ctr_references.py", "--test"])
    found = {r["variant"]: r for r in records.load_records(str(tmp_path / "records"), "ctr_references")}
    assert set(found) == {"ml-1m-ctr-pop/L50", "ml-1m-ctr-uniform/L50"} and len(written) == 2
    user_items = dataset.load_user_items(str(prepared))
    for column, record in (("ml-1m-ctr-pop", found["ml-1m-ctr-pop/L50"]),
                           ("ml-1m-ctr-uniform", found["ml-1m-ctr-uniform/L50"])):
        sampling = CTRSampling(**record["config"]["sampling"])
        assert sampling.negatives == long_ctr.task_sampling(column)["negatives"]
        labels, counts = [], []
        for x, y in dataset.make_dataset(str(prepared), "test", "ctr", max_len=50, batch_size=512, ctr=sampling,
                                         touched_items=user_items, sequence_features=()):
            labels.append(y.numpy())
            counts.append(user_items.item_counts[x["target_item"].numpy()])
        labels, counts = np.concatenate(labels), np.concatenate(counts)
        positives, negatives = counts[labels == 1], counts[labels == 0]
        pairs = positives[:, None] - negatives[None, :]  # AUC by hand: the share of pairs won, ties a half
        wins = (pairs > 0).mean() + 0.5 * (pairs == 0).mean()
        test = record["metrics"]["test"]
        assert test["popularity"]["overall"]["AUC"] == pytest.approx(wins, abs=1e-9)
        assert test["popularity"]["overall"]["count"] == test["cooccurrence"]["overall"]["count"] == labels.size
        assert 0.0 <= test["cooccurrence"]["overall"]["AUC"] <= 1.0
        assert "LogLoss" not in test["popularity"]["overall"]
        rows = ctr_impressions.impression_counts(str(prepared), sampling, long_ctr.BUCKETS)["impressions"] * 2
        assert labels.size == rows
