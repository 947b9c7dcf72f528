"""CTR evaluation examples for TFMA: one labelled ``tf.Example`` per (user, candidate) row.

A prepared ``test`` record holds one user and the held-out positive; CTR evaluation needs labelled
positive and negative rows. :func:`write_ctr_eval_split` runs tfmoe's CTR evaluation sampling
(:func:`tfmoe.data.dataset.make_dataset` with ``task="ctr"``: the positive plus
``CTRSampling.num_negatives`` seeded, exact negatives per user) and writes every row back as a
``tf.Example`` in the serving contract (:mod:`tfmoe.serving.model_specs`):

* ``items`` / ``timestamps`` / ``categories`` / ``session_ids`` / ``behaviors``: the history's
  non-padding positions, oldest first (only the side features the reader produced);
* ``target_item``, ``target_category``, ``target_timestamp``, ``user_id``: int64 scalars;
* ``label``: int64, 1 = the held-out positive (a click), 0 = a sampled negative.

Example:
    >>> from tfmoe.tfx.ctr_eval import write_ctr_eval_split
    >>> rows = write_ctr_eval_split("prepared/", "out/Split-ctr_eval", max_len=50)  # doctest: +SKIP
"""

from __future__ import annotations

import os

LABEL = "label"
_SEQUENCES = {"history": "items", "history_timestamps": "timestamps", "history_categories": "categories",
              "history_session_ids": "session_ids", "history_behaviors": "behaviors"}
_SCALARS = ("target_item", "target_category", "target_timestamp", "user_id")


def write_ctr_eval_split(prepared_dir: str, out_dir: str, max_len: int, ctr: dict | None = None,
                         batch_size: int = 1024) -> int:
    """Writes ``out_dir/part-00000-of-00001.tfrecord.gz``; returns the number of rows."""
    import numpy as np
    import tensorflow as tf

    from tfmoe.data import dataset, schema
    from tfmoe.data.samples import CTRSampling

    sides = ("timestamps", "categories", "session_ids", "behaviors")
    ds = dataset.make_dataset(prepared_dir, "test", task="ctr", max_len=max_len, batch_size=batch_size,
                              sequence_features=sides, ctr=CTRSampling(**(ctr or {})))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, schema.shard_file_name(0, 1))
    rows = 0
    int64 = lambda values: tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for features, labels in ds:
            arrays = {k: v.numpy() for k, v in features.items()}
            labels = labels.numpy()
            mask = arrays["history"] != 0
            for r in range(labels.shape[0]):
                feature = {}
                for name, key in _SEQUENCES.items():
                    if name in arrays:
                        feature[key] = int64(arrays[name][r][mask[r]].astype(np.int64).tolist())
                for name in _SCALARS:
                    if name in arrays:
                        feature[name] = int64([int(arrays[name][r])])
                feature[LABEL] = int64([int(labels[r] > 0.5)])
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
                rows += 1
    return rows
