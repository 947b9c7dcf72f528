"""The contract every tfmoe Keras layer honours, as reusable assertions, and :func:`run_layer_test` running them all.

Each check takes ``make_layer`` (a zero-argument factory returning a fresh layer) and ``args`` (a tuple of
positional call inputs, numpy arrays) plus optional call ``kwargs`` (``{"mask": ...}``, ``{"training": False}``).
Outputs may be a tensor, a tuple, a list or a dict; every output is compared.

Example:
    >>> import numpy as np
    >>> from tfmoe.layers import FeedForward
    >>> from tfmoe.testing import run_layer_test
    >>> x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    >>> run_layer_test(lambda: FeedForward(hidden_dim=8), (x,), expected_output_shape=(2, 3, 4),
    ...                expected_num_trainable_weights=4, save=False, mirrored=False, policies=(), dtype_policy=None)
"""

from __future__ import annotations

import inspect
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfmoe.testing.outputs import all_outputs, assert_close_to_scale, assert_outputs_close, floating_outputs
from tfmoe.testing.precision import mixed_precision_tolerance


def call(layer, args, kwargs=None):
    """``layer(*args, **kwargs)`` with the numpy inputs as tensors."""
    return layer(*[tf.convert_to_tensor(a) for a in args], **(kwargs or {}))


def assert_config_round_trip(make_layer, args, kwargs=None):
    """``from_config(get_config())`` rebuilds a layer with the same config that, given the same weights, gives the
    same outputs."""
    layer = make_layer()
    expected = call(layer, args, kwargs)
    config = layer.get_config()
    assert_arguments_stored_under_their_names(layer, config)
    clone = type(layer).from_config(config)
    assert clone.get_config() == config, "from_config(get_config()) changed the config"
    call(clone, args, kwargs)  # build
    clone.set_weights(layer.get_weights())
    assert_outputs_close(expected, call(clone, args, kwargs))


_PLAIN = (bool, int, float, str, type(None))
_BASE_ARGUMENTS = {"self", "name", "dtype", "trainable", "kwargs", "args"}


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _keras_attributes(layer_or_model) -> set[str]:
    """Attribute names Keras itself gives a bare layer or model (``loss`` on a model: ``compile``'s loss)."""
    bare = keras.Model() if isinstance(layer_or_model, keras.Model) else keras.layers.Layer()
    return {name for name in dir(bare) if not name.startswith("_")}


def assert_arguments_stored_under_their_names(layer_or_model, config=None):
    """Every constructor argument that ``get_config`` writes is an attribute of the same name, and a plain value
    (number, string, bool, None, list of those) is the value the config holds. Names Keras already uses on a
    layer or model (``loss`` on a model) are left to Keras."""
    config = layer_or_model.get_config() if config is None else config
    reserved = _BASE_ARGUMENTS | _keras_attributes(layer_or_model)
    for klass in type(layer_or_model).__mro__:
        if "__init__" not in vars(klass) or not issubclass(klass, keras.layers.Layer):
            continue
        for argument in inspect.signature(klass.__init__).parameters:
            if argument in reserved or argument not in config:
                continue
            owner = type(layer_or_model).__name__
            assert hasattr(layer_or_model, argument), f"{owner}: argument {argument!r} is not stored as .{argument}"
            value = getattr(layer_or_model, argument)
            if isinstance(value, _PLAIN) or (isinstance(value, (list, tuple)) and all(
                    isinstance(v, _PLAIN) for v in value)):
                assert _plain(value) == _plain(config[argument]), (
                    f"{owner}.{argument} is {value!r}, its config says {config[argument]!r}")


def _symbolic_inputs(args):
    tensors = [tf.convert_to_tensor(a) for a in args]
    return [keras.Input(shape=t.shape[1:], dtype=t.dtype.name, batch_size=t.shape[0]) for t in tensors]


def assert_symbolic_call(make_layer, args, kwargs=None):
    """Called on ``keras.Input`` s, the layer returns outputs of the eager outputs' shapes and dtypes; where it
    implements ``compute_output_shape``, that agrees too."""
    layer = make_layer()
    eager = tf.nest.flatten(call(layer, args, kwargs))
    symbolic = tf.nest.flatten(make_layer()(*_symbolic_inputs(args), **(kwargs or {})))
    assert len(symbolic) == len(eager), f"symbolic call: {len(symbolic)} outputs, eager: {len(eager)}"
    for i, (s, e) in enumerate(zip(symbolic, eager)):
        assert tuple(s.shape) == tuple(e.shape), f"output {i}: symbolic shape {s.shape}, eager {tuple(e.shape)}"
        assert keras.backend.standardize_dtype(s.dtype) == keras.backend.standardize_dtype(e.dtype), (
            f"output {i}: symbolic dtype {s.dtype}, eager {e.dtype}")
    if type(layer).compute_output_shape is not keras.layers.Layer.compute_output_shape:
        shapes = [tuple(np.shape(a)) for a in args]
        parameters = inspect.signature(layer.compute_output_shape).parameters.values()
        if not any(p.kind == p.VAR_POSITIONAL for p in parameters):  # (input_shape) of a layer called with a mask
            shapes = shapes[:sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)]
        computed = shape_list(layer.compute_output_shape(*shapes))
        got = [tuple(e.shape) for e in eager]
        assert computed == got, f"compute_output_shape gives {computed}, the eager outputs have {got}"


def _is_shape(value) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(d, (int, type(None))) for d in value)


def shape_list(shapes) -> list[tuple]:
    """A shape, or a list, tuple or dict of shapes, as a list of tuples in ``tf.nest`` order (dicts by sorted key)."""
    if _is_shape(shapes):
        return [tuple(shapes)]
    if isinstance(shapes, dict):
        return [s for key in sorted(shapes) for s in shape_list(shapes[key])]
    return [s for item in shapes for s in shape_list(item)]


def assert_weight_counts(layer, trainable=None, non_trainable=None):
    """The built layer holds ``trainable`` trainable and ``non_trainable`` non-trainable weights (None: unchecked)."""
    if trainable is not None:
        got = len(layer.trainable_weights)
        assert got == trainable, (f"{type(layer).__name__}: {got} trainable weights, expected {trainable}: "
                                  f"{[w.path for w in layer.trainable_weights]}")
    if non_trainable is not None:
        got = len(layer.non_trainable_weights)
        assert got == non_trainable, (f"{type(layer).__name__}: {got} non-trainable weights, expected {non_trainable}:"
                                      f" {[w.path for w in layer.non_trainable_weights]}")


def assert_keras_save_load(make_layer, args, tmp_path=None, kwargs=None):
    """A functional model around the layer, saved to ``.keras`` and loaded, restores the layer as itself and gives
    identical outputs."""
    layer = make_layer()
    tensors = [tf.convert_to_tensor(a) for a in args]
    expected = call(layer, args, kwargs)
    inputs = _symbolic_inputs(args)
    model = keras.Model(inputs, layer(*inputs, **(kwargs or {})))
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(str(tmp_path or scratch), f"{type(layer).__name__}.keras")
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


def assert_mixed_precision(make_layer, args, kwargs=None, policy="mixed_float16", rtol=None, atol=None,
                           roundings=8):
    """Under a mixed global policy: float32 variables, finite outputs close to the float32 layer's outputs.

    Default tolerance: :func:`~tfmoe.testing.mixed_precision_tolerance` of the policy and ``roundings``,
    relative to each output and, as an absolute floor, to the output's scale (its largest magnitude, at least 1).
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
    assert_float32_variables(layer, policy)
    for arr in floating_outputs(got):
        assert np.all(np.isfinite(arr.astype(np.float32))), f"non-finite output under {policy}"
    if rtol is None and atol is None:
        assert_close_to_scale(expected, got, mixed_precision_tolerance(policy, roundings))
        return
    tolerance = mixed_precision_tolerance(policy, roundings)
    for x, y in zip(floating_outputs(expected), floating_outputs(got)):
        x = x.astype(np.float32)
        scale = max(1.0, float(np.abs(x).max())) if x.size else 1.0
        np.testing.assert_allclose(x, y.astype(np.float32), rtol=tolerance if rtol is None else rtol,
                                   atol=tolerance * scale if atol is None else atol)


def assert_float32_variables(layer_or_model, policy: str):
    """Under a mixed ``policy`` every floating variable stays float32 (integer ones, e.g. step counters, keep
    their dtype)."""
    for v in layer_or_model.weights:
        floating = "float" in str(v.dtype)
        assert v.dtype == "float32" or not floating, f"variable {v.path} has dtype {v.dtype} under {policy}"


def sublayers_off_policy(layer, policy: str) -> list[str]:
    """Paths of ``layer``'s sub-layers (recursively) whose dtype policy is not ``policy``."""
    return [f"{getattr(sub, 'path', None) or sub.name} ({type(sub).__name__}, {sub.dtype_policy.name})"
            for sub in layer._flatten_layers(include_self=False, recursive=True)
            if isinstance(sub, keras.layers.Layer) and sub.dtype_policy.name != policy]


def with_dtype(layer_or_model, policy: str):
    """A fresh copy of ``layer_or_model`` from its config with ``dtype=policy``."""
    config = {**layer_or_model.get_config(), "dtype": policy}
    return type(layer_or_model).from_config(config)


def assert_dtype_policy_reaches_sublayers(make_layer, args, kwargs=None, policy="mixed_bfloat16",
                                          output_dtype="compute"):
    """Built from its config with ``dtype=policy`` (and no global policy), every sub-layer runs under ``policy``.

    ``output_dtype``: what each floating output's dtype must be: ``"compute"`` (the policy's compute dtype),
    a dtype name, a list of them (one per floating output, in ``tf.nest`` order) or None (unchecked).
    """
    layer = with_dtype(make_layer(), policy)
    got = call(layer, args, kwargs)
    assert layer.dtype_policy.name == policy, f"{type(layer).__name__}: policy {layer.dtype_policy.name}"
    off = sublayers_off_policy(layer, policy)
    assert not off, f"{type(layer).__name__}: sub-layers not under {policy}: {off}"
    if output_dtype is None:
        return
    floating = [a for a in all_outputs(got) if a.dtype.kind == "f" or a.dtype.name == "bfloat16"]
    compute = layer.dtype_policy.compute_dtype
    expected = output_dtype if isinstance(output_dtype, (list, tuple)) else [output_dtype] * len(floating)
    got = [array.dtype.name for array in floating]
    want = [compute if w == "compute" else w for w in expected]
    assert len(want) == len(got), f"{len(got)} floating outputs, {len(want)} expected dtypes"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"floating output {i} has dtype {g}, expected {w} (floating outputs in tf.nest order: {got})"


def assert_mirrored_strategy(make_layer, args, kwargs=None, rtol=1e-5, atol=1e-5, strategy=None):
    """Created under a 2-replica ``MirroredStrategy``, the layer's per-replica outputs equal a local run."""
    strategy = strategy or tf.distribute.MirroredStrategy()
    assert strategy.num_replicas_in_sync == 2, "split the CPU into 2 logical devices (tfmoe.utils.devices)"
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


def run_layer_test(make_layer, args, tmp_path=None, *, kwargs=None, expected_output_shape=None,
                   expected_num_trainable_weights=None, expected_num_non_trainable_weights=None, save=True,
                   jit=True, mirrored=True, policies=("mixed_float16", "mixed_bfloat16"), mixed_roundings=8,
                   dtype_policy="mixed_bfloat16", output_dtype="compute"):
    """Runs the whole layer contract on ``make_layer`` and the inputs ``args``.

    1. config round trip (:func:`assert_config_round_trip`);
    2. a symbolic call and ``compute_output_shape`` (:func:`assert_symbolic_call`), and the eager output shape
       equal to ``expected_output_shape`` (a shape, or a structure of shapes like the outputs) when given;
    3. the trainable and non-trainable weight counts (:func:`assert_weight_counts`);
    4. ``.keras`` save and load (``save``);
    5. XLA (``jit``);
    6. each mixed ``policies`` against float32 (:func:`assert_mixed_precision`);
    7. ``dtype=dtype_policy`` reaching every sub-layer, with the outputs' dtypes (``output_dtype``);
    8. a 2-replica ``MirroredStrategy`` (``mirrored``: True, or the strategy to use).
    """
    assert_config_round_trip(make_layer, args, kwargs)
    assert_symbolic_call(make_layer, args, kwargs)
    layer = make_layer()
    outputs = call(layer, args, kwargs)
    if expected_output_shape is not None:
        got = [tuple(o.shape) for o in tf.nest.flatten(outputs)]
        want = shape_list(expected_output_shape)
        assert got == want, f"{type(layer).__name__}: output shapes {got}, expected {want}"
    assert_weight_counts(layer, expected_num_trainable_weights, expected_num_non_trainable_weights)
    if save:
        assert_keras_save_load(make_layer, args, tmp_path, kwargs)
    if jit:
        assert_jit_compiles(make_layer, args, kwargs)
    for policy in policies:
        assert_mixed_precision(make_layer, args, kwargs, policy=policy, roundings=mixed_roundings)
    if dtype_policy:
        assert_dtype_policy_reaches_sublayers(make_layer, args, kwargs, policy=dtype_policy, output_dtype=output_dtype)
    if mirrored:
        assert_mirrored_strategy(make_layer, args, kwargs, strategy=None if mirrored is True else mirrored)


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
