"""benchmarks/long_ctr.py: every model config is valid, budgets and partial labels, comparisons, session purity."""

import argparse
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import long_ctr  # noqa: E402


def _args(tmp_path, **overrides):
    values = dict(data_dir=str(tmp_path / "data"), work_dir=str(tmp_path / "work"), epochs=2, patience=3,
                  samples_per_user=2, steps_per_epoch=None, seeds=[0])
    values.update(overrides)
    return argparse.Namespace(**values)


def test_every_model_and_length_gives_a_valid_config(tmp_path):
    from tfmoe.training import TrainConfig

    args = _args(tmp_path)
    for length in long_ctr.LENGTHS:
        for backbone in long_ctr.BACKBONES:
            for variant in long_ctr.VARIANTS:
                name = variant + backbone
                config = TrainConfig.from_dict(long_ctr.ml1m_config(args, name, length, 0))
                assert config.model["name"] == name and config.data.max_len == length
                assert config.output_dir.endswith(f"L{length}/{name}/spu2/seed0")
    mos = long_ctr.model_options("mos_transact", 1000)
    assert mos["global_expert"] == "sessions" and mos["num_themes"] == 8
    assert long_ctr.model_options("gshard_twin", 200)["num_experts"] == 4
    assert long_ctr.model_options("expert_choice_din", 50)["capacity_factor"] == 2.0


def test_budget_tags_round_trip():
    assert long_ctr.parse_tag(long_ctr.sampling_tag(10, None)) == (10, None)
    assert long_ctr.parse_tag(long_ctr.sampling_tag(2, 7)) == (2, 7)


def _run(auc, gauc, epochs=2, budget=False):
    return {"seed": 0, "finished": True, "epochs": epochs, "best_epoch": epochs, "stopped_early": False,
            "budget_reached": budget, "test": {"AUC": auc, "GAUC": gauc, "LogLoss": 0.5, "count": 10}}


def test_entries_are_partial_unless_the_full_protocol_ran():
    untrained = long_ctr._entry([], {"analytic": 10, "profiler": 11.0, "params": 3}, None)
    assert untrained["auc"] is None and untrained["seeds"] == 0 and untrained["partial"] and untrained["flops"] == 10
    short = long_ctr._entry([_run(0.8, 0.7)], {"analytic": 10}, "spu2")
    assert short["partial"] and len(short["partial_reasons"]) == 3
    full = long_ctr._entry([dict(_run(0.8, 0.7, budget=True), seed=s) for s in range(3)], {"analytic": 10},
                           long_ctr.sampling_tag(long_ctr.PROTOCOL["samples_per_user"], None))
    assert not full["partial"] and full["seeds"] == 3


def test_comparisons_report_gains_and_flops_ratio():
    section = {"1000": {"din": long_ctr._entry([_run(0.80, 0.70)], {"analytic": 100}, "spu2"),
                        "mos_din": long_ctr._entry([_run(0.81, 0.72)], {"analytic": 150}, "spu2"),
                        "gshard_din": long_ctr._entry([], {"analytic": 300}, None)}}
    row = long_ctr.comparisons(section)["1000"]["mos_din"]
    assert set(row) == {"vs_din"}
    assert row["vs_din"]["auc_rel"] == pytest.approx(0.0125) and row["vs_din"]["flops_ratio"] == 1.5
    assert row["vs_din"]["mos_wins_gauc"] and row["vs_din"]["partial"]


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
    preset = presets.get("mos_din_ml1m_ctr")
    options = long_ctr.model_options("mos_din", preset["max_len"])
    assert {k: options[k] for k in preset["options"]} == preset["options"]  # the preset, and MoS's loss settings
    assert long_ctr.prepare_arguments("taobao")[-2:] == ["--on-error", "skip"]


def test_report_writes_a_record_per_run_partial_unless_the_full_protocol_ran(tmp_path, monkeypatch):
    from benchmarks import records

    args = _args(tmp_path, lengths=[50], backbones=["din"], records=str(tmp_path / "records"))
    spu = long_ctr.PROTOCOL["samples_per_user"]
    for name, tag in (("din", f"spu{spu}"), ("mos_din", "spu2")):
        (tmp_path / "work" / "ml-1m-ctr" / "L50" / name / tag).mkdir(parents=True)
    (tmp_path / "work" / "flops.json").write_text('{"50": {"din": {"analytic": 10, "profiler": 11.0, "params": 3}}}')

    def fake_run(config):
        if not config["output_dir"].endswith("seed0") or "/taobao-smoke/" in config["output_dir"]:
            return None
        return {"finished": True, "epochs": 4, "best_epoch": 2, "stopped_early": True, "budget_reached": True,
                "valid": {"AUC": 0.7}, "test": {"AUC": 0.8, "GAUC": 0.7, "LogLoss": 0.5, "count": 10}}

    monkeypatch.setattr(long_ctr, "_run_result", fake_run)
    monkeypatch.setattr(long_ctr.paths, "SHARED_DATA", str(tmp_path / "no-shared-data"))  # hash the prepared data
    (tmp_path / "data" / "ml-1m").mkdir(parents=True)
    (tmp_path / "data" / "ml-1m" / "summary.json").write_text("{}")
    monkeypatch.setattr(long_ctr, "COMMAND", ["benchmarks/long_ctr.py", "--phase", "report"])
    payload = long_ctr.report(args)
    assert payload["ml-1m-ctr"]["50"]["din"]["auc"] == 0.8
    found = {r["variant"]: r for r in records.load_records(str(tmp_path / "records"), "long_ctr")}
    assert set(found) == {"ml-1m-ctr/L50/din", "ml-1m-ctr/L50/mos_din"}
    din, mos = found["ml-1m-ctr/L50/din"], found["ml-1m-ctr/L50/mos_din"]
    assert not din["partial"] and mos["partial"]  # 2 samples per user and epoch: not the protocol's
    assert din["metrics"]["test"]["AUC"] == 0.8 and din["metrics"]["flops"] == 10 and din["epochs"] == 4
    assert mos["metrics"]["flops"] is None and mos["seed"] == 0
    assert din["config"]["data"]["dir"] == "<data-dir>/ml-1m"
    assert din["config"]["output_dir"] == f"<work-dir>/ml-1m-ctr/L50/din/spu{spu}/seed0"
    assert din["config"]["model"] == long_ctr.model_options("din", 50)
    assert din["command"] == ["benchmarks/long_ctr.py", "--phase", "report"]
    assert din["data_hash"] == records.data_hash([str(tmp_path / "data" / "ml-1m")])
