"""Serving failure paths and real CTR models, on the local model server queried over gRPC.

The server runs in this process (:class:`tfmoe.serving.model_server.LocalModelServer`, port 0), so a
test can make a request fail inside the server (the ``INTERNAL`` answer) and no second TensorFlow
process has to start. It serves a real :class:`~tfmoe.models.ctr.DIN` and a real
:class:`~tfmoe.models.ctr.MoSDIN` (with categories), exported with ``export_model`` and no
hand-written spec; every answer is compared with the in-memory model. A corrupt version pushed
beside a good one must fail to load, say so in ``GetModelStatus``, and leave the good one serving.
"""

import os
import shutil

import grpc
import keras
import numpy as np
import pytest
from test_ctr_models import N_CATS, N_ITEMS, random_features
from test_serving_server import _states, _wait_for, assert_serving_error

from tfmoe.models import registry
from tfmoe.serving.client import ServingClient
from tfmoe.serving.config import ModelEntry
from tfmoe.serving.export import export_model
from tfmoe.serving.model_server import LocalModelServer
from tfmoe.serving.servable import Servable

pytestmark = pytest.mark.e2e

L = 12
CTR_MODELS = {
    "din": {},
    "mos_din": {"session_length": 3, "num_sessions": 4, "num_themes": 3, "sessions_per_theme": 2, "short_window": 4,
                "router": "softmax"},
}
LENGTHS = [1, 2, 5, 9, 12, 12]  # the served spec needs at least one real item per row


def build(name, seed):
    keras.utils.set_random_seed(seed)
    return registry.build_model(name, num_items=N_ITEMS, max_len=L, num_categories=N_CATS, embedding_dim=8,
                                category_dim=4, mlp_units=[8], **CTR_MODELS[name])


def raw_inputs(seed=0):
    """The predict_raw inputs of a tfmoe CTR model with categories (int64, left padded to ``L``)."""
    x = random_features(lengths=LENGTHS, seed=seed)
    keys = ("history", "history_categories", "target_item", "target_category")
    return {k: x[k].astype(np.int64) for k in keys}


def examples(inputs):
    """The same rows as ``tf.Example`` feature dicts (whole, unpadded sequences)."""
    real = inputs["history"] != 0
    return [{"items": h[m].tolist(), "categories": c[m].tolist(), "target_item": int(t), "target_category": int(tc)}
            for h, c, m, t, tc in zip(inputs["history"], inputs["history_categories"], real, inputs["target_item"],
                                      inputs["target_category"])]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("failures"))
    models = {(name, 1): build(name, seed) for seed, name in enumerate(CTR_MODELS)}
    models[("din", 2)] = build("din", 7)  # exported later, beside a corrupt version 3
    for (name, version), model in models.items():
        if version == 1:
            export_model(model, os.path.join(root, name), version=1, model_name=name)
    server = LocalModelServer([ModelEntry(name, os.path.join(root, name)) for name in CTR_MODELS], port=0,
                              poll_seconds=0.3).start()
    client = ServingClient(server.target, timeout=30.0)
    try:
        for name in CTR_MODELS:
            client.wait_until_available(name, version=1, timeout=60)
        yield server, client, root, models
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("name", list(CTR_MODELS))
def test_real_ctr_models_serve_their_in_memory_probabilities(served, name):
    _, client, _, models = served
    model, inputs = models[(name, 1)], raw_inputs()
    want = model.probabilities(inputs).numpy()
    assert want.std() > 1e-3  # the rows really differ
    raw = client.predict(name, inputs, signature="predict_raw", version=1)
    assert raw.version == 1
    np.testing.assert_allclose(raw.outputs["probability"][:, 0], want, rtol=1e-5, atol=1e-6)
    rows = examples(inputs)
    from_examples = client.predict_examples(name, rows, version=1).outputs["probability"]
    np.testing.assert_allclose(from_examples[:, 0], want, rtol=1e-5, atol=1e-6)
    classified = client.classify(name, rows, version=1)
    np.testing.assert_allclose(classified.scores, np.stack([1 - want, want], axis=1), rtol=1e-5, atol=1e-6)


def test_a_request_that_breaks_inside_the_server_is_internal_and_the_next_one_works(served, monkeypatch):
    _, client, _, models = served
    inputs = raw_inputs(seed=1)
    original = Servable._feed

    def broken(self, *args, **kwargs):  # a server bug: anything but a ServingError
        raise KeyError("lost the feed")

    monkeypatch.setattr(Servable, "_feed", broken)
    error = assert_serving_error(lambda: client.predict("din", inputs, signature="predict_raw"),
                                 grpc.StatusCode.INTERNAL, "KeyError: 'lost the feed'")
    assert error.method == "Predict"
    monkeypatch.setattr(Servable, "_feed", original)
    answer = client.predict("din", inputs, signature="predict_raw").outputs["probability"][:, 0]
    np.testing.assert_allclose(answer, models[("din", 1)].probabilities(inputs).numpy(), rtol=1e-5, atol=1e-6)


def test_a_corrupt_version_fails_to_load_and_the_good_one_keeps_serving(served, tmp_path):
    _, client, root, models = served
    inputs = raw_inputs(seed=2)
    base = os.path.join(root, "din")
    # a pusher copies version 2 with a corrupt saved_model.pb (the file is written last: the version is complete)
    good = export_model(models[("din", 2)], tmp_path / "staging", version=2, model_name="din").path
    target = os.path.join(base, "2")
    shutil.copytree(good, target, ignore=shutil.ignore_patterns("saved_model.pb"))
    with open(os.path.join(target, "saved_model.pb"), "wb") as f:
        f.write(b"\x08\x96\x01 this is not a SavedModel protobuf \xff\xfe")

    def failed():
        status = {s.version: s for s in client.status("din")}
        return 2 in status and status[2].state == "END" and status[2].error_code != "OK"

    _wait_for(failed, timeout=60, what="version 2 to fail loading")
    status = {s.version: s for s in client.status("din")}
    assert status[1].state == "AVAILABLE" and status[1].error_code == "OK"
    assert status[2].error_code == "UNKNOWN" and status[2].error_message, status[2]
    assert "saved_model.pb" in status[2].error_message or "pars" in status[2].error_message.lower(), status[2]
    [only] = client.status("din", version=2)
    assert (only.state, only.error_code) == ("END", "UNKNOWN")
    # the latest-version policy wants version 2, but version 1 keeps answering until a newer one loads
    for _ in range(3):
        answer = client.predict("din", inputs, signature="predict_raw")
        assert answer.version == 1
        np.testing.assert_allclose(answer.outputs["probability"][:, 0],
                                   models[("din", 1)].probabilities(inputs).numpy(), rtol=1e-5, atol=1e-6)
    assert_serving_error(lambda: client.predict("din", inputs, signature="predict_raw", version=2),
                         grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(din, 2)")
    # a fixed saved_model.pb is retried: version 2 loads, serves, and version 1 is unloaded
    shutil.copy(os.path.join(good, "saved_model.pb"), os.path.join(target, "saved_model.pb"))
    os.utime(os.path.join(target, "saved_model.pb"))
    _wait_for(lambda: _states(client, "din") == {1: "END", 2: "AVAILABLE"}, timeout=60,
              what="version 2 AVAILABLE and version 1 unloaded")
    answer = client.predict("din", inputs, signature="predict_raw")
    assert answer.version == 2
    np.testing.assert_allclose(answer.outputs["probability"][:, 0], models[("din", 2)].probabilities(inputs).numpy(),
                               rtol=1e-5, atol=1e-6)
