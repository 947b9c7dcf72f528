"""What a served model takes and returns: the input description that export, warmup and clients share.

A :class:`ServingSpec` names the task (``"next_item"`` or ``"ctr"``) and the model's inputs:

* :class:`SequenceFeature`: a variable-length id list such as the item history. In a
  ``tf.Example`` it is an ``int64_list`` of any length (oldest first); the serving graph keeps
  the most recent ``max_len`` ids and left-pads with 0, so the most recent id sits at position
  ``max_len - 1`` (the training convention of :mod:`tfmoe.data.samples`). Raw-tensor signatures
  take it already padded, ``[batch, max_len]``.
* :class:`ScalarFeature`: one value per row (a candidate ``target_item`` for CTR, a context id).

Ids are checked against ``[0, vocab_size)`` inside the graph, so a bad id is an
``INVALID_ARGUMENT`` error naming the signature and the feature, never a silent garbage lookup.

This module imports neither TensorFlow nor Keras.

Example:
    >>> from tfmoe.serving.features import SequenceFeature, ScalarFeature, ServingSpec
    >>> spec = ServingSpec(task="ctr", features=(
    ...     SequenceFeature("history", max_len=50, vocab_size=1001, example_key="items"),
    ...     ScalarFeature("target_item", vocab_size=1001)))
    >>> spec.feature("history").key, spec.sequence_features[0].max_len
    ('items', 50)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tfmoe.utils import validation as v
from tfmoe.utils.choices import TASKS

ID_DTYPES = ("int32", "int64")
SCALAR_DTYPES = ("int32", "int64", "float32")
CTR_OUTPUTS = ("probability", "logit")
PADDING_ID = 0

# Signature names.
SERVING_DEFAULT = "serving_default"
PREDICT_RAW = "predict_raw"
TOP_K = "top_k"
CLASSIFY = "classify"

# Signature input and output aliases.
EXAMPLES = "examples"  # serving_default: serialized tf.Example, [batch] string
CLASSIFY_INPUTS = "inputs"  # classify: serialized tf.Example (the name TF Serving's Classify API requires)
EXCLUDE_SEEN = "exclude_seen"  # top_k: [batch] bool
SCORES = "scores"
ITEM_IDS = "item_ids"
PROBABILITY = "probability"
CLASSES = "classes"
CLASS_LABELS = ("0", "1")

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_name(owner: str, what: str, name) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{owner}: `{what}` must be an identifier (letters, digits, _), got {name!r}")
    return name


def _check_example_key(owner: str, example_key) -> None:
    if example_key is not None and (not isinstance(example_key, str) or not example_key):
        raise ValueError(f"{owner}: `example_key` must be a non-empty string, got {example_key!r}")


class _ExampleKeyed:
    """The ``key`` of a feature: its ``tf.Example`` name (``example_key``, default ``name``)."""

    @property
    def key(self) -> str:
        """The ``tf.Example`` feature name."""
        return self.example_key or self.name


@dataclass(frozen=True)
class SequenceFeature(_ExampleKeyed):
    """A variable-length id sequence, right-aligned and left-padded with 0 to ``max_len``.

    ``name``: the model input and raw-signature input alias. ``example_key``: the ``tf.Example``
    feature (default ``name``). ``vocab_size``: ids must lie in ``[0, vocab_size)`` (0 = padding).
    ``min_len``: rows need at least this many non-padding ids after truncation (0 allows empty
    histories). ``dtype``: what the model receives (``int32`` or ``int64``). ``pad_value``: the
    padding (0, or -1 for session ids). ``rebase``: after truncation, subtract each row's oldest
    kept value from its non-padding values (session ids renumbered from 0, as the training samples
    of :mod:`tfmoe.data.samples` do); applies to ``tf.Example`` input, raw tensors come rebased.
    """

    name: str
    max_len: int
    vocab_size: int | None = None
    example_key: str | None = None
    dtype: str = "int64"
    min_len: int = 1
    pad_value: int = PADDING_ID
    rebase: bool = False

    def __post_init__(self):
        owner = f"SequenceFeature({self.name!r})"
        _check_name(owner, "name", self.name)
        v.check_int(owner, "max_len", self.max_len, minimum=1)
        v.check_optional_int(owner, "vocab_size", self.vocab_size, minimum=2)
        v.check_choice(owner, "dtype", self.dtype, ID_DTYPES)
        v.check_int(owner, "min_len", self.min_len, minimum=0, maximum=self.max_len)
        v.check_int(owner, "pad_value", self.pad_value)
        v.check_bool(owner, "rebase", self.rebase)
        if self.vocab_size is not None and not 0 <= self.pad_value < self.vocab_size:
            raise ValueError(f"{owner}: `pad_value` {self.pad_value} lies outside the ids [0, {self.vocab_size})")
        if self.min_len and self.pad_value != PADDING_ID:
            raise ValueError(f"{owner}: `min_len` counts non-padding ids and needs pad_value 0, got {self.pad_value}")
        _check_example_key(owner, self.example_key)


@dataclass(frozen=True)
class ScalarFeature(_ExampleKeyed):
    """One value per row. Ids (``vocab_size`` set) must lie in ``[0, vocab_size)``.

    ``dtype`` is ``int32``, ``int64`` or ``float32``; a ``tf.Example`` carries ints as ``int64_list``
    and floats as ``float_list``, and the feature is required in every example.
    """

    name: str
    vocab_size: int | None = None
    example_key: str | None = None
    dtype: str = "int64"

    def __post_init__(self):
        owner = f"ScalarFeature({self.name!r})"
        _check_name(owner, "name", self.name)
        v.check_choice(owner, "dtype", self.dtype, SCALAR_DTYPES)
        v.check_optional_int(owner, "vocab_size", self.vocab_size, minimum=1)
        if self.vocab_size is not None and self.dtype == "float32":
            raise ValueError(f"{owner}: `vocab_size` applies to integer ids, not to a float32 feature")
        _check_example_key(owner, self.example_key)


@dataclass(frozen=True)
class ServingSpec:
    """The task and inputs of a model to export (see the module docstring).

    ``output_key``: the entry holding the scores / probability when the model returns a dict.
    ``history_feature``: for ``next_item``, the sequence whose ids count as "seen" in ``top_k``.
    ``top_k``: how many items the ``top_k`` signature returns. ``ctr_output``: whether a CTR model
    returns a probability or a logit (a logit gets a sigmoid in the serving graph).
    ``model_method``: the method the signatures call with the features dict instead of the model
    itself (``"last_scores"`` for tfmoe next-item models, whose ``call`` returns hidden states;
    ``"probabilities"`` for tfmoe CTR models); :func:`tfmoe.serving.model_specs.spec_for_model` sets it.
    """

    task: str
    features: tuple
    output_key: str | None = None
    history_feature: str = "history"
    top_k: int = 10
    ctr_output: str = "probability"
    model_method: str | None = None

    def __post_init__(self):
        owner = "ServingSpec"
        if self.model_method is not None:
            _check_name(owner, "model_method", self.model_method)
        v.check_choice(owner, "task", self.task, TASKS)
        v.check_choice(owner, "ctr_output", self.ctr_output, CTR_OUTPUTS)
        v.check_int(owner, "top_k", self.top_k, minimum=1)
        features = tuple(self.features)
        if not features or not all(isinstance(f, (SequenceFeature, ScalarFeature)) for f in features):
            raise ValueError(f"{owner}: `features` must be a non-empty tuple of SequenceFeature/ScalarFeature, "
                             f"got {self.features!r}")
        object.__setattr__(self, "features", features)
        for what, names in (("name", [f.name for f in features]), ("example key", [f.key for f in features])):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{owner}: features share the {what} {duplicates}")
        reserved = {EXAMPLES, CLASSIFY_INPUTS, EXCLUDE_SEEN}
        clashes = sorted(reserved.intersection(f.name for f in features))
        if clashes:
            raise ValueError(f"{owner}: feature names {clashes} are reserved signature inputs")
        if self.task == "next_item":
            history = self.feature(self.history_feature)
            if not isinstance(history, SequenceFeature):
                raise ValueError(f"{owner}: `history_feature` {self.history_feature!r} must name a SequenceFeature")

    @property
    def sequence_features(self) -> tuple:
        return tuple(f for f in self.features if isinstance(f, SequenceFeature))

    @property
    def scalar_features(self) -> tuple:
        return tuple(f for f in self.features if isinstance(f, ScalarFeature))

    def feature(self, name: str):
        """The feature called ``name``; ``ValueError`` listing the known names otherwise."""
        for f in self.features:
            if f.name == name:
                return f
        raise ValueError(f"ServingSpec: no feature named {name!r}; features are {[f.name for f in self.features]}")

    def signature_names(self) -> tuple:
        """The signatures :func:`tfmoe.serving.export.export_model` writes for this task."""
        if self.task == "next_item":
            return (SERVING_DEFAULT, PREDICT_RAW, TOP_K)
        return (SERVING_DEFAULT, PREDICT_RAW, CLASSIFY)
