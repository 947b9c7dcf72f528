"""One initializer per weight, with its own seed.

A Keras 3 initializer instance without a seed picks its seed once, when it is created, so every
weight it initializes gets the *same* values for the same shape (and the same leading values for
different shapes). A layer that reuses one instance for its query, key, value and output kernels
starts with ``W_Q = W_K = W_V = W_O``; one that reuses it for its item and position tables starts
with position ``i`` equal to item ``i``. Every layer of tfmoe therefore passes
``fresh_initializer(self.kernel_initializer, "<weight name>")`` to each ``add_weight``: a copy whose
seed is the instance's seed offset by a hash of the weight name. The seed is still fixed when the
layer is constructed (reproducible under ``keras.utils.set_random_seed``, whatever the build order),
and no two weights of a layer share it.

Example:
    >>> import keras
    >>> from tfmoe.utils.initializers import fresh_initializer
    >>> shared = keras.initializers.RandomNormal(stddev=0.02)
    >>> bool((shared((2, 2)) == shared((2, 2))).numpy().all())  # the pitfall
    True
    >>> query, key = fresh_initializer(shared, "query"), fresh_initializer(shared, "key")
    >>> bool((query((2, 2)) == key((2, 2))).numpy().all())
    False
    >>> bool((query((2, 2)) == fresh_initializer(shared, "query")((2, 2))).numpy().all())  # reproducible
    True
"""

from __future__ import annotations

import zlib

import keras

_SEED_RANGE = 2**31 - 1


def fresh_initializer(initializer, salt: str):
    """A copy of ``initializer`` (a name, config or instance) whose integer seed is offset by ``salt``.

    Initializers without an integer seed (constants, or a ``SeedGenerator`` that draws anew on every
    call) are returned as they are.
    """
    initializer = keras.initializers.get(initializer)
    seed = getattr(initializer, "seed", None)
    if not isinstance(seed, int):
        return initializer
    config = initializer.get_config()
    config["seed"] = (seed + zlib.crc32(salt.encode())) % _SEED_RANGE
    return initializer.__class__.from_config(config)
