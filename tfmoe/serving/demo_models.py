"""Small Keras 3 models with the serving contracts of tfmoe's models, for tests, docs and ``--quick`` benchmarks.

* :func:`next_item_model`: ``{"history": int64 [B, max_len]}`` -> scores ``[B, num_items + 1]``
  (column ``i`` = item id ``i``). The history is embedded, padding zeroed, flattened and mixed
  by dense layers, so the output depends on every id *and its position*: a mis-aligned or
  mis-truncated history changes the scores (what the serving tests rely on).
* :func:`ctr_model`: ``{"history": [B, max_len], "target_item": [B]}`` -> click probability ``[B, 1]``.

:func:`next_item_spec` and :func:`ctr_spec` are the matching :class:`~tfmoe.serving.features.ServingSpec` s
(history under the ``tf.Example`` key ``items``, as in tfmoe's prepared data).

Example:
    >>> import numpy as np
    >>> from tfmoe.serving import demo_models
    >>> model = demo_models.next_item_model(num_items=20, max_len=5)
    >>> tuple(model({"history": np.array([[0, 0, 3, 4, 5]])}).shape)
    (1, 21)
"""

from __future__ import annotations

from tfmoe.serving.features import ScalarFeature, SequenceFeature, ServingSpec

HISTORY = "history"
TARGET_ITEM = "target_item"
HISTORY_KEY = "items"


def _history_encoder(history, num_items: int, dim: int):
    import keras

    embedded = keras.layers.Embedding(num_items + 1, dim, name="item_embedding")(history)
    mask = keras.ops.expand_dims(keras.ops.cast(keras.ops.not_equal(history, 0), "float32"), -1)
    flat = keras.layers.Flatten()(embedded * mask)
    return keras.layers.Dense(dim, activation="tanh", name="history_mixer")(flat)


def next_item_model(num_items: int = 50, max_len: int = 8, dim: int = 8, seed: int = 0):
    """A next-item scorer over ids ``0..num_items`` (0 = padding); weights drawn from ``seed``."""
    import keras

    keras.utils.set_random_seed(seed)
    history = keras.Input((max_len,), dtype="int64", name=HISTORY)
    scores = keras.layers.Dense(num_items + 1, name="scores")(_history_encoder(history, num_items, dim))
    return keras.Model({HISTORY: history}, scores, name="demo_next_item")


def ctr_model(num_items: int = 50, max_len: int = 8, dim: int = 8, seed: int = 0):
    """A CTR model: history and candidate ``target_item`` -> probability ``[B, 1]``."""
    import keras

    keras.utils.set_random_seed(seed)
    history = keras.Input((max_len,), dtype="int64", name=HISTORY)
    target = keras.Input((), dtype="int64", name=TARGET_ITEM)
    target_embedding = keras.layers.Embedding(num_items + 1, dim, name="target_embedding")(target)
    joined = keras.layers.Concatenate()([_history_encoder(history, num_items, dim), target_embedding])
    probability = keras.layers.Dense(1, activation="sigmoid", name="probability")(joined)
    return keras.Model({HISTORY: history, TARGET_ITEM: target}, probability, name="demo_ctr")


def next_item_spec(num_items: int = 50, max_len: int = 8, top_k: int = 5, min_len: int = 1) -> ServingSpec:
    return ServingSpec("next_item", (SequenceFeature(HISTORY, max_len=max_len, vocab_size=num_items + 1,
                                                     example_key=HISTORY_KEY, min_len=min_len),), top_k=top_k)


def ctr_spec(num_items: int = 50, max_len: int = 8, min_len: int = 1) -> ServingSpec:
    return ServingSpec("ctr", (SequenceFeature(HISTORY, max_len=max_len, vocab_size=num_items + 1,
                                               example_key=HISTORY_KEY, min_len=min_len),
                               ScalarFeature(TARGET_ITEM, vocab_size=num_items + 1)))
