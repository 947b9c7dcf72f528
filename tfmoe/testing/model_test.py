"""The contract every tfmoe model honours: :func:`run_model_test`.

A model here is a ``keras.Model`` that takes a dict of features, trains with ``fit(x, y)`` on its own
``compute_loss``, and whose ``predict`` returns float32 scores (``[B, V]`` for next-item models,
probabilities ``[B]`` for CTR models).

Example:
    >>> import numpy as np
    >>> from tfmoe.models import SASRec
    >>> from tfmoe.testing import run_model_test
    >>> items = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], "int32")
    >>> labels = np.array([[0, 2, 3, 4], [5, 6, 7, 8]], "int32")
    >>> run_model_test(lambda: SASRec(num_items=9, max_len=4, hidden_dim=8, dropout=0.0), {"history": items},
    ...                labels, expected_prediction_shape=(2, 10), jit=False, policies=(), strategy=None)
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfmoe.testing.layer_test import (
    assert_arguments_stored_under_their_names,
    assert_float32_variables,
    assert_weight_counts,
    sublayers_off_policy,
    with_dtype,
)
from tfmoe.testing.outputs import assert_close_to_scale, assert_outputs_close
from tfmoe.testing.precision import mixed_precision_tolerance


def _predict(model, x):
    return model.predict(x, batch_size=_batch(x), verbose=0)


def _batch(x) -> int:
    return int(np.shape(tf.nest.flatten(x)[0])[0])


def _built(model, x):
    model(x, training=False)
    return model


def _compiled(model, **kwargs):
    model.compile(optimizer=keras.optimizers.Adam(1e-2), **kwargs)
    return model


def assert_model_config_round_trip(make_model, x):
    """``from_config(get_config())``: the same config, and the same predictions with the same weights."""
    model = _built(make_model(), x)
    config = model.get_config()
    assert_arguments_stored_under_their_names(model, config)
    clone = type(model).from_config(config)
    assert clone.get_config() == config, "from_config(get_config()) changed the config"
    _built(clone, x).set_weights(model.get_weights())
    assert_outputs_close(_predict(model, x), _predict(clone, x), rtol=1e-6, atol=1e-6)


def assert_model_symbolic_call(make_model, x):
    """Called on ``keras.Input`` s (batch size unknown), the model's outputs have the eager outputs' shapes past
    the batch axis, and their dtypes."""
    model = make_model()
    eager = tf.nest.flatten(model(x, training=False))
    inputs = {key: keras.Input(shape=np.shape(value)[1:], dtype=np.asarray(value).dtype.name, name=key)
              for key, value in x.items()}
    symbolic = tf.nest.flatten(make_model()(inputs))
    assert len(symbolic) == len(eager), f"symbolic call: {len(symbolic)} outputs, eager: {len(eager)}"
    for i, (s, e) in enumerate(zip(symbolic, eager)):
        assert tuple(s.shape[1:]) == tuple(e.shape[1:]), f"output {i}: symbolic {s.shape}, eager {tuple(e.shape)}"
        assert keras.backend.standardize_dtype(s.dtype) == keras.backend.standardize_dtype(e.dtype), (
            f"output {i}: symbolic dtype {s.dtype}, eager {e.dtype}")


def assert_fit_step(make_model, x, y, jit_compile=False):
    """One ``fit`` step gives a finite loss and moves most trainable weights; returns the trained model."""
    model = _compiled(make_model(), jit_compile=jit_compile)
    _built(model, x)
    before = [np.array(w.numpy()) for w in model.trainable_weights]
    loss = model.fit(x, y, batch_size=_batch(x), epochs=1, verbose=0, shuffle=False).history["loss"][0]
    assert np.isfinite(loss), f"{type(model).__name__}: fit gave loss {loss}"
    moved = [not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights)]
    assert sum(moved) * 2 >= len(moved), (
        f"{type(model).__name__}: one fit step moved only {sum(moved)} of {len(moved)} trainable weights: "
        f"unmoved {[w.path for w, m in zip(model.trainable_weights, moved) if not m]}")
    return model


def assert_model_save_load(model, x, tmp_path=None):
    """``model.save`` to ``.keras`` and ``keras.saving.load_model``: the same class and identical predictions."""
    expected = _predict(model, x)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(str(tmp_path or scratch), f"{type(model).__name__}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model), f"loaded a {type(loaded).__name__}, saved a {type(model).__name__}"
    assert_outputs_close(expected, _predict(loaded, x), rtol=0, atol=0)


def assert_model_jit(make_model, x, y, rtol=1e-4, atol=1e-5):
    """Compiled with ``jit_compile=True``: ``fit`` trains (a finite loss) and ``predict`` matches the
    non-XLA predictions of the same weights."""
    trained = assert_fit_step(make_model, x, y, jit_compile=True)
    eager = _compiled(_built(make_model(), x), jit_compile=False)
    eager.set_weights(trained.get_weights())
    assert_outputs_close(_predict(eager, x), _predict(trained, x), rtol=rtol, atol=atol)


def assert_model_mixed_precision(make_model, x, policy="mixed_bfloat16", roundings=16):
    """Built with ``dtype=policy``: float32 variables, every sub-layer under ``policy``, float32 predictions within
    :func:`~tfmoe.testing.mixed_precision_tolerance` (``roundings`` steps) of the float32 model's."""
    reference = _built(make_model(), x)
    model = _built(with_dtype(reference, policy), x)
    assert model.dtype_policy.name == policy, f"{type(model).__name__}: policy {model.dtype_policy.name}"
    off = sublayers_off_policy(model, policy)
    assert not off, f"{type(model).__name__}: sub-layers not under {policy}: {off}"
    model.set_weights(reference.get_weights())
    assert_float32_variables(model, policy)
    got = _predict(model, x)
    assert got.dtype == np.float32, f"{type(model).__name__}: predictions are {got.dtype} under {policy}"
    assert_close_to_scale(_predict(reference, x), got, mixed_precision_tolerance(policy, roundings))


def assert_model_mirrored(make_model, x, y, strategy, rtol=1e-5, atol=1e-5):
    """Created under a 2-replica ``strategy``: the same predictions as a local model with the same weights, and
    ``fit`` gives a finite loss."""
    assert strategy.num_replicas_in_sync == 2, "split the CPU into 2 logical devices (tfmoe.utils.devices)"
    assert _batch(x) % 2 == 0, "use an even batch for the MirroredStrategy check"
    reference = _built(make_model(), x)
    with strategy.scope():
        model = _compiled(_built(make_model(), x))
    model.set_weights(reference.get_weights())
    assert_outputs_close(_predict(reference, x), _predict(model, x), rtol=rtol, atol=atol)
    loss = model.fit(x, y, batch_size=_batch(x), epochs=1, verbose=0, shuffle=False).history["loss"][0]
    assert np.isfinite(loss), f"{type(model).__name__}: fit under {type(strategy).__name__} gave loss {loss}"


def run_model_test(make_model, x, y, *, tmp_path=None, expected_prediction_shape=None,
                   expected_num_trainable_weights=None, expected_num_non_trainable_weights=None, jit=True,
                   policies=("mixed_bfloat16",), mixed_roundings=16, strategy=None):
    """Runs the whole model contract on ``make_model`` (a zero-argument factory) with features ``x`` and labels ``y``.

    1. ``predict`` gives float32 scores of ``expected_prediction_shape``;
    2. config round trip; 3. a symbolic call; 4. the weight counts;
    5. one ``fit`` step (finite loss, most trainable weights move), then ``.keras`` save and load;
    6. XLA: ``compile(jit_compile=True)`` trains and predicts as without it (``jit``);
    7. each mixed ``policies``: the policy reaches every sub-layer, variables stay float32, predictions are float32
       and within tolerance of float32;
    8. a 2-replica ``strategy`` (a ``tf.distribute.MirroredStrategy``; None skips).
    """
    model = _built(make_model(), x)
    predictions = _predict(model, x)
    assert predictions.dtype == np.float32, f"{type(model).__name__}: predict gives {predictions.dtype}"
    if expected_prediction_shape is not None:
        assert predictions.shape == tuple(expected_prediction_shape), (
            f"{type(model).__name__}: predict gives shape {predictions.shape}, expected {expected_prediction_shape}")
    assert_model_config_round_trip(make_model, x)
    assert_model_symbolic_call(make_model, x)
    assert_weight_counts(model, expected_num_trainable_weights, expected_num_non_trainable_weights)
    assert_model_save_load(assert_fit_step(make_model, x, y), x, tmp_path)
    if jit:
        assert_model_jit(make_model, x, y)
    for policy in policies:
        assert_model_mixed_precision(make_model, x, policy=policy, roundings=mixed_roundings)
    if strategy is not None:
        assert_model_mirrored(make_model, x, y, strategy)
