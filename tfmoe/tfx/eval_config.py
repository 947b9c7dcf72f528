"""The Evaluator's TFMA ``EvalConfig`` per task, with the thresholds whose outcome (the blessing) gates the Pusher.

The model evaluated is the Trainer's serving SavedModel (:mod:`tfmoe.tfx.serving_export`), fed
the serialized ``tf.Example`` s of the evaluation split through ``serving_default``.

* ``next_item`` (split ``test``): label ``target`` (the held-out next item), prediction
  ``scores`` ``[B, num_items + 1]``. Metrics: ``ExampleCount`` and ``SparseTopKCategoricalAccuracy``
  with ``k=10`` = HR@10 over the whole catalogue (seen items *not* filtered, unlike tfmoe's
  evaluation), gated by a lower bound (``hr_threshold``) and by a change threshold against the last
  blessed model (it may drop by at most ``change_tolerance``). tfmoe's full-ranking NDCG@10 is
  recorded with the model by the Trainer (``assets.extra/tfmoe_metrics.json``).
* ``ctr`` (split ``ctr_eval``, see :mod:`tfmoe.tfx.ctr_eval`): label ``label`` (1 = click),
  prediction ``probability``. Metrics: ``ExampleCount``, ``AUC``, ``AUCPrecisionRecall``,
  ``Calibration``, ``BinaryCrossEntropy``; AUC is gated by ``auc_threshold`` and the change
  threshold.

Without a baseline (the first run, nothing blessed yet) TFMA skips the change threshold.

Example:
    >>> from tfmoe.tfx.eval_config import eval_config, gated_metric
    >>> config = eval_config("next_item", threshold=0.05, change_tolerance=0.01)  # doctest: +SKIP
    >>> gated_metric("next_item")
    'sparse_top_k_categorical_accuracy'
"""

from __future__ import annotations

import json

NEXT_ITEM_LABEL = "target"
NEXT_ITEM_PREDICTION = "scores"
CTR_LABEL = "label"
CTR_PREDICTION = "probability"
HR_K = 10
EVAL_SPLIT = {"next_item": "test", "ctr": "ctr_eval"}
_GATED = {"next_item": "sparse_top_k_categorical_accuracy", "ctr": "auc"}


def gated_metric(task: str) -> str:
    """The TFMA metric name whose thresholds decide the blessing."""
    return _GATED[task]


def _threshold(threshold: float, change_tolerance: float):
    import tensorflow_model_analysis as tfma

    return tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": float(threshold)}),
        change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                                     absolute={"value": -float(change_tolerance)}),
    )


def eval_config(task: str, threshold: float, change_tolerance: float = 0.01):
    """The ``tfma.EvalConfig`` of ``task`` (see the module docstring)."""
    import tensorflow_model_analysis as tfma

    if task not in EVAL_SPLIT:
        raise ValueError(f"eval_config: `task` must be one of {sorted(EVAL_SPLIT)}, got {task!r}")
    gate = _threshold(threshold, change_tolerance)
    if task == "next_item":
        label, prediction = NEXT_ITEM_LABEL, NEXT_ITEM_PREDICTION
        metrics = [
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="SparseTopKCategoricalAccuracy", config=json.dumps({"k": HR_K}),
                              threshold=gate),
        ]
    else:
        label, prediction = CTR_LABEL, CTR_PREDICTION
        metrics = [
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="AUC", threshold=gate),
            tfma.MetricConfig(class_name="AUCPrecisionRecall"),
            tfma.MetricConfig(class_name="Calibration"),
            tfma.MetricConfig(class_name="BinaryCrossEntropy"),
        ]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=label,
                                    prediction_key=prediction)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
    )
