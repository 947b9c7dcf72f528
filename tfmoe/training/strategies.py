"""tf.distribute strategies by name, one per process.

Names: ``default`` (no distribution), ``one_device`` (the first GPU, else the CPU), ``mirrored``
(all local GPUs, or all logical CPUs), ``multi_worker`` (``MultiWorkerMirroredStrategy``; the cluster comes
from ``TF_CONFIG``), ``tpu`` (``TPUStrategy``; the TPU address from ``TPU_NAME``, ``""`` = a local TPU VM).

Under ``multi_worker`` every worker runs the same program; only the chief (:func:`is_chief`) writes the run
directory (see :mod:`tfmoe.training.trainer`), and :func:`prepare_for_fit` works around the two places where
Keras 3's ``fit`` breaks under ``MultiWorkerMirroredStrategy``.

A process keeps **one** strategy per name: collective all-reduces are numbered per strategy from the
same start, and TensorFlow binds those instance keys to the first tensor shapes it sees, so a second
``MirroredStrategy`` object in the same process fails with "Shape mismatch in the collective instance".
:func:`get_strategy` therefore caches what it creates.

Example:
    >>> from tfmoe.training import get_strategy
    >>> get_strategy("default").num_replicas_in_sync
    1
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from tfmoe.training.config import STRATEGIES
from tfmoe.utils import validation as v

_CACHE: dict[str, tf.distribute.Strategy] = {}


def get_strategy(name: str = "default") -> tf.distribute.Strategy:
    """The process-wide strategy called ``name`` (created on first use)."""
    v.check_choice("get_strategy", "name", name, STRATEGIES)
    if name not in _CACHE:
        _CACHE[name] = _create(name)
    return _CACHE[name]


def _create(name: str) -> tf.distribute.Strategy:
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if "TF_CONFIG" in os.environ:
            try:
                json.loads(os.environ["TF_CONFIG"])
            except json.JSONDecodeError as error:
                raise ValueError(f"get_strategy('multi_worker'): TF_CONFIG is not valid JSON: {error}") from error
        return tf.distribute.MultiWorkerMirroredStrategy()
    # tpu
    address = os.environ.get("TPU_NAME", "")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.NotFoundError, tf.errors.UnavailableError) as error:
        raise ValueError(
            f"get_strategy('tpu'): no TPU found at TPU_NAME={address!r} ({error}); use strategy 'mirrored' or "
            "'default' on machines without a TPU"
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except on the non-chief workers of a multi-worker run."""
    return bool(strategy.extended.should_checkpoint)


def prepare_for_fit(strategy: tf.distribute.Strategy, model: keras.Model) -> keras.Model:
    """``model`` (built in ``strategy.scope()``), made trainable by ``fit`` under ``MultiWorkerMirroredStrategy``.

    Keras 3 (3.12 included) breaks ``fit`` under that strategy in two places (keras-team/keras#20585,
    tensorflow/tensorflow#72388); other strategies are left alone:

    * ``fit`` starts by reducing the first distributed batch across the replicas with ``strategy.reduce``, only to
      learn its shapes, and the strategy cannot reduce a nested ``(features, labels)`` batch ("Attempt to convert a
      value ({...: PerReplica...}) with an unsupported type"): ``model`` builds from this worker's own part of the
      batch instead (the same shapes, no collective);
    * every step averages the replicas' logs (loss, metrics) with ``strategy.reduce("MEAN", value, axis=0)``,
      which fails on scalars ("Invalid reduction dimension 0 for input with 0 dimensions"): scalars are averaged
      across the replicas with ``axis=None`` instead, as Keras does for local replicas (see
      :func:`_patch_keras_log_reduction`).
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not hasattr(model, "_symbolic_build"):
        return model

    def build_from_local_batch(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0],
                                                   next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = build_from_local_batch
    _patch_keras_log_reduction()
    return model


def _patch_keras_log_reduction() -> None:
    """Makes Keras' ``reduce_per_replica`` average scalar logs across workers (once per process).

    Only what fails unpatched changes: the mean of rank-0 values under a multi-worker
    ``MultiWorkerMirroredStrategy``; everything else goes to Keras' own function.
    """
    try:
        from keras.src.backend.tensorflow import trainer as keras_trainer
    except ImportError:  # another backend, or a Keras that moved it: nothing to patch
        return
    original = getattr(keras_trainer, "reduce_per_replica", None)
    if original is None or getattr(original, "tfmoe_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        multi_worker = (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                        and strategy.num_replicas_in_sync > len(strategy.extended.worker_devices))
        if reduction not in ("auto", "mean") or not multi_worker:
            return original(values, strategy, reduction)

        def reduce(value):
            if strategy.experimental_local_results(value)[0].shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original(value, strategy, reduction)

        return tf.nest.map_structure(reduce, values)

    reduce_per_replica.tfmoe_patched = True
    keras_trainer.reduce_per_replica = reduce_per_replica
