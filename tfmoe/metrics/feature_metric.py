"""``FeatureMetric``: a Keras metric that also reads the model's input features.

Full-ranking metrics with seen-item filtering need the user's history, and GAUC needs the user id;
``compile(metrics=...)`` gives a metric only ``y_true`` and ``y_pred``. A tfmoe model compiled with a
``FeatureMetric`` keeps it beside the compiled metrics and calls :meth:`FeatureMetric.update_from_features`
with the batch's features (see :class:`tfmoe.models.keras_conventions.KerasConventions`). Used on its own, a
``FeatureMetric`` is an ordinary metric whose ``update_state`` takes the extra input as a keyword.
"""

from __future__ import annotations

import keras


class FeatureMetric(keras.metrics.Metric):
    """Base class of the metrics that need input features besides ``y_true`` and ``y_pred``."""

    def update_from_features(self, features, y_true, y_pred, sample_weight=None):
        """Updates the state from one batch: ``features`` is the model input (a dict of tensors)."""
        raise NotImplementedError(f"{type(self).__name__} must implement update_from_features")


def require_feature(owner: str, features, keys: tuple):
    """The first of ``keys`` present in ``features``; a ``ValueError`` naming the metric and the keys otherwise."""
    if isinstance(features, dict):
        for key in keys:
            if key in features:
                return features[key]
        raise ValueError(f"{owner}: the model's features need one of {list(keys)}, got {sorted(features)}")
    return features
