"""In-graph input handling of the serving signatures: parse ``tf.Example``, pad, validate, cast.

Both paths end in the same model inputs: ``{feature.name: tensor}``, sequences ``[batch, max_len]``
right-aligned (most recent id last) and left-padded with 0, exactly as training and evaluation
build them (:func:`tfmoe.data.samples.last_windows` does the windowing for both).

Checks run before the model (``tf.debugging.Assert`` under control dependencies), so a bad
request fails with ``InvalidArgumentError`` (gRPC ``INVALID_ARGUMENT``) and a message that names
the signature, the feature and the offending values:

* ids outside ``[0, vocab_size)``;
* rows with fewer than ``min_len`` non-padding ids (empty histories).

Longer-than-``max_len`` histories in a ``tf.Example`` keep their most recent ``max_len`` ids;
raw tensors must already be ``[batch, max_len]`` (the signature's static shape says so).

Example:
    >>> import tensorflow as tf
    >>> from tfmoe.serving.features import SequenceFeature, ServingSpec
    >>> from tfmoe.serving import preprocessing
    >>> spec = ServingSpec("next_item", (SequenceFeature("history", max_len=4, vocab_size=10,
    ...                                                  example_key="items"),))
    >>> ex = tf.train.Example(features=tf.train.Features(feature={
    ...     "items": tf.train.Feature(int64_list=tf.train.Int64List(value=[3, 4, 5, 6, 7]))}))
    >>> parsed = preprocessing.parse_examples(tf.constant([ex.SerializeToString()]), spec, "demo")
    >>> parsed["history"].numpy().tolist()
    [[4, 5, 6, 7]]
"""

from __future__ import annotations

import tensorflow as tf

from tfmoe.data.samples import last_windows
from tfmoe.serving.features import PADDING_ID, SequenceFeature, ServingSpec

_SUMMARIZE = 10  # offending values shown in an error message


def parse_spec(spec: ServingSpec) -> dict:
    """The ``tf.io.parse_example`` spec: ragged int64 sequences, required scalars."""
    out = {}
    for f in spec.features:
        if isinstance(f, SequenceFeature):
            out[f.key] = tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)
        else:
            out[f.key] = tf.io.FixedLenFeature([], tf.float32 if f.dtype == "float32" else tf.int64)
    return out


def left_pad(values: tf.RaggedTensor, max_len: int, pad_value: int = PADDING_ID) -> tf.Tensor:
    """The most recent ``max_len`` ids of each row, left-padded with ``pad_value``: ``[rows, max_len]`` int64."""
    return last_windows(values, max_len, pad_value, tf.int64)


def rebase(padded, row_lengths, pad_value: int) -> tf.Tensor:
    """Subtracts each row's oldest kept value from its kept values (``padded`` from :func:`left_pad`).

    Example:
        >>> import tensorflow as tf
        >>> rebase(tf.constant([[-1, 3, 3, 4], [-1, -1, -1, -1]], tf.int64), tf.constant([3, 0], tf.int64), -1
        ...        ).numpy().tolist()
        [[-1, 0, 0, 1], [-1, -1, -1, -1]]
    """
    width = tf.shape(padded, out_type=tf.int64)[1]
    kept = tf.minimum(tf.cast(row_lengths, tf.int64), width)
    first = tf.gather(padded, tf.minimum(width - kept, width - 1), batch_dims=1)[:, None]
    is_kept = tf.range(width)[None, :] >= (width - kept)[:, None]
    return tf.where(is_kept, padded - first, tf.constant(pad_value, padded.dtype))


def id_range_check(ids, vocab_size: int, where: str) -> tf.Operation:
    """Assertion that every id lies in ``[0, vocab_size)``; the message lists offending ids."""
    flat = tf.reshape(tf.cast(ids, tf.int64), [-1])
    bad = tf.logical_or(flat < 0, flat >= vocab_size)
    return tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        [f"{where}: ids must be in [0, {vocab_size}); out-of-range ids:", tf.boolean_mask(flat, bad)],
        summarize=_SUMMARIZE,
    )


def min_length_check(padded, min_len: int, where: str) -> tf.Operation:
    """Assertion that every row has at least ``min_len`` non-padding ids; the message lists bad rows."""
    counts = tf.reduce_sum(tf.cast(tf.not_equal(padded, PADDING_ID), tf.int32), axis=1)
    short = counts < min_len
    return tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(short)),
        [f"{where}: every row needs at least {min_len} non-padding id(s) (empty history); rows:",
         tf.where(short)[:, 0]],
        summarize=_SUMMARIZE,
    )


def _checks(feature, value, where: str) -> list:
    checks = []
    if feature.vocab_size is not None:
        checks.append(id_range_check(value, feature.vocab_size, where))
    if isinstance(feature, SequenceFeature) and feature.min_len > 0:
        checks.append(min_length_check(value, feature.min_len, where))
    return checks


def _validated(values: dict, checks: list) -> dict:
    if not checks:
        return values
    with tf.control_dependencies(checks):
        return {name: tf.identity(value) for name, value in values.items()}


def parse_examples(serialized, spec: ServingSpec, signature: str) -> dict:
    """Serialized ``tf.Example`` s ``[batch]`` -> validated model inputs (see the module docstring)."""
    parsed = tf.io.parse_example(serialized, parse_spec(spec))
    values, checks = {}, []
    for f in spec.features:
        where = f"{signature}: feature `{f.key}`"
        raw = parsed[f.key]
        if isinstance(f, SequenceFeature):
            if f.vocab_size is not None:
                checks.append(id_range_check(raw.values, f.vocab_size, where))
            value = left_pad(raw, f.max_len, f.pad_value)
            if f.rebase:
                value = rebase(value, raw.row_lengths(), f.pad_value)
            if f.min_len > 0:
                checks.append(min_length_check(value, f.min_len, where))
        else:
            value = raw
            checks.extend(_checks(f, value, where))
        values[f.name] = tf.cast(value, f.dtype)
    return _validated(values, checks)


def raw_input_specs(spec: ServingSpec) -> dict:
    """``TensorSpec`` s of the raw-tensor signatures: sequences ``[None, max_len]``, scalars ``[None]``."""
    specs = {}
    for f in spec.features:
        shape = [None, f.max_len] if isinstance(f, SequenceFeature) else [None]
        specs[f.name] = tf.TensorSpec(shape, tf.as_dtype(f.dtype), name=f.name)
    return specs


def batch_size_check(inputs: dict, signature: str) -> list:
    """Assertions that all ``inputs`` have the same batch (0th) dimension; empty for one input."""
    names = sorted(inputs)
    first = names[0]
    return [
        tf.debugging.Assert(
            tf.equal(tf.shape(inputs[name])[0], tf.shape(inputs[first])[0]),
            [f"{signature}: inputs `{first}` and `{name}` must have the same batch size; got",
             tf.shape(inputs[first])[0], tf.shape(inputs[name])[0]],
        )
        for name in names[1:]
    ]


def validate_raw(inputs: dict, spec: ServingSpec, signature: str) -> dict:
    """Raw-signature tensors -> the same tensors, gated by the batch-size, id-range and length checks."""
    checks = batch_size_check(inputs, signature)
    for f in spec.features:
        checks.extend(_checks(f, inputs[f.name], f"{signature}: input `{f.name}`"))
    return _validated({f.name: inputs[f.name] for f in spec.features}, checks)

