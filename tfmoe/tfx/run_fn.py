"""The TFX Trainer's ``run_fn``: ``Trainer(run_fn="tfmoe.tfx.run_fn.run_fn", custom_config=...)``.

It trains with tfmoe's own trainer (:func:`tfmoe.training.train`, the configured tf.distribute
strategy) and exports the best model for TFMA and TF Serving (:mod:`tfmoe.tfx.serving_export`):

1. The Examples artifact written by :func:`tfmoe.tfx.components.PrepareExamples` is a prepared
   directory (:mod:`tfmoe.data.schema`) whose split folders are named the TFX way
   (``Split-train``, ``Split-valid``, ``Split-test``); :func:`data_view` links it back to the
   ``train/valid/test`` layout the trainer reads (symlinks in a temporary directory, removed
   after training), next to ``vocab/`` and ``summary.json``.
2. ``custom_config["train_config"]`` is the TrainConfig dictionary (``data.dir`` and
   ``output_dir`` are filled in here), ``custom_config["train_overrides"]`` dotted overrides.
3. ``train(config)`` runs in ``<model_run_dir>/train`` (backups, TensorBoard logs,
   ``model.keras``, ``metrics.json``), so a restarted Trainer resumes from its last backup.
4. The best model is exported to ``fn_args.serving_model_dir`` with tfmoe's full-ranking metrics
   (NDCG@10, HR@10, MRR@10 on valid/test) in ``assets.extra/tfmoe_metrics.json``; they are also
   written to ``<model_run_dir>/tfmoe_metrics.json``.

Example (what the Trainer does; ``fn_args`` comes from TFX):
    >>> from tfmoe.tfx.run_fn import build_train_config
    >>> config = build_train_config({"train_config": {"model": {"name": "sasrec"}, "training": {"epochs": 1}},
    ...                              "train_overrides": ["training.epochs=2"]}, "/data", "/out")
    >>> config.training.epochs, config.data.dir, config.output_dir
    (2, '/data', '/out')
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time

log = logging.getLogger("tfmoe.tfx.run_fn")

SPLIT_PREFIX = "Split-"
DATA_SPLITS = ("train", "valid", "test")
LINKED_FILES = ("vocab", "summary.json")


def examples_root(file_patterns) -> str:
    """The Examples artifact URI from a FnArgs file pattern such as ``<uri>/Split-train/*``."""
    pattern = file_patterns[0] if isinstance(file_patterns, (list, tuple)) else file_patterns
    split_dir = os.path.dirname(pattern) if os.path.basename(pattern).startswith("*") else pattern
    if not os.path.basename(split_dir.rstrip("/")).startswith(SPLIT_PREFIX):
        raise ValueError(f"run_fn: expected an Examples split folder '<uri>/{SPLIT_PREFIX}<name>/*', got {pattern!r}")
    return os.path.dirname(split_dir.rstrip("/"))


def data_view(examples_uri: str, out_dir: str) -> str:
    """``out_dir`` laid out as a prepared directory: ``train/valid/test``, ``vocab/``, ``summary.json`` (symlinks).

    Raises ``ValueError`` if the Examples artifact is not a tfmoe prepared dataset.
    """
    missing = [name for name in (*(SPLIT_PREFIX + s for s in DATA_SPLITS), *LINKED_FILES)
               if not os.path.exists(os.path.join(examples_uri, name))]
    if missing:
        raise ValueError(f"run_fn: {examples_uri} is not a tfmoe prepared Examples artifact (missing {missing}); "
                         "produce it with tfmoe.tfx.components.PrepareExamples")
    os.makedirs(out_dir, exist_ok=True)
    links = {split: SPLIT_PREFIX + split for split in DATA_SPLITS}
    links.update({name: name for name in LINKED_FILES})
    for name, target in links.items():
        path = os.path.join(out_dir, name)
        if os.path.islink(path) or os.path.exists(path):
            os.remove(path)
        os.symlink(os.path.join(examples_uri, target), path)
    return out_dir


def build_train_config(custom_config: dict, data_dir: str, output_dir: str):
    """The :class:`tfmoe.training.TrainConfig` of ``custom_config`` with ``data.dir`` and ``output_dir`` set."""
    from tfmoe.training import TrainConfig

    values = json.loads(json.dumps(custom_config.get("train_config") or {}))
    values.setdefault("data", {})["dir"] = data_dir
    values["output_dir"] = output_dir
    config = TrainConfig.from_dict(values)
    overrides = list(custom_config.get("train_overrides") or ())
    return config.override(overrides) if overrides else config


def is_chief(tf_config: str | None = None) -> bool:
    """Whether this process exports the model: no cluster, the ``chief`` task, or worker 0 of a chief-less cluster.

    Under ``MultiWorkerMirroredStrategy`` every worker runs ``run_fn``; only the chief writes the
    serving model (the others export into their own scratch directory, as TF requires every worker
    to save).
    """
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not text:
        return True
    config = json.loads(text)
    task = config.get("task", {})
    kind, index = task.get("type", "chief"), int(task.get("index", 0))
    if "chief" in config.get("cluster", {}):
        return kind == "chief"
    return kind == "worker" and index == 0


def run_fn(fn_args) -> None:
    """Trains with :func:`tfmoe.training.train` and writes the serving SavedModel (see the module docstring)."""
    from tfmoe.tfx.serving_export import METRICS_FILE, export_trained_model
    from tfmoe.training import train

    custom = dict(fn_args.custom_config or {})
    run_dir = fn_args.model_run_dir
    # The view's symlinks live outside the artifact: TFX deletes a failed Trainer's outputs with
    # tf.io.gfile.rmtree, which cannot delete a symlink to a directory (it would hide the real error).
    view = tempfile.mkdtemp(prefix="tfmoe-data-view-")
    try:
        data_dir = data_view(examples_root(fn_args.train_files), view)
        config = build_train_config(custom, data_dir, os.path.join(run_dir, "train"))
        log.info("tfmoe Trainer: model %s, %d epochs, strategy %s, data %s", config.model_name,
                 config.training.epochs, config.training.strategy, examples_root(fn_args.train_files))
        started = time.monotonic()
        result = train(config)
    finally:
        shutil.rmtree(view, ignore_errors=True)
    metrics = {"model": config.model_name, "task": result.task, "monitor": result.monitor,
               "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "metrics": result.metrics,
               "train_seconds": round(time.monotonic() - started, 1)}
    with open(os.path.join(run_dir, METRICS_FILE), "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2, default=float)
    serving_dir = fn_args.serving_model_dir if is_chief() else os.path.join(run_dir, "non-chief-export")
    export_trained_model(result.model, serving_dir, metrics=metrics,
                         model_name=custom.get("serving_model_name", "recs"), top_k=int(custom.get("top_k", 10)))
    log.info("tfmoe Trainer: %s", json.dumps(result.metrics, default=float))
