"""The serving signatures of an exported model, as concrete functions ready for ``tf.saved_model.save``.

=================  =============================================  ===========================================
signature          inputs                                         outputs
=================  =============================================  ===========================================
``serving_default``  ``examples`` [B] string (``tf.Example``)     next-item: ``scores`` [B, V] float32;
                                                                  CTR: ``probability`` [B, 1] float32
``predict_raw``    each feature: sequences [B, max_len],          same as ``serving_default``
                   scalars [B] (the feature's dtype)
``top_k``          ``predict_raw`` inputs + ``exclude_seen`` [B]  ``item_ids`` [B, k] int64,
  (next-item)      bool                                           ``scores`` [B, k] float32
``classify``       ``inputs`` [B] string (``tf.Example``)         ``scores`` [B, 2] float32 (P(0), P(1)),
  (CTR)                                                           ``classes`` [B, 2] string ("0", "1")
=================  =============================================  ===========================================

``scores[:, i]`` of a next-item model is the score of item id ``i`` (column 0 = padding). ``top_k``
never returns the padding id 0; with ``exclude_seen`` true for a row, it never returns that
row's history ids either. When fewer than ``k`` candidates remain (a tiny catalogue), the
trailing slots hold item id ``-1`` with score ``-inf``. Every input is batched (dimension 0), as
TF Serving's server-side batching requires.

Example:
    >>> import keras, numpy as np
    >>> from tfmoe.serving.features import SequenceFeature, ServingSpec
    >>> from tfmoe.serving.signatures import build_signatures
    >>> history = keras.Input((5,), dtype="int64", name="history")
    >>> pooled = keras.ops.mean(keras.layers.Embedding(20, 4)(history), axis=1)
    >>> model = keras.Model({"history": history}, keras.layers.Dense(20)(pooled))
    >>> spec = ServingSpec("next_item", (SequenceFeature("history", max_len=5, vocab_size=20),), top_k=3)
    >>> fns = build_signatures(model, spec)
    >>> out = fns["top_k"]({"history": np.array([[0, 0, 1, 2, 3]]), "exclude_seen": np.array([True])})
    >>> out["item_ids"].shape.as_list()
    [1, 3]
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmoe.serving import preprocessing
from tfmoe.serving.features import (
    CLASS_LABELS,
    CLASSES,
    CLASSIFY,
    CLASSIFY_INPUTS,
    EXAMPLES,
    EXCLUDE_SEEN,
    ITEM_IDS,
    PREDICT_RAW,
    PROBABILITY,
    SCORES,
    SERVING_DEFAULT,
    TOP_K,
    ServingSpec,
)


def _model_argument(model, inputs: dict):
    """A single-input Keras model whose input is not a dict gets the tensor itself, others the dict."""
    if len(inputs) == 1:
        try:
            structure = model.input  # Keras models expose their input structure
        except (AttributeError, ValueError):
            structure = None
        if structure is not None and not isinstance(structure, dict):
            return next(iter(inputs.values()))
    return inputs


def call_model(model, spec: ServingSpec, inputs: dict) -> tf.Tensor:
    """Runs ``model`` in inference mode: next-item scores [B, V] or CTR probability [B, 1], float32.

    With ``spec.model_method`` set, ``getattr(model, spec.model_method)(inputs)`` is called instead
    (tfmoe models: ``last_scores``, never the ``[B, L, V]`` sequence scores).
    """
    import keras

    if spec.model_method is not None:  # tfmoe models: last_scores / probabilities on the features dict
        method = getattr(model, spec.model_method, None)
        if not callable(method):
            raise ValueError(f"export: ServingSpec.model_method={spec.model_method!r} but {type(model).__name__} "
                             "has no such method")
        outputs = method(dict(inputs))
    else:
        argument = _model_argument(model, inputs)
        outputs = model(argument, training=False) if isinstance(model, keras.Layer) else model(argument)
    if isinstance(outputs, dict):
        if spec.output_key is None or spec.output_key not in outputs:
            raise ValueError(f"export: the model returns a dict with keys {sorted(outputs)}; set "
                             f"ServingSpec.output_key to one of them (got {spec.output_key!r})")
        outputs = outputs[spec.output_key]
    outputs = tf.cast(outputs, tf.float32)
    if spec.task == "next_item":
        if outputs.shape.rank != 2:
            raise ValueError(f"export: a next-item model must return scores [batch, num_items], got shape "
                             f"{outputs.shape}")
        return outputs
    if outputs.shape.rank == 1:
        outputs = outputs[:, None]
    if outputs.shape.rank != 2 or outputs.shape[1] not in (1, None):
        raise ValueError(f"export: a CTR model must return [batch, 1] or [batch], got shape {outputs.shape}")
    return tf.sigmoid(outputs) if spec.ctr_output == "logit" else outputs


def top_k_items(scores, history, exclude_seen, k: int):
    """Top-``k`` item ids and scores, never the padding id 0 nor (per row) the ids in ``history``.

    ``scores`` [B, V], ``history`` [B, L] ids in [0, V), ``exclude_seen`` [B] bool. Slots without a
    candidate get id -1 and score -inf.

    Example:
        >>> import tensorflow as tf
        >>> ids, s = top_k_items(tf.constant([[9., 1., 5., 3.]]), tf.constant([[0, 2]]), tf.constant([True]), 2)
        >>> ids.numpy().tolist(), s.numpy().tolist()
        ([[3, 1]], [[3.0, 1.0]])
    """
    scores = tf.cast(scores, tf.float32)
    if scores.shape[1] is not None and k > scores.shape[1] - 1:
        raise ValueError(f"export: top_k={k} but the model scores only {scores.shape[1] - 1} items (ids 1..)")
    neg_inf = tf.constant(-np.inf, tf.float32)
    is_padding = tf.equal(tf.range(tf.shape(scores)[1]), 0)
    scores = tf.where(is_padding[None, :], neg_inf, scores)
    history = tf.cast(history, tf.int64)
    rows = tf.broadcast_to(tf.range(tf.shape(history, out_type=tf.int64)[0])[:, None], tf.shape(history, tf.int64))
    # min(score, -inf) removes a seen item; min(score, +inf) leaves rows without exclusion unchanged.
    fill = tf.broadcast_to(tf.where(exclude_seen[:, None], neg_inf, np.inf), tf.shape(history))
    scores = tf.tensor_scatter_nd_min(scores, tf.reshape(tf.stack([rows, history], axis=-1), [-1, 2]),
                                      tf.reshape(fill, [-1]))
    values, ids = tf.math.top_k(scores, k)
    return tf.where(values > neg_inf, tf.cast(ids, tf.int64), -1), values


def classify_outputs(probability) -> dict:
    """TF Serving Classify outputs from a probability [B, 1]: ``scores`` [B, 2], ``classes`` [B, 2]."""
    scores = tf.concat([1.0 - probability, probability], axis=1)
    classes = tf.tile(tf.constant([list(CLASS_LABELS)]), [tf.shape(probability)[0], 1])
    return {SCORES: scores, CLASSES: classes}


def build_signatures(model, spec: ServingSpec, jit_compile: bool = False) -> dict:
    """``{signature name: concrete function}`` for ``spec.task`` (see the module table).

    The model is traced once, as one function on the validated raw inputs that every signature
    calls: a third of the tracing time of three separate traces, and one copy of the model graph
    in ``saved_model.pb``. ``jit_compile=True`` marks that function for XLA (must-compile): faster at batch 1
    on CPU (``benchmarks/serving.py --xla``), but the serving binary must include XLA's CPU JIT.
    """
    output = SCORES if spec.task == "next_item" else PROBABILITY
    raw_specs = preprocessing.raw_input_specs(spec)
    examples_spec = tf.TensorSpec([None], tf.string, name=EXAMPLES)

    @tf.function(input_signature=[raw_specs], jit_compile=jit_compile or None)
    def model_outputs(features):
        return call_model(model, spec, features)

    model_outputs.get_concrete_function()  # trace now: a model that does not fit the spec fails here

    @tf.function(input_signature=[examples_spec])
    def serving_default(examples):
        return {output: model_outputs(preprocessing.parse_examples(examples, spec, SERVING_DEFAULT))}

    @tf.function(input_signature=[raw_specs])
    def predict_raw(inputs):
        return {output: model_outputs(preprocessing.validate_raw(inputs, spec, PREDICT_RAW))}

    signatures = {SERVING_DEFAULT: serving_default.get_concrete_function(),
                  PREDICT_RAW: predict_raw.get_concrete_function()}

    if spec.task == "next_item":
        top_k_specs = dict(raw_specs, **{EXCLUDE_SEEN: tf.TensorSpec([None], tf.bool, name=EXCLUDE_SEEN)})

        @tf.function(input_signature=[top_k_specs])
        def top_k(inputs):
            features = preprocessing.validate_raw(inputs, spec, TOP_K)
            scores = model_outputs(features)
            ids, values = top_k_items(scores, features[spec.history_feature], inputs[EXCLUDE_SEEN], spec.top_k)
            return {ITEM_IDS: ids, SCORES: values}

        signatures[TOP_K] = top_k.get_concrete_function()
    else:

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUTS)])
        def classify(inputs):
            return classify_outputs(model_outputs(preprocessing.parse_examples(inputs, spec, CLASSIFY)))

        signatures[CLASSIFY] = classify.get_concrete_function()
    return signatures
