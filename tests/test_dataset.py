"""The tf.data reader: round trips from records written with ``schema.encode_example``, shapes, CTR sets."""

import json
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_samples import pad_left, rebase

from tfmoe.data import dataset, samples, schema

NUM_ITEMS = 60


def category_of(item):
    return item % 7 + 1


def write_prepared(root, sequences, shards=3, num_items=NUM_ITEMS):
    """Writes a prepared directory (leave-one-out splits, GZIP shards, vocab) from full sequences.

    ``sequences`` maps user_id -> full item list. Timestamps are 10 s apart inside sessions of 3
    and 1 day apart between them; categories are ``category_of(item)``.
    """
    writers = {}
    for split in schema.SPLITS:
        os.makedirs(os.path.join(root, split), exist_ok=True)
        writers[split] = [
            tf.io.TFRecordWriter(os.path.join(root, split, schema.shard_file_name(i, shards)),
                                 options="GZIP")
            for i in range(shards)
        ]
    for n, (user, seq) in enumerate(sorted(sequences.items())):
        session = np.arange(len(seq)) // 3
        times = (1_600_000_000 + session * 86_400 + np.arange(len(seq)) * 10).tolist()
        cats = [category_of(i) for i in seq]
        for split, cut in (("train", 2), ("valid", 2), ("test", 1)):
            target = {} if split == "train" else dict(
                target=seq[-cut], target_timestamp=times[-cut], target_category=cats[-cut])
            example = schema.encode_example(user, seq[:-cut], times[:-cut], cats[:-cut], (),
                                            session[:-cut].tolist(), **target)
            writers[split][n % shards].write(example.SerializeToString())
    for split_writers in writers.values():
        for w in split_writers:
            w.close()
    os.makedirs(os.path.join(root, schema.VOCAB_DIR), exist_ok=True)
    with open(os.path.join(root, schema.VOCAB_DIR, "items.txt"), "w") as f:
        f.write("".join(f"raw{i}\n" for i in range(1, num_items + 1)))
    with open(os.path.join(root, schema.SUMMARY_FILE), "w") as f:
        json.dump({"splits": {split: {"records": len(sequences)} for split in schema.SPLITS}}, f)
    return root


def full_record(seq):
    session = np.arange(len(seq)) // 3
    return {"items": list(seq), "session_ids": session.tolist(), "categories": [category_of(i) for i in seq],
            "timestamps": (1_600_000_000 + session * 86_400 + np.arange(len(seq)) * 10).tolist()}


@pytest.fixture(scope="module")
def sequences():
    rng = np.random.default_rng(0)
    lengths = [3, 4, 5, 9, 14, 20, 30, 6, 11, 3, 17, 25, 8]
    return {u + 1: rng.choice(np.arange(1, NUM_ITEMS + 1), size=n, replace=False).tolist()
            for u, n in enumerate(lengths)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, sequences):
    return write_prepared(str(tmp_path_factory.mktemp("prepared")), sequences)


def collect(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append({k: v.numpy() for k, v in x.items()})
        ys.append(y.numpy())
    def stack(arrays):  # "seen" is as wide as each batch's longest history: right-pad to the widest
        if arrays[0].ndim == 2:
            width = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
        return np.concatenate(arrays)

    return {k: stack([x[k] for x in xs]) for k in xs[0]}, np.concatenate(ys)


def test_next_item_train_round_trip(prepared, sequences):
    max_len = 8
    x, y = collect(dataset.make_dataset(prepared, "train", max_len=max_len, batch_size=5, shuffle=False))
    assert sorted(x["user_id"].tolist()) == sorted(sequences)
    for row, user in enumerate(x["user_id"]):
        train = {k: v[:-2] for k, v in full_record(sequences[user]).items()}
        np.testing.assert_array_equal(x["history"][row], pad_left(train["items"][:-1], max_len))
        np.testing.assert_array_equal(y[row], pad_left(train["items"][1:], max_len))
        np.testing.assert_array_equal(x["history_timestamps"][row], pad_left(train["timestamps"][:-1], max_len))
        np.testing.assert_array_equal(x["history_categories"][row], pad_left(train["categories"][:-1], max_len))
        np.testing.assert_array_equal(x["history_session_ids"][row], rebase(train["session_ids"][:-1], max_len))
        assert x["history_length"][row] == min(len(train["items"]) - 1, max_len)


def test_next_item_test_split_history_and_targets(prepared, sequences):
    x, y = collect(dataset.make_dataset(prepared, "test", max_len=6, batch_size=4, sequence_features=()))
    assert set(x) == {"history", "history_length", "user_id", "seen"}
    for row, user in enumerate(x["user_id"]):
        np.testing.assert_array_equal(x["history"][row], pad_left(sequences[user][:-1], 6))
        seen = x["seen"][row]
        np.testing.assert_array_equal(seen[seen != 0], sequences[user][:-1])  # the whole history, not 6
        assert y[row] == sequences[user][-1]


def test_static_shapes_with_drop_remainder(prepared, sequences):
    ds = dataset.make_dataset(prepared, "train", max_len=7, batch_size=4, drop_remainder=True)
    x_spec, y_spec = ds.element_spec
    assert all(spec.shape.is_fully_defined() for spec in x_spec.values())
    assert x_spec["history"].shape == (4, 7) and y_spec.shape == (4, 7)
    assert len(list(ds)) == len(sequences) // 4
    ctr = dataset.make_dataset(prepared, "valid", "ctr", max_len=7, batch_size=6, drop_remainder=True,
                               ctr=samples.CTRSampling(num_negatives=2))
    x_spec, y_spec = ctr.element_spec
    assert x_spec["history"].shape == (6, 7) and x_spec["target_item"].shape == (6,) and y_spec.shape == (6,)
    assert sum(int(y.shape[0]) for _, y in ctr) == (3 * len(sequences)) // 6 * 6


def test_shuffle_is_seeded(prepared, sequences):
    def order(**kwargs):
        ds = dataset.make_dataset(prepared, "train", max_len=4, batch_size=3, shuffle_buffer=100, **kwargs)
        return [int(u) for x, _ in ds for u in x["user_id"]]

    first = order(seed=0)
    assert first == order(seed=0)
    assert first != order(seed=1)
    assert sorted(first) == sorted(order(shuffle=False)) == sorted(sequences)


def test_bucketing_pads_each_batch_to_its_bucket(prepared, sequences):
    bounds, max_len = [4, 9], 16
    ds = dataset.make_dataset(prepared, "train", max_len=max_len, batch_size=3, bucket_boundaries=bounds,
                              shuffle=False)
    assert ds.element_spec[0]["history"].shape.as_list() == [None, None]
    seen = []
    for x, y in ds:
        width = x["history"].shape[1]
        assert width in (4, 9, 16) and y.shape == x["history"].shape
        lower = {4: -1, 9: 4, 16: 9}[width]
        for row, user in enumerate(x["user_id"].numpy()):
            train = sequences[user][:-2]
            assert lower < min(len(train) - 1, max_len) <= width
            np.testing.assert_array_equal(x["history"][row], pad_left(train[:-1], width))
            np.testing.assert_array_equal(y[row], pad_left(train[1:], width))
            seen.append(user)
    assert sorted(seen) == sorted(sequences)


@pytest.mark.parametrize("split", ["train", "test"])
def test_ctr_bucketing_keeps_groups_and_bucket_widths(prepared, sequences, split):
    ds = dataset.make_dataset(prepared, split, "ctr", max_len=12, batch_size=6, bucket_boundaries=[5],
                              ctr=samples.CTRSampling(num_negatives=2, samples_per_user=1))
    users = []
    for x, y in ds:
        width = x["history"].shape[1]
        assert width in (5, 12) and len(y) % 3 == 0
        np.testing.assert_array_equal(y.numpy(), np.tile([1.0, 0.0, 0.0], len(y) // 3))
        for row in range(0, len(y), 3):
            user = int(x["user_id"][row])
            kept = int(x["history_length"][row])
            assert kept <= width and np.count_nonzero(x["history"][row]) == kept
            if split == "test":
                np.testing.assert_array_equal(x["history"][row], pad_left(sequences[user][:-1], width))
            users.append(user)
    expected = [u for u, seq in sequences.items() if split == "test" or len(seq) - 2 > 1]
    assert sorted(users) == sorted(expected)


def test_histories_of_ten_thousand_and_more(tmp_path):
    rng = np.random.default_rng(3)
    n_items = 20_000
    seqs = {1: rng.choice(np.arange(1, n_items + 1), size=12_003, replace=False).tolist(), 2: [5, 6, 7, 8]}
    root = write_prepared(str(tmp_path / "long"), seqs, shards=1, num_items=n_items)
    x, y = collect(dataset.make_dataset(root, "train", max_len=10_000, batch_size=2, shuffle=False))
    row = int(np.flatnonzero(x["user_id"] == 1)[0])
    train = seqs[1][:-2]
    np.testing.assert_array_equal(x["history"][row], train[:-1][-10_000:])
    np.testing.assert_array_equal(y[row], train[1:][-10_000:])
    np.testing.assert_array_equal(x["history"][1 - row], pad_left([5], 10_000))
    x, y = collect(dataset.make_dataset(root, "test", "ctr", max_len=10_000, batch_size=4))
    np.testing.assert_array_equal(x["history"][0], seqs[1][:-1][-10_000:])
    assert x["target_item"][0] == seqs[1][-1] and x["target_item"][1] not in seqs[1]


def _ctr_eval_rows(prepared, batch_size, **kwargs):
    x, y = collect(dataset.make_dataset(prepared, "valid", "ctr", max_len=10, batch_size=batch_size,
                                        ctr=samples.CTRSampling(num_negatives=4, eval_seed=7), **kwargs))
    groups = {}
    for start in range(0, len(y), 5):
        groups[int(x["user_id"][start])] = x["target_item"][start : start + 5].tolist()
        np.testing.assert_array_equal(y[start : start + 5], [1, 0, 0, 0, 0])
    return x, groups


def test_ctr_valid_negatives_are_exact_and_identical_across_runs(prepared, sequences):
    x, groups = _ctr_eval_rows(prepared, batch_size=10)
    assert sorted(groups) == sorted(sequences)
    for user, (positive, *negs) in groups.items():
        assert positive == sequences[user][-2]
        assert not set(negs) & set(sequences[user])  # includes the held-out test target
        assert len(set(negs)) == 4
    seen_items = {i for seq in sequences.values() for i in seq}  # other items have no known category
    np.testing.assert_array_equal(x["target_category"],
                                  [category_of(i) if i in seen_items else 0 for i in x["target_item"]])
    _, again = _ctr_eval_rows(prepared, batch_size=15, touched_items=dataset.load_user_items(prepared))
    assert again == groups


def test_ctr_train_changes_every_epoch_and_repeats_across_runs(prepared, sequences):
    def make():
        return dataset.make_dataset(prepared, "train", "ctr", max_len=10, batch_size=8, seed=3,
                                    ctr=samples.CTRSampling(num_negatives=1, samples_per_user=2))

    ds = make()
    first, second = collect(ds), collect(ds)
    np.testing.assert_array_equal(collect(make())[0]["target_item"], first[0]["target_item"])
    assert (first[0]["target_item"] != second[0]["target_item"]).any()
    x, y = first
    positions = {u: min(2, max(len(seq) - 2 - 1, 0)) for u, seq in sequences.items()}  # min_history = 1
    assert len(y) == 2 * sum(positions.values()) and 0 in positions.values()
    for row in range(len(y)):
        full = sequences[int(x["user_id"][row])]
        item = int(x["target_item"][row])
        if y[row] == 1:
            t = len(full[:-2]) - 1 if x["history_length"][row] == 0 else full.index(x["history"][row][-1]) + 1
            assert item == full[t] and t < len(full) - 2  # a train position
        else:
            assert item not in full


def test_cardinality_comes_from_the_summary_when_it_is_fixed(prepared, sequences):
    n = len(sequences)
    assert dataset.make_dataset(prepared, "train", batch_size=4).cardinality() == -(-n // 4)
    assert dataset.make_dataset(prepared, "test", batch_size=4, drop_remainder=True).cardinality() == n // 4
    ctr = samples.CTRSampling(num_negatives=2)
    assert dataset.make_dataset(prepared, "valid", "ctr", batch_size=4, ctr=ctr).cardinality() == -(-3 * n // 4)
    unknown = tf.data.UNKNOWN_CARDINALITY
    assert dataset.make_dataset(prepared, "train", "ctr", batch_size=4).cardinality() == unknown
    assert dataset.make_dataset(os.path.join(prepared, "train", "*.gz"), "train").cardinality() == unknown
    assert dataset.make_dataset(prepared, "train", repeat=True).cardinality() == tf.data.INFINITE_CARDINALITY


def test_reader_feeds_keras_fit(prepared):
    ds = dataset.make_dataset(prepared, "train", max_len=6, batch_size=4, sequence_features=(),
                              drop_remainder=True)
    history = keras.Input(shape=(6,), dtype="int32", name="history")
    logits = keras.layers.Dense(NUM_ITEMS + 1)(keras.layers.Embedding(NUM_ITEMS + 1, 8)(history))
    model = keras.Model({"history": history}, logits)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    features_only = ds.map(lambda x, y: ({"history": x["history"]}, y))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = model.fit(features_only, epochs=2, verbose=0)
    assert np.isfinite(result.history["loss"]).all() and len(result.history["loss"]) == 2
    assert not [w for w in caught if "ran out of data" in str(w.message)]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: dataset.make_dataset(os.path.join(p, "nothing-*.gz"), "train"), r"no TFRecord files match"),
        (lambda p: dataset.make_dataset(p, "training"), r"`split` must be one of 'train', 'valid', 'test'"),
        (lambda p: dataset.make_dataset(p, "train", task="rank"), r"`task` must be one of 'next_item', 'ctr'"),
        (lambda p: dataset.make_dataset(p, "train", max_len=10, bucket_boundaries=[5, 3]),
         r"`bucket_boundaries` must be strictly increasing and below max_len=10, got \[5, 3\]"),
        (lambda p: dataset.make_dataset(os.path.join(p, "train", "*.gz"), "train", "ctr", num_items=NUM_ITEMS),
         r"task='ctr' on split 'train' needs every item each user touched"),
        (lambda p: dataset.make_dataset(os.path.join(p, "test", "*.gz"), "test", "ctr"),
         r"task='ctr' needs `num_items` when `source` is not a prepared directory"),
        (lambda p: dataset.make_dataset(p, "test", "ctr", item_categories=np.zeros(5, np.int64)),
         r"`item_categories` must be an integer array of shape \[num_items \+ 1\] = \[61\]"),
    ],
)
def test_bad_arguments_fail_clearly(prepared, call, message):
    with pytest.raises(ValueError, match=message):
        call(prepared)


@pytest.mark.e2e
def test_synthetic_logs_prepared_by_beam_round_trip_through_the_reader(tmp_path):
    from tfmoe.data import prepare, synthetic

    data = synthetic.generate(synthetic.preset_config("tiny", seed=1))
    logs = synthetic.write_files(data, tmp_path / "logs")
    out = str(tmp_path / "prepared")
    prepare.prepare(prepare.PrepareConfig(format="tfmoe-synthetic", inputs=[logs["interactions.csv"]],
                                          output_dir=out))
    raw_item = [0] + [int(line) for line in open(os.path.join(out, "vocab", "items.txt"))]
    raw_user = [0] + [int(line) for line in open(os.path.join(out, "vocab", "users.txt"))]
    x, y = collect(dataset.make_dataset(out, "test", max_len=32, batch_size=16))
    assert len(y) == data.config.num_users
    for row in range(len(y)):
        user = raw_user[x["user_id"][row]]
        rows = slice(data.user_offsets[user - 1], data.user_offsets[user] - 1)  # all but the test item
        assert [raw_item[i] for i in x["history"][row] if i] == data.item_ids[rows].tolist()[-32:]
        assert raw_item[y[row]] == data.user_sequence(user)[-1]
        truth = data.session_ids[rows][-32:]
        np.testing.assert_array_equal(x["history_session_ids"][row][-len(truth):], truth - truth[0])
        np.testing.assert_array_equal(x["history_timestamps"][row][-len(truth):], data.timestamps[rows][-32:])
    x, y = collect(dataset.make_dataset(out, "valid", "ctr", max_len=32, batch_size=8))
    for row in np.flatnonzero(y == 0):
        user = raw_user[x["user_id"][row]]
        assert raw_item[x["target_item"][row]] not in data.user_sequence(user).tolist()


def test_user_items_count_every_occurrence_of_the_full_sequences(prepared, sequences):
    counts = dataset.load_user_items(prepared).item_counts
    expected = np.bincount(np.concatenate([np.asarray(s) for s in sequences.values()]), minlength=NUM_ITEMS + 1)
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("split", ["train", "valid"])
def test_popularity_negatives_read_from_a_prepared_directory(prepared, sequences, split):
    sampling = samples.CTRSampling(num_negatives=3, negatives="popularity", samples_per_user=2)
    x, y = collect(dataset.make_dataset(prepared, split, "ctr", max_len=10, batch_size=8, ctr=sampling))
    counts = dataset.load_user_items(prepared).item_counts
    negatives = x["target_item"][y == 0]
    assert len(negatives) == 3 * (y == 1).sum() > 0
    assert (counts[negatives] > 0).all()
    for user, item in zip(x["user_id"][y == 0], negatives):
        assert item not in sequences[int(user)], f"user {user}: negative {item} was touched"


def test_popularity_negatives_without_the_counts_name_what_to_pass(prepared):
    files = dataset.split_files(prepared, "test")
    with pytest.raises(ValueError, match=r"needs each item's occurrence count.*load_user_items"):
        dataset.make_dataset(files, "test", "ctr", max_len=10, batch_size=8, num_items=NUM_ITEMS,
                             ctr=samples.CTRSampling(negatives="popularity"))
