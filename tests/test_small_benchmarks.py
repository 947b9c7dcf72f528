"""benchmarks/moe_layers.py, data_pipeline.py and serving.py: their settings files are the configs they run, and a
run on the smallest settings writes a valid record (serving: the record assembled from a fake measurement)."""

import json
import pathlib
import sys

import numpy as np
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import data_pipeline, moe_layers, records, report, serving  # noqa: E402

SETTINGS = ROOT / "benchmarks" / "settings"
CONVERTED = ROOT / "benchmarks" / "results" / "archive" / "converted"
RECORD_KEYS = set(records.REQUIRED) | {"seed"}


def _file_variants(name):
    return yaml.safe_load((SETTINGS / f"{name}.yaml").read_text())["variants"]


@pytest.mark.parametrize("module", [moe_layers, data_pipeline, serving], ids=lambda m: m.BENCHMARK)
def test_every_variant_is_a_complete_config_read_from_the_settings_file(module):
    variants = _file_variants(module.BENCHMARK)
    assert {"default", "quick"} <= set(variants)
    for name, config in variants.items():
        assert module.variant_config(name) == config
        assert set(config) == set(variants["default"]), name  # no variant leans on another
        assert json.loads(json.dumps(config)) == config  # JSON-native: the record holds it as read
    copy = module.variant_config("default")
    copy["seed"] = 99
    assert module.variant_config("default")["seed"] == 0
    with pytest.raises(ValueError, match="no variant 'nope'"):
        module.variant_config("nope")


def test_the_default_variants_hold_the_settings_of_the_converted_results():
    """The committed (converted) records stay the current results of the default variants: same settings."""
    moe = json.loads((CONVERTED / "moe_layers.json").read_text())
    config = moe_layers.variant_config("default")
    assert {k: config[k] for k in ("num_experts", "top_k", "capacity_factor", "sequence_length", "activation")} == {
        k: moe["setup"][k] for k in ("num_experts", "top_k", "capacity_factor", "sequence_length", "activation")}
    assert moe["setup"]["timing"] == f"median of {config['rounds']} interleaved rounds after {config['warmup']} " \
                                     "warm-up calls"
    assert sorted({(row["tokens"], row["d"]) for row in moe["table"]}) == sorted(map(tuple, config["shapes"]))
    assert all(row["inner"] == config["inner_multiplier"] * row["d"] for row in moe["table"])

    pipeline = json.loads((CONVERTED / "data_pipeline.json").read_text())
    config = data_pipeline.variant_config("default")
    assert config["num_items"] == pipeline["settings"]["num_items"]
    assert config["batch_size"] == pipeline["settings"]["batch_size"]
    assert {str(e["max_len"]): e["users"] for e in config["histories"]} == pipeline["settings"]["users"]
    assert [(r["task"], r["max_len"], r["model"], r["reader_features"]) for r in pipeline["train_step"]] == [
        (s["task"], s["max_len"], s["model"], list(data_pipeline.reader_features(s))) for s in config["train_step"]]
    assert [(r["variant"]) for r in pipeline["reader_throughput"][:3]] == list(config["reader_variants"])

    served = json.loads((CONVERTED / "serving.json").read_text())["config"]
    config = serving.variant_config("default")
    for key in ("clients", "phase_duration_s", "max_requests_per_phase", "request_timeout_s", "xla", "server_flags",
                "goal"):
        assert config[key] == served[key], key
    options = config["model"]["options"]
    assert served["model"] == f"SASRec {options}, random weights" and served["num_items"] == options["num_items"]
    for name in ("moe_layers", "data_pipeline", "serving"):  # their benchmarks write records, not these files
        assert not (ROOT / "benchmarks" / "results" / f"{name}.json").exists()


def _check_record(record, root, benchmark, variant, config):
    saved = records.read_record(record["path"])
    assert set(saved) >= RECORD_KEYS
    assert saved["benchmark"] == benchmark and saved["variant"] == variant and saved["config"] == config
    assert saved["epochs"] is None and saved["seed"] == config["seed"] and saved["partial"] is False
    assert saved["command"] == ["benchmarks/test.py"] and set(saved["commit"]) == {"sha", "dirty"}
    assert saved["machine"]["tensorflow"] and saved["date"].endswith("+00:00")
    assert record["path"] == records.record_path(saved, str(root))
    return saved


@pytest.fixture
def written(monkeypatch):
    """The ``partial`` flag of every record a run writes, in order."""
    flags, write = [], records.write_record
    monkeypatch.setattr(records, "write_record", lambda record, root: flags.append(record["partial"])
                        or write(record, root))
    return flags


@pytest.mark.slow
def test_a_tiny_moe_layers_run_writes_one_record_per_run(tmp_path, written):
    tiny = {"shapes": [[16, 8], [32, 8]], "sequence_length": 8, "warmup": 0, "rounds": 1, "profile": False}
    record = moe_layers.run("quick", tiny, str(tmp_path), command=["benchmarks/test.py"])
    config = {**moe_layers.variant_config("quick"), **tiny, "step": moe_layers.STEP, "flops": moe_layers.FLOPS}
    saved = _check_record(record, tmp_path, "moe_layers", "quick", config)
    assert written == [True, False]  # after each shape; the finished record replaces the partial one
    assert len(records.load_records(str(tmp_path))) == 1
    assert saved["data_hash"] == records.data_hash([])
    metrics = saved["metrics"]
    assert metrics["largest_setting"] == {"tokens": 32, "d": 8, "inner": 32}
    assert [(r["tokens"], r["variant"]) for r in metrics["table"]] == [
        (t, v) for t in (16, 32) for v in ("sparse_top2_of_8", "dense_8", "one_ffn")]
    at_32 = {r["variant"]: r["train_step_ms"] for r in metrics["table"] if r["tokens"] == 32}
    assert metrics["sparse_top2_of_8_over_dense_8_time"] == pytest.approx(at_32["sparse_top2_of_8"] / at_32["dense_8"])
    assert metrics["sparse_top2_of_8_over_one_ffn_time"] == pytest.approx(at_32["sparse_top2_of_8"] / at_32["one_ffn"])
    assert all(r["mode_used"] in ("xla", "graph") and r["profiler_forward_gflops"] is None for r in metrics["table"])
    text = report.render([saved])
    assert "## MoE layers: quick" in text and "| sparse_top2_of_8_over_dense_8_time |" in text


@pytest.mark.slow
def test_a_tiny_data_pipeline_run_writes_one_record_with_the_data_hash(tmp_path, written):
    tiny = {"num_items": 150, "num_categories": 5, "shards": 2, "histories": [{"max_len": 8, "users": 16}],
            "batch_size": 4, "reader_variants": {"default": {}, "cache+ids": {"cache": True, "sequence_features": []}},
            "batches": 1, "repeats": 1, "warmup": 1, "steps": 1, "rounds": 2,
            "train_step": [{"task": "ctr", "max_len": 8, "model": "ctr_model", "reader_features": ["categories"]}]}
    record = data_pipeline.run("quick", tiny, str(tmp_path), command=["benchmarks/test.py"])
    saved = _check_record(record, tmp_path, "data_pipeline", "quick", {**data_pipeline.variant_config("quick"), **tiny})
    assert written == [True, False]  # after the throughput table, after the training-step setting
    assert saved["data_hash"].startswith("sha256:") and saved["data_hash"] != records.data_hash([])
    metrics = saved["metrics"]
    assert [(r["task"], r["variant"]) for r in metrics["reader_throughput"]] == [
        (task, name) for task in ("next_item", "ctr") for name in ("default", "cache+ids")]
    assert all(r["rows_per_s"] > 0 for r in metrics["reader_throughput"])
    (step,) = metrics["train_step"]
    assert step["model"] == "ctr_model" and step["features"] == "model" and step["reader_features"] == ["categories"]
    assert len(step["rounds_reader_ms"]) == 2 and metrics["reader_over_memory_step_time"] == step["ratio"]
    assert "## Data pipeline: quick" in report.render([saved])


def _phase(failed=0):
    window = {"p50_ms": 1.0, "p99_ms": 2.0, "mean_ms": 1.1, "max_ms": 3.0, "requests": 5, "window_s": [1.0, 2.0]}
    return {"p50_ms": 1.0, "p99_ms": 2.0, "mean_ms": 1.1, "max_ms": 3.0, "qps": 50.0, "rows_per_s": 50.0,
            "requests": 20 + failed, "failed": failed, "failures_sample": [], "versions_seen": [1, 2],
            "swapped_under_load": True, "wall_s": 0.4, "during_swap": window, "outside_swap": window,
            "load_average_1min": {"mean": 0.5, "max": 0.7}}


def test_a_serving_record_is_the_resolved_config_and_the_phases(tmp_path):
    args = serving.parse_arguments([])
    config = serving.apply_arguments(serving.variant_config(args.variant), args)
    assert config == serving.variant_config("default")  # no arguments: the settings file's variant
    resolved = serving.resolved_config(config, server="local", max_len=200, num_items=3416)
    assert resolved == {**config, "server": "local", "task": "next_item", "signature": "top_k", "max_len": 200,
                        "num_items": 3416, "history_len": 200, "client_retries": 0}
    metrics = serving.serving_metrics({"batch1": _phase(), "batch64": _phase(failed=2)},
                                      {"version_2_push_to_serving_s": 1.5, "version_3_push_to_serving_s": 2.0},
                                      [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert metrics["failed_requests"] == 2 and metrics["requests"] == 42
    assert metrics["load_average"]["before"] == [0.1, 0.2, 0.3] and metrics["load_average"]["after"] == [0.4, 0.5, 0.6]
    record = serving.serving_record("default", resolved, metrics, partial=False, command=["benchmarks/test.py"])
    record["path"] = records.write_record(record, str(tmp_path))
    saved = _check_record(record, tmp_path, "serving", "default", resolved)
    assert saved["metrics"] == metrics and saved["data_hash"] == records.data_hash([])
    text = report.render([saved])
    assert "## Serving: default" in text and "| failed_requests | 2 |" in text


def test_serving_arguments_change_the_variant_and_pick_the_model():
    args = serving.parse_arguments(["--quick", "--no-xla", "--duration", "2", "--history-len", "0",
                                    "--server-flag=--x=1", "--model-factory", "pkg.mod:fn"])
    config = serving.apply_arguments(serving.variant_config(args.variant), args)
    assert args.variant == "quick" and config["model"] == {"factory": "pkg.mod:fn"}
    assert config["xla"] is False and config["phase_duration_s"] == 2 and config["server_flags"] == ["--x=1"]
    assert serving.resolved_config(config, server="local", max_len=50, num_items=9)["history_len"] == 0
    assert serving.parse_arguments(["--xla"]).xla is True and serving.parse_arguments([]).xla is None
    model, spec = serving.model_factory(serving.variant_config("quick")["model"])()
    history = spec.feature(spec.history_feature)
    assert history.vocab_size == 1001 and history.max_len == 50 and spec.top_k == 10
    assert model.count_params() > 0


def test_the_ctr_serving_variants_serve_the_long_ctr_benchmarks_din_and_mos_din_at_length_1000():
    from benchmarks import long_ctr

    for variant, name in (("ctr_din_l1000", "din"), ("ctr_mos_din_l1000", "mos_din")):
        config = serving.variant_config(variant)
        model, spec = serving.model_factory(config["model"])()
        assert spec.task == "ctr" and type(model).__name__ == {"din": "DIN", "mos_din": "MoSDIN"}[name]
        assert {f.name for f in spec.features} == {"history", "target_item"}
        assert spec.feature("history").max_len == 1000 and model.num_items == 3416
        expected = long_ctr.model_options(name, 1000, "ml-1m-ctr-pop")
        expected.pop("name")
        for key, value in expected.items():  # the long-CTR benchmark's model, option by option
            served = getattr(model, key)
            assert (list(served) if isinstance(value, list) else served) == value, (variant, key)
    with pytest.raises(ValueError, match="options.name or options.preset"):
        serving.model_factory({"factory": "registry", "options": {"num_items": 5}, "seed": 0})()


def test_ctr_requests_carry_histories_and_one_candidate_per_row():
    import tensorflow as tf

    pool = serving.build_requests(50, 12, batch_size=3, seed=1, history_len=0, pool_size=4, task="ctr")
    assert len(pool) == 4
    for request in pool:
        assert request.model_spec.name == serving.MODEL_NAME and request.model_spec.signature_name == "predict_raw"
        history = tf.make_ndarray(request.inputs["history"])
        target = tf.make_ndarray(request.inputs["target_item"])
        assert history.shape == (3, 12) and target.shape == (3,) and target.dtype == np.int64
        assert ((1 <= target) & (target <= 50)).all() and ((0 <= history) & (history <= 50)).all()
        lengths = np.count_nonzero(history, axis=1)
        assert ((1 <= lengths) & (lengths <= 12)).all()
        assert all((row[:12 - n] == 0).all() for row, n in zip(history, lengths))  # left-padded
    (top_k,) = serving.build_requests(50, 12, batch_size=2, seed=1, pool_size=1)
    assert top_k.model_spec.signature_name == "top_k" and set(top_k.inputs) == {"history", "exclude_seen"}
    assert serving.resolved_config(serving.variant_config("ctr_din_l1000"), server="local", max_len=1000,
                                   num_items=3416, task="ctr")["signature"] == "predict_raw"
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        serving.build_requests(50, 12, batch_size=1, seed=0, task="ranking")
