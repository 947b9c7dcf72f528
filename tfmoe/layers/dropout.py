"""Dropout that draws 16 random bits per element instead of a float32: for large attention maps.

On CPU the random numbers are most of what dropout costs: ``keras.layers.Dropout`` draws one float32
(32 random bits) per element. :class:`BitDropout` draws one 32-bit word per *two* elements and keeps an
element when its 16-bit half is at least ``round(rate * 65536)``; half the random draws, the same
expected value. The rate it applies is ``rate`` rounded to a multiple of ``1 / 65536`` (off by at most
``7.7e-6``), and kept elements are scaled by ``1 / (1 - applied rate)`` so that the mean is preserved
exactly in expectation.

    >>> import numpy as np
    >>> from tfmoe.layers import BitDropout
    >>> out = BitDropout(0.5, seed=1)(np.ones((4, 1000), "float32"), training=True).numpy()
    >>> sorted(set(out.ravel().tolist()))
    [0.0, 2.0]
    >>> float(np.round((out == 0).mean(), 1))
    0.5
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.utils import validation as v

_LEVELS = 1 << 16


@keras.saving.register_keras_serializable(package="tfmoe")
class BitDropout(keras.layers.Layer):
    """Inverted dropout from 16-bit random draws (see the module docstring); identity unless ``training``.

    Args:
        rate: fraction of elements to drop, in ``[0, 1)``.
        seed: optional integer seed; each call draws fresh bits from a ``keras.random.SeedGenerator``.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.rate = v.check_float(owner, "rate", rate, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.seed = v.check_optional_int(owner, "seed", seed)
        self.threshold = int(round(self.rate * _LEVELS))
        self.applied_rate = self.threshold / _LEVELS
        self.seed_generator = keras.random.SeedGenerator(self.seed) if self.rate > 0 else None
        self.supports_masking = True
        self.built = True

    def call(self, inputs, training=None):
        if not training or self.threshold == 0:
            return inputs
        x = tf.convert_to_tensor(inputs)
        shape = tf.shape(x)
        size = tf.reduce_prod(shape)
        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), tf.int32.max), tf.int32)
        words = tf.random.stateless_uniform([(size + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32)
        bits = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
        keep = tf.reshape(bits >= tf.constant(self.threshold, tf.uint16), shape)
        scale = tf.constant(1.0 / (1.0 - self.applied_rate), x.dtype)
        return tf.where(keep, x * scale, tf.zeros((), x.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config
