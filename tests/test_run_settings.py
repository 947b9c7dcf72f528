"""run_settings: which config changes keep a run directory's run, and the error that names the others."""

import json

import pytest

from tfmoe.training import TrainConfig
from tfmoe.training.run_settings import RunSettingsError, check_same_run, record_run, run_identity

BASE = {"data": {"dir": "prepared", "max_len": 50, "bucket_boundaries": [10, 20]},
        "model": {"name": "sasrec", "hidden_dim": 64, "dropout": 0.2},
        "optimizer": {"beta_2": 0.98}, "training": {"epochs": 200, "seed": 0}, "output_dir": "runs/a"}


@pytest.fixture()
def started(tmp_path):
    config = TrainConfig.from_dict(BASE)
    record_run(str(tmp_path), config)
    return tmp_path, config


@pytest.mark.parametrize("change", [
    "training.epochs=400", "training.strategy=mirrored", "training.mixed_precision=mixed_bfloat16",
    "training.jit_compile=true", "training.early_stopping.patience=3", "training.verbose=0", "training.eval_every=2",
    "training.backup_every_steps=100", "evaluation.filter_seen=false", "evaluation.splits=[valid, test]",
    "data.dir=/elsewhere/prepared", "data.eval_batch_size=1024", "data.cache=false", "output_dir=/moved/a",
    "model.length_groups=4",
])
def test_resuming_may_change_how_long_where_and_what_is_reported(started, change):
    run_dir, config = started
    check_same_run(str(run_dir), config.override([change]))


@pytest.mark.parametrize("change, message", [
    ("model.hidden_dim=32", "model.hidden_dim: 64 when the run started, 32 now"),
    ("model.initializer_range=0.02", "model.initializer_range: null when the run started, 0.02 now"),
    ("model.name=hymoerec", 'model.name: "sasrec" when the run started, "hymoerec" now'),
    ("optimizer.beta_2=0.999", "optimizer.beta_2: 0.98 when the run started, 0.999 now"),
    ("optimizer.learning_rate=0.01", "optimizer.learning_rate: 0.001 when the run started, 0.01 now"),
    ("optimizer.epsilon=1.0e-8", "optimizer.epsilon: 1e-07 when the run started, 1e-08 now"),
    ("training.seed=1", "training.seed: 0 when the run started, 1 now"),
    ("training.steps_per_epoch=10", "training.steps_per_epoch: null when the run started, 10 now"),
    ("data.max_len=200", "data.max_len: 50 when the run started, 200 now"),
    ("data.batch_size=256", "data.batch_size: 128 when the run started, 256 now"),
    ("data.bucket_boundaries=null", "data.bucket_boundaries: [10, 20] when the run started, null now"),
    ("data.shuffle_buffer=10", "data.shuffle_buffer: 10000 when the run started, 10 now"),
])
def test_other_settings_are_another_run_and_the_error_names_them(started, change, message):
    run_dir, config = started
    with pytest.raises(RunSettingsError) as error:
        check_same_run(str(run_dir), config.override([change]))
    text = str(error.value)
    assert message in text and str(run_dir / "run_config.json") in text
    assert text.count(" when the run started, ") == 1  # only the changed setting is listed


def test_a_setting_added_after_the_run_started_counts_as_its_default(started):
    """A run recorded before TrainConfig had ``optimizer.epsilon`` resumes under the default, not another."""
    run_dir, config = started
    saved = json.loads((run_dir / "run_config.json").read_text())
    del saved["optimizer"]["epsilon"]
    (run_dir / "run_config.json").write_text(json.dumps(saved))
    check_same_run(str(run_dir), config)
    with pytest.raises(RunSettingsError, match="optimizer.epsilon: 1e-07 when the run started, 1e-08 now"):
        check_same_run(str(run_dir), config.override(["optimizer.epsilon=1.0e-8"]))


def test_unset_model_options_count_as_their_defaults_and_several_changes_are_all_listed(started):
    run_dir, config = started
    values = config.to_dict()
    values["model"] = {"name": "sasrec"}  # hidden_dim 64 and dropout 0.2 are SASRec's defaults: the same run
    check_same_run(str(run_dir), TrainConfig.from_dict(values))
    values["model"] = {"name": "sasrec", "hidden_dim": 64, "dropout": 0.2, "num_heads": 1, "norm": "pre"}
    check_same_run(str(run_dir), TrainConfig.from_dict(values))  # defaults written out: the same run
    values["model"] = {"name": "sasrec", "routing": "top_k"}  # no default (not a SASRec option)
    values["training"]["seed"] = 3
    with pytest.raises(RunSettingsError) as error:
        check_same_run(str(run_dir), TrainConfig.from_dict(values))
    lines = [line.strip() for line in str(error.value).splitlines() if " when the run started, " in line]
    assert lines == ['model.routing: (unset) when the run started, "top_k" now',
                     "training.seed: 0 when the run started, 3 now"]
    values["model"], values["training"]["seed"] = {"name": "sasrec", "dropout": 0.5}, 0
    with pytest.raises(RunSettingsError, match="model.dropout: 0.2 when the run started, 0.5 now"):
        check_same_run(str(run_dir), TrainConfig.from_dict(values))


def test_model_option_defaults_follow_the_class_hierarchy():
    from tfmoe.training.run_settings import model_option_defaults

    sasrec, fame = model_option_defaults("sasrec"), model_option_defaults("fame")
    assert sasrec["hidden_dim"] == 64 and sasrec["num_heads"] == 1 and sasrec["initializer_range"] is None
    assert fame["num_heads"] == 2 and fame["num_experts"] == 4 and fame["hidden_dim"] == 64  # FAME's own default wins
    assert model_option_defaults("no such model") == {}


def test_runs_older_than_run_config_are_checked_against_metrics_json(tmp_path):
    config = TrainConfig.from_dict(BASE)
    saved = config.override(["data.sequence_features=[timestamps]"]).to_dict()  # added by the trainer: ignored
    (tmp_path / "metrics.json").write_text(json.dumps({"config": saved, "metrics": {}}))
    check_same_run(str(tmp_path), config)
    with pytest.raises(RunSettingsError, match=r"metrics\.json\):\n  model\.dropout: 0\.2 when the run started, 0\.5"):
        check_same_run(str(tmp_path), config.override(["model.dropout=0.5"]))


def test_a_directory_without_a_saved_config_passes(tmp_path):
    check_same_run(str(tmp_path), TrainConfig.from_dict(BASE))
    (tmp_path / "state.json").write_text("{}")  # a run started before the trainer recorded its config
    check_same_run(str(tmp_path), TrainConfig.from_dict(BASE))


def test_identity_flattens_nested_sections_and_skips_resumable_ones():
    identity = run_identity(TrainConfig.from_dict({**BASE, "data": {**BASE["data"], "ctr": {"num_negatives": 4}}}))
    assert identity["model.hidden_dim"] == 64 and identity["data.ctr.num_negatives"] == 4
    assert not any(key.startswith(("training.early_stopping", "evaluation", "output_dir", "data.dir"))
                   for key in identity)
    assert "training.epochs" not in identity and identity["training.seed"] == 0
