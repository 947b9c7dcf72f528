"""tfmoe: mixture-of-experts sequential recommendation for TensorFlow / Keras 3.

``import tfmoe`` is cheap: TensorFlow, Beam and TFX load only when a submodule that needs them
is first used (``tfmoe.layers``, ``tfmoe.data``, ...).

Example:
    >>> import tfmoe
    >>> tfmoe.__version__
    '0.2.0'
"""

import importlib

from tfmoe._version import __version__

_SUBMODULES = ("layers", "models", "metrics", "data", "training", "utils", "cli")

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"tfmoe.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'tfmoe' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
