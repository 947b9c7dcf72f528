"""Whether the code being traced will be compiled by XLA (``jit_compile=True``), and shapes that stay static for it.

Example:
    >>> import tensorflow as tf
    >>> from tfmoe.utils.xla import dim, in_xla_context
    >>> in_xla_context()  # eager
    False
    >>> bool(tf.function(lambda: tf.constant(in_xla_context()), jit_compile=True)())
    True
    >>> dim(tf.zeros([2, 3]), 1)
    3
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # TF's own check (Keras 2 used it for the same purpose)


def in_xla_context() -> bool:
    """True while tracing a function that XLA compiles (``tf.function(jit_compile=True)``, a Keras model
    compiled with ``jit_compile=True``, TPU): lets a layer refuse, with its own message, ops XLA cannot
    compile (data-dependent shapes) instead of failing deep inside the compiler."""
    if tf.executing_eagerly():
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def dim(tensor, axis: int):
    """The static size of ``tensor``'s ``axis`` where known (shapes built from it stay static under XLA), else its
    dynamic size (a scalar tensor)."""
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]
