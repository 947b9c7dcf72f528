"""Per-task evaluation for the trainer: the datasets a split is scored on and the metrics compiled.

The trainer compiles :meth:`TaskEvaluation.metrics` into the model, so ``fit``'s validation and
``model.evaluate`` report them (one pass, under the run's strategy):

* ``next_item``: full-catalogue ranking of the last position, ``HR@{5,10,20}``, ``NDCG@{5,10,20}`` and
  ``MRR@10`` (:mod:`tfmoe.metrics.top_k`), seen items (the user's whole history) filtered by default;
  monitor ``NDCG@10`` (higher is better).
* ``ctr``: exact ``AUC``, ``GAUC`` and ``LogLoss`` (:mod:`tfmoe.metrics.click`) with the fixed seeded
  evaluation negatives of :class:`~tfmoe.data.samples.CTRSampling`; monitor ``AUC``.

Both add ``count``, the rows scored. These are the numbers of :func:`tfmoe.metrics.evaluate_ranking` and
:func:`tfmoe.metrics.evaluate_ctr` on the same rows (``tests/test_trainer_metrics.py``).

``protocol`` versions what a task's metrics mean, so saved metrics of an older protocol can be told apart and
re-evaluated (next-item 1: seen items filtered over the model input window only; 2: over the whole history).

Example:
    >>> from tfmoe.training.evaluation import task_evaluation
    >>> task_evaluation("next_item").monitor, task_evaluation("ctr").monitor
    ('NDCG@10', 'AUC')
"""

from __future__ import annotations

from dataclasses import dataclass

from tfmoe.utils import validation as v
from tfmoe.utils.choices import TASKS

LOWER_IS_BETTER = ("loss", "logloss")
PROTOCOLS = {"next_item": 2, "ctr": 1}
RANKING_KS, MRR_K = (5, 10, 20), 10


@dataclass(frozen=True)
class TaskEvaluation:
    task: str
    monitor: str

    @property
    def protocol(self) -> int:
        return PROTOCOLS[self.task]

    def dataset(self, config, split: str, *, ctr_context=None):
        """The evaluation batches of ``split`` (``valid`` or ``test``) for ``config``."""
        from tfmoe.data import dataset as data

        options = dict(max_len=config.data.max_len, batch_size=config.data.eval_batch_size,
                       sequence_features=tuple(config.data.sequence_features), cache=config.data.cache)
        if self.task == "ctr":
            options.update(ctr=ctr_sampling(config), **(ctr_context or {}))
        return data.make_dataset(config.data.dir, split, self.task, **options).with_options(batch_sharding())

    def metrics(self, config) -> list:
        """The metrics the trainer compiles: ranking metrics of ``config.evaluation`` or the exact CTR metrics."""
        from tfmoe import metrics

        if self.task == "next_item":
            filter_seen = config.evaluation.filter_seen
            ranking = [cls(k=k, filter_seen=filter_seen) for k in RANKING_KS for cls in (metrics.HitRate, metrics.NDCG)]
            return [*ranking, metrics.MRR(k=MRR_K, filter_seen=filter_seen), metrics.Count()]
        return [metrics.AUC(), metrics.GAUC(), metrics.LogLoss(), metrics.Count()]


def batch_sharding():
    """``tf.data.Options`` that split a dataset's batches between the workers of a multi-worker run.

    TensorFlow's default (AUTO) gives each worker whole files, which fails when there are fewer files than
    workers (one file per split is what ``tfmoe prepare`` writes below 128 MiB). Other strategies ignore it.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def task_evaluation(task: str) -> TaskEvaluation:
    v.check_choice("task_evaluation", "task", task, TASKS)
    return TaskEvaluation(task, "NDCG@10" if task == "next_item" else "AUC")


def higher_is_better(metric: str) -> bool:
    """``False`` for losses (``loss``, ``LogLoss``), ``True`` for HR / NDCG / MRR / AUC / GAUC."""
    return metric.lower() not in LOWER_IS_BETTER


def ctr_sampling(config):
    from tfmoe.data.samples import CTRSampling

    try:
        return CTRSampling(**config.data.ctr)
    except TypeError as error:
        raise ValueError(f"TrainConfig: `data.ctr` has an unknown CTRSampling field: {error}") from error
