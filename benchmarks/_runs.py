"""Results of trainer runs for the benchmark reports, finished or cut off.

Example:
    >>> from benchmarks._runs import saved_run
    >>> saved_run({"data": {"dir": "/nonexistent"}, "model": {"name": "sasrec"}, "output_dir": "/nonexistent"},
    ...           "next_item") is None
    True
"""

from __future__ import annotations

import json
import os

from benchmarks._timing import read_json


def saved_run(config_dict: dict, task: str) -> dict | None:
    """One run's result: from ``metrics.json`` when its training (or its chunk of it) finished and no later chunk has
    saved a better checkpoint since, else from its best checkpoint, evaluated on the test split now; ``None`` when
    nothing was saved yet. Saved metrics of an older
    evaluation protocol are evaluated again from the best checkpoint and written back (the old ones kept under
    ``previous_metrics``).

    Returns ``{"finished", "epochs", "best_epoch" (0-based), "stopped_early", "test", "valid", "history", "device"}``;
    for an unfinished run ``valid`` holds only the monitored metric; ``test`` is ``None`` for a finished chunk that
    did not score the test split (``evaluation.splits: []``). ``device`` names where the run trained (several
    joined by " + " when it was resumed elsewhere); ``None`` for runs saved before the trainer recorded it.
    """
    from tfmoe.training import TrainConfig
    from tfmoe.training.callbacks import TrainingState
    from tfmoe.training.evaluation import task_evaluation
    from tfmoe.training.run_settings import check_same_run

    config = TrainConfig.from_dict(config_dict)
    check_same_run(config.output_dir, config)
    evaluation = task_evaluation(task)
    metrics_path = os.path.join(config.output_dir, "metrics.json")
    weights, state_path = (os.path.join(config.output_dir, name) for name in ("best.weights.h5", "state.json"))
    saved = read_json(metrics_path)
    if saved and os.path.exists(weights) and os.path.getmtime(weights) > os.path.getmtime(metrics_path):
        saved = None  # a later chunk is training and found a better checkpoint: the saved metrics are not its
    if saved and saved.get("evaluation_protocol", 1) != evaluation.protocol:
        saved = _reevaluated(config, saved, evaluation.protocol, metrics_path)
    if saved:
        return {"finished": True, "epochs": saved["epochs_run"], "best_epoch": saved["best_epoch"],
                "stopped_early": saved["stopped_early"], "test": saved["metrics"].get("test"),
                "valid": saved["metrics"]["valid"], "history": saved.get("history", []), "device": saved.get("device")}
    if not (os.path.exists(weights) and os.path.exists(state_path)):
        return None
    from tfmoe.training.trainer import evaluate_best

    state = TrainingState.load(state_path, evaluation.monitor)
    test = evaluate_best(config, ["test"])["test"]
    return {"finished": False, "epochs": len(state.history), "best_epoch": state.best_epoch, "stopped_early": False,
            "test": test, "valid": {evaluation.monitor: state.best}, "history": state.history,
            "device": state.device}


def _reevaluated(config, saved: dict, protocol: int, metrics_path: str) -> dict:
    from tfmoe.training.trainer import evaluate_best
    from tfmoe.utils.files import write_atomic

    updated = {**saved, "metrics": evaluate_best(config, list(saved["metrics"])), "evaluation_protocol": protocol,
               "previous_metrics": {"evaluation_protocol": saved.get("evaluation_protocol", 1), **saved["metrics"]}}
    write_atomic(metrics_path, json.dumps(updated, indent=1))
    return updated
