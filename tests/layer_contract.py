"""The contract every tfmoe Keras layer must honour, as reusable test assertions.

Each helper takes ``make_layer`` (a zero-argument factory returning a fresh layer) and ``args``
(a tuple of positional call inputs; numpy arrays) plus optional ``kwargs`` for the call
(e.g. ``{"mask": ...}``, ``{"training": False}``). Outputs may be a tensor, a tuple/list or a dict;
all floating outputs are compared.

Usage in a test module::

    from layer_contract import check_layer_contract
    def test_contract(tmp_path):
        check_layer_contract(lambda: TopKRouter(num_experts=4, k=2), (x,), tmp_path=tmp_path)
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def _is_floating(array) -> bool:
    """True for numpy floating arrays and for bfloat16 (an ml_dtypes type numpy does not call floating)."""
    return np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"


def _floating_outputs(outputs):
    """Flattens outputs to a list of numpy arrays (floating ones only, in a stable order)."""
    flat = tf.nest.flatten(outputs)
    arrays = [np.asarray(keras.ops.convert_to_numpy(t)) for t in flat]
    return [a for a in arrays if _is_floating(a)]


def _all_outputs(outputs):
    return [np.asarray(keras.ops.convert_to_numpy(t)) for t in tf.nest.flatten(outputs)]


def assert_outputs_close(a, b, rtol=1e-5, atol=1e-5):
    left, right = _all_outputs(a), _all_outputs(b)
    assert len(left) == len(right), f"different number of outputs: {len(left)} vs {len(right)}"
    for i, (x, y) in enumerate(zip(left, right)):
        assert x.shape == y.shape, f"output {i}: shape {x.shape} vs {y.shape}"
        if _is_floating(x):
            np.testing.assert_allclose(x.astype(np.float64), y.astype(np.float64), rtol=rtol, atol=atol,
                                       err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(x, y, err_msg=f"output {i}")


def call(layer, args, kwargs=None):
    return layer(*[tf.convert_to_tensor(a) for a in args], **(kwargs or {}))


def assert_config_round_trip(make_layer, args, kwargs=None):
    """``from_config(get_config())`` rebuilds a layer that, given the same weights, gives the same outputs."""
    layer = make_layer()
    expected = call(layer, args, kwargs)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    call(clone, args, kwargs)  # build
    clone.set_weights(layer.get_weights())
    assert_outputs_close(expected, call(clone, args, kwargs))


def assert_keras_save_load(make_layer, args, tmp_path, kwargs=None):
    """A model wrapping the layer, saved to ``.keras`` and loaded, gives identical outputs."""

    class _Wrapper(keras.Model):
        def __init__(self, inner, call_kwargs, **kw):
            super().__init__(**kw)
            self.inner = inner
            self.call_kwargs = call_kwargs

        def call(self, inputs):
            return self.inner(*inputs, **self.call_kwargs)

    layer = make_layer()
    tensors = [tf.convert_to_tensor(a) for a in args]
    expected = call(layer, args, kwargs)
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype.name, batch_size=t.shape[0]) for t in tensors]
    outputs = layer(*inputs, **(kwargs or {}))
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / f"{type(layer).__name__}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    inner = [lyr for lyr in loaded.layers if type(lyr) is type(layer)]
    assert inner, f"{type(layer).__name__} was not restored as itself (got {[type(x) for x in loaded.layers]})"
    assert_outputs_close(expected, loaded(tensors if len(tensors) > 1 else tensors[0]))


def assert_jit_compiles(make_layer, args, kwargs=None, rtol=1e-4, atol=1e-5):
    """The layer runs inside ``tf.function(jit_compile=True)`` and matches eager execution."""
    layer = make_layer()
    eager = call(layer, args, kwargs)
    compiled = tf.function(lambda *t: layer(*t, **(kwargs or {})), jit_compile=True)
    assert_outputs_close(eager, compiled(*[tf.convert_to_tensor(a) for a in args]), rtol=rtol, atol=atol)


# Unit roundoff of the reduced compute dtypes: float16 keeps 11 significant bits (relative error <= 2^-11 ~ 4.9e-4 per
# rounding), bfloat16 8 bits (2^-8 ~ 3.9e-3 per rounding).
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


def mixed_precision_tolerance(policy: str, roundings: int = 8) -> float:
    """Relative tolerance of an output computed under ``policy`` (e.g. ``"mixed_bfloat16"``) vs float32.

    Every rounding to the compute dtype on the output's path (the cast inputs and weights, each matmul,
    normalisation or activation output) adds at most one unit roundoff of relative error, and float32
    accumulation inside matmuls adds none worth counting: a layer with a handful of such steps stays within
    ``roundings`` unit roundoffs (8 by default: 3.9e-3 for float16, 3.1e-2 for bfloat16) of the output's scale.
    """
    return roundings * UNIT_ROUNDOFF[policy.split("_", 1)[1]]


def assert_mixed_precision(make_layer, args, kwargs=None, policy="mixed_float16", rtol=None, atol=None):
    """Under a mixed policy: float32 variables, finite outputs close to the float32 layer's outputs.

    Default tolerance: :func:`mixed_precision_tolerance` of the policy, relative to each output and, as an
    absolute floor, to the output's scale (its largest magnitude, at least 1).
    """
    reference = make_layer()
    expected = call(reference, args, kwargs)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = make_layer()
        call(layer, args, kwargs)
        layer.set_weights(reference.get_weights())
        got = call(layer, args, kwargs)
    finally:
        keras.config.set_dtype_policy(previous)
    for v in layer.weights:
        assert v.dtype == "float32", f"variable {v.path} has dtype {v.dtype} under {policy}"
    for arr in _floating_outputs(got):
        assert np.all(np.isfinite(arr.astype(np.float32))), f"non-finite output under {policy}"
    left, right = _floating_outputs(expected), _floating_outputs(got)
    tolerance = mixed_precision_tolerance(policy)
    for x, y in zip(left, right):
        x = x.astype(np.float32)
        scale = max(1.0, float(np.abs(x).max())) if x.size else 1.0
        np.testing.assert_allclose(x, y.astype(np.float32), rtol=tolerance if rtol is None else rtol,
                                   atol=tolerance * scale if atol is None else atol)


def assert_mirrored_strategy(make_layer, args, kwargs=None, rtol=1e-5, atol=1e-5):
    """Created under a 2-replica ``MirroredStrategy``, the layer's per-replica outputs equal a local run."""
    strategy = tf.distribute.MirroredStrategy()
    assert strategy.num_replicas_in_sync == 2, "tests/conftest.py must split the CPU into 2 devices"
    with strategy.scope():
        layer = make_layer()
        expected = call(layer, args, kwargs)
    batch = np.asarray(args[0]).shape[0]
    assert batch % 2 == 0, "use an even batch for the MirroredStrategy check"
    dataset = tf.data.Dataset.from_tensor_slices(tuple(args)).batch(batch)
    dist = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def step(inputs):
        return strategy.run(lambda *t: layer(*t, **(kwargs or {})), args=tuple(inputs))

    per_replica = step(next(iter(dist)))
    got = tf.nest.map_structure(lambda t: tf.concat(strategy.experimental_local_results(t), axis=0), per_replica)
    assert_outputs_close(expected, got, rtol=rtol, atol=atol)


def check_layer_contract(make_layer, args, tmp_path, kwargs=None, mirrored=True, policies=("mixed_float16",
                                                                                             "mixed_bfloat16")):
    """Runs every contract assertion above."""
    assert_config_round_trip(make_layer, args, kwargs)
    assert_keras_save_load(make_layer, args, tmp_path, kwargs)
    assert_jit_compiles(make_layer, args, kwargs)
    for policy in policies:
        assert_mixed_precision(make_layer, args, kwargs, policy=policy)
    if mirrored:
        assert_mirrored_strategy(make_layer, args, kwargs)


def assert_independent_initial_weights(model_or_layer):
    """No two randomly initialised weights start equal (nor share their leading values).

    Catches one Keras initializer instance reused for several weights: an unseeded instance draws the
    same values every time, so e.g. ``W_Q = W_K = W_V`` or item ``i`` = position ``i`` at step 0.
    """
    weights = [(w.path, np.asarray(w.numpy()).ravel()) for w in model_or_layer.weights]
    random = [(path, values) for path, values in weights if values.size > 1 and np.std(values) > 0]
    assert random, "no randomly initialised weights"
    for i, (path, values) in enumerate(random):
        for other_path, other in random[i + 1:]:
            n = min(values.size, other.size, 8)
            assert not np.array_equal(values[:n], other[:n]), f"{path} and {other_path} start with the same values"
