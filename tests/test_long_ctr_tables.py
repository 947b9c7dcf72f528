"""benchmarks/long_ctr_tables.py and benchmarks/ctr_impressions.py: summary and paired blocks from records, history
buckets, impression positions against the time split."""

import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import ctr_impressions, long_ctr_tables  # noqa: E402
from tfmoe.data import samples  # noqa: E402


def _record(variant, seed, auc, gauc, partial=False, date="2026-01-01", **metrics):
    buckets = {"201-1000": {"AUC": auc + 0.01, "GAUC": gauc, "LogLoss": 0.5, "count": 6},
               "<=200": {"AUC": auc - 0.01, "GAUC": gauc, "LogLoss": 0.5, "count": 4},
               ">1000": {"AUC": None, "GAUC": None, "LogLoss": None, "count": 0}}
    return {"variant": variant, "seed": seed, "partial": partial, "date": date,
            "metrics": {"test": {"AUC": auc, "GAUC": gauc, "LogLoss": 0.6}, "buckets": buckets, "flops": 3e6,
                        "train_examples_per_s": 100.0 * (seed + 1), **metrics}}


def test_summary_means_stds_buckets_and_partial_labels():
    found = [_record("ml-1m-ctr-pop/L1000/din", s, auc, 0.6) for s, auc in enumerate([0.70, 0.72, 0.74])]
    found += [_record("ml-1m-ctr-pop/L1000/din", 0, 0.10, 0.1, date="2025-01-01"),  # older record of seed 0
              _record("ml-1m-ctr-pop/L200/mos_din", 0, 0.8, 0.7, partial=True)]
    table = long_ctr_tables.summary(found, protocol_seeds=3)
    din = table["ml-1m-ctr-pop"]["1000"]["din"]
    assert din["auc_mean"] == pytest.approx(0.72) and din["auc_std"] == pytest.approx(np.std([0.70, 0.72, 0.74]))
    assert din["seeds"] == 3 and not din["partial"] and din["mflops"] == 3.0 and din["train_examples_per_s"] == 200
    assert list(din["buckets"]) == ["<=200", "201-1000", ">1000"] and din["buckets"][">1000"]["auc_mean"] is None
    assert table["ml-1m-ctr-pop"]["200"]["mos_din"]["partial"]  # partial run, and 1 of 3 seeds
    text = long_ctr_tables.summary_table(table)
    assert "| ml-1m-ctr-pop | 1000 | din | 0.7200 ± 0.0163 |" in text and "0.7100 / 0.7300 / -" in text


def test_paired_block_from_paired_records():
    record = {"variant": "ml-1m-ctr-pop/L1000/paired/din", "seeds": [0, 1, 2], "partial": False, "date": "x",
              "metrics": {"auc_diff": 0.01, "auc_ci95": [0.004, 0.016], "gauc_diff": 0.02,
                          "gauc_ci95": [0.01, 0.03]}}
    block = long_ctr_tables.paired([record, _record("ml-1m-ctr-pop/L1000/din", 0, 0.7, 0.6)])
    assert block == {"ml-1m-ctr-pop": {"1000": {"din": {"auc_diff": 0.01, "auc_ci95": [0.004, 0.016],
                                                         "gauc_diff": 0.02, "gauc_ci95": [0.01, 0.03],
                                                         "seeds": [0, 1, 2], "partial": False}}}}
    assert "| mos_din - din | +0.0100 [+0.0040, +0.0160] | +0.0200 [+0.0100, +0.0300] |" in \
        long_ctr_tables.paired_table(block)
    assert long_ctr_tables.summary([record], 3) == {}


def test_buckets_and_names():
    assert ctr_impressions.bucket_names([200, 1000]) == ["<=200", "201-1000", ">1000"]
    assert ctr_impressions.bucket_of([1, 200, 201, 1000, 1001, 5000], [200, 1000]).tolist() == [0, 0, 1, 1, 2, 2]
    assert sorted(["201-1000", ">1000", "<=200"], key=long_ctr_tables.bucket_key) == ["<=200", "201-1000", ">1000"]
    with pytest.raises(ValueError, match=r"bounds must be increasing positive integers, got \[200, 200\]"):
        ctr_impressions.bucket_names([200, 200])


@pytest.mark.parametrize("n", [1, 2, 3, 10, 19, 20, 21, 1000])
def test_split_ranges_follow_the_time_split(n):
    valid_start, test_start = (int(b[0]) for b in samples.holdout_bounds([n], 0.1))
    assert ctr_impressions.split_range(n, "test", 0.1, 1) == range(max(test_start, 1), max(n, max(test_start, 1)))
    assert ctr_impressions.split_range(n, "valid", 0.1, 1) == range(max(valid_start, 1),
                                                                    max(test_start, max(valid_start, 1)))


def test_impression_positions_of_reader_rows():
    sampling = samples.CTRSampling(holdout="fraction")
    users = np.array([5, 5, 5, 5, 9, 9])  # user 5: 20 positions -> test 18, 19; user 9: 3 positions -> test 2
    assert ctr_impressions.impression_positions(users, {5: 20, 9: 3}, "test", sampling).tolist() == [18, 18, 19, 19,
                                                                                                        2, 2]
    with pytest.raises(ValueError, match="user 9 has 2 rows, expected 2 x 2 positions"):
        ctr_impressions.impression_positions(users, {5: 20, 9: 25}, "test", sampling)


def test_bucket_metrics_and_impressions_file(tmp_path):
    arrays = {"users": np.array([1, 1, 2, 2], np.int32), "labels": np.array([1, 0, 1, 0], np.int8),
              "scores": np.array([0.9, 0.1, 0.4, 0.6], np.float32), "positions": np.array([5, 5, 300, 300], np.int32)}
    path = ctr_impressions.save_impressions(str(tmp_path / "run" / "impressions-x.npz"), arrays)
    loaded = ctr_impressions.load_impressions(path)
    out = ctr_impressions.bucket_metrics(loaded, [200, 1000])
    assert out["overall"]["AUC"] == pytest.approx(0.75) and out["overall"]["GAUC"] == pytest.approx(0.5)
    assert out["buckets"]["<=200"]["AUC"] == 1.0 and out["buckets"]["201-1000"]["AUC"] == 0.0
    assert out["buckets"][">1000"] == {"AUC": None, "GAUC": None, "LogLoss": None, "count": 0, "users": 0,
                                       "positives": 0}
