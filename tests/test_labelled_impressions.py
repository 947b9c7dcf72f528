"""Labelled CTR impressions from MovieLens ratings.csv: the reader, the prepared target behavior, and every
impression of CTRSampling(impressions="labelled") checked against a plain-Python reference on a hand-written CSV."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfmoe.data import dataset, readers, samples, schema, sequences
from tfmoe.data.prepare import PrepareConfig, prepare
from tfmoe.data.report import InputError

HEADER = "userId,movieId,rating,timestamp\n"
# user 1: 12 ratings, two equal timestamps, rows out of time order, a 31-minute gap; user 2: 25 ratings;
# user 3: 3 ratings (1 test impression, none in valid after min_history); user 4: 2 ratings (too short: dropped)
ROWS = ([(1, 10 + i, [4.0, 2.5, 5.0, 3.0][i % 4], 1000 + 60 * i) for i in range(10)]
        + [(1, 30, 4.5, 1000), (1, 31, 1.0, 1000 + 60 * 9 + 31 * 60)]
        + [(2, 40 + i, 0.5 * (1 + i % 10), 5000 + 7 * i) for i in range(25)][::-1]
        + [(3, 10, 4.0, 7), (3, 11, 3.5, 8), (3, 12, 5.0, 9)]
        + [(4, 10, 4.0, 1), (4, 11, 4.0, 2)])
POSITIVE = (8, 9, 10)  # ratings >= 4 in half stars
SAMPLING = samples.CTRSampling(impressions="labelled", holdout="fraction", positive_behaviors=POSITIVE)


def write_csv(path, rows=ROWS, header=HEADER):
    path.write_text(header + "".join(f"{u},{i},{r:.1f},{t}\n" for u, i, r, t in rows))
    return path


def reference_histories(rows=ROWS):
    """Each user's ratings in time order (ties in file order), users with fewer than 3 left out."""
    by_user = {}
    for line, (user, item, rating, time) in enumerate(rows):
        by_user.setdefault(user, []).append((time, line, item, rating))
    return {u: [(item, rating, time) for time, _, item, rating in sorted(h)] for u, h in by_user.items()
            if len(h) >= sequences.MIN_HISTORY}


def reference_impressions(split, fraction=0.1, max_len=8, gap=1800):
    """``[(user, item, label, history items (most recent max_len), history session ids)]`` in user order."""
    out = []
    for user, history in sorted(reference_histories().items()):
        n = len(history)
        k = max(1, math.floor(fraction * n))
        ranges = {"train": range(1, n - 2 * k), "valid": range(max(n - 2 * k, 1), n - k),
                  "test": range(max(n - k, 1), n)}
        sessions = [0]
        for (_, _, before), (_, _, now) in zip(history, history[1:]):
            sessions.append(sessions[-1] + (now - before > gap))
        for t in ranges[split]:
            window = list(range(max(0, t - max_len), t))
            out.append((user, history[t][0], float(history[t][1] >= 4), [history[j][0] for j in window],
                        [sessions[j] - sessions[window[0]] for j in window]))
    return out


def test_reader_keeps_the_rating_as_label_and_half_star_behavior(tmp_path):
    path = write_csv(tmp_path / "ratings.csv", rows=[(1, 5, 4.0, 10), (2, 6, 0.5, 11), (2, 7, 5.0, 12)])
    reader = readers.make_reader("ml-latest")
    got = [(r.user, r.item, r.timestamp, r.behavior, r.label, r.line)
           for r in readers.iter_interactions(reader, [str(path)])]
    assert got == [(1, 5, 10, 8, 4.0, 2), (2, 6, 11, 1, 0.5, 3), (2, 7, 12, 10, 5.0, 4)]
    assert reader.fields == {"timestamp", "behavior", "label"} and reader.behavior_codes()["4.0"] == 8
    assert [readers.rating_behavior(r) for r in (0.5, 3.5, 5.0)] == [1, 7, 10]


@pytest.mark.parametrize("line, reason", [("1,5,4.3,10", "invalid_label"), ("1,5,6.0,10", "invalid_label"),
                                          ("1,5,4.0", "malformed"), ("1,x,4.0,10", "invalid_id"),
                                          ("1,5,4.0,-3", "invalid_timestamp"), ("1,5,,10", "missing_value")])
def test_bad_rows_are_named_with_their_line(tmp_path, line, reason):
    path = tmp_path / "ratings.csv"
    path.write_text(HEADER + "1,4,4.0,9\n" + line + "\n")
    with pytest.raises(InputError, match=f"{reason}: .*ratings.csv:3"):
        list(readers.iter_interactions(readers.make_reader("movielens-csv"), [str(path)]))


def test_a_file_without_the_header_is_refused(tmp_path):
    path = write_csv(tmp_path / "ratings.csv", header="user,item,rating,time\n")
    with pytest.raises(ValueError, match="starts with the header 'userId,movieId,rating,timestamp', got "
                                         "'user,item,rating,time'"):
        list(readers.make_reader("movielens-csv").read([str(path)]))


def test_leave_one_out_records_the_target_behavior():
    examples = dict(sequences.leave_one_out(1, [5, 6, 7], behaviors=[8, 3, 10]))
    assert examples["test"]["target_behavior"] == 10 and examples["valid"]["target_behavior"] == 3
    assert "target_behavior" not in dict(sequences.leave_one_out(1, [5, 6, 7]))["test"]
    decoded = schema.decode_example(schema.encode_example(1, [5], behaviors=[2], target=6, target_behavior=9)
                                    .SerializeToString())
    assert decoded["target_behavior"] == 9


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml-latest")
    out = root / "prepared"
    summary = prepare(PrepareConfig(format="movielens-csv", inputs=[str(write_csv(root / "ratings.csv"))],
                                    output_dir=str(out)))
    assert summary["dropped"]["users"] == {"too_short": 1} and summary["features"]["behaviors"]
    assert summary["sessions"]["mode"] == "gap"
    return out


def _vocab(prepared, name):
    return [int(x) for x in (prepared / "vocab" / f"{name}.txt").read_text().split()]


def _impressions(prepared, split, max_len=8, sampling=SAMPLING):
    items, users = [0, *_vocab(prepared, "items")], [0, *_vocab(prepared, "users")]
    ds = dataset.make_dataset(str(prepared), split, "ctr", max_len=max_len, batch_size=7, ctr=sampling,
                              sequence_features=("session_ids",))
    out = []
    for x, y in ds:
        for r in range(len(y)):
            real = x["history"][r].numpy() > 0
            out.append((users[int(x["user_id"][r])], items[int(x["target_item"][r])], float(y[r]),
                        [items[i] for i in x["history"][r].numpy()[real]],
                        x["history_session_ids"][r].numpy()[real].tolist()))
    return sorted(out, key=lambda row: row[0])  # users in order; each user's impressions stay in time order


@pytest.mark.parametrize("split", ["test", "valid"])
def test_every_evaluation_position_is_one_impression_with_its_recorded_label(prepared, split):
    assert _impressions(prepared, split) == reference_impressions(split)


def test_training_impressions_are_labelled_positions_before_the_valid_range(prepared):
    sampling = samples.CTRSampling(impressions="labelled", holdout="fraction", positive_behaviors=POSITIVE,
                                   samples_per_user=100)  # every training position of every user
    assert sorted(_impressions(prepared, "train", sampling=sampling)) == sorted(reference_impressions("train"))


def test_labelled_impressions_need_behaviors_and_the_time_split(tmp_path):
    with pytest.raises(ValueError, match="needs `positive_behaviors`"):
        samples.CTRSampling(impressions="labelled", holdout="fraction")
    with pytest.raises(ValueError, match="needs holdout='fraction', got holdout='last'"):
        samples.CTRSampling(impressions="labelled", positive_behaviors=[8])
    with pytest.raises(ValueError, match=r"`positive_behaviors` \[8\] is read only under impressions='labelled'"):
        samples.CTRSampling(positive_behaviors=[8])
    with pytest.raises(ValueError, match="`impressions` must be one of"):
        samples.CTRSampling(impressions="real")
    path = tmp_path / "ml.txt"
    path.write_text("".join(f"1 {i}\n" for i in range(1, 6)))
    out = tmp_path / "prepared"
    prepare(PrepareConfig(format="ml1m-sasrec", inputs=[str(path)], output_dir=str(out)))
    with pytest.raises(ValueError, match="prepared from input without behaviors"):
        dataset.make_dataset(str(out), "test", "ctr", ctr=SAMPLING)


def test_records_without_behaviors_fail_with_the_users_named():
    features = {schema.USER_ID: tf.constant([3, 4], tf.int64),
                schema.ITEMS: tf.ragged.constant([[1, 2, 3], [4, 5, 6]], dtype=tf.int64),
                schema.BEHAVIORS: tf.ragged.constant([[8, 2, 9], []], dtype=tf.int64),
                schema.TARGET: tf.constant([7, 8], tf.int64), schema.TARGET_BEHAVIOR: tf.constant([8, 0], tf.int64)}
    with pytest.raises(tf.errors.InvalidArgumentError, match="every record needs a behavior per item"):
        samples.ctr_eval_positions(features, 4, 10, "test", SAMPLING, sequence_features=())
    x, y = samples.ctr_eval_positions({k: v[:1] for k, v in features.items()}, 4, 10, "test", SAMPLING,
                                      sequence_features=())
    assert x["target_item"].numpy().tolist() == [7] and y.numpy().tolist() == [1.0]
    assert np.array_equal(x["history"].numpy(), [[0, 1, 2, 3]])


def test_ml_latest_small_reader_matches_its_readme():
    """The shared ml-latest-small ratings.csv (CRLF, header): the README's counts and share of ratings >= 4."""
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small" / "ratings.csv"
    if not path.exists():
        pytest.skip(f"real dataset not found at {path}")
    rows = list(readers.iter_interactions(readers.make_reader("movielens-csv"), [str(path)]))
    assert len(rows) == 100_836 and len({r.user for r in rows}) == 610 and len({r.item for r in rows}) == 9_724
    assert round(100 * sum(r.behavior in POSITIVE for r in rows) / len(rows), 1) == 48.2
