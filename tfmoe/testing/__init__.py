"""tfmoe.testing: the contract tests every tfmoe layer and model passes, for tfmoe's tests and for your own layers.

:func:`run_layer_test` and :func:`run_model_test` check, on small inputs, what a Keras user relies on: the config
round trip and ``.keras`` save/load, a symbolic call and ``compute_output_shape``, the weight counts, XLA, mixed
precision (float32 variables, the policy reaching every sub-layer, outputs within a stated tolerance of float32),
one ``fit`` step, and a 2-replica ``MirroredStrategy``. ``import tfmoe`` does not import this package.

Example:
    >>> import numpy as np
    >>> from tfmoe.layers import FeedForward
    >>> from tfmoe.testing import run_layer_test
    >>> x = np.ones((2, 3, 4), "float32")
    >>> run_layer_test(lambda: FeedForward(hidden_dim=8), (x,), expected_output_shape=(2, 3, 4),
    ...                save=False, mirrored=False, policies=(), dtype_policy=None)
"""

from tfmoe.testing.layer_test import (
    assert_arguments_stored_under_their_names,
    assert_config_round_trip,
    assert_dtype_policy_reaches_sublayers,
    assert_independent_initial_weights,
    assert_jit_compiles,
    assert_keras_save_load,
    assert_mirrored_strategy,
    assert_mixed_precision,
    assert_symbolic_call,
    assert_weight_counts,
    run_layer_test,
    sublayers_off_policy,
)
from tfmoe.testing.model_test import run_model_test
from tfmoe.testing.outputs import assert_outputs_close
from tfmoe.testing.precision import UNIT_ROUNDOFF, mixed_precision_tolerance

__all__ = [
    "UNIT_ROUNDOFF",
    "assert_arguments_stored_under_their_names",
    "assert_config_round_trip",
    "assert_dtype_policy_reaches_sublayers",
    "assert_independent_initial_weights",
    "assert_jit_compiles",
    "assert_keras_save_load",
    "assert_mirrored_strategy",
    "assert_mixed_precision",
    "assert_outputs_close",
    "assert_symbolic_call",
    "assert_weight_counts",
    "mixed_precision_tolerance",
    "run_layer_test",
    "run_model_test",
    "sublayers_off_policy",
]
