"""benchmarks/next_item.py: valid configs, chunked turns, partial labels, kept throughput rates, cost ablation."""

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

from benchmarks import next_item, next_item_tables  # noqa: E402
from tfmoe.models import presets  # noqa: E402
from tfmoe.training.run_settings import RunSettingsError  # noqa: E402


def test_every_dataset_model_and_cost_variant_gives_a_valid_config(tmp_path):
    from tfmoe.training import TrainConfig

    for dataset in next_item.DATASETS:
        for model in next_item.MODELS:
            config = TrainConfig.from_dict(next_item.run_config(dataset, model, 2, str(tmp_path), 200, 10))
            assert config.model["name"] == model and config.training.epochs == 200
            assert config.output_dir == str(tmp_path / dataset / model / "seed2")
        for model, options in next_item.COST_VARIANTS.values():
            config = TrainConfig.from_dict(next_item.run_config(dataset, model, 0, str(tmp_path), 1, 1, options))
            assert all(config.model[k] == v for k, v in options.items())
    for model, options, optimizer, datasets_data in next_item.ABLATIONS.values():
        for dataset, data in datasets_data.items():
            settings = next_item.run_config(dataset, model, 0, "w", 1, 1, options, optimizer, data)
            config = TrainConfig.from_dict(settings)
            assert all(getattr(config.data, k) == v for k, v in data.items())
    # Beauty's main runs draw random batches; its variants trained with length buckets keep them
    assert next_item.run_config("beauty", "sasrec", 0, "w", 1, 1)["data"]["bucket_boundaries"] is None
    _, _, _, item_dropout = next_item.ABLATIONS["sasrec item_dropout=0.2"]
    assert item_dropout["beauty"]["bucket_boundaries"] == [10, 20, 30]
    _, options, optimizer, initializer = next_item.ABLATIONS["sasrec initializer_range=0.02"]
    assert initializer["beauty"]["shuffle_buffer"] == 10_000
    # ML-1M's main runs: the reference code's settings with random batches; its variants trained on top of the
    # earlier main settings (length buckets, tfmoe's defaults, beta_2 0.98) carry them
    ml1m = next_item.run_config("ml-1m", "sasrec", 0, "w", 1, 1)
    assert ml1m["data"]["bucket_boundaries"] is None and ml1m["data"]["shuffle_buffer"] == 32768
    assert ml1m["model"]["norm"] == "sasrec" and ml1m["model"]["initializer_range"] == 0.02
    assert ml1m["optimizer"]["beta_2"] == 0.999
    earlier = next_item.run_config("ml-1m", "sasrec", 0, "w", 1, 1, options, optimizer, initializer["ml-1m"])
    assert earlier["data"]["bucket_boundaries"] == [50, 100, 150] and earlier["optimizer"]["beta_2"] == 0.98
    assert {k: earlier["model"][k] for k in ("initializer_range", "norm", "positions", "inner_dim")} == {
        "initializer_range": 0.02, "norm": "pre", "positions": "recency", "inner_dim": None}
    _, options, optimizer, buckets = next_item.ABLATIONS["sasrec length buckets"]
    beauty_model = TrainConfig.from_dict(next_item.run_config("beauty", "sasrec", 0, "w", 1, 1, options, optimizer,
                                                              buckets["beauty"])).model
    from tfmoe.training.run_settings import model_option_defaults

    defaults = model_option_defaults("sasrec")  # the written-out earlier options are SASRec's defaults on Beauty
    assert all(defaults[k] == beauty_model[k] for k in next_item.ML1M_EARLIER_MODEL)
    # the main runs' twins among the variants: same model, optimizer and data settings
    assert next_item.ablation_twins("ml-1m", "sasrec") == ["sasrec original random batches"]
    assert next_item.ablation_twins("ml-1m", "hymoerec") == ["hymoerec original random batches"]
    assert next_item.ablation_twins("beauty", "sasrec") == ["sasrec random batches"]
    # FAME's main settings: 2 experts per head; the FAME variants trained with the earlier 4 keep them
    assert next_item.ablation_twins("ml-1m", "fame") == next_item.ablation_twins("beauty", "fame") == [
        "fame num_experts=2"]
    assert next_item.run_config("beauty", "fame", 0, "w", 1, 1)["model"]["num_experts"] == 2
    # the regularisation ablation on Beauty: the main settings of each model with dropout 0.3 instead of 0.2
    for model in ("sasrec", "fame", "hymoerec"):
        _, options, optimizer, data = next_item.ABLATIONS[f"{model} dropout=0.3"]
        variant = next_item.run_config("beauty", model, 0, "w", 1, 1, options, optimizer, data["beauty"])
        main = next_item.run_config("beauty", model, 0, "w", 1, 1)
        assert (variant["model"].pop("dropout"), main["model"].pop("dropout")) == (0.3, 0.2)
        assert variant == main
    since_two_experts = {"fame num_experts=2", "fame dropout=0.3"}  # trained with the benchmark's 2 (checked above)
    for label, (model, options, optimizer, datasets_data) in next_item.ABLATIONS.items():
        if model == "fame" and label not in since_two_experts:
            for dataset, data in datasets_data.items():
                expected = 1 if "num_experts=1" in label else 4
                assert next_item.run_config(dataset, model, 0, "w", 1, 1, options, optimizer, data)["model"][
                    "num_experts"] == expected, label
    random_batches = next_item.run_config("beauty", "sasrec", 0, "w", 1, 1, None, None, next_item.RANDOM_BATCHES)
    assert random_batches["data"]["bucket_boundaries"] is None and random_batches["data"]["max_len"] == 50
    assert next_item.run_config("ml-1m", "sasrec", 0, "w", 1, 1)["data"]["max_len"] == 200
    assert next_item.run_config("beauty", "sasrec", 0, "w", 1, 1)["data"]["max_len"] == 50
    assert next_item.run_config("ml-1m", "hymoerec", 0, "w", 1, 1)["model"]["expert_hidden_dim"] == 128
    beauty = next_item.run_config("beauty", "hymoerec", 0, "w", 1, 1)["model"]
    assert beauty["hidden_dim"] == 64 and "expert_hidden_dim" not in beauty
    assert next_item.run_config("ml-1m", "hymoerec", 0, "w", 1, 1, {"expert_hidden_dim": None})["model"][
        "expert_hidden_dim"] is None
    # a dataset's optimizer settings sit between the defaults and an ablation's overrides
    spec = {**next_item.DATASETS["ml-1m"], "optimizer": {"beta_2": 0.999, "learning_rate": 5e-4}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(next_item.DATASETS, "ml-1m", spec)
        optimizer = next_item.run_config("ml-1m", "sasrec", 0, "w", 1, 1, None, {"learning_rate": 1e-4})["optimizer"]
    assert optimizer == {"name": "adam", "learning_rate": 1e-4, "beta_2": 0.999}
    assert next_item.run_config("beauty", "sasrec", 0, "w", 1, 1)["optimizer"]["beta_2"] == 0.98
    # the written-out PyTorch in-projection initializer is tfmoe's, at both datasets' d 64
    from tfmoe.utils.initializers import torch_in_projection

    assert next_item.TORCH_IN_PROJECTION_64 == torch_in_projection(64)
    # the models' settings are the presets', at the data's history length
    for dataset, spec in next_item.DATASETS.items():
        for model in next_item.MODELS:
            preset = presets.get(f"{model}_{spec['presets']}")
            assert preset["options"]["hidden_dim"] == 64 and preset["max_len"] == spec["data"]["max_len"]
            assert next_item.run_config(dataset, model, 0, "w", 1, 1)["model"] == {"name": model, **preset["options"]}


@pytest.fixture()
def tiny_benchmark(tmp_path, monkeypatch):
    """The benchmark pointed at a tiny prepared dataset (``tiny``) with small models; results in tmp_path."""
    work = tmp_path / "work"
    write_prepared(str(work / "data" / "tiny"), successor_sequences(users=80), shards=1, num_items=NUM_ITEMS)
    monkeypatch.setattr(next_item, "DATASETS", {"tiny": {
        "data": {"max_len": 12, "batch_size": 32, "eval_batch_size": 64}, "presets": "tiny"}})
    small = {"hidden_dim": 8, "num_blocks": 1, "dropout": 0.0}
    monkeypatch.setitem(presets._PRESETS, "sasrec_tiny", ("sasrec", 12, {**small, "num_heads": 1}))
    monkeypatch.setitem(presets._PRESETS, "hymoerec_tiny", ("hymoerec", 12, {**small, "num_experts": 2, "k": 1,
                                                                             "warmup_steps": 2}))
    monkeypatch.setattr(next_item, "MODELS", ("sasrec", "hymoerec"))
    monkeypatch.setattr(next_item, "COST_VARIANTS", {"hymoerec": ("hymoerec", {}), "hymoerec expert_hidden_dim=4":
                                                     ("hymoerec", {"expert_hidden_dim": 4})})
    monkeypatch.setattr(next_item, "RESULTS", str(tmp_path / "next_item.json"))
    monkeypatch.setattr(next_item, "COST_RESULTS", str(tmp_path / "next_item_cost.json"))
    monkeypatch.setattr(next_item, "ABLATION_RESULTS", str(tmp_path / "next_item_ablation.json"))
    monkeypatch.setattr(next_item, "ABLATIONS", {"hymoerec k=2": ("hymoerec", {"k": 2}, {}, {"tiny": {}}),
                                                 "sasrec beta_2=0.9": ("sasrec", {}, {"beta_2": 0.9}, {"tiny": {}}),
                                                 "sasrec elsewhere": ("sasrec", {"dropout": 0.5}, {}, {"ml-1m": {}}),
                                                 "sasrec shuffle_buffer=7": ("sasrec", {}, {},
                                                                             {"tiny": {"shuffle_buffer": 7}})})
    return work


def test_chunked_runs_are_reported_partial_with_their_epochs_and_rates_are_kept(tiny_benchmark, tmp_path):
    work = str(tiny_benchmark)
    args = ["--datasets", "tiny", "--work-dir", work, "--epochs", "3", "--seeds", "0"]
    # models take turns 1 epoch at a time; stop after the first turn by asking for 1 epoch of a 3-epoch budget
    next_item.train_all(["tiny"], ["sasrec", "hymoerec"], [0], work, epochs=1, patience=5, chunk=1)
    next_item.main(args + ["--models", "sasrec", "hymoerec", "--phase", "throughput", "report", "--rounds", "1",
                           "--steps", "2"])
    payload = json.load(open(tmp_path / "next_item.json"))
    for model in ("sasrec", "hymoerec"):
        entry = payload["tiny"][model]
        assert entry["partial"] and entry["epochs"] == 1 and entry["seeds"] == 1  # 1 of 3 epochs
        assert 0.0 <= entry["ndcg@10"] <= entry["hr@10"] <= 1.0
        assert entry["runs"][0]["test"]["count"] == 80
        assert entry["trained_on"][0].startswith("CPU (")  # a cut-off run knows its device too (state.json)
        assert entry["sequences_per_s_source"] == next_item.THROUGHPUT_SOURCE
        # filtering seen items only removes competitors of the target: never worse than the unfiltered ranking
        assert entry["unfiltered"]["ndcg@10"] <= entry["ndcg@10"] + 1e-6
        assert entry["unfiltered"]["hr@10"] <= entry["hr@10"] + 1e-6
    rate = payload["tiny"]["hymoerec"]["sequences_per_s"]
    assert payload["tiny"]["hymoerec"]["epoch_time_vs_sasrec"] == pytest.approx(
        payload["tiny"]["sasrec"]["sequences_per_s"] / rate)

    # a later report without the throughput phase keeps the measured rates, and a finished budget is complete
    next_item.train_all(["tiny"], ["sasrec"], [0], work, epochs=3, patience=5, chunk=3)
    next_item.main(args + ["--models", "sasrec", "hymoerec", "--phase", "report"])
    again = json.load(open(tmp_path / "next_item.json"))
    assert again["tiny"]["hymoerec"]["sequences_per_s"] == rate
    assert again["tiny"]["sasrec"]["epochs"] == 3 and not again["tiny"]["sasrec"]["partial"]
    assert again["tiny"]["hymoerec"]["partial"]
    assert again["_meta"]["budget"]["epochs"] == 3

    # a changed model config: the old run is not reported under it (nor resumed), and once retrained the old
    # throughput rate is dropped for the training epochs' rate
    model, max_len, options = presets._PRESETS["hymoerec_tiny"]
    presets._PRESETS["hymoerec_tiny"] = (model, max_len, {**options, "expert_hidden_dim": 4})
    with pytest.raises(RunSettingsError, match="model.expert_hidden_dim: null when the run started, 4 now"):
        next_item.main(args + ["--models", "hymoerec", "--phase", "report"])
    with pytest.raises(RunSettingsError):
        next_item.train_all(["tiny"], ["hymoerec"], [0], work, epochs=3, patience=5, chunk=1)
    shutil.move(os.path.join(work, "tiny", "hymoerec"), os.path.join(work, "hymoerec_before"))
    next_item.train_all(["tiny"], ["hymoerec"], [0], work, epochs=1, patience=5, chunk=1)
    next_item.main(args + ["--models", "hymoerec", "--phase", "report"])
    changed = json.load(open(tmp_path / "next_item.json"))["tiny"]["hymoerec"]
    assert changed["sequences_per_s_source"] != next_item.THROUGHPUT_SOURCE
    assert changed["sequences_per_s"] == pytest.approx(changed["runs"][0]["sequences_per_s"])

    # a finished run records its device and evaluation protocol; metrics of an older protocol are evaluated again
    from tfmoe.training import evaluate_best

    metrics_path = pathlib.Path(work) / "tiny" / "sasrec" / "seed0" / "metrics.json"
    saved = json.loads(metrics_path.read_text())
    assert saved["evaluation_protocol"] == 2 and saved["device"].startswith("CPU (")
    assert again["tiny"]["sasrec"]["trained_on"] == [saved["device"]]
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
    reported = json.load(open(tmp_path / "next_item.json"))["tiny"]["sasrec"]
    assert reported["ndcg@10"] == pytest.approx(saved["metrics"]["test"]["NDCG@10"], abs=1e-6)
    assert reported["trained_on"] == ["unrecorded"]  # the rewritten file had no device
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        evaluate_best(next_item.run_config("tiny", "sasrec", 5, work, 3, 5))


def test_a_report_keeps_the_seeds_of_earlier_reports_whose_runs_are_not_on_this_machine(tiny_benchmark, tmp_path):
    work = str(tiny_benchmark)
    report = ["--datasets", "tiny", "--work-dir", work, "--epochs", "1", "--models", "sasrec", "--phase", "report"]
    next_item.train_all(["tiny"], ["sasrec"], [0, 1], work, epochs=1, patience=5, chunk=1)
    next_item.main(report + ["--seeds", "0", "1"])
    both = json.load(open(tmp_path / "next_item.json"))["tiny"]["sasrec"]
    assert both["seeds"] == 2 and [r["seed"] for r in both["runs"]] == [0, 1]
    shutil.rmtree(tiny_benchmark / "tiny" / "sasrec" / "seed1")  # trained on another machine
    next_item.main(report + ["--seeds", "0", "1"])
    kept = json.load(open(tmp_path / "next_item.json"))["tiny"]["sasrec"]
    assert kept["seeds"] == 2 and kept["ndcg@10"] == pytest.approx(both["ndcg@10"])
    assert kept["runs"][1] == {**both["runs"][1], "reported_earlier": True}
    assert "reported_earlier" not in kept["runs"][0]
    assert kept["ndcg@10_std"] == pytest.approx(both["ndcg@10_std"]) and both["ndcg@10_std"] > 0
    next_item.main(report + ["--seeds", "0"])  # only the seeds asked for
    assert json.load(open(tmp_path / "next_item.json"))["tiny"]["sasrec"]["seeds"] == 1
    # runs of other settings are never mixed in
    config = next_item.run_config("tiny", "sasrec", 0, "<work-dir>", 1, next_item.BUDGET["patience"])
    assert len(next_item._earlier_runs(both, config, [0, 1], {0})) == 1
    other = {**config, "model": {**config["model"], "dropout": 0.5}}
    assert next_item._earlier_runs(both, other, [0, 1], {0}) == []


def test_the_report_takes_the_main_settings_seeds_that_ran_as_ablation_twins(tiny_benchmark, tmp_path):
    """A variant whose settings are the main run's is a main run: the report takes its seed from its directory,
    else from the ablation results (test metrics, no unfiltered ones); variants of other settings never count,
    nor does a twin that ran a shorter budget; an entry of other settings is dropped, not kept under the new ones."""
    work = str(tiny_benchmark)
    ablations = {"sasrec twin": ("sasrec", {"dropout": 0.0}, {"learning_rate": 1e-3}, {"tiny": {}}),
                 "sasrec dropout=0.5": ("sasrec", {"dropout": 0.5}, {}, {"tiny": {}})}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(next_item, "ABLATIONS", ablations)
        assert next_item.ablation_twins("tiny", "sasrec") == ["sasrec twin"]
        assert next_item.ablation_twins("tiny", "hymoerec") == []
        for label in ablations:
            next_item.main(["--datasets", "tiny", "--work-dir", work, "--phase", "ablation", "--ablation-epochs", "2",
                            "--ablation-patience", "5", "--ablations", label])
        variants = json.load(open(tmp_path / "next_item_ablation.json"))["tiny"]
        report = ["--datasets", "tiny", "--work-dir", work, "--epochs", "2", "--patience", "5", "--models", "sasrec",
                  "--phase", "report"]
        next_item.main(report)
        local = json.load(open(tmp_path / "next_item.json"))["tiny"]["sasrec"]
        (run,) = local["runs"]
        assert run["trained_as"] == "sasrec twin" and run["test"] == variants["sasrec twin"]["test"]
        assert run["valid_ndcg@10_curve"] == [round(x, 5) for x in variants["sasrec twin"]["valid_ndcg@10"]]
        assert local["unfiltered"]["ndcg@10"] <= local["ndcg@10"] + 1e-6 and local["unfiltered_seeds"] == 1
        assert local["ndcg@10"] != pytest.approx(variants["sasrec dropout=0.5"]["test"]["NDCG@10"], abs=1e-9)

        # on another machine with neither the run nor an earlier report: the ablation results' entry
        shutil.rmtree(tiny_benchmark / "tiny" / "ablation" / "sasrec_twin")
        os.remove(tmp_path / "next_item.json")
        next_item.main(report)
        remote = json.load(open(tmp_path / "next_item.json"))["tiny"]["sasrec"]
        (run,) = remote["runs"]
        assert run["source"] == "next_item_ablation.json" and run["test"] == variants["sasrec twin"]["test"]
        assert run["best_epoch"] == variants["sasrec twin"]["best_epoch"] - 1 and run["epochs"] == 2
        assert remote["ndcg@10"] == pytest.approx(local["ndcg@10"]) and remote["unfiltered"] is None
        assert remote["sequences_per_s"] is None and remote["epoch_time_vs_sasrec"] is None
        row = next_item_tables.main_table(json.load(open(tmp_path / "next_item.json"))).splitlines()[-1]
        assert row.startswith(f"| tiny | sasrec | {remote['ndcg@10']:.4f} (1 seed) |") and row.endswith(
            "| n/a | 1 | 2 | n/a | n/a |")

        # a twin entry of a shorter budget than the report's (2 epochs of 3, neither stopped early nor cut off)
        longer = ["--datasets", "tiny", "--work-dir", work, "--epochs", "3", "--patience", "5", "--models", "sasrec",
                  "--phase", "report"]
        next_item.main(longer)
        assert "sasrec" not in json.load(open(tmp_path / "next_item.json"))["tiny"]  # and the 2-epoch entry dropped

        # other main settings: the variant is no twin any more, and the entry of the earlier settings is dropped
        next_item.main(report)
        assert json.load(open(tmp_path / "next_item.json"))["tiny"]["sasrec"]["seeds"] == 1
        model, max_len, options = presets._PRESETS["sasrec_tiny"]
        patch.setitem(presets._PRESETS, "sasrec_tiny", (model, max_len, {**options, "dropout": 0.3}))
        assert next_item.ablation_twins("tiny", "sasrec") == []
        next_item.main(report)
        assert "sasrec" not in json.load(open(tmp_path / "next_item.json"))["tiny"]


def test_cost_phase_writes_every_variant_relative_to_sasrec(tiny_benchmark, tmp_path):
    next_item.main(["--datasets", "tiny", "--work-dir", str(tiny_benchmark), "--phase", "cost", "--rounds", "1",
                    "--steps", "2"])
    section = json.load(open(tmp_path / "next_item_cost.json"))["tiny"]
    assert set(section) == {"sasrec", "hymoerec", "hymoerec expert_hidden_dim=4"}
    assert section["sasrec"]["epoch_time_vs_sasrec"] == 1.0
    for entry in section.values():
        assert entry["sequences_per_s"] > 0
    assert section["hymoerec expert_hidden_dim=4"]["model_options"] == {"expert_hidden_dim": 4}
    assert section["hymoerec expert_hidden_dim=4"]["model"] == "hymoerec"


def test_ablation_trains_each_variant_and_lines_up_validation_curves(tiny_benchmark, tmp_path):
    work = str(tiny_benchmark)
    next_item.train_all(["tiny"], ["sasrec"], [0], work, epochs=3, patience=5, chunk=3)
    next_item.main(["--datasets", "tiny", "--work-dir", work, "--phase", "ablation", "--ablation-epochs", "2"])
    section = json.load(open(tmp_path / "next_item_ablation.json"))["tiny"]
    assert len(section["sasrec"]["valid_ndcg@10"]) == 2  # the main run's first 2 epochs of 3
    assert "hymoerec" not in section  # not trained: no empty entry
    variant = section["hymoerec k=2"]
    assert variant["model_options"]["k"] == 2 and variant["model_options"]["num_experts"] == 2
    assert len(variant["valid_ndcg@10"]) == 2 and all(0.0 <= x <= 1.0 for x in variant["valid_ndcg@10"])
    state_path = tiny_benchmark / "tiny" / "ablation" / "hymoerec_k=2" / "seed0" / "state.json"
    state = json.load(open(state_path))
    assert [h["val_NDCG@10"] for h in state["history"]] == variant["valid_ndcg@10"]
    saved = json.load(open(state_path.parent / "metrics.json"))
    assert variant["test"] == saved["metrics"]["test"] and variant["test"]["count"] == 80
    assert variant["epochs"] == 2 and 1 <= variant["best_epoch"] <= 2 and not variant["stopped_early"]
    # optimizer overrides reach the run; variants of other datasets are not trained here
    optimizer = section["sasrec beta_2=0.9"]["optimizer"]
    assert optimizer["beta_2"] == 0.9 and optimizer["learning_rate"] == next_item.BUDGET["learning_rate"]
    assert "sasrec elsewhere" not in section
    # data overrides reach the run (its recorded settings) and the entry
    assert section["sasrec shuffle_buffer=7"]["data"] == {"shuffle_buffer": 7}
    recorded = json.load(open(tiny_benchmark / "tiny" / "ablation" / "sasrec_shuffle_buffer=7" / "seed0" /
                              "run_config.json"))
    assert recorded["data"]["shuffle_buffer"] == 7 and "data" not in section["hymoerec k=2"]
    assert not (tiny_benchmark / "tiny" / "ablation" / "sasrec_elsewhere").exists()

    # a variant that has the epochs already is not retrained (its state is left as it is)
    before = state_path.stat().st_mtime_ns
    next_item.main(["--datasets", "tiny", "--work-dir", work, "--phase", "ablation", "--ablation-epochs", "1"])
    assert state_path.stat().st_mtime_ns == before
    short = json.load(open(tmp_path / "next_item_ablation.json"))["tiny"]["hymoerec k=2"]
    assert short["valid_ndcg@10"] == variant["valid_ndcg@10"][:1]
    # --no-train reports a run that has fewer epochs than asked as it is, marked partial
    next_item.main(["--datasets", "tiny", "--work-dir", work, "--phase", "ablation", "--ablation-epochs", "4",
                    "--no-train"])
    assert state_path.stat().st_mtime_ns == before
    partial = json.load(open(tmp_path / "next_item_ablation.json"))["tiny"]["hymoerec k=2"]
    assert partial["partial"] and partial["epochs"] == 2 and partial["valid_ndcg@10"] == variant["valid_ndcg@10"]
    assert not variant["partial"]
    # on a machine without the main runs, their saved curves are kept, not overwritten by empty ones
    main_curve = json.load(open(tmp_path / "next_item_ablation.json"))["tiny"]["sasrec"]["valid_ndcg@10"]
    assert len(main_curve) == 3
    shutil.rmtree(tiny_benchmark / "tiny" / "sasrec")
    next_item.main(["--datasets", "tiny", "--work-dir", work, "--phase", "ablation", "--ablation-epochs", "4",
                    "--no-train"])
    assert json.load(open(tmp_path / "next_item_ablation.json"))["tiny"]["sasrec"]["valid_ndcg@10"] == main_curve

    # another seed is trained into its own directory and reported beside seed 0, which keeps its entry
    before = json.load(open(tmp_path / "next_item_ablation.json"))["tiny"]
    next_item.main(["--datasets", "tiny", "--work-dir", work, "--phase", "ablation", "--ablation-epochs", "1",
                    "--seeds", "1", "--ablations", "hymoerec k=2"])
    after = json.load(open(tmp_path / "next_item_ablation.json"))["tiny"]
    assert after["hymoerec k=2"] == before["hymoerec k=2"] and before["hymoerec k=2"]["seed"] == 0
    seed1 = after["hymoerec k=2 (seed 1)"]
    assert seed1["seed"] == 1 and seed1["epochs"] == 1 and len(seed1["valid_ndcg@10"]) == 1
    assert (tiny_benchmark / "tiny" / "ablation" / "hymoerec_k=2" / "seed1" / "metrics.json").exists()


def _merge_one(path, key):
    from benchmarks._timing import merge_json

    merge_json(path, {"section": {key: {"value": key}}})


def test_merge_json_keeps_the_entries_of_processes_writing_at_the_same_time(tmp_path):
    """Two ablations running at once each add their entries (no stale copy written back, no torn file)."""
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


def test_seed_means_row_averages_a_variants_finished_seeds():
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
    # the keys of a variant's seeds, any seed, inverse of seed_suffix: not a longer label's, not a malformed one
    keys = ["v (seed 12)", "v", "v (seed 1)", "v dropout", "v (seed 01)", "v (seed x)", "v dropout (seed 1)"]
    assert next_item.variant_seed_keys(dict.fromkeys(keys), "v") == {0: "v", 1: "v (seed 1)", 12: "v (seed 12)"}
    assert all(next_item.variant_seed_keys({"v" + next_item.seed_suffix(k): 0}, "v") == {
        k: "v" + next_item.seed_suffix(k)} for k in (0, 3, 40))
