"""The on-disk contract of tfmoe's prepared data: TFRecord feature names, split layout, encoders.

A prepared dataset directory looks like::

    <out>/
      summary.json                 counts, length percentiles, rows dropped by reason
      vocab/items.txt              one raw id per line; line n (1-based) is index n; 0 = padding
      vocab/users.txt              same for users
      vocab/categories.txt         same for categories (only if the input has categories)
      train/part-00000-of-0000N.tfrecord.gz
      valid/part-...   test/part-...

Each record is a ``tf.train.Example`` for one user:

* ``user_id``      int64 scalar, vocabulary index (>= 1)
* ``items``        int64 list, item indices, oldest first (the input sequence)
* ``timestamps``   int64 list, Unix seconds aligned with ``items`` (empty if the input has none)
* ``categories``   int64 list, aligned with ``items`` (empty if the input has none)
* ``behaviors``    int64 list, aligned with ``items`` (empty if the input has none)
* ``session_ids``  int64 list, aligned with ``items``: 0 for the first session, +1 at each new one
* ``target``       int64 scalar, only in ``valid`` / ``test``: the held-out next item
* ``target_timestamp`` / ``target_category``: the target's timestamp and category (0 if unknown)
* ``target_behavior``: the target's behavior, only where the input has behaviors (0 when absent)

Leave-one-out: ``test`` holds ``items = seq[:-1], target = seq[-1]``, ``valid`` holds
``items = seq[:-2], target = seq[-2]``, ``train`` holds ``items = seq[:-2]`` (targets shifted inside).

Example:
    >>> from tfmoe.data import schema
    >>> ex = schema.encode_example(user_id=3, items=[5, 7, 9], session_ids=[0, 0, 1])
    >>> schema.decode_example(ex.SerializeToString())["items"]
    [5, 7, 9]
"""

from __future__ import annotations

USER_ID = "user_id"
ITEMS = "items"
TIMESTAMPS = "timestamps"
CATEGORIES = "categories"
BEHAVIORS = "behaviors"
SESSION_IDS = "session_ids"
TARGET = "target"
TARGET_TIMESTAMP = "target_timestamp"
TARGET_CATEGORY = "target_category"
TARGET_BEHAVIOR = "target_behavior"

SEQUENCE_FEATURES = (ITEMS, TIMESTAMPS, CATEGORIES, BEHAVIORS, SESSION_IDS)
SCALAR_FEATURES = (USER_ID, TARGET, TARGET_TIMESTAMP, TARGET_CATEGORY, TARGET_BEHAVIOR)
SPLITS = ("train", "valid", "test")
PADDING_ID = 0
SUMMARY_FILE = "summary.json"
VOCAB_DIR = "vocab"
RECORD_SUFFIX = ".tfrecord.gz"


def shard_file_name(shard: int, num_shards: int) -> str:
    """File name of shard ``shard`` of ``num_shards`` inside a split directory, e.g. ``part-00000-of-00004...``."""
    return f"part-{shard:05d}-of-{num_shards:05d}{RECORD_SUFFIX}"


_PROTOS = None


def _protos():
    """``(example_pb2, feature_pb2)``, imported once on first use (importing them loads TensorFlow)."""
    global _PROTOS
    if _PROTOS is None:
        from tensorflow.core.example import example_pb2, feature_pb2

        _PROTOS = (example_pb2, feature_pb2)
    return _PROTOS


def _int64_feature(values):
    feature_pb2 = _protos()[1]
    return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=values))


def encode_example(
    user_id: int,
    items,
    timestamps=(),
    categories=(),
    behaviors=(),
    session_ids=(),
    target: int | None = None,
    target_timestamp: int = 0,
    target_category: int = 0,
    target_behavior: int | None = None,
):
    """Builds the ``tf.train.Example`` of one user (see the module docstring for the fields); ``target_behavior``
    is written only with a ``target`` and only when given."""
    example_pb2, feature_pb2 = _protos()
    n = len(items)
    for name, values in ((TIMESTAMPS, timestamps), (CATEGORIES, categories), (BEHAVIORS, behaviors),
                         (SESSION_IDS, session_ids)):
        if len(values) not in (0, n):
            raise ValueError(f"encode_example: `{name}` has {len(values)} values but `items` has {n} (user {user_id})")
    features = {
        USER_ID: _int64_feature([user_id]),
        ITEMS: _int64_feature(items),
        TIMESTAMPS: _int64_feature(timestamps),
        CATEGORIES: _int64_feature(categories),
        BEHAVIORS: _int64_feature(behaviors),
        SESSION_IDS: _int64_feature(session_ids),
    }
    if target is not None:
        features[TARGET] = _int64_feature([target])
        features[TARGET_TIMESTAMP] = _int64_feature([target_timestamp])
        features[TARGET_CATEGORY] = _int64_feature([target_category])
        if target_behavior is not None:
            features[TARGET_BEHAVIOR] = _int64_feature([target_behavior])
    return example_pb2.Example(features=feature_pb2.Features(feature=features))


def decode_example(serialized: bytes) -> dict:
    """Parses one serialized example into ``{name: list[int] or int}`` (pure protobuf, no TF ops)."""
    example = _protos()[0].Example.FromString(serialized)
    out = {}
    for name, feature in example.features.feature.items():
        values = list(feature.int64_list.value)
        out[name] = values[0] if name in SCALAR_FEATURES else values
    return out
