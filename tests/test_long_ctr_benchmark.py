"""benchmarks/long_ctr.py: every model config is valid, budgets and partial labels, session purity, and the protocol
end to end on tiny data (train, per-impression evaluation by history bucket, records, the paired bootstrap)."""

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import long_ctr  # noqa: E402


def _args(tmp_path, **overrides):
    values = dict(data_dir=str(tmp_path / "data"), work_dir=str(tmp_path / "work"), epochs=2, patience=3,
                  samples_per_user=2, steps_per_epoch=None, seeds=[0])
    values.update(overrides)
    return argparse.Namespace(**values)


def test_chunks_take_turns_and_only_the_final_chunk_scores_test(tmp_path, monkeypatch):
    import tfmoe.training
    from tfmoe.training import TrainResult

    calls = []

    def fake_train(config):
        calls.append((config["model"]["name"], config["training"]["epochs"], config["evaluation"]["splits"]))
        return TrainResult(model=None, task="ctr", monitor="AUC", best_epoch=0, epochs_run=0, stopped_early=False,
                           metrics={}, sequences_per_s=None, output_dir=config["output_dir"])

    monkeypatch.setattr(tfmoe.training, "train", fake_train)
    monkeypatch.setattr(long_ctr, "evaluate_run", lambda config, task: None)
    args = _args(tmp_path, tasks=["ml-1m-ctr-pop"], lengths=[50], backbones=["din"], variants=["", "mos_"],
                 epochs=5, chunk=2)
    long_ctr.train_tasks(args)
    assert calls == [("din", 2, []), ("mos_din", 2, []), ("din", 4, []), ("mos_din", 4, []),
                     ("din", 5, ["test"]), ("mos_din", 5, ["test"])]


def test_a_chunk_saved_without_the_test_split_reads_as_a_finished_chunk_with_no_test_metrics(tmp_path):
    import json

    from tfmoe.training import TrainConfig
    from tfmoe.training.run_settings import record_run

    config = long_ctr.task_config(_args(tmp_path), "ml-1m-ctr-pop", "din", 50, 0, 2)
    record_run(config["output_dir"], TrainConfig.from_dict(config))
    saved = {"task": "ctr", "epochs_run": 2, "best_epoch": 1, "stopped_early": False,
             "metrics": {"valid": {"AUC": 0.61}}, "evaluation_protocol": 1, "history": []}
    (tmp_path / "work" / "ml-1m-ctr-pop" / "L50" / "din" / "spu2" / "seed0" / "metrics.json").write_text(
        json.dumps(saved))
    result = long_ctr._run_result(config, budget=5)
    assert result["finished"] and result["test"] is None and result["valid"] == {"AUC": 0.61}
    assert result["epochs"] == 2 and result["best_epoch"] == 2 and not result["budget_reached"]


def test_a_finished_chunk_whose_run_found_a_better_checkpoint_since_reads_as_the_running_run(tmp_path, monkeypatch):
    import json
    import os

    from tfmoe.training import TrainConfig, trainer
    from tfmoe.training.run_settings import record_run

    config = long_ctr.task_config(_args(tmp_path), "ml-1m-ctr-pop", "din", 50, 0, 4)
    record_run(config["output_dir"], TrainConfig.from_dict(config))
    run = tmp_path / "work" / "ml-1m-ctr-pop" / "L50" / "din" / "spu2" / "seed0"
    (run / "metrics.json").write_text(json.dumps(
        {"task": "ctr", "epochs_run": 2, "best_epoch": 1, "stopped_early": False, "evaluation_protocol": 1,
         "metrics": {"valid": {"AUC": 0.61}, "test": {"AUC": 0.60}}, "history": []}))
    history = [{"epoch": e, "val_AUC": auc} for e, auc in enumerate([0.55, 0.61, 0.60, 0.64])]
    (run / "state.json").write_text(json.dumps({"monitor": "AUC", "best": 0.64, "best_epoch": 3, "wait": 0,
                                                "stopped_early": False, "finished": False, "history": history}))
    (run / "best.weights.h5").write_bytes(b"")
    os.utime(run / "metrics.json", (1_000, 1_000))  # the chunk's metrics, then a better checkpoint
    monkeypatch.setattr(trainer, "evaluate_best", lambda config, splits: {"test": {"AUC": 0.66}})
    result = long_ctr._run_result(config, budget=4)
    assert not result["finished"] and result["epochs"] == 4 and result["best_epoch"] == 4
    assert result["valid"] == {"AUC": 0.64} and result["test"] == {"AUC": 0.66}
    os.utime(run / "best.weights.h5", (500, 500))  # the checkpoint the saved metrics describe
    result = long_ctr._run_result(config, budget=4)
    assert result["finished"] and result["epochs"] == 2 and result["test"] == {"AUC": 0.60}


def test_every_task_model_and_length_gives_a_valid_config(tmp_path):
    from tfmoe.data.samples import CTRSampling
    from tfmoe.training import TrainConfig

    args = _args(tmp_path)
    for task in long_ctr.TRAINED_TASKS:
        for length in long_ctr.LENGTHS:
            for backbone in long_ctr.BACKBONES:
                for variant in long_ctr.VARIANTS:
                    name = variant + backbone
                    config = TrainConfig.from_dict(long_ctr.task_config(args, task, name, length, 0))
                    assert config.model["name"] == name and config.data.max_len == length
                    assert config.output_dir.endswith(f"{task}/L{length}/{name}/spu2/seed0")
                    sampling = CTRSampling(**config.data.ctr)
                    assert sampling.holdout == "fraction" and sampling.samples_per_user == 2
    mos = long_ctr.model_options("mos_transact", 1000)
    assert mos["global_expert"] == "sessions" and mos["num_themes"] == 8
    assert long_ctr.model_options("gshard_twin", 200)["num_experts"] == 4
    assert long_ctr.model_options("expert_choice_din", 50)["capacity_factor"] == 2.0
    assert long_ctr.model_options("mos_din", 200, "ml-latest-small")["session_mode"] == "session_ids"
    assert long_ctr.model_options("mos_din", 200, "ml-1m-ctr-pop")["session_mode"] == "chunk"


def test_every_model_trains_in_length_groups_and_each_task_has_its_epoch_budget(tmp_path):
    from tfmoe.models import registry

    args = _args(tmp_path, epochs=None)
    for name in ("din", "mos_twin", "gshard_din", "expert_choice_transact"):
        model = long_ctr.task_config(args, "ml-1m-ctr-pop", name, 200, 0)["model"]
        assert model["length_groups"] == 8
        assert {k: x for k, x in model.items() if k != "length_groups"} == long_ctr.model_options(
            name, 200, "ml-1m-ctr-pop")  # a speed option on top of the benchmark's model
        built = registry.build_model(name, num_items=50, max_len=200, **{k: x for k, x in model.items() if k != "name"})
        assert built.length_groups == 8
    assert long_ctr.task_epochs("ml-1m-ctr-pop") == 80 and long_ctr.PROTOCOL["epochs"] == 30
    assert long_ctr.task_epochs("ml-latest-small") == 200 and long_ctr.task_epochs("ml-latest-small", 4) == 4
    assert long_ctr.task_config(args, "ml-latest-small", "din", 200, 0)["training"]["epochs"] == 200
    capped = {"budget_reached": False, "epochs": 30, "budget": 200}
    assert long_ctr.partial_reasons(capped, long_ctr.PROTOCOL["samples_per_user"], None) == [
        "30 epochs < budget 200 without early stopping"]


def test_task_columns_and_their_sampling():
    assert long_ctr.columns("ml-1m-ctr-pop") == ["ml-1m-ctr-pop", "ml-1m-ctr-uniform"]
    assert long_ctr.trained_task("ml-1m-ctr-uniform") == "ml-1m-ctr-pop"
    assert long_ctr.task_sampling("ml-1m-ctr-pop")["negatives"] == "popularity"
    assert long_ctr.task_sampling("ml-1m-ctr-uniform") == {"holdout": "fraction", "holdout_fraction": 0.1,
                                                           "negatives": "uniform"}
    assert long_ctr.task_sampling("ml-latest-small")["impressions"] == "labelled"
    assert long_ctr.prepare_arguments("ml-latest-small")[:2] == ["--format", "movielens-csv"]


def test_budget_tags_round_trip():
    assert long_ctr.parse_tag(long_ctr.sampling_tag(10, None)) == (10, None)
    assert long_ctr.parse_tag(long_ctr.sampling_tag(2, 7)) == (2, 7)


def test_runs_are_partial_unless_the_full_protocol_ran():
    full = {"budget_reached": True, "epochs": 4}
    assert long_ctr.partial_reasons(full, long_ctr.PROTOCOL["samples_per_user"], None) == []
    reasons = long_ctr.partial_reasons({"budget_reached": False, "epochs": 1}, 2, 5)
    assert len(reasons) == 3 and reasons[0].startswith("1 epochs < budget")


def test_session_purity_on_planted_themes(tmp_path):
    """An untrained MoS router on tiny synthetic data: purity is a fraction, sessions come from the grid."""
    import subprocess

    import keras

    from tfmoe.data import synthetic
    from tfmoe.models import registry

    data = synthetic.generate(synthetic.preset_config("tiny", seed=1))
    paths = synthetic.write_files(data, tmp_path / "raw")
    prepared = tmp_path / "prepared"
    subprocess.run([str(pathlib.Path(sys.executable).parent / "tfmoe"), "prepare", "--format", "tfmoe-synthetic",
                    "--input", paths[synthetic.INTERACTIONS_FILE], "--out", str(prepared), "--progress", "off"],
                   check=True, capture_output=True)
    raw_ids = [int(x) for x in (prepared / "vocab" / "items.txt").read_text().split()]
    item_themes = np.full(len(raw_ids) + 2, -1, np.int64)
    item_themes[1:len(raw_ids) + 1] = data.item_themes[raw_ids]
    keras.utils.set_random_seed(0)
    model = registry.build_model("mos_din", num_items=len(raw_ids), max_len=30, embedding_dim=8, mlp_units=[8],
                                 session_mode="session_ids", session_length=6, num_sessions=6, num_themes=4)
    out = long_ctr.session_purity(model, str(prepared), item_themes, max_len=30)
    assert 0.0 < out["purity"] <= 1.0 and 0.0 < out["random_purity"] <= 1.0
    assert out["sessions"] >= data.config.num_users and out["num_themes"] == 4
    assert out["unanimous_sessions"] > 0.9  # the prepared 30-minute sessions are the planted ones


def test_the_settings_file_holds_every_models_options():
    from tfmoe.models import presets

    assert long_ctr.SETTINGS_FILE.endswith("benchmarks/settings/long_ctr.yaml")
    assert set(long_ctr.LENGTHS) == {50, 200, 1000} and long_ctr.PROTOCOL["seeds"] == 3
    assert long_ctr.BUCKETS == [200, 1000] and long_ctr.PROTOCOL["samples_per_user"] == 10
    preset = presets.get("mos_din_ml1m_ctr")
    options = long_ctr.model_options("mos_din", preset["max_len"])
    assert {k: options[k] for k in preset["options"]} == preset["options"]  # the preset, and MoS's loss settings
    assert long_ctr.prepare_arguments("taobao")[-2:] == ["--on-error", "skip"]


def _prepare(tmp_path, fmt, source, out):
    import subprocess

    subprocess.run([str(pathlib.Path(sys.executable).parent / "tfmoe"), "prepare", "--format", fmt, "--input",
                    str(source), "--out", str(out), "--progress", "off"], check=True, capture_output=True)


def _smoke(tmp_path, monkeypatch, task):
    """The protocol of ``task`` end to end: DIN and MoS-DIN at length 50, 1 seed, 1 epoch of 2 steps."""
    from benchmarks import ctr_impressions, long_ctr_tables, records, report

    monkeypatch.setattr(long_ctr.paths, "SHARED_DATA", str(tmp_path / "no-shared-data"))  # hash the prepared data
    monkeypatch.setitem(long_ctr.BOOTSTRAP, "samples", 50)
    argv = ["--phase", "train", "report", "--tasks", task, "--backbones", "din", "--variants", "", "mos_",
            "--lengths", "50", "--seeds", "0", "--epochs", "1", "--steps-per-epoch", "2",
            "--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work"),
            "--records", str(tmp_path / "records")]
    assert long_ctr.main(argv) == 0
    found = records.load_records(str(tmp_path / "records"), "long_ctr")
    by_variant = {r["variant"]: r for r in found}
    sampling = long_ctr.task_sampling(task)
    from tfmoe.data.samples import CTRSampling

    counts = ctr_impressions.impression_counts(str(tmp_path / "data" / long_ctr.TASKS[task]["dataset"]),
                                               CTRSampling(**sampling), long_ctr.BUCKETS)
    rows = counts["impressions"] * (1 if sampling.get("impressions") == "labelled" else 2)
    for column in long_ctr.columns(task):
        for name in ("din", "mos_din"):
            record = by_variant[f"{column}/L50/{name}"]
            metrics = record["metrics"]
            assert record["partial"] and record["epochs"] == 1 and record["seed"] == 0
            assert metrics["test"]["count"] == rows and 0.0 <= metrics["test"]["AUC"] <= 1.0
            assert set(metrics["buckets"]) == {"<=200", "201-1000", ">1000"}
            assert metrics["buckets"]["<=200"]["count"] == rows  # tiny data: every history is short
            assert sum(b["count"] for b in metrics["buckets"].values()) == rows
            assert metrics["evaluation_ctr"] == long_ctr.task_sampling(column)
            assert metrics["flops"] > 0 and metrics["params"] > 0  # counted by the report from the run's code
            npz = metrics["impressions_file"].replace("<work-dir>", str(tmp_path / "work"))
            arrays = ctr_impressions.load_impressions(npz)
            assert arrays["labels"].size == rows and (arrays["positions"] >= 1).all()
        paired = by_variant[f"{column}/L50/paired/din"]
        assert paired["partial"] and paired["seeds"] == [0]
        lo, hi = paired["metrics"]["auc_ci95"]
        assert lo <= hi and paired["metrics"]["users"] == counts["users"]
    summary = long_ctr_tables.summary(found, long_ctr.PROTOCOL["seeds"])
    entry = summary[task]["50"]["mos_din"]
    assert entry["seeds"] == 1 and entry["partial"] and entry["auc_std"] == 0.0
    assert list(entry["buckets"]) == ["<=200", "201-1000", ">1000"]
    assert set(long_ctr_tables.paired(found)[task]["50"]) == {"din"}
    assert "mos_din - din" in report.render(found)
    return found


def test_ml1m_protocol_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    """Popularity negatives for training and test, the uniform column scored from the same checkpoints."""
    from tfmoe.data import synthetic

    data = synthetic.generate(synthetic.preset_config("tiny", seed=2))
    raw = synthetic.write_files(data, tmp_path / "raw")
    _prepare(tmp_path, "tfmoe-synthetic", raw[synthetic.INTERACTIONS_FILE], tmp_path / "data" / "ml-1m")
    found = _smoke(tmp_path, monkeypatch, "ml-1m-ctr-pop")
    pop = {r["variant"]: r for r in found}["ml-1m-ctr-pop/L50/din"]
    uniform = {r["variant"]: r for r in found}["ml-1m-ctr-uniform/L50/din"]
    assert pop["config"] == uniform["config"]  # one trained model, two test columns
    assert pop["metrics"]["test"]["AUC"] != uniform["metrics"]["test"]["AUC"]


def test_labelled_protocol_end_to_end_on_a_ratings_csv(tmp_path, monkeypatch):
    """ml-latest-small's protocol on a written ratings.csv: real labels, time-gap sessions read by MoS."""
    rng = np.random.default_rng(0)
    lines = ["userId,movieId,rating,timestamp"]
    for user in range(1, 25):
        time = 10_000 * user
        for _ in range(int(rng.integers(12, 40))):
            time += int(rng.choice([60, 600, 7200]))
            lines.append(f"{user},{int(rng.integers(1, 80))},{rng.integers(1, 11) / 2:.1f},{time}")
    path = tmp_path / "ratings.csv"
    path.write_text("\n".join(lines) + "\n")
    _prepare(tmp_path, "movielens-csv", path, tmp_path / "data" / "ml-latest-small")
    found = _smoke(tmp_path, monkeypatch, "ml-latest-small")
    mos = {r["variant"]: r for r in found}["ml-latest-small/L50/mos_din"]
    assert mos["config"]["model"]["session_mode"] == "session_ids"
    assert "session_ids" in mos["config"]["data"]["sequence_features"]
