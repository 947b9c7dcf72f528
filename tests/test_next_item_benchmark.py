"""benchmarks/next_item.py: valid configs from the settings file, chunked turns, partial records, throughput, cost and
ablation records, the table over the records."""

import json
import os
import pathlib
import shutil
import sys

import pytest
from test_dataset import write_prepared
from test_training import NUM_ITEMS, successor_sequences

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import next_item, next_item_tables, records  # noqa: E402
from tfmoe.models import presets  # noqa: E402
from tfmoe.training.run_settings import RunSettingsError  # noqa: E402


def test_every_variant_and_cost_variant_gives_a_valid_config(tmp_path):
    from tfmoe.training import TrainConfig
    from tfmoe.utils.initializers import torch_in_projection

    for dataset, variants in next_item.VARIANTS.items():
        assert set(next_item.MODELS) <= set(variants)
        for label in variants:
            config = TrainConfig.from_dict(next_item.run_config(dataset, label, 2, str(tmp_path), 200, 10))
            assert config.training.epochs == 200 and config.training.seed == 2
            assert config.output_dir == os.path.join(str(tmp_path), dataset, records.variant_dir(label), "seed2")
        for label, variant in next_item.COST_VARIANTS.items():
            overrides = variant["overrides"]
            config = TrainConfig.from_dict(next_item.run_config(dataset, variant["model"], 0, "w", 1, 1, overrides))
            assert all(config.model[k] == v for k, v in overrides["model"].items()), label
        # the main runs are the presets at the data's history length, with the dataset's data and optimizer
        spec = next_item.DATASETS[dataset]
        for model in next_item.MODELS:
            preset = presets.get(variants[model]["preset"])
            assert preset["model"] == model and preset["max_len"] == spec["data"]["max_len"]
            config = next_item.run_config(dataset, model, 0, "w", 1, 1)
            assert config["model"] == {"name": model, **preset["options"]}
            assert config["optimizer"] == spec["optimizer"] and config["data"] == {"dir": f"w/data/{dataset}",
                                                                                  **spec["data"]}
    ml1m = next_item.run_config("ml-1m", "sasrec", 0, "w", 1, 1)
    assert ml1m["data"]["bucket_boundaries"] is None and ml1m["data"]["shuffle_buffer"] == 32768
    assert ml1m["data"]["max_len"] == 200 and ml1m["optimizer"]["beta_2"] == 0.999
    assert next_item.run_config("beauty", "sasrec", 0, "w", 1, 1)["optimizer"]["beta_2"] == 0.98
    # an ablation is the main run with its overrides, nothing else
    for model in next_item.MODELS:
        variant = next_item.run_config("beauty", f"{model} dropout=0.3", 0, "w", 1, 1)
        main = next_item.run_config("beauty", model, 0, "w", 1, 1)
        assert (variant["model"].pop("dropout"), main["model"].pop("dropout")) == (0.3, 0.2)
        assert {**variant, "output_dir": None} == {**main, "output_dir": None}
    pytorch = next_item.run_config("ml-1m", "sasrec pytorch settings", 0, "w", 1, 1)
    assert pytorch["model"]["attention_initializer"] == torch_in_projection(64)
    assert pytorch["model"]["layer_norm_epsilon"] == 1e-8 and pytorch["optimizer"]["epsilon"] == 1e-8
    assert next_item.ablations("ml-1m") == ["sasrec attention_output_dropout=0", "sasrec torch attention init",
                                            "sasrec pytorch settings", "sasrec bce", "fame bce", "hymoerec bce"]
    # the papers' protocol: each model's main run with BCE, nothing else
    for dataset in ("ml-1m", "beauty"):
        for model in next_item.MODELS:
            variant = next_item.run_config(dataset, f"{model} bce", 0, "w", 1, 1)
            main = next_item.run_config(dataset, model, 0, "w", 1, 1)
            assert variant["model"].pop("loss") == "bce" and main["model"].pop("loss", "softmax") == "softmax"
            assert {**variant, "output_dir": None} == {**main, "output_dir": None}
    # the command-line overrides sit on top of the variant's; only data, model and optimizer can be overridden
    optimizer = next_item.run_config("ml-1m", "sasrec", 0, "w", 1, 1, {"optimizer": {"learning_rate": 1e-4}})
    assert optimizer["optimizer"] == {"name": "adam", "learning_rate": 1e-4, "beta_2": 0.999}
    with pytest.raises(ValueError, match="variant 'sasrec' overrides 'training'; only data, model and optimizer"):
        next_item.run_config("ml-1m", "sasrec", 0, "w", 1, 1, {"training": {"epochs": 3}})


@pytest.fixture()
def tiny_benchmark(tmp_path, monkeypatch):
    """The benchmark pointed at a tiny prepared dataset (``tiny``) with small models; records in tmp_path/records."""
    work = tmp_path / "work"
    write_prepared(str(work / "data" / "tiny"), successor_sequences(users=80), shards=1, num_items=NUM_ITEMS)
    monkeypatch.setattr(next_item, "DATASETS", {"tiny": {
        "data": {"max_len": 12, "batch_size": 32, "eval_batch_size": 64},
        "optimizer": {"name": "adam", "learning_rate": 1e-3}}})
    small = {"hidden_dim": 8, "num_blocks": 1, "dropout": 0.0}
    monkeypatch.setitem(presets._PRESETS, "sasrec_tiny", ("sasrec", 12, {**small, "num_heads": 1}))
    monkeypatch.setitem(presets._PRESETS, "hymoerec_tiny", ("hymoerec", 12, {**small, "num_experts": 2, "k": 1,
                                                                             "warmup_steps": 2}))
    monkeypatch.setattr(next_item, "MODELS", ("sasrec", "hymoerec"))
    monkeypatch.setattr(next_item, "VARIANTS", {"tiny": {
        "sasrec": {"preset": "sasrec_tiny"}, "hymoerec": {"preset": "hymoerec_tiny"},
        "hymoerec k=2": {"preset": "hymoerec_tiny", "overrides": {"model": {"k": 2}}},
        "sasrec beta_2=0.9": {"preset": "sasrec_tiny", "overrides": {"optimizer": {"beta_2": 0.9},
                                                                     "data": {"shuffle_buffer": 7}}}}})
    monkeypatch.setattr(next_item, "COST_VARIANTS", {
        "hymoerec": {"model": "hymoerec"},
        "hymoerec expert_hidden_dim=4": {"model": "hymoerec", "overrides": {"model": {"expert_hidden_dim": 4}}}})
    monkeypatch.setattr(next_item, "RECORDS", str(tmp_path / "records"))
    monkeypatch.setattr(next_item_tables, "MODEL_ORDER", ("sasrec", "hymoerec"))
    monkeypatch.setattr(next_item_tables, "VARIANTS", next_item.VARIANTS)
    monkeypatch.setattr(next_item_tables, "COST_VARIANTS", next_item.COST_VARIANTS)
    return work


def _runs(tmp_path, variant, budget=None):
    """The records of ``variant``'s runs (of those run with an epoch budget of ``budget``), in seed order."""
    return sorted((r for r in records.load_records(str(tmp_path / "records"), "next_item") if r["variant"] == variant
                   and budget in (None, r["config"]["training"]["epochs"])), key=lambda r: r["seed"])


def test_chunked_runs_are_recorded_partial_with_their_epochs(tiny_benchmark, tmp_path):
    work = str(tiny_benchmark)
    args = ["--datasets", "tiny", "--work-dir", work, "--epochs", "3", "--patience", "5", "--seeds", "0"]
    # models take turns 1 epoch at a time; stop after the first turn by asking for 1 epoch of a 3-epoch budget
    next_item.train_all(["tiny"], ["sasrec", "hymoerec"], [0], work, epochs=1, patience=5, chunk=1)
    (early,) = _runs(tmp_path, "tiny/sasrec", 1)
    assert early["metrics"]["test_unfiltered"] is None  # a training turn's record: no extra evaluation
    next_item.main(args + ["--models", "sasrec", "hymoerec", "--phase", "throughput", "report", "--rounds", "1",
                           "--steps", "2"])
    for model in ("sasrec", "hymoerec"):
        assert not _runs(tmp_path, f"tiny/{model}", 1)[0]["partial"]  # the turn's own budget, 1 epoch, is done
        (record,) = _runs(tmp_path, f"tiny/{model}", 3)
        assert record["partial"] and record["epochs"] == 1 and record["seed"] == 0  # 1 of 3 epochs
        test, unfiltered = record["metrics"]["test"], record["metrics"]["test_unfiltered"]
        assert 0.0 <= test["NDCG@10"] <= test["HR@10"] <= 1.0 and test["count"] == 80
        assert record["metrics"]["device"].startswith("CPU (")  # a cut-off run knows its device too (state.json)
        # filtering seen items only removes competitors of the target: never worse than the unfiltered ranking
        assert unfiltered["NDCG@10"] <= test["NDCG@10"] + 1e-6 and unfiltered["HR@10"] <= test["HR@10"] + 1e-6
        assert record["config"]["output_dir"] == f"<work-dir>/tiny/{model}/seed0"
        assert record["config"]["training"]["epochs"] == 3
        assert record["command"][-2:] == ["--steps", "2"] and record["data_hash"].startswith("sha256:")
        assert record["data_hash"] == records.data_hash([os.path.join(work, "data", "tiny")])
    rates = {r["variant"]: r["metrics"]["sequences_per_s"]
             for r in records.load_records(str(tmp_path / "records"), "next_item_throughput")}
    assert set(rates) == {"tiny/sasrec", "tiny/hymoerec"} and all(rate > 0 for rate in rates.values())
    payload = next_item_tables.aggregate(records.load_records(str(tmp_path / "records")))
    assert payload["tiny"]["hymoerec"]["sequences_per_s"] == rates["tiny/hymoerec"]
    assert payload["tiny"]["hymoerec"]["epoch_time_vs_sasrec"] == pytest.approx(
        rates["tiny/sasrec"] / rates["tiny/hymoerec"])

    # the finished budget replaces the partial record of the same run (same settings, same file)
    next_item.train_all(["tiny"], ["sasrec"], [0], work, epochs=3, patience=5, chunk=3)
    next_item.main(args + ["--models", "sasrec", "--phase", "report"])
    (done,) = _runs(tmp_path, "tiny/sasrec", 3)
    assert done["epochs"] == 3 and not done["partial"]
    table = next_item_tables.main_table(next_item_tables.aggregate(records.load_records(str(tmp_path / "records"))))
    row = table.splitlines()[2]
    assert row.startswith(f"| tiny | sasrec | {done['metrics']['test']['NDCG@10']:.4f} (1 seed) |")
    assert "(partial)" in table.splitlines()[3]  # hymoerec

    # a changed model config: the old run is not reported under it (nor resumed)
    model, max_len, options = presets._PRESETS["hymoerec_tiny"]
    presets._PRESETS["hymoerec_tiny"] = (model, max_len, {**options, "expert_hidden_dim": 4})
    with pytest.raises(RunSettingsError, match="model.expert_hidden_dim: null when the run started, 4 now"):
        next_item.main(args + ["--models", "hymoerec", "--phase", "report"])
    with pytest.raises(RunSettingsError):
        next_item.train_all(["tiny"], ["hymoerec"], [0], work, epochs=3, patience=5, chunk=1)
    # once retrained elsewhere, its record is another file, and the table takes the one of the current settings
    shutil.move(os.path.join(work, "tiny", "hymoerec"), os.path.join(work, "hymoerec_before"))
    next_item.train_all(["tiny"], ["hymoerec"], [0], work, epochs=1, patience=5, chunk=1)
    assert len(_runs(tmp_path, "tiny/hymoerec", 1)) == 2
    chosen = next_item_tables.select(records.load_records(str(tmp_path / "records")))
    assert chosen["next_item", "tiny/hymoerec", 0]["config"]["model"]["expert_hidden_dim"] == 4

    # a finished run records its device and evaluation protocol; metrics of an older protocol are evaluated again
    from tfmoe.training import evaluate_best

    metrics_path = pathlib.Path(work) / "tiny" / "sasrec" / "seed0" / "metrics.json"
    saved = json.loads(metrics_path.read_text())
    assert saved["evaluation_protocol"] == 2 and saved["device"].startswith("CPU (")
    old = {k: x for k, x in saved.items() if k not in ("evaluation_protocol", "device")}
    old["metrics"] = {split: {**m, "NDCG@10": -1.0} for split, m in saved["metrics"].items()}
    metrics_path.write_text(json.dumps(old))
    next_item.main(args + ["--models", "sasrec", "--phase", "report"])
    rewritten = json.loads(metrics_path.read_text())
    assert rewritten["evaluation_protocol"] == 2
    assert rewritten["previous_metrics"]["evaluation_protocol"] == 1
    assert rewritten["previous_metrics"]["test"]["NDCG@10"] == -1.0
    assert rewritten["metrics"]["test"]["NDCG@10"] == pytest.approx(saved["metrics"]["test"]["NDCG@10"], abs=1e-6)
    config = next_item.run_config("tiny", "sasrec", 0, work, 3, 5)
    assert evaluate_best(config, ["test"])["test"] == pytest.approx(rewritten["metrics"]["test"], abs=1e-6)
    (reported,) = _runs(tmp_path, "tiny/sasrec", 3)
    assert reported["metrics"]["test"]["NDCG@10"] == pytest.approx(saved["metrics"]["test"]["NDCG@10"], abs=1e-6)
    assert reported["metrics"]["device"] is None  # the rewritten file had no device
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        evaluate_best(next_item.run_config("tiny", "sasrec", 5, work, 3, 5))


def test_the_table_keeps_the_seeds_whose_runs_are_not_on_this_machine(tiny_benchmark, tmp_path):
    """Records outlive the machine that trained them: a report elsewhere keeps every seed's record."""
    work = str(tiny_benchmark)
    report = ["--datasets", "tiny", "--work-dir", work, "--epochs", "1", "--models", "sasrec", "--phase", "report"]
    next_item.train_all(["tiny"], ["sasrec"], [0, 1], work, epochs=1, patience=5, chunk=1)
    next_item.main(report + ["--seeds", "0", "1"])
    both = next_item_tables.aggregate(records.load_records(str(tmp_path / "records")))["tiny"]["sasrec"]
    assert both["seeds"] == 2 and [r["seed"] for r in both["runs"]] == [0, 1] and both["ndcg@10_std"] > 0
    shutil.rmtree(tiny_benchmark / "tiny" / "sasrec" / "seed1")  # trained on another machine
    next_item.main(report + ["--seeds", "0", "1"])
    kept = next_item_tables.aggregate(records.load_records(str(tmp_path / "records")))["tiny"]["sasrec"]
    assert kept["seeds"] == 2 and kept["ndcg@10"] == pytest.approx(both["ndcg@10"])


def test_cost_phase_records_every_variant_relative_to_sasrec(tiny_benchmark, tmp_path):
    next_item.main(["--datasets", "tiny", "--work-dir", str(tiny_benchmark), "--phase", "cost", "--rounds", "1",
                    "--steps", "2"])
    found = records.load_records(str(tmp_path / "records"), "next_item_cost")
    rows = next_item_tables.cost_rows(found, "tiny")
    assert list(rows) == ["sasrec", "hymoerec", "hymoerec expert_hidden_dim=4"]
    assert rows["sasrec"]["metrics"]["epoch_time_vs_sasrec"] == 1.0
    assert all(r["metrics"]["sequences_per_s"] > 0 and r["epochs"] is None for r in rows.values())
    variant = rows["hymoerec expert_hidden_dim=4"]["config"]
    assert variant["model"]["expert_hidden_dim"] == 4 and variant["model"]["name"] == "hymoerec"
    assert variant["timing"] == {"rounds": 1, "steps_per_round": 2, "warmup_rounds": 1}
    table = next_item_tables.cost_table(rows, "tiny").splitlines()
    assert table[0] == "| cost on tiny | sequences/s | epoch time / SASRec |" and table[2].endswith("| 1.00 |")


def test_ablation_trains_each_variant_with_its_overrides_into_records(tiny_benchmark, tmp_path):
    work = str(tiny_benchmark)
    next_item.main(["--datasets", "tiny", "--work-dir", work, "--phase", "ablation", "--ablation-epochs", "2",
                    "--ablation-patience", "5"])
    variant = _runs(tmp_path, "tiny/hymoerec k=2")[0]
    assert variant["config"]["model"]["k"] == 2 and variant["config"]["model"]["num_experts"] == 2
    assert variant["epochs"] == 2 and 1 <= variant["metrics"]["best_epoch"] <= 2 and not variant["partial"]
    state = json.load(open(tiny_benchmark / "tiny" / "hymoerec_k=2" / "seed0" / "state.json"))
    assert [round(h["val_NDCG@10"], 5) for h in state["history"]] == variant["metrics"]["valid_ndcg@10_curve"]
    saved = json.load(open(tiny_benchmark / "tiny" / "hymoerec_k=2" / "seed0" / "metrics.json"))
    assert variant["metrics"]["test"] == saved["metrics"]["test"] and variant["metrics"]["test"]["count"] == 80
    # optimizer and data overrides reach the run (its recorded settings) and the record
    (beta,) = _runs(tmp_path, "tiny/sasrec beta_2=0.9")
    assert beta["config"]["optimizer"] == {"name": "adam", "learning_rate": 1e-3, "beta_2": 0.9}
    recorded = json.load(open(tiny_benchmark / "tiny" / "sasrec_beta_2=0.9" / "seed0" / "run_config.json"))
    assert recorded["data"]["shuffle_buffer"] == 7 == beta["config"]["data"]["shuffle_buffer"]
    assert not _runs(tmp_path, "tiny/sasrec")  # the main runs are not ablations
    # a variant that has its epochs already is not retrained; another seed is its own record
    state_path = tiny_benchmark / "tiny" / "hymoerec_k=2" / "seed0" / "state.json"
    before = state_path.stat().st_mtime_ns
    next_item.main(["--datasets", "tiny", "--work-dir", work, "--phase", "ablation", "--ablation-epochs", "2",
                    "--ablation-patience", "5", "--seeds", "0", "1", "--ablations", "hymoerec k=2"])
    assert state_path.stat().st_mtime_ns == before
    assert [r["seed"] for r in _runs(tmp_path, "tiny/hymoerec k=2")] == [0, 1]
    with pytest.raises(SystemExit):
        next_item.main(["--datasets", "tiny", "--phase", "ablation", "--ablations", "sasrec"])


def test_the_table_prefers_the_current_settings_then_measured_then_newest_records(tiny_benchmark):
    def record(config, date, converted=False, ndcg=0.1):
        metrics = {"test": {"NDCG@10": ndcg, "HR@10": 0.2}, "test_unfiltered": None, "valid_ndcg@10_curve": [ndcg],
                   "sequences_per_s_training": None}
        return {"benchmark": "next_item", "variant": "tiny/sasrec", "config": config, "metrics": metrics,
                "epochs": 1, "seed": 0, "date": date, "partial": False,
                **({"converted_from": "old.json"} if converted else {})}

    current = next_item.run_config("tiny", "sasrec", 0, "<work-dir>", 1, 1)
    other = {**current, "model": {**current["model"], "dropout": 0.5}}
    pick = next_item_tables.select
    key = ("next_item", "tiny/sasrec", 0)
    assert pick([record(other, "2027"), record(current, None, True)])[key]["config"] == current
    assert pick([record(current, None, True), record(current, "2026")])[key]["date"] == "2026"
    assert pick([record(other, "2026-01-02", ndcg=0.3), record(other, "2026-01-01")])[key]["metrics"]["test"][
        "NDCG@10"] == 0.3


def test_merge_json_keeps_the_entries_of_processes_writing_at_the_same_time(tmp_path):
    """Two processes merging at once each add their entries (no stale copy written back, no torn file)."""
    import multiprocessing

    from benchmarks._timing import merge_json

    path = str(tmp_path / "results.json")
    merge_json(path, {"section": {"old": {"value": 0}}, "other": {"kept": 1}}, meta={"run": 1})
    keys = [f"k{i}" for i in range(12)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(_merge_one, [(path, key) for key in keys])
    payload = json.load(open(path))
    assert sorted(payload["section"]) == sorted(["old", *keys])
    assert payload["other"] == {"kept": 1} and payload["_meta"] == {"run": 1}
    merged = merge_json(path, {"section": {"old": {"value": 2}}}, meta={"run": 2})
    assert merged["section"]["old"] == {"value": 2} and merged["_meta"] == {"run": 2}
    assert json.load(open(path)) == merged and not list(tmp_path.glob("*.tmp*"))


def _merge_one(path, key):
    from benchmarks._timing import merge_json

    merge_json(path, {"section": {key: {"value": key}}})


def test_the_ml1m_example_config_trains_the_benchmarks_ml1m_sasrec(tmp_path):
    """configs/sasrec_ml1m.yaml (the README's training example) is the benchmark's main ML-1M SASRec run."""
    from tfmoe.training import TrainConfig
    from tfmoe.training.run_settings import check_same_run, record_run

    benchmark = TrainConfig.from_dict(next_item.run_config("ml-1m", "sasrec", 0, str(tmp_path), 200, 10))
    record_run(benchmark.output_dir, benchmark)
    example = TrainConfig.load(str(ROOT / "configs" / "sasrec_ml1m.yaml"))
    check_same_run(benchmark.output_dir, example)  # raises RunSettingsError naming each difference
    with pytest.raises(RunSettingsError, match="optimizer.beta_2: 0.999 when the run started, 0.98 now"):
        check_same_run(benchmark.output_dir, example.override(["optimizer.beta_2=0.98"]))


def test_seed_means_row_averages_an_archived_variants_finished_seeds():
    """Hand-computed: NDCG@10 0.05 and 0.07 -> mean 0.06, sample std 0.01 * sqrt(2); a partial run and another
    variant's run stay out, and a variant without a finished run is an error naming it."""
    def run(ndcg, curve, **extra):
        return {"test": {"NDCG@10": ndcg, "HR@10": 2 * ndcg}, "valid_ndcg@10": curve, **extra}

    section = {"v": run(0.05, [0.05, 0.06]), "v (seed 1)": run(0.07, [0.07, 0.06, 0.05]),
               "v (seed 2)": run(0.2, [0.2], partial=True), "v dropout": run(0.1, [0.1])}
    assert next_item_tables.seed_means_row("v", section) == "| v | 0, 1 | 0.0600 ± 0.0141 | 0.1200 | 0.0650 | 2.5 |"
    assert next_item_tables.seed_means_row("v dropout", section) == "| v dropout | 0 | 0.1000 | 0.2000 | 0.1000 | 1.0 |"
    with pytest.raises(ValueError, match="'w' has no finished run"):
        next_item_tables.seed_means_row("w", section)
    keys = ["v (seed 12)", "v", "v (seed 1)", "v dropout", "v (seed 01)", "v (seed x)", "v dropout (seed 1)"]
    assert next_item_tables.archived_seed_keys(dict.fromkeys(keys), "v") == {0: "v", 1: "v (seed 1)",
                                                                              12: "v (seed 12)"}
