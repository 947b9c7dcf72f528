"""Real tfmoe models end to end: train a few steps -> export (no hand-written spec) -> serve -> gRPC query.

SASRec, FAME and HyMoERec are trained briefly on random sequences; SASRec is saved as a trainer
output directory (``model.keras``) and exported with ``tfmoe export``, the others with
``export_model(model, base_path)``. A small Keras model with the CTR contract of
:mod:`tfmoe.models.ctr` (``call`` -> logits, ``probabilities``, history + session ids + target
inputs) stands in for a tfmoe CTR model. One server (the real ``tensorflow_model_server`` when on
PATH, else the local one) serves all four; every answer is compared with the in-memory model
(``last_scores`` / ``probabilities``, top-k computed in numpy), every error with the status code
the real server uses (message fragments are ours, so checked against the local server only).
"""

import os

import grpc
import keras
import numpy as np
import pytest

from tfmoe import cli
from tfmoe.models import FAME, HyMoERec, SASRec
from tfmoe.serving import config, launcher, requests
from tfmoe.serving.client import ServingClient
from tfmoe.serving.errors import ServingError
from tfmoe.serving.export import export_model
from tfmoe.serving.features import ScalarFeature, SequenceFeature
from tfmoe.serving.model_specs import spec_for_model

NUM_ITEMS, MAX_LEN, NUM_CATEGORIES, TOP_K, MAX_MESSAGE = 40, 8, 6, 5, 1 << 20
NEXT_ITEM = {"sasrec": SASRec, "fame": FAME, "hymoerec": HyMoERec}
HISTORIES = [[3, 4, 5], [7], list(range(1, 13)), [40, 39, 38, 37, 36, 35, 34, 33], [9, 9, 2]]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@keras.saving.register_keras_serializable(package="tfmoe_tests")
class ContractCTR(keras.Model):
    """The CTR model contract: ``call(features)`` -> logits [B], ``probabilities(features)`` -> [B]."""

    feature_names = ("history", "history_session_ids", "target_item", "target_category")

    def __init__(self, num_items, max_len, num_categories, dim=8, **kwargs):
        super().__init__(**kwargs)
        self.num_items, self.max_len, self.num_categories = num_items, max_len, num_categories
        self.items = keras.layers.Embedding(num_items + 1, dim)
        self.sessions = keras.layers.Embedding(max_len + 1, dim)  # ids -1 (padding) .. max_len - 1
        self.categories = keras.layers.Embedding(num_categories + 1, dim)
        self.mix = keras.layers.Dense(dim, activation="tanh")  # over the flattened, position-aware history
        self.head = keras.layers.Dense(1)

    def call(self, features, training=None):
        history = features["history"]
        mask = keras.ops.expand_dims(keras.ops.cast(keras.ops.not_equal(history, 0), "float32"), -1)
        sequence = (self.items(history) + self.sessions(features["history_session_ids"] + 1)) * mask
        pooled = self.mix(keras.ops.reshape(sequence, (-1, self.max_len * sequence.shape[-1])))
        joined = keras.ops.concatenate([pooled, self.items(features["target_item"]),
                                        self.categories(features["target_category"])], axis=-1)
        return self.head(joined)[:, 0]

    def probabilities(self, features):
        return keras.ops.sigmoid(self(features, training=False))


def random_sequences(n, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, MAX_LEN + 2, size=n)
    return requests.pad_histories([rng.integers(1, NUM_ITEMS + 1, size=k) for k in lengths], MAX_LEN + 1)


def train_next_item(cls, seed):
    keras.utils.set_random_seed(seed)
    model = cls(num_items=NUM_ITEMS, max_len=MAX_LEN, hidden_dim=16, num_heads=2, dropout=0.1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), run_eagerly=True)  # 4 tiny steps: tracing would dominate
    sequences = random_sequences(64, seed)
    model.fit({"history": sequences[:, :-1]}, np.where(sequences[:, :-1] > 0, sequences[:, 1:], 0), batch_size=16,
              epochs=1, verbose=0)
    return model


def ctr_inputs(histories=HISTORIES, sessions=None):
    padded = requests.pad_histories(histories, MAX_LEN)
    if sessions is None:  # one session per 3 items, renumbered from the oldest kept one (training convention)
        sessions = [[i // 3 for i in range(len(h))] for h in histories]
    kept = [np.asarray(s[-MAX_LEN:]) - (s[-MAX_LEN:][0] if len(s) else 0) for s in sessions]
    session_ids = np.full((len(histories), MAX_LEN), -1, np.int64)
    for row, s in enumerate(kept):
        session_ids[row, MAX_LEN - len(s):] = s
    targets = np.arange(len(histories)) % NUM_ITEMS + 1
    return {"history": padded, "history_session_ids": session_ids, "target_item": targets.astype(np.int64),
            "target_category": (targets % NUM_CATEGORIES + 1).astype(np.int64)}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("models"))
    names = [*NEXT_ITEM, "ctr"]
    files = config.write_server_configs(root, [config.ModelEntry(n) for n in names], batching=None, monitoring=False)
    server = launcher.spawn_server(
        files.model_config_file, poll_seconds=1,
        extra_flags=[f"--grpc_channel_arguments=grpc.max_receive_message_length={MAX_MESSAGE}"])
    client = None
    try:  # train and export while the server process starts; it loads each version at its next poll
        models = {name: train_next_item(cls, seed) for seed, (name, cls) in enumerate(NEXT_ITEM.items())}
        run_dir = os.path.join(root, "runs", "sasrec")  # a trainer output directory: <dir>/model.keras
        os.makedirs(run_dir)
        models["sasrec"].save(os.path.join(run_dir, "model.keras"))
        assert cli.main(["export", run_dir, "--base-path", os.path.join(root, "sasrec"), "--top-k", str(TOP_K)]) == 0
        for name in ("fame", "hymoerec"):  # the tests compare every signature with the model: skip the reload check
            export_model(models[name], os.path.join(root, name), spec_for_model(models[name], top_k=TOP_K),
                         model_name=name, verify_export=False)
        keras.utils.set_random_seed(7)
        models["ctr"] = ContractCTR(NUM_ITEMS, MAX_LEN, NUM_CATEGORIES)
        models["ctr"](ctr_inputs())
        export_model(models["ctr"], os.path.join(root, "ctr"), model_name="ctr")
        server.wait_until_available(names, timeout=180)
        client = ServingClient(server.target, timeout=30.0)
        yield server, client, models
    finally:
        if client is not None:
            client.close()
        server.stop()


def expect_error(call, code, fragment, local):
    with pytest.raises(ServingError) as err:
        call()
    assert err.value.code == code, err.value
    if local:
        assert fragment in err.value.details, err.value.details
        assert "signature" in err.value.details  # says where


def numpy_top_k(scores, padded, exclude_seen, k):
    scores = scores.copy()
    scores[:, 0] = -np.inf
    if exclude_seen:
        for row, history in enumerate(padded):
            scores[row, history[history > 0]] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


# ---------------------------------------------------------------- specs derived from the models


def test_spec_for_next_item_models_serves_last_scores():
    for cls in NEXT_ITEM.values():
        spec = spec_for_model(cls(num_items=NUM_ITEMS, max_len=MAX_LEN, hidden_dim=8, num_heads=2), top_k=99)
        assert spec.task == "next_item" and spec.model_method == "last_scores"
        assert spec.features == (SequenceFeature("history", MAX_LEN, NUM_ITEMS + 1, "items"),)
        assert spec.top_k == NUM_ITEMS  # capped at the catalogue
        assert spec.signature_names() == ("serving_default", "predict_raw", "top_k")


def test_spec_for_ctr_contract_model_from_its_feature_names():
    spec = spec_for_model(ContractCTR(NUM_ITEMS, MAX_LEN, NUM_CATEGORIES))
    assert (spec.task, spec.model_method, spec.signature_names()) == (
        "ctr", "probabilities", ("serving_default", "predict_raw", "classify"))
    assert spec.features == (
        SequenceFeature("history", MAX_LEN, NUM_ITEMS + 1, "items"),
        SequenceFeature("history_session_ids", MAX_LEN, None, "session_ids", min_len=0, pad_value=-1, rebase=True),
        ScalarFeature("target_item", NUM_ITEMS + 1, "target_item"),
        ScalarFeature("target_category", NUM_CATEGORIES + 1, "target_category"))
    with pytest.raises(ValueError, match="unknown model input 'clicks'"):
        spec_for_model(ContractCTR(NUM_ITEMS, MAX_LEN, NUM_CATEGORIES), features=("history", "clicks"))
    with pytest.raises(ValueError, match="cannot tell the task of Dense"):
        spec_for_model(keras.layers.Dense(3))


def test_tfmoe_export_errors_are_one_readable_line(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path), "--base-path", str(tmp_path / "out")]) == 2
    assert "is a directory without model.keras" in capsys.readouterr().err


# ---------------------------------------------------------------- served equals in-memory


@pytest.mark.parametrize("name", sorted(NEXT_ITEM))
def test_predict_raw_and_examples_equal_last_scores(served, name):
    _, client, models = served
    padded = requests.pad_histories(HISTORIES, MAX_LEN)
    want = models[name].last_scores({"history": padded}).numpy()
    got = client.predict(name, {"history": padded}, signature="predict_raw").outputs["scores"]
    assert got.shape == (len(HISTORIES), NUM_ITEMS + 1) and np.isneginf(got[:, 0]).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # serving_default on tf.Examples: full histories (one longer than max_len), padded in the graph
    examples = client.predict_examples(name, [{"items": h} for h in HISTORIES]).outputs["scores"]
    np.testing.assert_allclose(examples, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(NEXT_ITEM))
def test_top_k_equals_numpy_with_and_without_seen_items(served, name):
    _, client, models = served
    padded = requests.pad_histories(HISTORIES, MAX_LEN)
    scores = models[name].last_scores({"history": padded}).numpy()
    for exclude in (True, False):
        top = client.top_k(name, HISTORIES, exclude_seen=exclude)
        ids, values = numpy_top_k(scores, padded, exclude, TOP_K)
        np.testing.assert_array_equal(top.item_ids, ids)
        np.testing.assert_allclose(top.scores, values, rtol=1e-5, atol=1e-5)
        if exclude:  # only the most recent max_len items count as seen
            assert not any(set(row) & set(h[-MAX_LEN:]) for row, h in zip(top.item_ids.tolist(), HISTORIES))


def test_ctr_predict_examples_and_classify_equal_probabilities(served):
    _, client, models = served
    inputs = ctr_inputs()
    want = models["ctr"].probabilities(inputs).numpy()
    raw = client.predict("ctr", inputs, signature="predict_raw").outputs["probability"]
    np.testing.assert_allclose(raw[:, 0], want, rtol=1e-5, atol=1e-6)
    # tf.Examples carry the user's whole sequence; session ids keep counting from the first session
    # and are renumbered in the graph from the oldest kept one (here, row 2 drops its first sessions).
    examples = [{"items": h, "session_ids": [5 + i // 3 for i in range(len(h))], "target_item": int(t),
                 "target_category": int(c)}
                for h, t, c in zip(HISTORIES, inputs["target_item"], inputs["target_category"])]
    from_examples = client.predict_examples("ctr", examples).outputs["probability"]
    np.testing.assert_allclose(from_examples[:, 0], want, rtol=1e-5, atol=1e-6)
    classified = client.classify("ctr", examples)
    assert classified.labels.tolist() == [["0", "1"]] * len(HISTORIES)
    np.testing.assert_allclose(classified.scores, np.stack([1 - want, want], axis=1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad requests


def good_history():
    return requests.pad_histories(HISTORIES[:2], MAX_LEN)


BAD_REQUESTS = {
    "wrong dtype": (lambda: {"history": good_history().astype(np.int32)}, "input 'history' expects int64 but int32"),
    "wrong shape": (lambda: {"history": good_history()[:, None, :]}, f"expects shape [?,{MAX_LEN}] but shape [2,1,"),
    "history longer than max_len": (lambda: {"history": np.ones((1, MAX_LEN + 1), np.int64)},
                                    f"expects shape [?,{MAX_LEN}] but shape [1,{MAX_LEN + 1}] was sent"),
    "unknown item id": (lambda: {"history": requests.pad_histories([[1, NUM_ITEMS + 1]], MAX_LEN)},
                        f"ids must be in [0, {NUM_ITEMS + 1}); out-of-range ids:] [{NUM_ITEMS + 1}]"),
    "empty history": (lambda: {"history": requests.pad_histories([[4], []], MAX_LEN)},
                      "at least 1 non-padding id(s) (empty history); rows:] [1]"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_a_clear_error_and_the_server_keeps_serving(served, case):
    server, client, models = served
    make, fragment = BAD_REQUESTS[case]
    expect_error(lambda: client.predict("sasrec", make(), signature="predict_raw"), INVALID, fragment,
                 server.kind == "local")
    expect_error(lambda: client.top_k("fame", [[]], exclude_seen=True), INVALID, "empty history",
                 server.kind == "local")
    good = client.predict("sasrec", {"history": good_history()}, signature="predict_raw").outputs["scores"]
    np.testing.assert_allclose(good, models["sasrec"].last_scores({"history": good_history()}).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_oversized_message_and_unknown_model_then_the_server_keeps_serving(served):
    server, client, _ = served
    rows = MAX_MESSAGE // (8 * MAX_LEN) + 100  # > 1 MiB of int64 ids
    with pytest.raises(ServingError) as err:
        client.predict("sasrec", {"history": np.ones((rows, MAX_LEN), np.int64)}, signature="predict_raw")
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(ServingError) as err:
        client.predict("nope", {"history": good_history()}, signature="predict_raw")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ServingError) as err:
        client.predict("sasrec", {"history": good_history()}, signature="scores")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert client.top_k("hymoerec", HISTORIES).item_ids.shape == (len(HISTORIES), TOP_K)
