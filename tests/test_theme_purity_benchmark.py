"""benchmarks/theme_purity.py: purity, NMI and k-means against hand-computed cases; a measurement's record; configs."""

import argparse
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import theme_purity as tp
from tfmoe.data.synthetic import theme_purity


def test_purity_hand_cases():
    assert tp.purity([0, 0, 1, 1], [3, 3, 5, 3]) == 0.75  # clusters {3, 3} and {5, 3}: (2 + 1) / 4
    assert tp.purity([0, 0, 0, 0], [1, 1, 2, 3]) == 0.5  # one cluster: its majority theme, 2 of 4
    assert tp.purity([7, 8, 9, 9], [1, 1, 2, 2]) == 1.0  # more clusters than themes can be pure
    assert tp.purity([0, 1, 1], [-1, 2, 2]) == 1.0  # a negative planted theme is padding: left out
    rng = np.random.default_rng(0)
    a, t = rng.integers(0, 8, 500), rng.integers(0, 8, 500)
    assert tp.purity(a, t) == pytest.approx(theme_purity(a, t))  # the generator's own definition


def test_nmi_hand_cases():
    assert tp.nmi([0, 0, 1, 1, 2, 2], [5, 5, 3, 3, 9, 9]) == pytest.approx(1.0)  # the themes, renamed
    assert tp.nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)  # independent
    # A = [0, 0, 1, 1], T = [0, 0, 0, 1]: H(A) = ln 2, H(T) = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.562335,
    # I = H(T) - H(T | A) = 0.562335 - (1/2 * 0 + 1/2 * ln 2) = 0.215762, NMI = 2 I / (H(A) + H(T)) = 0.343711
    assert tp.nmi([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(0.3437110184854508, rel=1e-12)
    assert tp.nmi([1, 1, 1], [2, 2, 2]) == 1.0  # two constant labelings agree
    assert tp.nmi([1, 1, 1, 1], [0, 1, 2, 3]) == 0.0  # one cluster says nothing about the themes
    assert tp.nmi([0, 1, 1], [-1, 2, 2]) == 1.0  # padding left out: two constant labelings
    # symmetric, and purity rewards splitting while NMI does not
    a, t = [0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 1, 1]
    assert tp.nmi(a, t) == pytest.approx(tp.nmi(t, a)) and tp.purity(a, t) == 1.0 and tp.nmi(a, t) < 0.6


@pytest.mark.parametrize(
    ("assigned", "planted", "message"),
    [
        ([0, 1], [0, 1, 2], r"`assigned` and `planted` must be 1-D of equal length, got shapes \(2,\) and \(3,\)"),
        ([0, 1], [-1, -1], r"contingency: no entry with a non-negative planted theme"),
    ],
)
def test_score_errors(assigned, planted, message):
    with pytest.raises(ValueError, match=message):
        tp.nmi(assigned, planted)
    with pytest.raises(ValueError, match=message):
        tp.purity(assigned, planted)


def test_kmeans_recovers_separated_blobs():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 5)) * 10
    truth = rng.integers(0, 4, 300)
    points = centers[truth] + rng.normal(size=(300, 5))
    labels = tp.kmeans(points, 4, seed=0)
    assert tp.purity(labels, truth) == 1.0 and tp.nmi(labels, truth) == pytest.approx(1.0)
    np.testing.assert_array_equal(labels, tp.kmeans(points, 4, seed=0))  # seeded
    with pytest.raises(ValueError, match=r"kmeans: `points` must be \[N >= 4, d\], got shape \(3, 5\)"):
        tp.kmeans(points[:3], 4)


def test_a_measurement_is_one_record_partial_when_a_run_stopped_short(tmp_path):
    from benchmarks import records

    args = argparse.Namespace(work_dir=str(tmp_path / "w"), data_dir=str(tmp_path / "d"), epochs=3, seed=2)
    prepared = tmp_path / "d" / "synthetic-small" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "summary.json").write_text("{}")
    configs = {router: tp.run_config(args, router) for router in ("softmax", "codebook")}
    runs = {"softmax": {"epochs_run": 3, "stopped_early": False}, "codebook": {"epochs_run": 2, "stopped_early": True}}
    entries = {"purity": {"softmax": 0.5}, "nmi": {"softmax": 0.4},
               "purity_meta": {"config": configs, "runs": runs, "seed": 2}}
    record = tp.purity_record(entries, args, ["benchmarks/theme_purity.py", "--seed", "2"])
    assert record["benchmark"] == "theme_purity" and record["variant"] == "synthetic-small/softmax+codebook"
    assert record["metrics"] == entries and record["config"] == configs and not record["partial"]
    assert record["seed"] == 2 and record["epochs"] == 3
    assert record["data_hash"] == records.data_hash([str(prepared)])
    path = records.write_record(record, str(tmp_path / "records"))
    assert records.load_records(str(tmp_path / "records"), "theme_purity") == [record] and path.endswith(".json")
    runs["codebook"] = {"epochs_run": 2, "stopped_early": False}  # cut off before its 3 epochs
    assert tp.purity_record(entries, args, ["x"])["partial"]


def test_run_configs():
    args = argparse.Namespace(work_dir="/w", data_dir="/d", epochs=3, seed=2)
    config = tp.run_config(args, "codebook")
    assert config["model"]["name"] == "mos_din" and config["model"]["router"] == "codebook"
    assert config["model"]["num_themes"] == 8 and config["training"]["epochs"] == 3 and config["training"]["seed"] == 2
    assert config["output_dir"] == "/w/theme-purity/codebook/seed2"
    name, router, options = tp.COMMITMENT_ABLATION
    ablation = tp.run_config(args, router, **options)
    assert ablation["model"]["commitment_weight"] == 0.25
    assert ablation["output_dir"] == "/w/theme-purity/codebook-commitment_weight0.25/seed2"
