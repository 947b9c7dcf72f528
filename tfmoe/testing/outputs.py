"""Flattening and comparing layer and model outputs (tensors, tuples, lists or dicts of them)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def is_floating(array) -> bool:
    """True for numpy floating arrays and for bfloat16 (an ml_dtypes type numpy does not call floating)."""
    return np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"


def all_outputs(outputs) -> list[np.ndarray]:
    """Every output as a numpy array, in ``tf.nest``'s stable order."""
    return [np.asarray(keras.ops.convert_to_numpy(t)) for t in tf.nest.flatten(outputs)]


def floating_outputs(outputs) -> list[np.ndarray]:
    """The floating outputs only, in ``tf.nest``'s stable order."""
    return [a for a in all_outputs(outputs) if is_floating(a)]


def assert_outputs_close(a, b, rtol=1e-5, atol=1e-5):
    """Same structure and shapes; floating outputs close, integer and boolean outputs equal."""
    left, right = all_outputs(a), all_outputs(b)
    assert len(left) == len(right), f"different number of outputs: {len(left)} vs {len(right)}"
    for i, (x, y) in enumerate(zip(left, right)):
        assert x.shape == y.shape, f"output {i}: shape {x.shape} vs {y.shape}"
        if is_floating(x):
            np.testing.assert_allclose(x.astype(np.float64), y.astype(np.float64), rtol=rtol, atol=atol,
                                       err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(x, y, err_msg=f"output {i}")


def assert_close_to_scale(expected, got, tolerance: float):
    """Each floating output within ``tolerance`` relative, with ``tolerance`` times its largest magnitude (at least
    1) as the absolute floor; non-finite entries (a masked ``-inf`` column) exactly where ``expected`` has them."""
    left, right = floating_outputs(expected), floating_outputs(got)
    assert len(left) == len(right), f"different number of floating outputs: {len(left)} vs {len(right)}"
    for i, (x, y) in enumerate(zip(left, right)):
        x, y = x.astype(np.float32), y.astype(np.float32)
        assert x.shape == y.shape, f"output {i}: shape {x.shape} vs {y.shape}"
        finite = np.isfinite(x)
        assert np.array_equal(finite, np.isfinite(y)), f"output {i}: non-finite entries where float32 has none"
        scale = max(1.0, float(np.abs(x[finite]).max())) if finite.any() else 1.0
        np.testing.assert_allclose(x[finite], y[finite], rtol=tolerance, atol=tolerance * scale, err_msg=f"output {i}")
