"""Warmup requests: ``<version>/assets.extra/tf_serving_warmup_requests``, as TF Serving replays them.

The file is a TFRecord of ``PredictionLog`` protos (``predict_log.request`` or
``classify_log.request``). TF Serving runs each one after loading a version and before serving
it, so the first real request does not pay for lazy initialisation; the local model server does
the same. :func:`sample_requests` builds one request per signature and batch size from a
:class:`~tfmoe.serving.features.ServingSpec`, with full-length histories of valid ids.

Example:
    >>> from tfmoe.serving import warmup
    >>> from tfmoe.serving.features import SequenceFeature, ServingSpec
    >>> spec = ServingSpec("next_item", (SequenceFeature("history", max_len=4, vocab_size=9),))
    >>> logs = warmup.sample_requests(spec, model_name="recs", batch_sizes=(1, 8))
    >>> [log.predict_log.request.model_spec.signature_name for log in logs]
    ['serving_default', 'serving_default', 'predict_raw', 'predict_raw', 'top_k', 'top_k']
"""

from __future__ import annotations

import os

import numpy as np

from tfmoe.serving import requests
from tfmoe.serving.features import (
    CLASSIFY,
    EXCLUDE_SEEN,
    SERVING_DEFAULT,
    TOP_K,
    SequenceFeature,
    ServingSpec,
)

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving refuses warmup files with more records than this


def warmup_path(export_dir) -> str:
    return os.path.join(os.fspath(export_dir), ASSETS_EXTRA, WARMUP_FILE)


def sample_inputs(spec: ServingSpec, batch_size: int) -> dict:
    """Raw-signature inputs ``{name: array}``: full-length histories of valid, distinct-per-row ids."""
    inputs = {}
    for f in spec.features:
        rows = np.arange(batch_size)[:, None]
        if isinstance(f, SequenceFeature):
            span = (f.vocab_size - 1) if f.vocab_size else 1
            inputs[f.name] = (1 + (rows + np.arange(f.max_len)[None, :]) % span).astype(f.dtype)
        elif f.dtype == "float32":
            inputs[f.name] = np.full(batch_size, 0.5, np.float32)
        else:
            span = (f.vocab_size - 1) if f.vocab_size and f.vocab_size > 1 else 1
            inputs[f.name] = (1 + rows[:, 0] % span).astype(f.dtype)
    return inputs


def sample_examples(spec: ServingSpec, batch_size: int) -> list[bytes]:
    """Serialized ``tf.Example`` s holding :func:`sample_inputs` under each feature's example key."""
    inputs = sample_inputs(spec, batch_size)
    return requests.serialized_examples(
        {f.key: inputs[f.name][row] for f in spec.features} for row in range(batch_size)
    )


def sample_requests(spec: ServingSpec, model_name: str = "", batch_sizes=(1,)) -> list:
    """``PredictionLog`` s: one request per signature of ``spec`` and per batch size."""
    from tensorflow_serving.apis import prediction_log_pb2

    name = model_name or "model"
    logs = []
    for signature in spec.signature_names():
        for batch_size in batch_sizes:
            log = prediction_log_pb2.PredictionLog()
            if signature == CLASSIFY:
                log.classify_log.request.CopyFrom(
                    requests.classify_request(name, sample_examples(spec, batch_size), signature=CLASSIFY))
            elif signature == SERVING_DEFAULT:
                log.predict_log.request.CopyFrom(
                    requests.examples_request(name, sample_examples(spec, batch_size), signature=SERVING_DEFAULT))
            else:
                inputs = sample_inputs(spec, batch_size)
                if signature == TOP_K:
                    inputs[EXCLUDE_SEEN] = np.ones(batch_size, bool)
                log.predict_log.request.CopyFrom(requests.predict_request(name, inputs, signature=signature))
            logs.append(log)
    return logs


def write(export_dir, logs) -> str:
    """Writes ``logs`` to ``<export_dir>/assets.extra/tf_serving_warmup_requests``; returns the path."""
    import tensorflow as tf

    if not 0 < len(logs) <= MAX_RECORDS:
        raise ValueError(f"warmup: TF Serving accepts 1..{MAX_RECORDS} warmup records, got {len(logs)}")
    path = warmup_path(export_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read(export_dir) -> list:
    """The ``PredictionLog`` s of a version's warmup file (empty if it has none)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(export_dir)
    if not os.path.isfile(path):
        return []
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(path)]
