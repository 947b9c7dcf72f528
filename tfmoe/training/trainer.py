"""The one trainer of every tfmoe model: config -> data -> model under a strategy -> fit -> best model -> metrics.

``train(config)`` reads a prepared directory (``tfmoe prepare``), builds the registered model, compiles it
with the task's metrics (:meth:`~tfmoe.training.evaluation.TaskEvaluation.metrics`), and calls ``fit`` with
the validation split every ``eval_every`` epochs. It stops early on the validation metric (``NDCG@10``
for next-item models, ``AUC`` for CTR models), then reloads the best weights, runs ``model.evaluate`` on
the test splits (the validation metrics are those ``fit`` logged at the best epoch) and saves the best model.

Output directory (``config.output_dir``)::

    backup/            BackupAndRestore checkpoint (weights + optimizer + epoch), kept so a run can be extended
    best.weights.h5    weights of the best validation epoch
    state.json         early-stopping state and per-epoch history (what a restart needs)
    logs/              TensorBoard: train/validation scalars, logs/routing: the MoE routing statistics
    model.keras        the best model (``tfmoe.models.load_model`` loads it)
    metrics.json       config, best epoch, epochs run, valid/test metrics (and their evaluation protocol),
                       sequences per second
    run_config.json    the config the run was started with

A run killed at any point and started again with the same config and ``output_dir`` resumes from its last
backup (every epoch, or every ``backup_every_steps`` batches) and finishes (a restart with other model, optimizer,
data or seed settings raises :class:`~tfmoe.training.run_settings.RunSettingsError` instead of mixing two
runs; see :mod:`tfmoe.training.run_settings` for what may change); a finished run returns its
saved result without training again, unless ``training.epochs`` was raised (and it did not stop early): then it
continues from its last epoch, with its early-stopping state, up to the new number of epochs.
``evaluate_best(config)`` scores a run's best checkpoint again (e.g. under a newer evaluation protocol).

Multi-worker runs (strategy ``multi_worker``, every worker started with the same config): each global batch is
split between the workers, so they train on the batches of a single-worker run; every worker validates and tests
the model itself; only the chief writes ``output_dir``. The other workers only read it (the saved config and state,
and when resuming the backup and best weights, which they copy) and make the same saves into a private temporary
directory that is removed when ``train`` returns.

Example:
    >>> from tfmoe.training import TrainConfig, train
    >>> config = TrainConfig.from_dict({"data": {"dir": "prepared", "max_len": 50},
    ...                                 "model": {"name": "sasrec"}, "training": {"epochs": 2}})
    >>> result = train(config)  # doctest: +SKIP
    >>> result.test_metrics["NDCG@10"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from tfmoe.models import load_model, registry
from tfmoe.training import callbacks as cb
from tfmoe.training import run_settings
from tfmoe.training.config import TrainConfig
from tfmoe.training.evaluation import batch_sharding, task_evaluation
from tfmoe.training.strategies import get_strategy, is_chief, prepare_for_fit
from tfmoe.utils.files import write_atomic

BACKUP_DIR, BEST_WEIGHTS, STATE_FILE = "backup", "best.weights.h5", "state.json"
LOG_DIR, MODEL_FILE, METRICS_FILE = "logs", "model.keras", run_settings.METRICS_FILE


@dataclass
class TrainResult:
    """What :func:`train` returns (also saved as ``metrics.json``)."""

    model: keras.Model
    task: str
    monitor: str
    best_epoch: int | None
    epochs_run: int
    stopped_early: bool
    metrics: dict  # {split: {metric: value}} for "valid" and the configured evaluation splits
    sequences_per_s: float | None
    output_dir: str
    history: list = field(default_factory=list)

    @property
    def valid_metrics(self) -> dict:
        return self.metrics.get("valid", {})

    @property
    def test_metrics(self) -> dict:
        return self.metrics.get("test", {})

    @property
    def model_path(self) -> str:
        return os.path.join(self.output_dir, MODEL_FILE)

    def summary(self) -> dict:
        return {"task": self.task, "monitor": self.monitor, "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run, "stopped_early": self.stopped_early, "metrics": self.metrics,
                "evaluation_protocol": task_evaluation(self.task).protocol, "sequences_per_s": self.sequences_per_s}


def _path(config: TrainConfig, name: str) -> str:
    return os.path.join(config.output_dir, name)


def resolve_task(config: TrainConfig) -> str:
    registered = registry.model_task(config.model_name)
    if config.task is not None and config.task != registered:
        raise ValueError(f"TrainConfig: task {config.task!r} does not match model {config.model_name!r}, which is a "
                         f"{registered!r} model")
    return registered


def data_sizes(data_dir: str) -> dict:
    """``num_items`` (and ``num_categories``, 0 when absent) of a prepared directory."""
    from tfmoe.data import dataset, schema

    if not tf.io.gfile.isdir(data_dir):
        raise ValueError(f"TrainConfig: `data.dir` {data_dir!r} is not a directory (run `tfmoe prepare` first)")
    sizes = {"num_items": dataset.read_num_items(data_dir), "num_categories": 0}
    categories = os.path.join(data_dir, schema.VOCAB_DIR, "categories.txt")
    if tf.io.gfile.exists(categories):
        with tf.io.gfile.GFile(categories, "rb") as f:
            sizes["num_categories"] = sum(1 for line in f if line.strip())
    return sizes


def train_records(data_dir: str) -> int | None:
    """Training records listed in the prepared directory's ``summary.json`` (None if unknown)."""
    from tfmoe.data import schema

    path = os.path.join(data_dir, schema.SUMMARY_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        records = json.load(f).get("splits", {}).get("train", {}).get("records")
    return records if isinstance(records, int) else None


def build_model(config: TrainConfig, task: str, sizes: dict) -> keras.Model:
    """The configured model with the data-dependent arguments filled in (and the run seed if it takes one)."""
    cls = registry.model_class(config.model_name)
    options = dict(config.model_options, num_items=sizes["num_items"], max_len=config.data.max_len)
    if task == "ctr":
        options["num_categories"] = sizes["num_categories"]
    if "seed" not in options and _accepts(cls, "seed"):
        options["seed"] = config.training.seed
    try:
        return cls(**options)
    except (TypeError, ValueError) as error:
        raise ValueError(f"TrainConfig: bad `model` options for {config.model_name!r}: {error}") from error


def _accepts(cls, name: str) -> bool:
    import inspect

    return any(name in inspect.signature(klass.__init__).parameters for klass in cls.__mro__
               if "__init__" in vars(klass))


def with_model_inputs(config: TrainConfig, model) -> TrainConfig:
    """``config`` with the side features the model reads (``model.input_sequence_features()``) added to the data."""
    needed = getattr(model, "input_sequence_features", lambda: ())()
    missing = [name for name in needed if name not in config.data.sequence_features]
    if not missing:
        return config
    return config.override([f"data.sequence_features={list(config.data.sequence_features) + missing}"])


def make_optimizer(config) -> keras.optimizers.Optimizer:
    options = dict(learning_rate=config.learning_rate, clipnorm=config.clipnorm)
    if config.name == "sgd":
        return keras.optimizers.SGD(momentum=config.beta_1, **options)
    betas = dict(beta_1=config.beta_1, beta_2=config.beta_2, epsilon=config.epsilon)
    if config.name == "adamw":
        return keras.optimizers.AdamW(weight_decay=config.weight_decay, **betas, **options)
    if config.weight_decay:
        raise ValueError("TrainConfig: `optimizer.weight_decay` needs optimizer.name 'adamw'")
    return keras.optimizers.Adam(**betas, **options)


def _training_dataset(config: TrainConfig, task: str, ctr_context: dict):
    from tfmoe.data import dataset

    options = dict(max_len=config.data.max_len, batch_size=config.data.batch_size,
                   sequence_features=tuple(config.data.sequence_features), seed=config.training.seed,
                   shuffle=config.data.shuffle, shuffle_buffer=config.data.shuffle_buffer, cache=config.data.cache,
                   repeat=config.training.steps_per_epoch is not None,
                   bucket_boundaries=config.data.bucket_boundaries)
    if task == "ctr":
        from tfmoe.training.evaluation import ctr_sampling

        options.update(ctr=ctr_sampling(config), **ctr_context)
    # multi-worker runs split every global batch between the workers (each reads all records and keeps its part),
    # so they train on exactly the batches of a single-worker run
    return dataset.make_dataset(config.data.dir, "train", task, **options).with_options(batch_sharding())


def _ctr_context(config: TrainConfig, task: str, sizes: dict) -> dict:
    """CTR exclusion sets loaded once and shared by every dataset of the run."""
    if task != "ctr":
        return {}
    from tfmoe.data import dataset

    return {"num_items": sizes["num_items"], "touched_items": dataset.load_user_items(config.data.dir,
                                                                                       sizes["num_items"])}


def sequences_per_s(history: list, rows_per_epoch: int | None, batch_size: int) -> float | None:
    """Median training rows per second over the epochs (the first, which traces and compiles, is skipped)."""
    rates = []
    for entry in history:
        seconds, batches = entry.get("train_seconds"), entry.get("train_batches")
        if not seconds or not batches:
            continue
        rows = rows_per_epoch if rows_per_epoch is not None else batches * batch_size  # last batch may be short
        rates.append(rows / seconds)
    if not rates:
        return None
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def train(config, *, strategy: tf.distribute.Strategy | None = None, callbacks=()) -> TrainResult:
    """Trains ``config`` (a :class:`TrainConfig`, a dict, or a path to a JSON/YAML file); see the module docstring.

    Args:
        strategy: a ``tf.distribute.Strategy`` to use instead of ``config.training.strategy``.
        callbacks: extra Keras callbacks (run after the trainer's own).
    """
    config = _as_config(config)
    task = resolve_task(config)
    evaluation = task_evaluation(task)
    monitor = config.training.early_stopping.monitor or evaluation.monitor
    strategy = strategy or get_strategy(config.training.strategy)  # before any op: multi_worker sets up collectives
    chief = is_chief(strategy)
    if chief:
        os.makedirs(config.output_dir, exist_ok=True)
    run_settings.check_same_run(config.output_dir, config)
    if chief and not tf.io.gfile.exists(_path(config, run_settings.RUN_CONFIG_FILE)):
        run_settings.record_run(config.output_dir, config)
    state = cb.TrainingState.load(_path(config, STATE_FILE), monitor)
    complete = state.stopped_early or len(state.history) >= config.training.epochs
    if state.finished and complete and set(config.evaluation.splits) <= _saved_splits(config):
        return load_result(config.output_dir)  # a split the saved result lacks is scored below, without training
    state.finished = False  # more epochs than last time: continue from the backup of the last epoch
    state.trained_on(device_description())

    sizes = data_sizes(config.data.dir)
    ctr_context = _ctr_context(config, task, sizes)
    # every worker runs the same saves (they read synchronised variables); a non-chief worker's go to a private copy
    work_dir = config.output_dir if chief else _worker_dir(config.output_dir)
    at = lambda name: os.path.join(work_dir, name)
    previous_policy = keras.config.dtype_policy()
    if config.training.mixed_precision:
        keras.config.set_dtype_policy(config.training.mixed_precision)
    try:
        keras.utils.set_random_seed(config.training.seed)
        with strategy.scope():
            model = build_model(config, task, sizes)
            model.compile(optimizer=make_optimizer(config.optimizer), metrics=evaluation.metrics(config),
                          jit_compile=config.training.jit_compile)
        prepare_for_fit(strategy, model)
        config = with_model_inputs(config, model)
        train_ds = _training_dataset(config, task, ctr_context)
        valid_ds = evaluation.dataset(config, "valid", ctr_context=ctr_context)
        verbose = config.training.verbose
        fit_callbacks = [
            cb.EpochTimer(),
            cb.EarlyStoppingWithState(state, at(STATE_FILE), at(BEST_WEIGHTS),
                                      config.training.early_stopping.patience,
                                      config.training.early_stopping.min_delta),
            cb.BackupAndRestore(at(BACKUP_DIR), double_checkpoint=True, delete_checkpoint=False,
                                             save_freq=config.training.backup_every_steps or "epoch"),
            keras.callbacks.TensorBoard(at(LOG_DIR), write_graph=False, update_freq="epoch",
                                        profile_batch=0),
            _routing_logger(work_dir),
            *callbacks,
        ]
        if not complete:  # a run that stopped early and was cut off before saving skips to the end
            model.fit(train_ds, epochs=config.training.epochs, steps_per_epoch=config.training.steps_per_epoch,
                      validation_data=valid_ds, validation_freq=config.training.eval_every,
                      callbacks=fit_callbacks, verbose=verbose)
        if tf.io.gfile.exists(at(BEST_WEIGHTS)):
            model.load_weights(at(BEST_WEIGHTS))
        metrics = {"valid": best_epoch_validation(state) or _evaluate(model, valid_ds)}
        for split in config.evaluation.splits:
            metrics[split] = _evaluate(model, evaluation.dataset(config, split, ctr_context=ctr_context))
        model.save(at(MODEL_FILE))

        rows = (train_records(config.data.dir) if task == "next_item" and config.training.steps_per_epoch is None
                else None)
        result = TrainResult(
            model=model, task=task, monitor=monitor, best_epoch=state.best_epoch, epochs_run=len(state.history),
            stopped_early=state.stopped_early, metrics=metrics,
            sequences_per_s=sequences_per_s(state.history, rows, config.data.batch_size),
            output_dir=config.output_dir, history=state.history,
        )
        write_atomic(at(METRICS_FILE), json.dumps(
            {**result.summary(), "device": state.device, "devices": state.devices, "config": config.to_dict(),
             "history": state.history},
            indent=1))
        state.finished = True
        state.save(at(STATE_FILE))
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if not chief:
            shutil.rmtree(work_dir, ignore_errors=True)
    return result


def _worker_dir(output_dir: str) -> str:
    """A non-chief worker's private, temporary run directory (removed when ``train`` returns), seeded with what a
    resumed run reads back from the chief's: the backup and the best weights."""
    work_dir = tempfile.mkdtemp(prefix="tfmoe-worker-")
    for name in (BACKUP_DIR, BEST_WEIGHTS):
        source = os.path.join(output_dir, name)
        if tf.io.gfile.isdir(source):
            for folder, _, files in tf.io.gfile.walk(source):
                target = os.path.join(work_dir, name, os.path.relpath(folder, source))
                tf.io.gfile.makedirs(target)
                for file in files:
                    tf.io.gfile.copy(os.path.join(folder, file), os.path.join(target, file), overwrite=True)
        elif tf.io.gfile.exists(source):
            tf.io.gfile.copy(source, os.path.join(work_dir, name), overwrite=True)
    return work_dir


def device_description() -> str:
    """What this process trains on, for the record in ``metrics.json``: ``"1 x NVIDIA H100 80GB HBM3"`` or
    ``"CPU (16 cores)"``."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return f"CPU ({os.cpu_count()} cores)"
    names = sorted({tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus})
    return f"{len(gpus)} x {', '.join(names)}"


def evaluate_best(config, splits=None) -> dict:
    """``{split: metrics}`` of the run's best checkpoint (``best.weights.h5``) on ``splits`` (default: ``valid`` and
    the configured evaluation splits), evaluated now with the current protocol.

    Raises:
        FileNotFoundError: the run has no best checkpoint yet.
    """
    config = _as_config(config)
    weights = _path(config, BEST_WEIGHTS)
    if not tf.io.gfile.exists(weights):
        raise FileNotFoundError(f"evaluate_best: no best checkpoint {weights!r}; train the run first")
    task = resolve_task(config)
    evaluation = task_evaluation(task)
    sizes = data_sizes(config.data.dir)
    ctr_context = _ctr_context(config, task, sizes)
    model = build_model(config, task, sizes)
    model.load_weights(weights)
    model.compile(metrics=evaluation.metrics(config))
    config = with_model_inputs(config, model)
    splits = list(splits) if splits is not None else ["valid", *config.evaluation.splits]
    return {split: _evaluate(model, evaluation.dataset(config, split, ctr_context=ctr_context)) for split in splits}


def _saved_splits(config: TrainConfig) -> set:
    """The splits scored in the run's saved result (none before it exists)."""
    if not tf.io.gfile.exists(_path(config, METRICS_FILE)):
        return set()
    with tf.io.gfile.GFile(_path(config, METRICS_FILE)) as f:
        return set(json.load(f)["metrics"])


def load_result(output_dir: str) -> TrainResult:
    """The :class:`TrainResult` of a finished run (its best model loaded from ``model.keras``)."""
    with tf.io.gfile.GFile(os.path.join(output_dir, METRICS_FILE)) as f:
        saved = json.load(f)
    model = load_model(os.path.join(output_dir, MODEL_FILE))
    return TrainResult(model=model, task=saved["task"], monitor=saved["monitor"], best_epoch=saved["best_epoch"],
                       epochs_run=saved["epochs_run"], stopped_early=saved["stopped_early"],
                       metrics=saved["metrics"], sequences_per_s=saved["sequences_per_s"], output_dir=output_dir,
                       history=saved.get("history", []))


def _routing_logger(run_dir: str):
    from tfmoe.layers import RoutingStatsLogger

    return RoutingStatsLogger(os.path.join(run_dir, LOG_DIR, "routing"), update_freq="epoch")


def best_epoch_validation(state: cb.TrainingState) -> dict | None:
    """``{metric: value}`` of ``fit``'s validation pass at the best epoch: the metrics of the best checkpoint, read
    from the history instead of scored again; ``None`` when no epoch was validated."""
    entry = next((h for h in state.history if h["epoch"] == state.best_epoch), None)
    if entry is None:
        return None
    metrics = {k[len("val_"):]: v for k, v in entry.items() if k.startswith("val_") and k not in cb.EpochTimer.KEYS}
    return metrics or None


def _evaluate(model, dataset) -> dict:
    """``{metric: float}`` of ``model.evaluate`` with the compiled task metrics (and the loss)."""
    return {k: float(x) for k, x in model.evaluate(dataset, return_dict=True, verbose=0).items()}


def _as_config(config) -> TrainConfig:
    if isinstance(config, TrainConfig):
        config.validate()
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return TrainConfig.load(config)
    raise ValueError(f"train: `config` must be a TrainConfig, a dict or a file path, got {type(config).__name__}")
