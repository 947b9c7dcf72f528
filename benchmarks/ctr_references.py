"""Reference scorers of the long-sequence CTR tasks: what a trained model must beat, with no training at all.

Two scorers read the same impressions as the models of ``benchmarks/long_ctr.py`` (the time split, the fixed seeded
negatives) and are scored like them (:func:`benchmarks.ctr_impressions.score_impressions`, AUC and GAUC overall and
by history length; LogLoss is left out, the scores are not probabilities):

* ``popularity``: the candidate's count over all users' sequences, the popularity that ``ml-1m-ctr-pop``'s negatives
  follow (so about 0.5 there by design);
* ``cooccurrence``: an item-kNN with no learning, the candidate's mean cosine similarity to the last ``L`` items of
  the history::

      score(h, c) = (1 / |h|) sum_{j in h} cos(j, c)      cos(i, j) = C_ij / sqrt(C_ii C_jj),  C = X^T X

  ``X`` [users, items] marks the items of each user's training range (the positions before the validation
  range), so no validation or test item leaks into ``C``; ``cos(i, i) = 0``.

The training impressions (one epoch of the protocol's draws: ``samples_per_user`` positions per user, seed 0) get
the popularity AUC too (``train_popularity_auc``): where it differs from the test's, a model's item biases learnt in
training do not carry over.

One record per task column and length: ``benchmarks/results/records/ctr_references/<column>/L<length>/``.

    .venv/bin/python benchmarks/ctr_references.py                           # every column, lengths 200 and 1000
    .venv/bin/python benchmarks/ctr_references.py --columns ml-latest-small --lengths 200
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from benchmarks import ctr_impressions, long_ctr, records

BENCHMARK = "ctr_references"


def training_range_matrix(sequences, num_items: int, fraction: float) -> np.ndarray:
    """``X [users, num_items + 1]`` float32: 1 where the item is in the user's training range (before the
    validation range of the time split, :func:`benchmarks.ctr_impressions.split_range`).

    Example:
        >>> training_range_matrix([np.array([1, 2, 3, 1, 2, 3, 1, 2, 3, 2])], 3, 0.1).tolist()  # 10 items: 8 train
        [[0.0, 1.0, 1.0, 1.0]]
    """
    out = np.zeros((len(sequences), num_items + 1), np.float32)
    for row, sequence in enumerate(sequences):
        end = ctr_impressions.split_range(len(sequence), "valid", fraction, 0).start
        out[row, sequence[:end]] = 1.0
    out[:, 0] = 0.0
    return out


def cosine_similarity(matrix: np.ndarray) -> np.ndarray:
    """Item-item cosine ``C_ij / sqrt(C_ii C_jj)`` of ``C = X^T X``, zero on the diagonal and for unseen items.

    Example:
        >>> np.round(cosine_similarity(np.array([[1, 1, 0], [1, 0, 1]], np.float32)).astype(float), 3).tolist()
        [[0.0, 0.707, 0.707], [0.707, 0.0, 0.0], [0.707, 0.0, 0.0]]
    """
    counts = matrix.T @ matrix
    norms = np.sqrt(np.maximum(np.diag(counts), 1.0))
    similarity = counts / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarity, 0.0)
    return similarity.astype(np.float32)


class PopularityScorer:
    """``score = counts[target_item]`` (the interface of :func:`~benchmarks.ctr_impressions.score_impressions`)."""

    def __init__(self, counts):
        import tensorflow as tf

        self.counts = tf.constant(np.asarray(counts, np.float32))

    def probabilities(self, features):
        import tensorflow as tf

        return tf.gather(self.counts, features["target_item"])


class CooccurrenceScorer:
    """``score = mean_{j in history} similarity[target_item, j]`` over the real history positions."""

    def __init__(self, similarity):
        import tensorflow as tf

        self.similarity = tf.constant(similarity)

    def probabilities(self, features):
        import tensorflow as tf

        history = features["history"]
        rows = tf.gather(self.similarity, features["target_item"])  # [B, items + 1]
        similarities = tf.gather(rows, history, batch_dims=1)  # [B, L]
        real = tf.cast(tf.not_equal(history, 0), tf.float32)
        return tf.reduce_sum(similarities * real, axis=1) / tf.maximum(tf.reduce_sum(real, axis=1), 1.0)


def full_sequences(data_dir: str) -> list[np.ndarray]:
    """Every user's whole sequence (``test`` record ``items + [target]``), read from the ragged records."""
    import tensorflow as tf

    from tfmoe.data import dataset, schema

    spec = dataset.parse_spec("test", ())
    files = dataset.split_files(data_dir, "test")
    out = []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096).map(
            lambda serialized: tf.io.parse_example(serialized, spec)):
        targets = batch[schema.TARGET].numpy()
        out += [np.append(items, target) for items, target in zip(batch[schema.ITEMS].numpy(), targets)]
    return out


def item_similarity(data_dir: str, num_items: int, fraction: float) -> np.ndarray:
    """:func:`cosine_similarity` of the users' training ranges of the prepared data in ``data_dir``."""
    return cosine_similarity(training_range_matrix(full_sequences(data_dir), num_items, fraction))


def train_popularity_auc(data_dir: str, sampling, counts, user_items) -> float:
    """The popularity AUC of one epoch of training impressions (the protocol's draws, seed 0)."""
    from tfmoe.data import dataset
    from tfmoe.metrics import ctr_metrics

    labels, scores, users = [], [], []
    for x, y in dataset.make_dataset(data_dir, "train", "ctr", max_len=1, batch_size=4096, ctr=sampling,
                                     touched_items=user_items, sequence_features=()):
        labels.append(y.numpy())
        scores.append(counts[x["target_item"].numpy()])
        users.append(x["user_id"].numpy())
    return float(ctr_metrics(*(np.concatenate(a) for a in (labels, scores, users)))["AUC"])


def drop_logloss(metrics: dict) -> dict:
    """``bucket_metrics`` without ``LogLoss`` (the reference scores are not probabilities)."""
    strip = lambda m: {k: x for k, x in m.items() if k != "LogLoss"}
    return {"overall": strip(metrics["overall"]), "buckets": {b: strip(m) for b, m in metrics["buckets"].items()}}


def run(columns, lengths, data_root: str, out_records: str, command=None) -> list[dict]:
    from tfmoe.data import dataset
    from tfmoe.data.samples import CTRSampling

    written, similarities = [], {}  # the columns of one dataset share its similarity (one time split)
    for column in columns:
        task = long_ctr.trained_task(column)
        data_dir = os.path.join(data_root, long_ctr.TASKS[task]["dataset"])
        user_items = dataset.load_user_items(data_dir)
        counts = user_items.item_counts.astype(np.float32)
        sampling = CTRSampling(**{"num_negatives": long_ctr.PROTOCOL["num_negatives"], "positions": "random",
                                  "samples_per_user": long_ctr.PROTOCOL["samples_per_user"], "min_history": 1,
                                  "eval_seed": long_ctr.PROTOCOL["eval_seed"], **long_ctr.task_sampling(column)})
        key = (data_dir, sampling.holdout_fraction)
        if key not in similarities:
            similarities[key] = item_similarity(data_dir, user_items.num_items, sampling.holdout_fraction)
        scorers = {"popularity": PopularityScorer(counts), "cooccurrence": CooccurrenceScorer(similarities[key])}
        train_auc = train_popularity_auc(data_dir, sampling, counts, user_items)
        for length in lengths:
            metrics = {"train_popularity_auc": train_auc}
            for split in ("valid", "test"):
                for name, scorer in scorers.items():
                    arrays = ctr_impressions.score_impressions(scorer, data_dir, split, sampling, length, (),
                                                               4096, touched_items=user_items)
                    metrics.setdefault(split, {})[name] = drop_logloss(
                        ctr_impressions.bucket_metrics(arrays, long_ctr.BUCKETS))
            config = {"column": column, "task": task, "max_len": length, "sampling": dataclasses.asdict(sampling),
                      "scorers": sorted(scorers), "similarity": "cosine of X^T X over the training ranges"}
            record = records.make_record(BENCHMARK, f"{column}/L{length}", config, metrics, epochs=None, seed=0,
                                         partial=False, data_files=long_ctr.data_files(
                                             argparse.Namespace(data_dir=data_root), long_ctr.TASKS[task]["dataset"]),
                                         command=command)
            record["path"] = records.write_record(record, out_records)
            print(f"{column} L={length}: test AUC popularity {metrics['test']['popularity']['overall']['AUC']:.4f}, "
                  f"co-occurrence {metrics['test']['cooccurrence']['overall']['AUC']:.4f}; training popularity AUC "
                  f"{train_auc:.4f} -> {record['path']}", flush=True)
            written.append(record)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--columns", nargs="+", default=["ml-1m-ctr-pop", "ml-1m-ctr-uniform", "ml-latest-small"],
                        choices=list(long_ctr.TASKS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[200, 1000])
    parser.add_argument("--data-dir", default=long_ctr.DEFAULT_DATA_DIR, help="prepared data (long_ctr.py prepare)")
    parser.add_argument("--records", default=records.ROOT)
    args = parser.parse_args(argv)
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    run(args.columns, args.lengths, args.data_dir, args.records,
        command=sys.argv if argv is None else ["benchmarks/ctr_references.py", *argv])
    return 0


if __name__ == "__main__":
    sys.exit(main())
