"""What makes a training run the same run: the settings a restart may not change.

A run directory (``output_dir``) holds one training run. Restarting it resumes from its backup, and a finished
run returns its saved result without training, so a restart with *other* settings would silently continue, or
report, a different model under the new settings. :func:`check_same_run` refuses that: it compares a config with
the one the directory was started with (``run_config.json``, written by the trainer at the start; for runs older
than that file, the ``config`` in ``metrics.json``) and raises :class:`RunSettingsError` naming each differing
setting.

What a restart *may* change (:data:`RESUMABLE`): how long it trains (``training.epochs``, early stopping),
where and how fast (``training.strategy``, ``jit_compile``, ``mixed_precision``, the evaluation batch size,
caching, the model's ``length_groups``: the same results for less work), what it reports (``evaluation``,
``verbose``, ``eval_every``), how often it backs up, and where the prepared data and the run directory live.
Everything else (model, optimizer, training data and batching, seed, steps per epoch, task) identifies the run.

Example:
    >>> import tempfile
    >>> from tfmoe.training import TrainConfig
    >>> from tfmoe.training.run_settings import check_same_run, record_run
    >>> run_dir = tempfile.mkdtemp()
    >>> config = TrainConfig.from_dict({"data": {"dir": "prepared"}, "model": {"name": "sasrec"}})
    >>> record_run(run_dir, config)
    >>> check_same_run(run_dir, config.override(["training.epochs=400"]))  # more epochs: the same run
    >>> check_same_run(run_dir, config.override(["model.hidden_dim=32"]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tfmoe.training.run_settings.RunSettingsError: ...model.hidden_dim: 64 when the run started, 32 now...
"""

from __future__ import annotations

import inspect
import json
import os

import tensorflow as tf

from tfmoe.training.config import TrainConfig

RUN_CONFIG_FILE = "run_config.json"
METRICS_FILE = "metrics.json"
# Dotted settings (and everything below them) a restarted run may change.
RESUMABLE = (
    "output_dir", "data.dir", "data.eval_batch_size", "data.cache", "training.epochs", "training.strategy",
    "training.jit_compile", "training.mixed_precision", "training.eval_every", "training.backup_every_steps",
    "training.early_stopping", "training.verbose", "evaluation", "model.length_groups",
)
# Added by the trainer to the config it saves in metrics.json (the model's side features): not compared there.
_DERIVED = ("data.sequence_features",)
_UNSET = "(unset)"


class RunSettingsError(ValueError):
    """A run directory was started with other settings than the config asked to resume or report it."""


def run_identity(config: TrainConfig | dict, ignore=()) -> dict:
    """``{dotted setting: value}`` of the settings that identify a run (everything but :data:`RESUMABLE`)."""
    values = config.to_dict() if isinstance(config, TrainConfig) else config
    skipped = RESUMABLE + tuple(ignore)
    flat = {}

    def walk(prefix, node):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if any(path == s or path.startswith(s + ".") for s in skipped):
                continue
            if path == "model":  # options one by one (a missing key is an unset option), each value whole
                flat.update({f"model.{option}": setting for option, setting in value.items()
                             if f"model.{option}" not in skipped})
            elif isinstance(value, dict):
                walk(path + ".", value)
            else:
                flat[path] = value

    walk("", values)
    return flat


def record_run(output_dir: str, config: TrainConfig) -> None:
    """Writes ``run_config.json``: the settings this run directory was started with."""
    from tfmoe.utils.files import write_atomic

    write_atomic(os.path.join(output_dir, RUN_CONFIG_FILE), json.dumps(config.to_dict(), indent=1))


def started_with(output_dir: str) -> tuple[dict, str] | None:
    """``(config dict, file name)`` the run directory was started with, or ``None`` (nothing saved)."""
    for name in (RUN_CONFIG_FILE, METRICS_FILE):
        path = os.path.join(output_dir, name)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                saved = json.load(f)
            saved = saved if name == RUN_CONFIG_FILE else saved.get("config")
            if saved is not None:
                return saved, name
    return None


def check_same_run(output_dir: str, config: TrainConfig) -> None:
    """Raises :class:`RunSettingsError` if ``output_dir`` holds a run started with other identifying settings.

    A directory without a saved config (new, or a run from before the trainer recorded it) passes.
    """
    found = started_with(output_dir)
    if found is None:
        return
    saved, name = found
    ignore = _DERIVED if name == METRICS_FILE else ()
    before, now = (_with_config_defaults(run_identity(values, ignore)) for values in (saved, config))
    if before.get("model.name") == now.get("model.name"):  # another model differs anyway: list what was written
        before, now = _with_model_defaults(before), _with_model_defaults(now)
    differing = sorted(key for key in before.keys() | now.keys() if before.get(key, _UNSET) != now.get(key, _UNSET))
    if differing:
        lines = [f"  {key}: {_show(before.get(key, _UNSET))} when the run started, {_show(now.get(key, _UNSET))} now"
                 for key in differing]
        raise RunSettingsError(
            f"{output_dir!r} holds a run started with other settings ({os.path.join(output_dir, name)}):\n"
            + "\n".join(lines)
            + "\nResuming or reporting it under this config would mix two runs: use another output_dir, or move "
            "that directory away."
        )


def model_option_defaults(name) -> dict:
    """``{option: default}`` of model ``name``'s constructor (through its tfmoe base classes; the most derived
    class's default wins), JSON-normalised; ``{}`` for an unknown name."""
    from tfmoe.models import registry

    try:
        cls = registry.model_class(name)
    except (ValueError, TypeError):
        return {}
    defaults = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("tfmoe.") or "__init__" not in vars(klass):
            continue
        for parameter in inspect.signature(klass.__init__).parameters.values():
            if parameter.default is not inspect.Parameter.empty:
                defaults.setdefault(parameter.name, json.loads(json.dumps(parameter.default, default=repr)))
    return defaults


def _with_config_defaults(identity: dict) -> dict:
    """A setting a saved config lacks (added to TrainConfig after the run started) counts as its default, which
    reproduces the behaviour before the setting existed."""
    defaults = run_identity(TrainConfig.from_dict({"data": {"dir": "-"}, "model": {"name": "-"}}), ("data.dir",))
    return {**{key: value for key, value in defaults.items() if not key.startswith("model.")}, **identity}


def _with_model_defaults(identity: dict) -> dict:
    """An unset model option counts as its default: ``{}`` and ``{"hidden_dim": 64}`` are the same SASRec."""
    defaults = model_option_defaults(identity.get("model.name"))
    return {**{f"model.{option}": value for option, value in defaults.items()}, **identity}


def _show(value) -> str:
    return value if value == _UNSET else json.dumps(value)
