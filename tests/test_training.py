"""The trainer: config validation, learning, early stopping, resume after interruption, 1 vs 2 replicas, CLI."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import yaml
from test_dataset import write_prepared

from tfmoe.training import RunSettingsError, TrainConfig, evaluate_best, load_result, train
from tfmoe.training.callbacks import TrainingState

NUM_ITEMS, MAX_LEN, USERS = 60, 12, 240
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def successor_sequences(users=USERS, seed=0, lengths=(5, 20)):
    """Item i is always followed by i % 60 + 1: a model that learns it ranks every target first."""
    rng = np.random.default_rng(seed)
    out = {}
    for user in range(1, users + 1):
        start, length = rng.integers(1, NUM_ITEMS + 1), rng.integers(*lengths)
        out[user] = [int((start - 1 + i) % NUM_ITEMS + 1) for i in range(length)]
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(str(tmp_path_factory.mktemp("prepared")), successor_sequences(), shards=2,
                          num_items=NUM_ITEMS)


def config(prepared, out, **sections):
    values = {
        "data": {"dir": prepared, "max_len": MAX_LEN, "batch_size": 32, "eval_batch_size": 128},
        "model": {"name": "sasrec", "hidden_dim": 16, "dropout": 0.0},
        "optimizer": {"learning_rate": 0.01},
        "training": {"epochs": 3, "verbose": 0},
        "output_dir": str(out),
    }
    for section, update in sections.items():
        values[section] = {**values[section], **update} if isinstance(values.get(section), dict) else update
    return values


# ----- config ----------------------------------------------------------------------------------------
def test_config_defaults_overrides_and_files(tmp_path):
    base = {"data": {"dir": "p"}, "model": {"name": "fame", "num_experts": 2}}
    c = TrainConfig.from_dict(base)
    assert (c.training.epochs, c.training.strategy, c.training.early_stopping.patience) == (200, "default", 10)
    assert c.model_options == {"num_experts": 2}
    c2 = c.override(["training.epochs=3", "model.hidden_dim=32", "training.early_stopping.monitor=HR@10",
                     "training.mixed_precision=null"])
    assert (c2.training.epochs, c2.model["hidden_dim"], c2.training.early_stopping.monitor) == (3, 32, "HR@10")
    assert c.training.epochs == 200  # override returns a new config
    for name, dump in (("c.yaml", yaml.safe_dump), ("c.json", json.dumps)):
        path = tmp_path / name
        path.write_text(dump(c2.to_dict()))
        assert TrainConfig.load(str(path)) == c2


@pytest.mark.parametrize(
    "values, match",
    [
        ({"data": {"dir": "p", "max_lenn": 3}, "model": {"name": "sasrec"}}, r"unknown key\(s\) config.data.max_lenn"),
        ({"data": {"dir": "p"}, "model": {"name": "sasrec"}, "trainin": {}}, r"config.trainin"),
        ({"data": {"dir": "p"}, "model": {}}, "`model.name` must name a registered model"),
        ({"data": {"dir": "p"}, "model": {"name": "sasrec", "num_items": 3}}, r"must not set \['num_items'\]"),
        ({"data": {"dir": "p", "batch_size": 0}, "model": {"name": "sasrec"}}, "data.batch_size"),
        ({"data": {"dir": "p"}, "model": {"name": "sasrec"}, "training": {"strategy": "gpu"}}, "training.strategy"),
        ({"data": {"dir": "p"}, "model": {"name": "sasrec"}, "optimizer": {"learning_rate": -1}},
         "optimizer.learning_rate"),
        ({"data": {"dir": "p"}, "model": {"name": "sasrec"}, "training": {"early_stopping": {"patience": 0}}},
         "training.early_stopping.patience"),
        ({"model": {"name": "sasrec"}}, "data.dir"),
        ({"data": {"dir": "p"}, "model": {"name": "sasrec"}, "optimizer": {"epsilon": 0}}, "optimizer.epsilon"),
    ],
)
def test_config_errors_name_the_bad_key(values, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(values)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_optimizer_settings_reach_the_keras_optimizer(name):
    from tfmoe.training.trainer import make_optimizer

    settings = {"name": name, "learning_rate": 0.005, "beta_1": 0.8, "beta_2": 0.999, "epsilon": 1e-8}
    c = TrainConfig.from_dict({"data": {"dir": "p"}, "model": {"name": "sasrec"}, "optimizer": settings})
    optimizer = make_optimizer(c.optimizer)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.8, 0.999, 1e-8)
    assert np.isclose(float(optimizer.learning_rate), 0.005)
    default = make_optimizer(TrainConfig.from_dict({"data": {"dir": "p"}, "model": {"name": "sasrec"}}).optimizer)
    assert default.epsilon == keras.optimizers.Adam().epsilon == 1e-7


def test_bad_override_and_unknown_model(tmp_path, prepared):
    c = TrainConfig.from_dict({"data": {"dir": "p"}, "model": {"name": "sasrec"}})
    with pytest.raises(ValueError, match="must look like"):
        c.override(["training.epochs"])
    with pytest.raises(ValueError, match="'data' is not a section|not a section"):
        c.override(["data.dir.x=1"])
    with pytest.raises(ValueError, match="unknown model 'sasrek'; known models: .*sasrec"):
        train(config(prepared, tmp_path, model={"name": "sasrek"}))
    with pytest.raises(ValueError, match="is not a directory"):
        train(config(str(tmp_path / "missing"), tmp_path / "o"))
    with pytest.raises(ValueError, match="bad `model` options for 'sasrec'"):
        train(config(prepared, tmp_path / "o2", model={"name": "sasrec", "hidden_dims": 3}))


def test_early_stopping_state_bookkeeping():
    state = TrainingState(monitor="LogLoss")  # lower is better
    assert [state.record(e, {"val_LogLoss": x}, 0.01) for e, x in enumerate([0.7, 0.65, 0.645, 0.6])] == [
        True, True, False, True]
    assert (state.best, state.best_epoch, state.wait) == (0.6, 3, 0)
    state.rewind(2)  # epochs 2 and 3 are rerun after a restart
    assert ([h["epoch"] for h in state.history], state.best_epoch, state.wait) == ([0, 1], 1, 0)
    assert not state.record(2, {"loss": 1.0}, 0.0)  # no validation that epoch: wait unchanged
    assert state.wait == 0


def test_state_lists_the_devices_a_resumed_run_trained_on(tmp_path):
    state = TrainingState(monitor="NDCG@10")
    for device in ("2 CPU cores", "2 CPU cores", "1 x H100", "1 x H100"):  # restarts on the same device add nothing
        state.trained_on(device)
    state.save(str(tmp_path / "state.json"))
    loaded = TrainingState.load(str(tmp_path / "state.json"), "NDCG@10")
    assert loaded.devices == ["2 CPU cores", "1 x H100"] and loaded.device == "2 CPU cores + 1 x H100"
    assert TrainingState(monitor="NDCG@10").device is None


# ----- training ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["sasrec", "hymoerec", "fame"])
def test_learns_planted_pattern_saves_and_reloads(prepared, tmp_path, model):
    extra = {"num_experts": 2} if model != "sasrec" else {}
    options = {"name": model, "hidden_dim": 16, "dropout": 0.0, **extra}
    result = train(config(prepared, tmp_path, model=options))
    assert result.epochs_run == 3 and result.best_epoch is not None
    assert result.test_metrics["HR@10"] > 0.9, result.test_metrics  # chance: 10 / 60 unseen items ~ 0.2
    assert result.test_metrics["count"] == USERS
    assert result.sequences_per_s > 0
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["metrics"]["test"] == pytest.approx(result.test_metrics)
    assert [h["epoch"] for h in saved["history"]] == [0, 1, 2]
    assert saved["devices"] == [saved["device"]] and saved["device"].startswith("CPU (")
    assert os.listdir(tmp_path / "logs" / "validation")  # TensorBoard validation scalars
    if model != "sasrec":
        assert os.listdir(tmp_path / "logs" / "routing")
    history = np.array([[0] * (MAX_LEN - 4) + [5, 6, 7, 8]])
    reloaded = keras.saving.load_model(str(tmp_path / "model.keras"))
    np.testing.assert_allclose(reloaded.last_scores({"history": history}),
                               result.model.last_scores({"history": history}), rtol=1e-5, atol=1e-5)
    assert int(np.argmax(result.model.last_scores({"history": history}))) == 9
    again = train(config(prepared, tmp_path, model=options))  # finished: returns the saved result
    assert again.test_metrics == pytest.approx(result.test_metrics) and again.best_epoch == result.best_epoch


def test_early_stopping_keeps_the_best_epoch(prepared, tmp_path):
    class Sabotage(keras.callbacks.Callback):  # from epoch 1 on, weights get worse: epoch 0 stays best
        def on_epoch_begin(self, epoch, logs=None):
            if epoch >= 1:
                self.model.optimizer.learning_rate = -0.05

    values = config(prepared, tmp_path, training={"epochs": 10, "verbose": 0,
                                                  "early_stopping": {"patience": 2}})
    result = train(values, callbacks=[Sabotage()])
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 0
    best = result.history[0]["val_NDCG@10"]
    assert result.valid_metrics["NDCG@10"] == pytest.approx(best, abs=1e-6)  # best weights were restored
    assert all(h["val_NDCG@10"] < best for h in result.history[1:])


def test_a_finished_run_asked_for_a_split_it_lacks_scores_it_without_training(prepared, tmp_path):
    class CountBatches(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            CountBatches.batches += 1

    first = train(config(prepared, tmp_path, training={"epochs": 2, "verbose": 0}, evaluation={"splits": []}))
    assert set(first.metrics) == {"valid"} and first.epochs_run == 2
    again = train(config(prepared, tmp_path, training={"epochs": 2, "verbose": 0}), callbacks=[CountBatches()])
    assert CountBatches.batches == 0  # no epoch ran again
    assert set(again.metrics) == {"valid", "test"} and again.epochs_run == 2 and again.history == first.history
    assert again.valid_metrics == first.valid_metrics
    rescored = evaluate_best(config(prepared, tmp_path), splits=["test"])["test"]
    assert again.test_metrics == pytest.approx(rescored, abs=1e-6)


def test_resumes_after_an_interruption_mid_epoch(prepared, tmp_path):
    backups = {}  # optimizer step -> the weights right after it, at the steps of a backup (every 4)

    class Crash(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            if step % 4 == 0:  # runs after the trainer's BackupAndRestore: the weights it just saved
                backups[step] = [v.numpy().copy() for v in [*self.model.weights, *self.model.optimizer.variables]]
            if step == 8 * 2 + 5:  # epoch 2 (8 batches per epoch), batch 5
                raise KeyboardInterrupt("simulated crash")

    class Restored(keras.callbacks.Callback):
        at_start = None

        def on_train_begin(self, logs=None):  # after the trainer's BackupAndRestore has restored the backup
            Restored.at_start = (int(self.model.optimizer.iterations.numpy()), [
                v.numpy().copy() for v in [*self.model.weights, *self.model.optimizer.variables]])

        def on_train_end(self, logs=None):
            Restored.steps = int(self.model.optimizer.iterations.numpy())

    class Epochs(keras.callbacks.Callback):
        begun = []

        def on_epoch_begin(self, epoch, logs=None):
            self.begun.append(epoch)

    values = config(prepared, tmp_path, training={"epochs": 4, "verbose": 0, "backup_every_steps": 4})
    with pytest.raises(KeyboardInterrupt):
        train(values, callbacks=[Crash()])
    assert not os.path.exists(tmp_path / "metrics.json")
    meta = json.load(open(tmp_path / "backup" / "training_metadata.json"))
    assert meta["epoch"] == 2  # the last backup was taken inside epoch 2
    other = config(prepared, tmp_path, model={"hidden_dim": 32}, training={**values["training"], "seed": 1})
    with pytest.raises(RunSettingsError, match=r"(?s)model.hidden_dim: 16 when the run started, 32 now.*"
                                               r"training.seed: 0 when the run started, 1 now"):
        train(other)  # another model in the same directory: refused before anything is touched
    assert json.load(open(tmp_path / "backup" / "training_metadata.json"))["epoch"] == 2
    result = train(values, callbacks=[Epochs(), Restored()])
    assert Epochs.begun == [2, 3]  # continued with the interrupted epoch, not from scratch
    # the restart starts from the last backup (step 20): weights and optimizer state (step, Adam moments) alike ...
    step, weights = Restored.at_start
    assert step == 20
    assert len(weights) == len(backups[20])
    for got, saved in zip(weights, backups[20]):
        np.testing.assert_array_equal(got, saved)
    # ... and (Keras restarts the interrupted epoch from its first batch) runs epochs 2 and 3 in full
    assert Restored.steps == 20 + 2 * 8
    assert result.epochs_run == 4 and [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert result.test_metrics["HR@10"] > 0.9
    assert load_result(str(tmp_path)).best_epoch == result.best_epoch
    Epochs.begun = []
    longer = train({**values, "training": {**values["training"], "epochs": 6}}, callbacks=[Epochs()])
    assert Epochs.begun == [4, 5] and [h["epoch"] for h in longer.history] == list(range(6))  # extended


@pytest.mark.slow
def test_a_run_interrupted_between_epochs_ends_like_an_uninterrupted_one(prepared, tmp_path):
    """Deterministic settings (no dropout, seed 0, no shuffling): a crash right after epoch 1 and a restart give
    the weights of the run that never stopped (the backup of epoch 1 held weights, optimizer state and epoch)."""

    class Crash(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == 8 * 2 + 1:  # first batch of epoch 2
                raise KeyboardInterrupt("simulated crash")

    class Final(keras.callbacks.Callback):  # the state when fit ends (the trainer then reloads the best epoch's)
        def on_train_end(self, logs=None):
            self.values = [v.numpy().copy() for v in [*self.model.weights, *self.model.optimizer.variables]]
            # optimizer paths carry a per-process counter in Keras 3.15 ("adam_71/..."): compare the rest
            self.paths = [re.sub(r"^adam_\d+/", "adam/", v.path)
                          for v in [*self.model.weights, *self.model.optimizer.variables]]

    data = {"dir": prepared, "max_len": MAX_LEN, "batch_size": 32, "shuffle": False}
    values = config(prepared, tmp_path / "interrupted", data=data, training={"epochs": 3, "verbose": 0})
    with pytest.raises(KeyboardInterrupt):
        train(values, callbacks=[Crash()])
    resumed, straight = Final(), Final()
    train(values, callbacks=[resumed])
    train({**values, "output_dir": str(tmp_path / "straight")}, callbacks=[straight])
    assert resumed.paths == straight.paths
    for a, b, path in zip(resumed.values, straight.values, resumed.paths):  # weights, step, Adam moments
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)
    assert int(resumed.values[resumed.paths.index("adam/iteration")]) == 3 * 8


def test_two_replicas_match_one_replica(tmp_path, mirrored_strategy):
    import tensorflow as tf

    assert mirrored_strategy.num_replicas_in_sync == 2
    # every training row has MAX_LEN real positions, so the per-replica means average to the global mean;
    # no shuffling: a strategy creates one more iterator of the dataset, so its seeded epoch orders differ
    prepared = write_prepared(str(tmp_path / "data"), successor_sequences(lengths=(MAX_LEN + 3, 30)), shards=2,
                              num_items=NUM_ITEMS)
    # SGD with momentum: Adam's normalisation would blow float summation-order noise of tiny gradients up
    values = config(prepared, tmp_path / "one", training={"epochs": 2, "verbose": 0},
                    data={"dir": prepared, "max_len": MAX_LEN, "batch_size": 32, "shuffle": False},
                    optimizer={"name": "sgd", "learning_rate": 0.5, "beta_1": 0.9})
    one = train(values, strategy=tf.distribute.get_strategy())
    two = train({**values, "output_dir": str(tmp_path / "two")}, strategy=mirrored_strategy)
    for a, b in zip(one.model.weights, two.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-4, err_msg=a.path)
    assert two.test_metrics == pytest.approx(one.test_metrics, abs=1e-3)
    assert two.history[-1]["loss"] == pytest.approx(one.history[-1]["loss"], rel=1e-4)  # logged loss not doubled


@pytest.mark.slow
def test_cli_run_killed_mid_epoch_resumes_and_finishes(prepared, tmp_path):
    path = tmp_path / "run.yaml"
    values = config(prepared, tmp_path / "out", training={"epochs": 30, "verbose": 0, "backup_every_steps": 3,
                                                          "early_stopping": {"patience": 50}})
    path.write_text(yaml.safe_dump(values))
    command = [os.path.join(os.path.dirname(sys.executable), "tfmoe"), "train", "--config", str(path)]
    env = {**os.environ, "PYTHONPATH": REPO}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    meta = tmp_path / "out" / "backup" / "training_metadata.json"
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None:
        if meta.exists() and json.loads(meta.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "out" / "metrics.json").exists()
    resumed_at = json.loads(meta.read_text())["epoch"]
    second = subprocess.run(command + ["--set", "training.epochs=30"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout[second.stdout.index("{"):])
    assert summary["epochs_run"] == 30 and summary["metrics"]["test"]["HR@10"] > 0.9
    state = json.load(open(tmp_path / "out" / "state.json"))
    assert [h["epoch"] for h in state["history"]] == list(range(30)) and resumed_at >= 2
    bad = subprocess.run(command + ["--set", "training.epochz=1"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "training.epochz" in bad.stderr


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(REPO, "configs"))))
def test_shipped_configs_load_and_build(name):
    from tfmoe.training.trainer import build_model, resolve_task

    loaded = TrainConfig.load(os.path.join(REPO, "configs", name))
    task = resolve_task(loaded)
    model = build_model(loaded, task, {"num_items": 50, "num_categories": 0})
    assert model.max_len == loaded.data.max_len


def test_trains_a_ctr_model_and_requests_the_inputs_it_reads(prepared, tmp_path):
    values = config(prepared, tmp_path, data={"ctr": {"samples_per_user": 4}, "batch_size": 64})
    values["model"] = {"name": "mos_din", "embedding_dim": 16, "mlp_units": [16], "session_mode": "session_ids",
                       "session_length": 3, "num_themes": 2, "sessions_per_theme": 2, "short_window": 3}
    result = train(values)  # session_ids are not in data.sequence_features: the trainer adds them
    assert result.task == "ctr" and result.monitor == "AUC"
    assert set(result.test_metrics) == {"AUC", "GAUC", "LogLoss", "count", "loss"}
    assert result.test_metrics["count"] == 2 * USERS  # one positive + one seeded negative per user
    assert result.test_metrics["AUC"] > 0.75, result.test_metrics  # successor pattern; chance 0.5
