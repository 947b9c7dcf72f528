"""The :class:`~tfmoe.serving.features.ServingSpec` of a tfmoe model, derived from the model itself, and model loading.

:func:`spec_for_model` tells the task from :mod:`tfmoe.models.registry` (the registered class of
the model, or for an unregistered model its methods: ``last_scores`` = next-item,
``probabilities`` = CTR) and builds the inputs from the model's feature names with the
conventions of :mod:`tfmoe.data.samples` and :mod:`tfmoe.data.schema`:

========================  ================  ======================  =============================
model input               ``tf.Example`` key  ids checked against     notes
========================  ================  ======================  =============================
``history``               ``items``         ``num_items + 1``       at least 1 id per row
``history_timestamps``    ``timestamps``    (none)                  may be empty
``history_categories``    ``categories``    ``num_categories + 1``  may be empty
``history_session_ids``   ``session_ids``   (none)                  padded with -1, renumbered from
                                                                    the oldest kept session
``history_behaviors``     ``behaviors``     ``num_behaviors + 1``   may be empty
``target_item``           ``target_item``   ``num_items + 1``       CTR candidate
``target_category``       ``target_category`` ``num_categories + 1``
``target_timestamp``      ``target_timestamp`` (none)
``user_id``               ``user_id``       ``num_users + 1``
========================  ================  ======================  =============================

(a bound is used when the model has the attribute, e.g. ``model.num_categories``). Every id
travels as int64. The signatures call ``model.last_scores(features)`` (next-item: ``[B, V]``,
never the ``[B, L, V]`` sequence scores) or ``model.probabilities(features)`` (CTR: ``[B]``);
a CTR model without ``probabilities`` is called and its output taken as a logit.

A CTR model's inputs are, in this order: the ``features`` argument, the model's
``serving_features`` / ``feature_names`` / ``input_features`` attribute (a sequence of names),
the input names of a functional Keras model, else ``("history", "target_item")`` plus
``("history_categories", "target_category")`` when ``model.num_categories > 0`` (the inputs of
:mod:`tfmoe.models.ctr` models; session-aware variants need ``features=`` with their extra inputs).

Example:
    >>> from tfmoe.models import SASRec
    >>> from tfmoe.serving.model_specs import spec_for_model
    >>> spec = spec_for_model(SASRec(num_items=20, max_len=5, hidden_dim=8), top_k=3)
    >>> spec.task, spec.model_method, spec.feature("history").vocab_size, spec.feature("history").key
    ('next_item', 'last_scores', 21, 'items')
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tfmoe.serving.features import ScalarFeature, SequenceFeature, ServingSpec

NEXT_ITEM_METHOD = "last_scores"
CTR_METHOD = "probabilities"
MODEL_FILE = "model.keras"  # what the trainer writes into its output directory (the best model)
HISTORY = "history"
DEFAULT_CTR_FEATURES = (HISTORY, "target_item")
FEATURE_ATTRIBUTES = ("serving_features", "feature_names", "input_features")


@dataclass(frozen=True)
class _Known:
    sequence: bool
    example_key: str
    vocab_attribute: str | None = None
    pad_value: int = 0
    rebase: bool = False


KNOWN_FEATURES = {
    HISTORY: _Known(True, "items", "num_items"),
    "history_timestamps": _Known(True, "timestamps"),
    "history_categories": _Known(True, "categories", "num_categories"),
    "history_session_ids": _Known(True, "session_ids", pad_value=-1, rebase=True),
    "history_behaviors": _Known(True, "behaviors", "num_behaviors"),
    "target_item": _Known(False, "target_item", "num_items"),
    "target_category": _Known(False, "target_category", "num_categories"),
    "target_timestamp": _Known(False, "target_timestamp"),
    "user_id": _Known(False, "user_id", "num_users"),
}


def model_task(model) -> str:
    """``"next_item"`` or ``"ctr"``: the registry task of the model's class, else from its methods."""
    from tfmoe.models import registry

    registered = [(name, registry.model_class(name)) for name in registry.available_models()]
    for exact in (True, False):
        for name, cls in registered:
            if (type(model) is cls) if exact else isinstance(model, cls):
                return registry.model_task(name)
    if callable(getattr(model, NEXT_ITEM_METHOD, None)):
        return "next_item"
    if callable(getattr(model, CTR_METHOD, None)):
        return "ctr"
    raise ValueError(f"spec_for_model: cannot tell the task of {type(model).__name__}: it is not a registered "
                     f"tfmoe model and has neither `{NEXT_ITEM_METHOD}` nor `{CTR_METHOD}`; pass a ServingSpec")


def _functional_inputs(model) -> dict:
    """``{name: static shape}`` of a functional Keras model's dict inputs (empty otherwise)."""
    try:
        inputs = model.input
    except (AttributeError, ValueError):
        return {}
    return {name: tuple(t.shape) for name, t in inputs.items()} if isinstance(inputs, dict) else {}


def _feature_names(model, features) -> tuple:
    if features is not None:
        return tuple(features)
    for attribute in FEATURE_ATTRIBUTES:
        names = getattr(model, attribute, None)
        if isinstance(names, (tuple, list)) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
    names = tuple(_functional_inputs(model)) or DEFAULT_CTR_FEATURES
    if names == DEFAULT_CTR_FEATURES and _vocab(model, "num_categories"):  # tfmoe CTR models with categories
        names += ("history_categories", "target_category")
    return names


def _max_len(model) -> int:
    max_len = getattr(model, "max_len", None)
    if isinstance(max_len, int):
        return max_len
    shape = _functional_inputs(model).get(HISTORY)
    if shape and len(shape) == 2 and isinstance(shape[1], int):
        return shape[1]
    raise ValueError(f"spec_for_model: {type(model).__name__} has no `max_len` attribute and no [batch, L] "
                     f"`{HISTORY}` input; pass a ServingSpec")


def _vocab(model, attribute: str | None) -> int | None:
    value = getattr(model, attribute, None) if attribute else None
    return value + 1 if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _feature(model, name: str, max_len: int, min_history: int):
    known = KNOWN_FEATURES.get(name)
    if known is None:
        raise ValueError(f"spec_for_model: unknown model input {name!r}; known inputs are {sorted(KNOWN_FEATURES)} "
                         "(pass a ServingSpec for other inputs)")
    vocab = _vocab(model, known.vocab_attribute)
    if known.sequence:
        return SequenceFeature(name, max_len=max_len, vocab_size=vocab, example_key=known.example_key,
                               min_len=min_history if name == HISTORY else 0, pad_value=known.pad_value,
                               rebase=known.rebase)
    return ScalarFeature(name, vocab_size=vocab, example_key=known.example_key)


def spec_for_model(model, top_k: int = 10, features=None, min_history: int = 1) -> ServingSpec:
    """The :class:`ServingSpec` of a tfmoe model (next-item or CTR); see the module docstring.

    ``top_k``: items returned by the ``top_k`` signature (capped at ``num_items``). ``features``:
    a CTR model's input names (default: derived from the model). ``min_history``: non-padding
    history ids a request needs (0 allows empty histories).
    """
    task = model_task(model)
    max_len = _max_len(model)
    if task == "next_item":
        if not callable(getattr(model, NEXT_ITEM_METHOD, None)):
            raise ValueError(f"spec_for_model: next-item model {type(model).__name__} has no `{NEXT_ITEM_METHOD}`")
        history = _feature(model, HISTORY, max_len, min_history)
        if history.vocab_size is not None:
            top_k = min(top_k, history.vocab_size - 1)
        return ServingSpec("next_item", (history,), top_k=top_k, model_method=NEXT_ITEM_METHOD)
    names = _feature_names(model, features)
    if HISTORY not in names:
        raise ValueError(f"spec_for_model: CTR model inputs {list(names)} lack {HISTORY!r}")
    has_probabilities = callable(getattr(model, CTR_METHOD, None))
    return ServingSpec("ctr", tuple(_feature(model, n, max_len, min_history) for n in names),
                       model_method=CTR_METHOD if has_probabilities else None,
                       ctr_output="probability" if has_probabilities else "logit")


def model_path(path) -> str:
    """The ``.keras`` file of ``path``: the file itself, or ``<dir>/model.keras`` of a trainer output directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        candidate = os.path.join(path, MODEL_FILE)
        if not os.path.isfile(candidate):
            raise FileNotFoundError(f"{path!r} is a directory without {MODEL_FILE} (expected a trainer output "
                                    "directory or a .keras file)")
        return candidate
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    if not path.endswith(".keras"):
        raise ValueError(f"{path!r} is not a .keras file (give a .keras file or a trainer output directory)")
    return path


def load_model(path):
    """Loads a trained tfmoe model from a ``.keras`` file or a trainer output directory (no optimizer state)."""
    from tfmoe.models import load_model as load_tfmoe_model

    return load_tfmoe_model(model_path(path), compile=False)
