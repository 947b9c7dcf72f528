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
import numpy as np

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


def torch_in_projection(hidden_dim: int, seed: int | None = None) -> dict:
    """Config of PyTorch's ``nn.MultiheadAttention`` query/key/value initialization at model size ``d``.

    PyTorch draws its stacked ``[3d, d]`` in-projection from Glorot uniform, ``U(-a, a)`` with
    ``a = sqrt(6 / (d + 3d))``; a Keras ``[d, d]`` kernel with Glorot uniform would get ``sqrt(6 / 2d)``.

    Example:
        >>> import keras
        >>> from tfmoe.utils.initializers import torch_in_projection
        >>> config = torch_in_projection(64, seed=0)
        >>> round(config["config"]["maxval"], 4)
        0.1531
        >>> float(keras.ops.max(keras.initializers.get(config)((64, 64)))) <= 0.1531
        True
    """
    limit = (6.0 / (4 * hidden_dim)) ** 0.5
    return {"class_name": "RandomUniform", "config": {"minval": -limit, "maxval": limit, "seed": seed}}


def optional_initializer(owner: str, name: str, identifier):
    """``keras.initializers.get(identifier)``, None kept as None; a bad identifier is a ValueError naming it."""
    if identifier is None:
        return None
    try:
        return keras.initializers.get(identifier)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{owner}: invalid `{name}` {identifier!r}: {error}") from error


def serialize_optional(initializer):
    """The config of an initializer, None for None (the counterpart of :func:`optional_initializer`)."""
    return None if initializer is None else keras.initializers.serialize(initializer)


@keras.saving.register_keras_serializable(package="tfmoe")
class HeadChunks(keras.initializers.Initializer):
    """Per-head projections ``[H, d, d']`` (``d = H d'``) that start as chunk selectors: ``e W[h] = e[hd' : (h+1)d']``.

    A projection so initialised first computes exactly what the weightless split into heads computes, and
    learns from there (FAME's item sub-embeddings ``W_f``, :class:`tfmoe.models.fame.FacetBlock`).

    Example:
        >>> import numpy as np
        >>> from tfmoe.utils.initializers import HeadChunks
        >>> weights = np.asarray(HeadChunks()((2, 4, 2)))
        >>> np.arange(4.0) @ weights[1]
        array([2., 3.])
    """

    def __call__(self, shape, dtype=None):
        if len(shape) != 3 or shape[1] != shape[0] * shape[2]:
            raise ValueError(f"HeadChunks: shape must be [H, H * d', d'], got {tuple(shape)}")
        heads, dim, head_dim = shape
        selectors = np.eye(dim).reshape(dim, heads, head_dim).transpose(1, 0, 2)
        return keras.ops.convert_to_tensor(selectors, dtype=dtype or keras.config.floatx())

    def get_config(self):
        return {}
