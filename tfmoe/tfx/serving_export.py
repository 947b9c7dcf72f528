"""The Trainer's serving export: a trained tfmoe model -> the SavedModel that TFMA evaluates and TF Serving serves.

:func:`export_trained_model` writes ``serving_model_dir`` (the Trainer's ``Format-Serving``
directory) with the signatures of :mod:`tfmoe.serving.signatures` (``serving_default`` on serialized
``tf.Example``, ``predict_raw``, ``top_k`` for next-item, ``classify`` for CTR) and warmup requests,
through :func:`tfmoe.serving.export.export_model` (atomic, verified after reload), plus
``assets.extra/tfmoe_metrics.json``: the full-ranking metrics of :mod:`tfmoe.metrics` (NDCG@10,
HR@10, ...) measured by the trainer, so they travel with the model to the Pusher's destination.

The tf.Example contract is :mod:`tfmoe.data.schema`: the history is ``items`` (oldest first).

* Next-item: ``serving_default`` returns ``scores`` ``[B, num_items + 1]`` (column ``i`` = item
  ``i``). Column 0 (padding) is the lowest finite float32, not ``-inf``: ``tf.math.in_top_k``, on
  which TFMA's ``SparseTopKCategoricalAccuracy`` rests, counts any row holding a non-finite score
  as a miss. The label for TFMA is the example's ``target``.
* CTR: the example carries the candidate ``target_item`` (and ``label`` in evaluation data, see
  :mod:`tfmoe.tfx.ctr_eval`); ``serving_default`` returns ``probability`` ``[B, 1]``.

Example (the trained model is any tfmoe next-item model):
    >>> from tfmoe.models import SASRec
    >>> from tfmoe.tfx.serving_export import export_trained_model
    >>> model = SASRec(num_items=20, max_len=5, hidden_dim=8)
    >>> export_trained_model(model, "/tmp/serving", metrics={"test": {"NDCG@10": 0.1}})  # doctest: +SKIP
    '/tmp/serving'
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

METRICS_FILE = "tfmoe_metrics.json"


def serving_spec(model, top_k: int = 10):
    """The ServingSpec of a trained tfmoe model (:func:`tfmoe.serving.model_specs.spec_for_model`)."""
    from tfmoe.serving.model_specs import spec_for_model

    return spec_for_model(model, top_k=top_k)


def serving_module(model, spec):
    """What the signatures call: for next-item, ``last_scores`` with a finite padding column; CTR models as they are."""
    import tensorflow as tf

    if spec.task != "next_item":
        return model
    method = spec.model_method or "last_scores"

    class NextItemScores(tf.Module):
        """``{"history": [B, L]}`` -> scores ``[B, V]`` of the most recent position (column 0 = float32 min)."""

        def __init__(self, inner):
            super().__init__(name="next_item_scores")
            self.model = inner

        def scores(self, features):
            scores = tf.cast(getattr(self.model, method)(features), tf.float32)
            lowest = tf.fill([tf.shape(scores)[0], 1], tf.float32.min)
            return tf.concat([lowest, scores[:, 1:]], axis=1)

    return NextItemScores(model)


def export_trained_model(model, serving_model_dir: str, metrics: dict | None = None, model_name: str = "recs",
                         top_k: int = 10) -> str:
    """Writes ``model`` as a SavedModel at ``serving_model_dir`` (replaced); returns the path.

    ``metrics`` (e.g. ``{"test": {"NDCG@10": ...}}``) goes to ``assets.extra/tfmoe_metrics.json``.
    """
    from tfmoe.serving.export import export_model

    spec = serving_spec(model, top_k)
    module = serving_module(model, spec)
    if spec.task == "next_item":
        spec = dataclasses.replace(spec, model_method="scores")
    staging_base = serving_model_dir.rstrip("/") + ".export"
    shutil.rmtree(staging_base, ignore_errors=True)
    result = export_model(module, staging_base, spec, version=1, model_name=model_name)
    if metrics is not None:
        extra = os.path.join(result.path, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, METRICS_FILE), "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2, sort_keys=True, default=float)
    shutil.rmtree(serving_model_dir, ignore_errors=True)
    os.makedirs(os.path.dirname(serving_model_dir.rstrip("/")) or ".", exist_ok=True)
    os.rename(result.path, serving_model_dir)
    shutil.rmtree(staging_base, ignore_errors=True)
    return serving_model_dir


def read_metrics(model_dir: str) -> dict:
    """The metrics recorded with an exported (or pushed) model version."""
    with open(os.path.join(model_dir, "assets.extra", METRICS_FILE), encoding="utf-8") as f:
        return json.load(f)
