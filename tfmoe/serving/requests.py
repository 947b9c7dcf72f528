"""Building TF Serving request protos: model specs, Predict and Classify requests, ``tf.Example`` s.

Shared by the gRPC client, the warmup writer and the benchmark, so every caller encodes inputs
the same way: numpy arrays become ``TensorProto`` s through ``tf.make_tensor_proto`` (packed
``tensor_content``, no per-element Python loop), histories are right-aligned and left-padded
with :func:`pad_histories` (the training convention: most recent item last, pad id 0).

Example:
    >>> from tfmoe.serving import requests
    >>> requests.pad_histories([[5, 6, 7], [9]], max_len=2).tolist()
    [[6, 7], [0, 9]]
    >>> req = requests.predict_request("recs", {"history": [[6, 7]]}, signature="predict_raw", version=3)
    >>> req.model_spec.name, req.model_spec.version.value, req.model_spec.signature_name
    ('recs', 3, 'predict_raw')
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np


def pad_histories(histories, max_len: int, dtype=np.int64) -> np.ndarray:
    """Id lists (oldest first) -> ``[len(histories), max_len]``: the most recent ``max_len`` ids, left-padded with 0.

    Example:
        >>> pad_histories([[1, 2, 3, 4]], max_len=3).tolist()
        [[2, 3, 4]]
    """
    if isinstance(max_len, bool) or not isinstance(max_len, numbers.Integral) or max_len < 1:
        raise ValueError(f"pad_histories: `max_len` must be a positive integer, got {max_len!r}")
    out = np.zeros((len(histories), max_len), dtype)
    for row, history in enumerate(histories):
        tail = np.asarray(history, dtype)[-max_len:]
        if tail.ndim != 1:
            raise ValueError(f"pad_histories: history {row} must be a flat list of ids, got shape {tail.shape}")
        if len(tail):
            out[row, max_len - len(tail):] = tail
    return out


def set_model_spec(spec, model: str, signature: str | None = None, version: int | None = None,
                   label: str | None = None) -> None:
    """Fills a ``ModelSpec``: name, optional signature, and a version *or* a version label."""
    if not model:
        raise ValueError("model spec: the model name must be non-empty")
    if version is not None and label is not None:
        raise ValueError(f"model spec: give a version ({version}) or a version label ({label!r}), not both")
    spec.name = model
    if signature:
        spec.signature_name = signature
    if version is not None:
        spec.version.value = int(version)
    if label is not None:
        spec.version_label = label


def tensor_proto(value):
    """A ``TensorProto`` from an array-like (an existing ``TensorProto`` passes through)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    if isinstance(value, tensor_pb2.TensorProto):
        return value
    array = np.asarray(value)
    if array.dtype == object or array.dtype.kind in "SU":
        return tf.make_tensor_proto(array.astype(object) if array.dtype.kind == "U" else array, dtype=tf.string)
    return tf.make_tensor_proto(array)


def predict_request(model: str, inputs: Mapping, signature: str = "serving_default", version: int | None = None,
                    label: str | None = None, output_filter=()):
    """A ``PredictRequest`` with ``inputs`` ``{alias: array-like or TensorProto}``."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    set_model_spec(request.model_spec, model, signature, version, label)
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


def to_example(features: Mapping):
    """A ``tf.train.Example`` from ``{key: int | float | list of ints | list of floats}``.

    Example:
        >>> ex = to_example({"items": [3, 4], "target_item": 7})
        >>> list(ex.features.feature["items"].int64_list.value)
        [3, 4]
    """
    from tensorflow.core.example import example_pb2, feature_pb2

    feature = {}
    for key, value in features.items():
        values = np.atleast_1d(np.asarray(value))
        if values.ndim != 1:
            raise ValueError(f"to_example: feature {key!r} must be a scalar or a flat list, got shape {values.shape}")
        if values.dtype.kind in "iub" or (values.size == 0 and values.dtype.kind == "f"):
            feature[key] = feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=values.astype(np.int64)))
        elif values.dtype.kind == "f":
            feature[key] = feature_pb2.Feature(float_list=feature_pb2.FloatList(value=values.astype(np.float32)))
        else:
            raise ValueError(f"to_example: feature {key!r} must hold ints or floats, got dtype {values.dtype}")
    return example_pb2.Example(features=feature_pb2.Features(feature=feature))


def serialized_examples(examples) -> list[bytes]:
    """``tf.train.Example`` s, dicts (see :func:`to_example`) or bytes -> serialized bytes."""
    out = []
    for example in examples:
        if isinstance(example, bytes):
            out.append(example)
        elif isinstance(example, Mapping):
            out.append(to_example(example).SerializeToString())
        else:
            out.append(example.SerializeToString())
    return out


def examples_request(model: str, examples, signature: str = "serving_default", version: int | None = None,
                     label: str | None = None, input_name: str = "examples"):
    """A ``PredictRequest`` feeding serialized ``tf.Example`` s ``[n]`` string to ``input_name``."""
    return predict_request(model, {input_name: np.array(serialized_examples(examples), dtype=object)},
                           signature=signature, version=version, label=label)


def classify_request(model: str, examples, signature: str = "classify", version: int | None = None,
                     label: str | None = None):
    """A ``ClassificationRequest`` carrying ``examples`` as an ``ExampleList``."""
    from tensorflow.core.example import example_pb2
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    set_model_spec(request.model_spec, model, signature, version, label)
    example_list = request.input.example_list.examples
    for data in serialized_examples(examples):
        example_list.add().CopyFrom(example_pb2.Example.FromString(data))
    return request
