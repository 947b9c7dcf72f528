"""Loading saved tfmoe models.

``keras.saving.load_model`` finds a custom class only once its module has been imported (the class registers
itself as serializable on import). ``import tfmoe`` imports nothing, and the CTR models load lazily, so a plain
``keras.saving.load_model("run/model.keras")`` in a fresh notebook fails with "Could not locate class ...".
:func:`load_model` imports every model first.

Example:
    >>> import os, tempfile
    >>> from tfmoe.models import SASRec, load_model
    >>> path = os.path.join(tempfile.mkdtemp(), "sasrec.keras")
    >>> SASRec(num_items=20, max_len=5, hidden_dim=8).save(path)
    >>> type(load_model(path)).__name__
    'SASRec'
"""

from __future__ import annotations

import keras

from tfmoe.models import registry


def load_model(path: str, custom_objects: dict | None = None, compile: bool = True, safe_mode: bool = True):
    """``keras.saving.load_model`` with every tfmoe model class registered first.

    Args:
        path: a ``.keras`` file (the trainer writes ``<output_dir>/model.keras``).
        custom_objects: more classes or functions the file needs (a user's own layers), as for Keras.
        compile: restore the training configuration (optimizer) as well; ``False`` for inference only.
        safe_mode: Keras' guard against loading lambdas from untrusted files.

    Keras raises ``ValueError`` for a missing file or one that is not ``.keras`` (local or remote, e.g. ``gs://``).
    """
    registry.available_models()  # imports every model module (CTR ones included), registering their classes
    return keras.saving.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
