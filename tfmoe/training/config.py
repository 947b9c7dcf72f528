"""Training configuration: one nested, validated config for every tfmoe model, from JSON/YAML or a dict.

Sections (every key optional except ``data.dir`` and ``model.name``; unknown keys are errors that
name their path, so a typo never silently falls back to a default):

.. code-block:: yaml

    task: next_item            # or ctr; default: the task the model is registered for
    output_dir: runs/sasrec    # backups, best model, TensorBoard logs, metrics.json
    data:
      dir: prepared/           # a directory written by `tfmoe prepare`
      max_len: 200
      batch_size: 128
      eval_batch_size: 256
      sequence_features: []    # side features to read (timestamps, categories, session_ids, behaviors)
      cache: true              # keep the raw records in memory after the first epoch
      shuffle: true            # seeded; the order also depends on how many iterators were made (strategies)
      shuffle_buffer: 10000
      bucket_boundaries: null  # e.g. [10, 20, 30]: training batches padded to their bucket, not max_len
      ctr: {num_negatives: 1, positions: random, samples_per_user: 1}   # CTR sampling (task ctr)
    model: {name: sasrec, hidden_dim: 64, num_blocks: 2, dropout: 0.1}  # registry name + arguments, or
    # model: {preset: sasrec_ml1m, dropout: 0.2}                     # a preset (tfmoe.models.presets) + overrides
    optimizer: {name: adam, learning_rate: 0.001, beta_2: 0.98, epsilon: 1.0e-7, weight_decay: 0.0, clipnorm: null}
    training:
      epochs: 200
      steps_per_epoch: null    # null = one pass over the training split
      seed: 0
      strategy: default        # default | one_device | mirrored | multi_worker | tpu
      jit_compile: false
      mixed_precision: null    # mixed_float16 | mixed_bfloat16
      eval_every: 1            # epochs between validation passes
      backup_every_steps: null # BackupAndRestore frequency; null = every epoch
      early_stopping: {monitor: null, patience: 10, min_delta: 0.0}   # monitor default: NDCG@10 / AUC
      verbose: auto            # Keras progress bar: auto | 0 | 1 | 2
    evaluation: {filter_seen: true, splits: [test]}

Overrides use dotted paths: ``config.override(["training.epochs=3", "model.hidden_dim=32"])`` (values
are parsed as YAML scalars, so ``3``, ``0.5``, ``true``, ``null`` and ``[a, b]`` work).

Example:
    >>> from tfmoe.training import TrainConfig
    >>> config = TrainConfig.from_dict({"data": {"dir": "prepared"}, "model": {"name": "sasrec"}})
    >>> config.override(["training.epochs=3"]).training.epochs
    3
    >>> config.training.early_stopping.patience
    10
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from tfmoe.utils import validation as v
from tfmoe.utils.choices import STRATEGIES, TASKS

OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = (None, "mixed_float16", "mixed_bfloat16")
VERBOSITY = ("auto", 0, 1, 2)
SPLITS = ("valid", "test")
_OWNER = "TrainConfig"


@dataclass
class DataConfig:
    dir: str = ""
    max_len: int = 200
    batch_size: int = 128
    eval_batch_size: int = 256
    sequence_features: list = field(default_factory=list)
    cache: bool = True
    shuffle: bool = True
    shuffle_buffer: int = 10_000
    bucket_boundaries: list | None = None
    ctr: dict = field(default_factory=dict)

    def validate(self, path: str) -> None:
        if not isinstance(self.dir, str) or not self.dir:
            raise ValueError(f"{_OWNER}: `{path}.dir` must name a prepared data directory, got {self.dir!r}")
        for name in ("max_len", "batch_size", "eval_batch_size", "shuffle_buffer"):
            v.check_int(_OWNER, f"{path}.{name}", getattr(self, name), minimum=1)
        v.check_bool(_OWNER, f"{path}.cache", self.cache)
        v.check_bool(_OWNER, f"{path}.shuffle", self.shuffle)
        if not isinstance(self.sequence_features, (list, tuple)):
            raise ValueError(f"{_OWNER}: `{path}.sequence_features` must be a list, got {self.sequence_features!r}")
        if self.bucket_boundaries is not None:
            v.check_int_sequence(_OWNER, f"{path}.bucket_boundaries", self.bucket_boundaries)
        if not isinstance(self.ctr, dict):
            raise ValueError(f"{_OWNER}: `{path}.ctr` must be a mapping of CTRSampling fields, got {self.ctr!r}")


@dataclass
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.98
    epsilon: float = 1e-7  # Adam/AdamW's (Keras' default; PyTorch's is 1e-8)
    weight_decay: float = 0.0
    clipnorm: float | None = None

    def validate(self, path: str) -> None:
        v.check_choice(_OWNER, f"{path}.name", self.name, OPTIMIZERS)
        v.check_float(_OWNER, f"{path}.learning_rate", self.learning_rate, minimum=0.0, min_inclusive=False)
        for name in ("beta_1", "beta_2"):
            v.check_float(_OWNER, f"{path}.{name}", getattr(self, name), minimum=0.0, maximum=1.0,
                          max_inclusive=False)
        v.check_float(_OWNER, f"{path}.epsilon", self.epsilon, minimum=0.0, min_inclusive=False)
        v.check_float(_OWNER, f"{path}.weight_decay", self.weight_decay, minimum=0.0)
        if self.clipnorm is not None:
            v.check_float(_OWNER, f"{path}.clipnorm", self.clipnorm, minimum=0.0, min_inclusive=False)


@dataclass
class EarlyStoppingConfig:
    monitor: str | None = None
    patience: int = 10
    min_delta: float = 0.0

    def validate(self, path: str) -> None:
        if self.monitor is not None and (not isinstance(self.monitor, str) or not self.monitor):
            raise ValueError(f"{_OWNER}: `{path}.monitor` must be a metric name such as 'NDCG@10', got "
                             f"{self.monitor!r}")
        v.check_int(_OWNER, f"{path}.patience", self.patience, minimum=1)
        v.check_float(_OWNER, f"{path}.min_delta", self.min_delta, minimum=0.0)


@dataclass
class TrainingConfig:
    epochs: int = 200
    steps_per_epoch: int | None = None
    seed: int = 0
    strategy: str = "default"
    jit_compile: bool = False
    mixed_precision: str | None = None
    eval_every: int = 1
    backup_every_steps: int | None = None
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    verbose: Any = "auto"

    def validate(self, path: str) -> None:
        v.check_int(_OWNER, f"{path}.epochs", self.epochs, minimum=1)
        v.check_optional_int(_OWNER, f"{path}.steps_per_epoch", self.steps_per_epoch, minimum=1)
        v.check_int(_OWNER, f"{path}.seed", self.seed, minimum=0)
        v.check_choice(_OWNER, f"{path}.strategy", self.strategy, STRATEGIES)
        v.check_bool(_OWNER, f"{path}.jit_compile", self.jit_compile)
        v.check_choice(_OWNER, f"{path}.mixed_precision", self.mixed_precision, PRECISIONS)
        v.check_int(_OWNER, f"{path}.eval_every", self.eval_every, minimum=1)
        v.check_optional_int(_OWNER, f"{path}.backup_every_steps", self.backup_every_steps, minimum=1)
        v.check_choice(_OWNER, f"{path}.verbose", self.verbose, VERBOSITY)
        self.early_stopping.validate(f"{path}.early_stopping")


@dataclass
class EvaluationConfig:
    filter_seen: bool = True
    splits: list = field(default_factory=lambda: ["test"])

    def validate(self, path: str) -> None:
        v.check_bool(_OWNER, f"{path}.filter_seen", self.filter_seen)
        if not isinstance(self.splits, (list, tuple)):
            raise ValueError(f"{_OWNER}: `{path}.splits` must be a list of {SPLITS}, got {self.splits!r}")
        for split in self.splits:
            v.check_choice(_OWNER, f"{path}.splits", split, SPLITS)


@dataclass
class TrainConfig:
    """The whole training configuration (see the module docstring for every key)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    task: str | None = None
    output_dir: str = "tfmoe_run"

    # ----- construction ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Builds and validates a config from nested mappings; unknown keys raise ``ValueError``."""
        config = _build(cls, values, "config")
        config.model = _expand_preset(config.model)
        config.validate()
        return config

    @classmethod
    def load(cls, path: str) -> TrainConfig:
        """Reads a ``.json``, ``.yaml`` or ``.yml`` file."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ValueError(f"{_OWNER}: config file {path!r} does not exist")
        with open(path) as f:
            text = f.read()
        try:
            values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise ValueError(f"{_OWNER}: cannot parse {path!r}: {error}") from error
        if not isinstance(values, dict):
            raise ValueError(f"{_OWNER}: {path!r} must hold a mapping at the top level, got {type(values).__name__}")
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def override(self, assignments) -> TrainConfig:
        """A new config with ``"dotted.path=value"`` assignments applied (values parsed as YAML)."""
        values = self.to_dict()
        for assignment in assignments:
            if "=" not in assignment:
                raise ValueError(f"{_OWNER}: override {assignment!r} must look like 'section.key=value'")
            dotted, raw = assignment.split("=", 1)
            keys = dotted.strip().split(".")
            node = values
            for key in keys[:-1]:
                if not isinstance(node.get(key), dict):
                    raise ValueError(f"{_OWNER}: override {assignment!r}: {key!r} is not a section")
                node = node[key]
            node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None
        return TrainConfig.from_dict(values)

    # ----- checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        if self.task is not None:
            v.check_choice(_OWNER, "task", self.task, TASKS)
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"{_OWNER}: `output_dir` must be a directory path, got {self.output_dir!r}")
        if not isinstance(self.model.get("name"), str):
            raise ValueError(f"{_OWNER}: `model.name` must name a registered model (e.g. 'sasrec') or `model.preset` "
                             f"a preset (tfmoe.models.presets), got {self.model.get('name')!r}")
        reserved = {"num_items", "max_len", "num_categories"} & set(self.model)
        if reserved:
            raise ValueError(f"{_OWNER}: `model` must not set {sorted(reserved)}: they come from the data")
        self.data.validate("data")
        self.optimizer.validate("optimizer")
        self.training.validate("training")
        self.evaluation.validate("evaluation")

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_options(self) -> dict:
        return {k: value for k, value in self.model.items() if k != "name"}


def _expand_preset(model):
    """``model: {preset: P, **own}`` -> ``{name: P's model, **P's options, **own}`` (own keys win)."""
    if not isinstance(model, dict) or "preset" not in model:
        return model
    from tfmoe.models import presets

    preset = presets.get(model["preset"])  # ValueError naming the known presets
    own = {k: value for k, value in model.items() if k != "preset"}
    if own.get("name", preset["model"]) != preset["model"]:
        raise ValueError(f"{_OWNER}: `model.name` {own['name']!r} contradicts `model.preset` {model['preset']!r}, "
                         f"a {preset['model']!r} preset")
    return {"name": preset["model"], **preset["options"], **own}


def _build(cls, values, path):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{_OWNER}: `{path}` must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{_OWNER}: unknown key(s) {', '.join(f'{path}.{k}' for k in unknown)}; "
                         f"known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in values.items():
        nested = _nested_type(cls, name)
        kwargs[name] = _build(nested, value, f"{path}.{name}") if nested is not None else value
    return cls(**kwargs)


_NESTED = {
    (TrainConfig, "data"): DataConfig,
    (TrainConfig, "optimizer"): OptimizerConfig,
    (TrainConfig, "training"): TrainingConfig,
    (TrainConfig, "evaluation"): EvaluationConfig,
    (TrainingConfig, "early_stopping"): EarlyStoppingConfig,
}


def _nested_type(cls, name):
    return _NESTED.get((cls, name))
