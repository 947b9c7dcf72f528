"""Keras callbacks of the trainer: validation metrics, early stopping with a resumable state, epoch timing.

Order matters: ``fit``'s validation adds ``val_<metric>`` and :class:`EpochTimer` ``train_seconds`` and
``val_seconds`` to the epoch logs, which :class:`EarlyStoppingWithState` (best weights, patience) and
TensorBoard then read;
the state is written to ``state.json`` before ``BackupAndRestore`` saves the weights, so a run killed at
any point resumes with a consistent history (epochs at or after the resumed epoch are dropped and rerun).

Example:
    >>> from tfmoe.training.callbacks import TrainingState
    >>> state = TrainingState(monitor="NDCG@10")
    >>> state.record(0, {"val_NDCG@10": 0.1}, min_delta=0.0)
    True
    >>> state.record(1, {"val_NDCG@10": 0.05}, min_delta=0.0), state.best_epoch, state.wait
    (False, 0, 1)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field

import keras
import tensorflow as tf

from tfmoe.training.evaluation import higher_is_better
from tfmoe.utils.files import write_atomic


@dataclass
class TrainingState:
    """What early stopping and the result need to survive a restart (saved as ``state.json``)."""

    monitor: str
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped_early: bool = False
    finished: bool = False
    history: list = field(default_factory=list)
    devices: list = field(default_factory=list)  # where the run trained, one entry per change of device

    def trained_on(self, device: str) -> None:
        """Notes that training (re)starts on ``device`` (a run resumed on another machine lists both)."""
        if not self.devices or self.devices[-1] != device:
            self.devices.append(device)

    @property
    def device(self) -> str | None:
        """Where the run trained, the devices joined by " + " in order; ``None`` before any training."""
        return " + ".join(self.devices) or None

    def improved(self, value: float, min_delta: float) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if higher_is_better(self.monitor):
            return value > self.best + min_delta
        return value < self.best - min_delta

    def record(self, epoch: int, logs: dict, min_delta: float) -> bool:
        """Adds epoch ``epoch``'s logs; returns True when it is the new best."""
        entry = {"epoch": epoch, **{k: _to_float(x) for k, x in logs.items()}}
        self.history = [h for h in self.history if h["epoch"] < epoch] + [entry]
        value = entry.get(f"val_{self.monitor}")
        if value is None:  # no validation this epoch
            return False
        if self.improved(value, min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        self.wait += 1
        return False

    def rewind(self, epoch: int) -> None:
        """Forgets epochs ``>= epoch`` (they are rerun after a restart) and recomputes best / wait."""
        kept = [h for h in self.history if h["epoch"] < epoch]
        self.best, self.best_epoch, self.wait, self.history = None, None, 0, []
        for entry in kept:
            self.record(entry["epoch"], {k: x for k, x in entry.items() if k != "epoch"}, 0.0)

    def save(self, path: str) -> None:
        write_atomic(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str, monitor: str) -> TrainingState:
        if not tf.io.gfile.exists(path):
            return cls(monitor=monitor)
        with tf.io.gfile.GFile(path) as f:
            values = json.load(f)
        if values.get("monitor") != monitor:
            raise ValueError(f"{path}: the saved run monitors {values.get('monitor')!r}, this config {monitor!r}; "
                             "use another output_dir")
        return cls(**values)


def _to_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class EpochTimer(keras.callbacks.Callback):
    """Adds ``train_seconds`` (training time of the epoch), ``train_batches`` and, in validated epochs,
    ``val_seconds`` (``fit``'s validation pass) to the logs."""

    KEYS = ("train_seconds", "train_batches", "val_seconds")

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._batches = 0
        self._train_seconds = self._validation_start = None

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1

    def on_test_begin(self, logs=None):
        if getattr(self, "_start", None) is not None and self._train_seconds is None:  # fit's validation
            self._validation_start = time.perf_counter()
            self._train_seconds = self._validation_start - self._start

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        now = time.perf_counter()
        logs["train_seconds"] = self._train_seconds if self._train_seconds is not None else now - self._start
        logs["train_batches"] = self._batches
        if self._validation_start is not None:
            logs["val_seconds"] = now - self._validation_start

    def on_train_end(self, logs=None):
        self._start = None


class EarlyStoppingWithState(keras.callbacks.Callback):
    """Early stopping on ``val_<monitor>`` that saves the best weights and a resumable :class:`TrainingState`.

    Args:
        state: the run's state (loaded from ``state_path`` when resuming).
        state_path: where the state is written after every epoch.
        best_weights_path: ``*.weights.h5`` written whenever the monitored metric improves.
        patience: validation passes without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
    """

    def __init__(self, state: TrainingState, state_path: str, best_weights_path: str, patience: int,
                 min_delta: float = 0.0):
        super().__init__()
        self.state = state
        self.state_path = state_path
        self.best_weights_path = best_weights_path
        self.patience = patience
        self.min_delta = min_delta

    def on_train_begin(self, logs=None):
        self._first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:  # the epoch fit resumes at (after BackupAndRestore): rerun from here
            self._first_epoch = epoch
            self.state.rewind(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.state.record(epoch, logs, self.min_delta):
            self.model.save_weights(self.best_weights_path)
        if self.state.wait >= self.patience:
            self.state.stopped_early = True
            self.model.stop_training = True
        self.state.save(self.state_path)


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' ``BackupAndRestore`` that, with an integer ``save_freq``, also backs up at every epoch end.

    So the backup after the last epoch always says "resume at the next epoch" (a run can be extended with
    more epochs), while mid-epoch backups bound the work lost to a crash.
    """

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq != "epoch":
            self._save_model()
