"""Export to TF Serving: signatures, padding convention, in-graph validation, warmup file, atomic publish.

Everything is checked against an independent computation: the in-memory Keras model called on
histories padded by hand (numpy), the training-time windowing of :mod:`tfmoe.data.samples`,
or a numpy top-k.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfmoe.data import samples
from tfmoe.serving import demo_models, layout, preprocessing, requests, saved_model_proto, warmup
from tfmoe.serving.export import export_model
from tfmoe.serving.features import (
    CLASSIFY_METHOD,
    PREDICT_METHOD,
    ScalarFeature,
    SequenceFeature,
    ServingSpec,
)
from tfmoe.serving.signatures import top_k_items

NUM_ITEMS, MAX_LEN, TOP_K = 30, 6, 5
HISTORIES = [[3, 4, 5], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [30, 29, 28, 27, 26, 25]]


def hand_padded(histories, max_len=MAX_LEN):
    """Most recent max_len ids, right-aligned, 0 on the left: written out element by element."""
    out = np.zeros((len(histories), max_len), np.int64)
    for row, history in enumerate(histories):
        kept = history[len(history) - min(len(history), max_len):]
        for offset, item in enumerate(reversed(kept)):
            out[row, max_len - 1 - offset] = item
    return out


def example_bytes(histories, targets=None):
    rows = []
    for i, history in enumerate(histories):
        features = {"items": np.asarray(history, np.int64)}
        if targets is not None:
            features["target_item"] = targets[i]
        rows.append(requests.to_example(features).SerializeToString())
    return tf.constant(rows)


@pytest.fixture(scope="module")
def next_item(tmp_path_factory):
    model = demo_models.next_item_model(NUM_ITEMS, MAX_LEN, seed=1)
    spec = demo_models.next_item_spec(NUM_ITEMS, MAX_LEN, top_k=TOP_K)
    base = tmp_path_factory.mktemp("models") / "recs"
    result = export_model(model, base, spec, model_name="recs", warmup_batch_sizes=(1, 4))
    return model, spec, result, tf.saved_model.load(result.path)


@pytest.fixture(scope="module")
def ctr(tmp_path_factory):
    model = demo_models.ctr_model(NUM_ITEMS, MAX_LEN, seed=2)
    spec = demo_models.ctr_spec(NUM_ITEMS, MAX_LEN)
    result = export_model(model, tmp_path_factory.mktemp("models") / "ctr", spec, model_name="ctr")
    return model, spec, result, tf.saved_model.load(result.path)


def test_hand_padding_is_the_training_convention():
    # The reference the serving tests compare against must itself be the training-time layout.
    ragged = tf.ragged.constant(HISTORIES, dtype=tf.int64)
    features = {"user_id": tf.range(len(HISTORIES), dtype=tf.int64), "items": ragged,
                "target": tf.ones([len(HISTORIES)], tf.int64)}
    history = samples.next_item_eval(features, MAX_LEN, sequence_features=())[0]["history"]
    np.testing.assert_array_equal(history.numpy(), hand_padded(HISTORIES))
    np.testing.assert_array_equal(preprocessing.left_pad(ragged, MAX_LEN).numpy(), hand_padded(HISTORIES))
    np.testing.assert_array_equal(requests.pad_histories(HISTORIES, MAX_LEN), hand_padded(HISTORIES))
    assert hand_padded([[1, 2, 3, 4, 5, 6, 7]])[0].tolist() == [2, 3, 4, 5, 6, 7]
    assert hand_padded([[8, 9]])[0].tolist() == [0, 0, 0, 0, 8, 9]


def test_serving_default_parses_examples_like_training(next_item):
    model, _, _, loaded = next_item
    got = loaded.signatures["serving_default"](examples=example_bytes(HISTORIES))["scores"].numpy()
    want = model({"history": hand_padded(HISTORIES)}).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Position matters to the model: a right-padded layout would give other scores.
    right_padded = np.zeros_like(hand_padded(HISTORIES[:1]))
    right_padded[0, :3] = HISTORIES[0]
    assert not np.allclose(got[:1], model({"history": right_padded}).numpy(), atol=1e-4)


def test_predict_raw_equals_model(next_item):
    model, _, _, loaded = next_item
    x = hand_padded(HISTORIES)
    got = loaded.signatures["predict_raw"](history=tf.constant(x))["scores"].numpy()
    np.testing.assert_allclose(got, model({"history": x}).numpy(), rtol=1e-5, atol=1e-6)


def numpy_top_k(scores, histories, exclude_seen, k):
    out_ids, out_scores = [], []
    for s, history, exclude in zip(scores, histories, exclude_seen):
        banned = {0} | (set(history) if exclude else set())
        order = [i for i in np.argsort(-s, kind="stable") if i not in banned][:k]
        out_ids.append(order)
        out_scores.append(s[order])
    return np.array(out_ids), np.array(out_scores)


def test_top_k_matches_numpy_and_excludes_seen_items(next_item):
    model, _, _, loaded = next_item
    x = hand_padded(HISTORIES)
    exclude = np.array([True, False, True, True])
    out = loaded.signatures["top_k"](history=tf.constant(x), exclude_seen=tf.constant(exclude))
    scores = model({"history": x}).numpy()
    want_ids, want_scores = numpy_top_k(scores, [hand_padded([h])[0] for h in HISTORIES], exclude, TOP_K)
    np.testing.assert_array_equal(out["item_ids"].numpy(), want_ids)
    np.testing.assert_allclose(out["scores"].numpy(), want_scores, rtol=1e-5, atol=1e-6)
    assert out["item_ids"].dtype == tf.int64
    for row, history in enumerate(x):
        assert 0 not in out["item_ids"].numpy()[row]
        if exclude[row]:
            assert not set(out["item_ids"].numpy()[row]) & set(history.tolist())


def test_top_k_items_fills_with_minus_one_when_candidates_run_out():
    scores = tf.constant([[5.0, 1.0, 2.0, 3.0, 4.0]])
    ids, values = top_k_items(scores, tf.constant([[0, 4, 3]]), tf.constant([True]), k=3)
    assert ids.numpy().tolist() == [[2, 1, -1]]
    assert values.numpy()[0, :2].tolist() == [2.0, 1.0] and values.numpy()[0, 2] == -np.inf
    ids, _ = top_k_items(scores, tf.constant([[0, 4, 3]]), tf.constant([False]), k=3)
    assert ids.numpy().tolist() == [[4, 3, 2]]  # column 0 (padding) is never returned, even when it scores best


def test_ctr_signatures_and_classify_method_name(ctr):
    model, _, result, loaded = ctr
    targets = np.array([4, 9, 1, 30])
    want = model({"history": hand_padded(HISTORIES), "target_item": targets}).numpy()
    got = loaded.signatures["serving_default"](examples=example_bytes(HISTORIES, targets))["probability"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    raw = loaded.signatures["predict_raw"](history=tf.constant(hand_padded(HISTORIES)),
                                           target_item=tf.constant(targets))["probability"].numpy()
    np.testing.assert_allclose(raw, want, rtol=1e-5, atol=1e-6)
    classified = loaded.signatures["classify"](inputs=example_bytes(HISTORIES, targets))
    np.testing.assert_allclose(classified["scores"].numpy(), np.concatenate([1 - want, want], axis=1), atol=1e-6)
    assert classified["classes"].numpy().tolist() == [[b"0", b"1"]] * len(HISTORIES)
    methods = {name: sdef.method_name for name, sdef in saved_model_proto.signature_defs(result.path).items()}
    assert methods["classify"] == CLASSIFY_METHOD
    assert methods["serving_default"] == methods["predict_raw"] == PREDICT_METHOD
    assert set(loaded.signatures["classify"].structured_input_signature[1]) == {"inputs"}


@pytest.mark.parametrize(
    "signature, feed, message",
    [
        ("predict_raw", {"history": [[0, 0, 0, 0, 1, 31]]}, "predict_raw: input `history`: ids must be in [0, 31)"),
        ("predict_raw", {"history": [[0, 0, 0, 0, 1, -2]]}, "ids must be in [0, 31); out-of-range ids:] [-2]"),
        ("predict_raw", {"history": [[1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]]},
         "predict_raw: input `history`: every row needs at least 1 non-padding id(s) (empty history); rows:] [1]"),
        ("top_k", {"history": [[0, 0, 0, 0, 1, 2]], "exclude_seen": [True, False]},
         "top_k: inputs `exclude_seen` and `history` must have the same batch size"),
        ("serving_default", {"examples": [[5, 40]]}, "serving_default: feature `items`: ids must be in [0, 31)"),
        ("serving_default", {"examples": [[5], []]}, "serving_default: feature `items`: every row needs at least 1"),
    ],
)
def test_bad_ids_and_empty_histories_fail_inside_the_graph(next_item, signature, feed, message):
    loaded = next_item[3]
    if signature == "serving_default":
        feed = {"examples": example_bytes(feed["examples"])}
    else:
        feed = {k: tf.constant(v, tf.bool if k == "exclude_seen" else tf.int64) for k, v in feed.items()}
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        loaded.signatures[signature](**feed)
    assert message in err.value.message


def test_missing_ctr_feature_in_example_is_invalid_argument(ctr):
    loaded = ctr[3]
    with pytest.raises(tf.errors.InvalidArgumentError, match="target_item"):
        loaded.signatures["classify"](inputs=example_bytes([[1, 2]]))


def test_long_example_history_keeps_the_most_recent_items(next_item):
    model, _, _, loaded = next_item
    long_history = list(range(1, 31)) * 3  # 90 ids, far over max_len
    got = loaded.signatures["serving_default"](examples=example_bytes([long_history]))["scores"].numpy()
    np.testing.assert_allclose(got, model({"history": np.array([long_history[-MAX_LEN:]])}).numpy(), atol=1e-6)


def test_warmup_file_holds_one_request_per_signature_and_batch_size(next_item, ctr):
    _, spec, result, _ = next_item
    logs = warmup.read(result.path)
    assert result.warmup_records == len(logs) == 6
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
        "serving_default", "serving_default", "predict_raw", "predict_raw", "top_k", "top_k"]
    assert all(log.predict_log.request.model_spec.name == "recs" for log in logs)
    raw = tf.make_ndarray(logs[3].predict_log.request.inputs["history"])
    assert raw.shape == (4, MAX_LEN) and raw.min() >= 1 and raw.max() < NUM_ITEMS + 1
    assert tf.make_ndarray(logs[5].predict_log.request.inputs["exclude_seen"]).tolist() == [True] * 4
    ctr_logs = warmup.read(ctr[2].path)
    assert [log.WhichOneof("log_type") for log in ctr_logs] == ["predict_log", "predict_log", "classify_log"]
    assert len(ctr_logs[2].classify_log.request.input.example_list.examples) == 1


def test_export_is_atomic_and_versions_are_immutable(next_item, tmp_path):
    model, spec, _, _ = next_item
    base = tmp_path / "recs"
    first = export_model(model, base, spec, verify_export=False)
    second = export_model(model, base, spec, verify_export=False)
    assert (first.version, second.version) == (1, 2)
    assert sorted(os.listdir(base)) == ["1", "2"]  # no staging directory left behind
    assert layout.complete_versions(base) == [1, 2]
    with pytest.raises(FileExistsError, match="version 2 already exists"):
        export_model(model, base, spec, version=2)
    # A model that does not fit the spec fails before anything is published.
    wrong = ServingSpec("next_item", (SequenceFeature("history", max_len=MAX_LEN, vocab_size=NUM_ITEMS + 1),),
                        top_k=NUM_ITEMS + 1)
    with pytest.raises(ValueError, match="top_k=31 but the model scores only 30 items"):
        export_model(model, base, wrong)
    assert sorted(os.listdir(base)) == ["1", "2"]


def test_layout_skips_incomplete_versions_and_push_copy_is_atomic(next_item, tmp_path):
    base = tmp_path / "pushed"
    (base / "5" / "variables").mkdir(parents=True)  # a pusher still copying: no saved_model.pb yet
    (base / "notes").mkdir()
    assert layout.versions(base) == [5] and layout.complete_versions(base) == []
    assert layout.push_copy(next_item[2].path, base, 6) == str(base / "6")
    assert layout.complete_versions(base) == [6] and layout.next_version(base) == 7
    assert sorted(p for p in os.listdir(base) if p.startswith(layout.STAGING_PREFIX)) == []
    with pytest.raises(FileExistsError):
        layout.push_copy(next_item[2].path, base, 6)


def test_set_method_names_rejects_unknown_signatures(next_item):
    with pytest.raises(ValueError, match="has no signature 'classify'; signatures are"):
        saved_model_proto.set_method_names(next_item[2].path, {"classify": CLASSIFY_METHOD})


def test_serving_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match=r"SequenceFeature\('h'\): `max_len` must be an integer >= 1, got 0"):
        SequenceFeature("h", max_len=0)
    with pytest.raises(ValueError, match="features share the name"):
        ServingSpec("ctr", (ScalarFeature("a"), ScalarFeature("a", example_key="b")))
    with pytest.raises(ValueError, match="reserved signature inputs"):
        ServingSpec("ctr", (ScalarFeature("examples"),))
    with pytest.raises(ValueError, match="`history_feature` 'history' must name a SequenceFeature"):
        ServingSpec("next_item", (ScalarFeature("history"),))
    with pytest.raises(ValueError, match="`task` must be one of"):
        ServingSpec("ranking", (ScalarFeature("a"),))
