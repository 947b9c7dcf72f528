"""CTR inputs shared by every CTR model: feature keys, the padding mask and the item (+ category) embedding.

Features (see :mod:`tfmoe.data.samples`): ``history [B, L]`` (left padded with 0, most recent at
``L - 1``), optional ``history_length [B]``, ``history_categories [B, L]``, ``history_timestamps``,
``history_session_ids``, ``target_item [B]`` and ``target_category [B]``.

The padding mask is ``history != 0``, and, when ``history_length`` is given, also
``position >= L - history_length``: whatever sits at padded positions (ids, categories,
timestamps) can never reach a model.

Example:
    >>> import numpy as np
    >>> from tfmoe.models.ctr.inputs import FeatureEmbedding, history_mask
    >>> history_mask({"history": np.array([[0, 7, 8]]), "history_length": np.array([1])}).numpy().tolist()
    [[False, False, True]]
    >>> FeatureEmbedding(num_items=9, num_categories=3, item_dim=4, category_dim=2).output_dim
    6
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfmoe.utils import validation as v
from tfmoe.utils.initializers import fresh_initializer
from tfmoe.utils.xla import dim

HISTORY = "history"
HISTORY_LENGTH = "history_length"
HISTORY_CATEGORIES = "history_categories"
HISTORY_TIMESTAMPS = "history_timestamps"
HISTORY_SESSION_IDS = "history_session_ids"
TARGET_ITEM = "target_item"
TARGET_CATEGORY = "target_category"
USER_ID = "user_id"


def require(owner: str, features, key: str):
    """``features[key]`` or a ``ValueError`` naming the missing key."""
    if not isinstance(features, dict):
        raise ValueError(f"{owner}: features must be a dict of tensors, got {type(features).__name__}")
    if key not in features:
        raise ValueError(f"{owner}: features have no {key!r} (got keys {sorted(features)})")
    return features[key]


def history_mask(features, owner: str = "history_mask"):
    """``[B, L]`` bool: real (non-padding) history positions."""
    items = tf.convert_to_tensor(require(owner, features, HISTORY))
    mask = tf.not_equal(items, tf.zeros([], items.dtype))
    if HISTORY_LENGTH in features:
        length = dim(items, 1)
        lengths = tf.cast(tf.reshape(features[HISTORY_LENGTH], [-1, 1]), tf.int32)
        mask = tf.logical_and(mask, tf.range(length)[None, :] >= length - lengths)
    return mask


@keras.saving.register_keras_serializable(package="tfmoe")
class FeatureEmbedding(keras.layers.Layer):
    """Item embedding, concatenated with a category embedding when the data has categories.

    ``e = [E_item[x] ; E_cat[c]]`` (``d = item_dim + category_dim``), or ``E_item[x]`` when
    ``num_categories == 0``. Row 0 of each table is padding; masking is the caller's job.

    Args:
        num_items: item vocabulary without padding (ids ``1..num_items``).
        num_categories: category vocabulary without padding; 0 = no categories.
        item_dim, category_dim: embedding sizes.
        embeddings_initializer: initializer of both tables (default normal, std ``1/sqrt(d)``).

    Call: ``embed(items [...], categories [...] or None)`` -> ``[..., d]`` in the compute dtype.

    Example:
        >>> import numpy as np
        >>> emb = FeatureEmbedding(num_items=5, item_dim=3)
        >>> tuple(emb(np.array([[1, 2]])).shape)
        (1, 2, 3)
    """

    def __init__(self, num_items, num_categories=0, item_dim=32, category_dim=16, embeddings_initializer=None,
                 **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_items = v.check_int(owner, "num_items", num_items, minimum=1)
        self.num_categories = v.check_int(owner, "num_categories", num_categories, minimum=0)
        self.item_dim = v.check_int(owner, "item_dim", item_dim, minimum=1)
        self.category_dim = v.check_int(owner, "category_dim", category_dim, minimum=1)
        if embeddings_initializer is None:
            embeddings_initializer = keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(self.output_dim))
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    @property
    def output_dim(self) -> int:
        return self.item_dim + (self.category_dim if self.num_categories else 0)

    def build(self, input_shape=None):
        self.item_embeddings = self.add_weight(
            name="item_embeddings",
            shape=(self.num_items + 1, self.item_dim),
            initializer=fresh_initializer(self.embeddings_initializer, "item_embeddings"),
        )
        self.category_embeddings = None
        if self.num_categories:
            self.category_embeddings = self.add_weight(
                name="category_embeddings",
                shape=(self.num_categories + 1, self.category_dim),
                initializer=fresh_initializer(self.embeddings_initializer, "category_embeddings"),
            )
        self.built = True

    def call(self, items, categories=None):
        x = tf.cast(tf.gather(self.item_embeddings, tf.cast(items, tf.int32)), self.compute_dtype)
        if self.category_embeddings is None:
            return x
        if categories is None:
            raise ValueError(f"{type(self).__name__}: num_categories > 0 needs `categories`")
        c = tf.cast(tf.gather(self.category_embeddings, tf.cast(categories, tf.int32)), self.compute_dtype)
        return tf.concat([x, c], axis=-1)

    def compute_mask(self, items, categories=None, previous_mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            num_items=self.num_items,
            num_categories=self.num_categories,
            item_dim=self.item_dim,
            category_dim=self.category_dim,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config
