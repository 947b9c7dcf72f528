"""Per-task evaluation for the trainer: the datasets a split is scored on and the metrics computed.

* ``next_item``: full-catalogue ranking (:func:`tfmoe.metrics.ranking.evaluate_ranking` on
  ``model.last_scores``), seen items (the user's whole history) filtered by default; monitor ``NDCG@10``
  (higher is better).
* ``ctr``: :func:`tfmoe.metrics.ctr.evaluate_ctr` on ``model.probabilities`` with the fixed seeded
  evaluation negatives of :class:`~tfmoe.data.samples.CTRSampling`; monitor ``AUC``.

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
        return data.make_dataset(config.data.dir, split, self.task, **options)

    def evaluator(self, model, config):
        """A reusable ``dataset -> {metric: float, ..., "count": rows}`` scorer of ``model`` (traced once)."""
        if self.task == "next_item":
            from tfmoe.metrics.ranking import RankingEvaluator

            return RankingEvaluator(model.last_scores, filter_seen=config.evaluation.filter_seen)
        from tfmoe.metrics.ctr import evaluate_ctr

        return lambda dataset: evaluate_ctr(model.probabilities, dataset)


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
