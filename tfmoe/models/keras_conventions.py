"""What ``compile`` / ``fit`` / ``evaluate`` / ``predict`` do for a tfmoe model, in one place.

:class:`KerasConventions` is mixed into the next-item task (:class:`tfmoe.models.NextItemTask`: SASRec, FAME,
HyMoERec) and the CTR models (:class:`tfmoe.models.ctr.CTRModel`). A model supplies two methods:

* ``predictions(features)``: what ``predict`` returns: ``[B, V]`` scores of the next item (padding
  column ``-inf``) or ``[B]`` click probabilities;
* ``metric_inputs(y, y_pred)``: from a batch's labels and the output of ``call``, the ``(y_true,
  y_pred)`` pair the metrics see: the next-item target and the ``[B, V]`` scores of the last position
  only (never ``[B, L, V]``), or the click labels and probabilities.

``compile(metrics=[...])`` keeps every :class:`tfmoe.metrics.FeatureMetric` (``NDCG``, ``HitRate``,
``MRR`` with ``filter_seen``, ``GAUC``) and every ``evaluation_only`` metric (the exact ``AUC`` and
``GAUC``) beside the compiled metrics: a feature metric is updated with the batch's features (the seen
items, the user ids); an evaluation-only metric is updated and reported by ``evaluate`` (and ``fit``'s
validation) but not by training steps, where an exact AUC would re-sort its rows at every step. Every
other Keras metric is compiled as usual and sees the same ``(y_true, y_pred)``. ``fit`` and
``evaluate`` report them under their names (``"NDCG@10"``). The exact CTR metrics sort, which XLA
cannot compile: with ``jit_compile=True`` the training steps are compiled and the test steps are not.

Example:
    >>> import numpy as np
    >>> from tfmoe.metrics import NDCG
    >>> from tfmoe.models import SASRec
    >>> model = SASRec(num_items=30, max_len=6, hidden_dim=8)
    >>> model.compile(optimizer="adam", metrics=[NDCG(k=10, filter_seen=True)])
    >>> x, targets = {"history": np.array([[0, 3, 4, 5, 6, 7]])}, np.array([8])
    >>> sorted(model.evaluate(x, targets, verbose=0, return_dict=True))
    ['NDCG@10', 'loss']
    >>> model.predict(x, verbose=0).shape
    (1, 31)
"""

from __future__ import annotations

import keras

from tfmoe.metrics.feature_metric import FeatureMetric


class KerasConventions:
    """Mixin for ``keras.Model`` subclasses: predictions from ``predict``, feature-aware metrics in ``compile``."""

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, weighted_metrics=None,
                **kwargs):
        """``keras.Model.compile``; feature and evaluation-only metrics in ``metrics`` are kept by the model."""
        flat = list(metrics) if isinstance(metrics, (list, tuple)) else ([] if metrics is None else [metrics])
        own = tuple(m for m in flat if _kept_by_model(m))
        others = [m for m in flat if not _kept_by_model(m)]
        object.__setattr__(self, "_own_metrics", own)  # not tracked: a recompile replaces them
        super().compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights, metrics=others or None,
                        weighted_metrics=weighted_metrics, **kwargs)

    def get_compile_config(self):
        """Keras' compile config with the model's own metrics among ``metrics`` (a saved model recompiles with them)."""
        config = super().get_compile_config()
        own = getattr(self, "_own_metrics", ())
        if config and own:
            metrics = config.get("metrics") or []
            metrics = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
            config["metrics"] = metrics + [keras.saving.serialize_keras_object(m) for m in own]
        return config

    def compile_from_config(self, config):
        """Recompiles a loaded model (what ``keras.Model.compile_from_config`` does for a non-custom ``compile``)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)  # its variables exist before the weights load

    def _active_metrics(self):
        """The model's own metrics that the step being traced updates (training steps skip evaluation-only ones)."""
        training = getattr(self, "_tracing_train_step", False)
        return tuple(m for m in getattr(self, "_own_metrics", ()) if not (training and _evaluation_only(m)))

    @property
    def metrics(self):
        return [*super().metrics, *self._active_metrics()]

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        y_true, predictions = self.metric_inputs(y, y_pred)
        for metric in self._active_metrics():
            if isinstance(metric, FeatureMetric):
                metric.update_from_features(x, y_true, predictions, sample_weight=sample_weight)
            else:
                metric.update_state(y_true, predictions, sample_weight=sample_weight)
        return super().compute_metrics(x, y_true, predictions, sample_weight=sample_weight)

    def train_step(self, data):
        object.__setattr__(self, "_tracing_train_step", True)  # read while the step is traced
        try:
            return super().train_step(data)
        finally:
            object.__setattr__(self, "_tracing_train_step", False)

    def make_test_function(self, force=False):
        """Keras' test function; without XLA when an evaluation-only metric (which sorts) is compiled."""
        if not (self.jit_compile and any(_evaluation_only(m) for m in getattr(self, "_own_metrics", ()))):
            return super().make_test_function(force)
        self._jit_compile = False
        try:
            return super().make_test_function(force)
        finally:
            self._jit_compile = True

    @classmethod
    def from_preset(cls, preset: str, **kwargs):
        """The model of a named preset (:mod:`tfmoe.models.presets`); ``kwargs`` add ``num_items`` and override.

        ``HyMoERec.from_preset("hymoerec_ml1m", num_items=3416)``; a preset of another class is an error.
        """
        from tfmoe.models import presets, registry

        model = presets.get(preset)["model"]
        if not issubclass(registry.model_class(model), cls):
            raise ValueError(f"{cls.__name__}.from_preset: preset {preset!r} builds a {model!r} model; "
                             f"presets of {cls.__name__}: {', '.join(_presets_of(cls)) or 'none'}")
        return presets.build(preset, **kwargs)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.predictions(x)

    def predictions(self, features):
        raise NotImplementedError(f"{type(self).__name__} must implement predictions(features)")

    def metric_inputs(self, y, y_pred):
        raise NotImplementedError(f"{type(self).__name__} must implement metric_inputs(y, y_pred)")


def _evaluation_only(metric) -> bool:
    return bool(getattr(metric, "evaluation_only", False))


def _kept_by_model(metric) -> bool:
    return isinstance(metric, FeatureMetric) or _evaluation_only(metric)


def _presets_of(cls) -> list[str]:
    from tfmoe.models import presets, registry

    return [name for name in presets.available() if issubclass(registry.model_class(presets.get(name)["model"]), cls)]
