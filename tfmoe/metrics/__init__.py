"""tfmoe.metrics: full-ranking next-item metrics (HR, NDCG, MRR) and CTR metrics (AUC, GAUC, LogLoss).

As Keras metrics for ``model.compile(metrics=...)``: :class:`NDCG`, :class:`HitRate`, :class:`MRR`
(``k``, ``filter_seen``), :class:`AUC`, :class:`GAUC`, :class:`LogLoss`, and :class:`Count` (rows).
As functions over a dataset: :func:`evaluate_ranking`, :func:`evaluate_ctr`.

Example:
    >>> import numpy as np
    >>> from tfmoe.metrics import ranks
    >>> ranks(np.array([[0.0, 0.2, 0.9, 0.5]], "float32"), np.array([3])).numpy().tolist()
    [1]
"""

from tfmoe.metrics.click import AUC, GAUC, LogLoss
from tfmoe.metrics.count import Count
from tfmoe.metrics.ctr import CTRMetrics, auc, ctr_metrics, evaluate_ctr, gauc, log_loss
from tfmoe.metrics.feature_metric import FeatureMetric
from tfmoe.metrics.ranking import RankingMetrics, candidate_mask, evaluate_ranking, metrics_from_ranks, ranks
from tfmoe.metrics.top_k import MRR, NDCG, HitRate

__all__ = [
    "AUC",
    "Count",
    "GAUC",
    "MRR",
    "NDCG",
    "FeatureMetric",
    "HitRate",
    "LogLoss",
    "CTRMetrics",
    "RankingMetrics",
    "auc",
    "candidate_mask",
    "ctr_metrics",
    "evaluate_ctr",
    "evaluate_ranking",
    "gauc",
    "log_loss",
    "metrics_from_ranks",
    "ranks",
]
