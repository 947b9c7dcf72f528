"""One worker of the multi-worker training test (tests/test_multi_worker.py), run as a subprocess.

Usage: ``TF_CONFIG=... python tests/multi_worker_main.py CONFIG.json RESULT_DIR``

Trains ``CONFIG.json`` with :func:`tfmoe.training.train` (its ``training.strategy`` is ``multi_worker``,
the cluster comes from ``TF_CONFIG``), then writes into ``RESULT_DIR``:

* ``weights.npz``: the returned model's weights by variable path;
* ``result.json``: whether this worker is the chief, the metrics, best epoch, per-epoch losses, the
  ``user_id`` of the rows this worker receives in the first step of a distributed training dataset
  (to show that each worker gets its share of the global batch), and the temporary directories the trainer
  made (``tempfile.mkdtemp``; a non-chief worker's private run directory).

Everything runs under ``main()``: pytest imports this module when it collects doctests.
"""

from __future__ import annotations

import json
import os
import sys


def main(config_path: str, result_dir: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tempfile

    import numpy as np

    from tfmoe.training import TrainConfig, get_strategy, train
    from tfmoe.training import trainer as trainer_module
    from tfmoe.training.strategies import is_chief

    made, mkdtemp = [], tempfile.mkdtemp

    def recorded_mkdtemp(*args, **kwargs):
        made.append(mkdtemp(*args, **kwargs))
        return made[-1]

    tempfile.mkdtemp = recorded_mkdtemp
    config = TrainConfig.load(config_path)
    strategy = get_strategy(config.training.strategy)  # first, before any op: collectives are set up at start
    result = train(config)
    tempfile.mkdtemp = mkdtemp
    distributed = strategy.experimental_distribute_dataset(trainer_module._training_dataset(config, result.task, {}))
    features, _ = next(iter(distributed))
    first_users = [int(u) for local in strategy.experimental_local_results(features["user_id"])
                   for u in local.numpy()]
    os.makedirs(result_dir, exist_ok=True)
    np.savez(os.path.join(result_dir, "weights.npz"), **{w.path: np.asarray(w.numpy()) for w in result.model.weights})
    with open(os.path.join(result_dir, "result.json"), "w") as f:
        json.dump({"chief": is_chief(strategy), "workers": strategy.num_replicas_in_sync,
                   "metrics": result.metrics, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                   "losses": [entry["loss"] for entry in result.history], "first_batch_users": first_users,
                   "temporary_dirs": made}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
