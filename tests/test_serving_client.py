"""The gRPC client library and ``tfmoe query``: requests, deadlines, bounded retries, limits, batches, errors.

The ``server`` fixture is the real ``tensorflow_model_server`` (subprocess) when it is on PATH;
otherwise the local model server runs *in this process* on a free loopback port: the client is
what is under test here (the server's behaviour, as a subprocess, is covered by
``test_serving_server.py``), and this saves a second TensorFlow start-up. Answers are compared
with the in-memory Keras models.
"""

import argparse
import shutil
import threading
import time

import grpc
import numpy as np
import pytest

from tfmoe.commands import query
from tfmoe.serving import config, demo_models, launcher, requests
from tfmoe.serving.client import ServingClient
from tfmoe.serving.errors import ServingError
from tfmoe.serving.export import export_model
from tfmoe.serving.model_server import LocalModelServer

NUM_ITEMS, MAX_LEN, TOP_K = 40, 6, 5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("client-models")
    recs = demo_models.next_item_model(NUM_ITEMS, MAX_LEN, seed=11)
    ctr = demo_models.ctr_model(NUM_ITEMS, MAX_LEN, seed=12)
    export_model(recs, root / "recs", demo_models.next_item_spec(NUM_ITEMS, MAX_LEN, top_k=TOP_K), model_name="recs")
    export_model(ctr, root / "ctr", demo_models.ctr_spec(NUM_ITEMS, MAX_LEN), model_name="ctr")
    entries = [config.ModelEntry("recs", str(root / "recs")), config.ModelEntry("ctr", str(root / "ctr"))]
    return root, entries, {"recs": recs, "ctr": ctr}


@pytest.fixture(scope="module")
def server(exported):
    root, entries, _ = exported
    if shutil.which(launcher.REAL_BINARY):
        files = config.write_server_configs(root, entries, batching=None, monitoring=False)
        process = launcher.start_server(files.model_config_file, models=["recs", "ctr"])
        yield process.target
        process.stop()
    else:
        local = LocalModelServer(entries, port=0, poll_seconds=0).start()
        yield local.target
        local.stop()


@pytest.fixture
def client(server):
    with ServingClient(server, timeout=30.0) as c:
        yield c


def numpy_top_k(model, histories, exclude):
    x = requests.pad_histories(histories, MAX_LEN)
    scores = model({"history": x}).numpy()
    ids = []
    for row in range(len(x)):
        banned = {0} | (set(x[row].tolist()) if exclude[row] else set())
        ids.append([i for i in np.argsort(-scores[row], kind="stable") if i not in banned][:TOP_K])
    return np.array(ids)


def test_request_building():
    assert requests.pad_histories([[5, 6, 7], [9], []], max_len=2).tolist() == [[6, 7], [0, 9], [0, 0]]
    with pytest.raises(ValueError, match="`max_len` must be a positive integer, got 0"):
        requests.pad_histories([[1]], 0)
    with pytest.raises(ValueError, match="history 0 must be a flat list of ids"):
        requests.pad_histories([[[1, 2]]], 3)
    request = requests.predict_request("recs", {"history": [[1, 2]]}, signature="top_k", label="canary")
    assert (request.model_spec.version_label, request.inputs["history"].dtype) == ("canary", 9)  # 9 = DT_INT64
    assert [d.size for d in request.inputs["history"].tensor_shape.dim] == [1, 2]
    with pytest.raises(ValueError, match=r"give a version \(3\) or a version label \('canary'\), not both"):
        requests.predict_request("recs", {}, version=3, label="canary")
    example = requests.to_example({"items": [3, 4], "target_item": 7, "price": 1.5})
    assert list(example.features.feature["target_item"].int64_list.value) == [7]
    assert list(example.features.feature["price"].float_list.value) == [1.5]
    classify = requests.classify_request("ctr", [{"items": [1]}, example.SerializeToString()])
    assert len(classify.input.example_list.examples) == 2


def test_retries_on_unavailable_are_bounded_with_backoff():
    port = launcher.free_port()
    with ServingClient(f"127.0.0.1:{port}", timeout=2.0, retries=2, backoff=0.2, max_backoff=0.3) as c:
        started = time.monotonic()
        with pytest.raises(ServingError) as err:
            c.status("recs")
        elapsed = time.monotonic() - started
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.attempts == 3
    assert 0.5 * (0.2 + 0.3) <= elapsed < 10.0  # two sleeps with jitter in [50%, 100%] of 0.2 s and 0.3 s
    assert str(err.value).endswith(f"(GetModelStatus on 127.0.0.1:{port}, 3 attempts)")


def test_retry_succeeds_once_the_server_comes_up(exported):
    _, entries, models = exported
    port = launcher.free_port()
    late = LocalModelServer(entries[:1], port=port, poll_seconds=0)
    starter = threading.Timer(1.0, late.start)
    starter.start()
    try:
        with ServingClient(f"127.0.0.1:{port}", timeout=5.0, retries=10, backoff=0.2, max_backoff=1.0) as c:
            started = time.monotonic()
            top = c.top_k("recs", [[1, 2, 3]], max_len=MAX_LEN)
            assert time.monotonic() - started >= 0.9
        assert top.item_ids.tolist() == numpy_top_k(models["recs"], [[1, 2, 3]], [True]).tolist()
    finally:
        starter.join()
        late.stop()


def test_non_retryable_errors_fail_at_once(client):
    with pytest.raises(ServingError) as err:
        client.predict("nope", {"history": [[1]]})
    assert (err.value.code, err.value.attempts) == (grpc.StatusCode.NOT_FOUND, 1)
    assert err.value.method == "Predict" and "Latest(nope)" in err.value.details


def test_deadline_exceeded_then_the_next_call_works(client, exported):
    # gRPC keeps deadlines to about a millisecond and a warm one-row Predict can answer within that: 2,000 rows
    # take far longer than the 0.1 ms deadline
    with pytest.raises(ServingError) as err:
        client.predict("recs", {"history": requests.pad_histories([[1, 2]] * 2000, MAX_LEN)},
                       signature="predict_raw", timeout=1e-4)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and err.value.attempts == 1
    assert client.top_k("recs", [[1, 2]]).item_ids.shape == (1, TOP_K)


def test_client_message_limits(server):
    with ServingClient(server, timeout=30.0, max_message_bytes=4096) as small:
        with pytest.raises(ServingError) as err:  # the request is over the limit: refused before sending
            small.predict("recs", {"history": np.ones((100, MAX_LEN), np.int64)}, signature="predict_raw")
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(ServingError) as err:  # 60 rows x 41 float32 scores: the response is over the limit
            small.predict("recs", {"history": np.ones((60, MAX_LEN), np.int64)}, signature="predict_raw")
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert small.top_k("recs", [[1]], max_len=MAX_LEN).item_ids.shape == (1, TOP_K)


def test_top_k_batches_many_users_in_one_request(client, exported):
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, NUM_ITEMS + 1, size=rng.integers(1, 12)).tolist() for _ in range(50)]
    exclude = (np.arange(50) % 3 != 0).tolist()
    top = client.top_k("recs", histories, exclude_seen=exclude)  # max_len read from GetModelMetadata
    assert top.item_ids.shape == top.scores.shape == (50, TOP_K) and top.version == 1
    np.testing.assert_array_equal(top.item_ids, numpy_top_k(exported[2]["recs"], histories, exclude))
    assert client.input_shape("recs", "top_k", "history") == (-1, MAX_LEN)


def test_classify_predict_metadata_and_status(client, exported):
    ctr = exported[2]["ctr"]
    histories, targets = [[1, 2, 3], [7]], np.array([5, 9])
    result = client.classify("ctr", [{"items": h, "target_item": int(t)} for h, t in zip(histories, targets)])
    p = ctr({"history": requests.pad_histories(histories, MAX_LEN), "target_item": targets}).numpy()[:, 0]
    np.testing.assert_allclose(result.scores[:, 1], p, rtol=1e-5, atol=1e-6)
    assert result.labels.tolist() == [["0", "1"], ["0", "1"]]
    meta = client.metadata("ctr")
    assert meta.signatures["classify"].method_name == "tensorflow/serving/classify"
    assert [(s.version, s.state, s.error_code) for s in client.status("recs")] == [(1, "AVAILABLE", "OK")]
    assert client.wait_until_available("recs").version == 1
    with pytest.raises(ServingError) as err:
        client.wait_until_available("nope", timeout=0.5)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "model 'nope' version any not AVAILABLE" in str(
        err.value)


def run_query(argv, capsys):
    parser = argparse.ArgumentParser(prog="tfmoe")
    query.register(parser.add_subparsers())
    args = parser.parse_args(["query", *argv])
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tfmoe_query_top_k_from_arguments_and_file(server, exported, tmp_path, capsys):
    users_file = tmp_path / "users.txt"
    users_file.write_text("4 5 6\n[8, 9]\n")
    code, out, _ = run_query(["top-k", "--target", server, "--model", "recs", "--history", "1,2,3",
                              "--file", str(users_file)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "model recs version 1"
    want = numpy_top_k(exported[2]["recs"], [[1, 2, 3], [4, 5, 6], [8, 9]], [True] * 3)
    for row, line in enumerate(lines[1:]):
        assert [int(part.split(" (")[0]) for part in line.split(": ", 1)[1].split(", ")] == want[row].tolist()
    assert lines[2].startswith("user 1 (history 4 5 6): ")


def test_tfmoe_query_status_metadata_predict_classify(server, exported, capsys):
    models = exported[2]
    code, out, _ = run_query(["status", "--target", server, "--model", "recs"], capsys)
    assert (code, out) == (0, "recs  version 1  AVAILABLE\n")
    code, out, _ = run_query(["metadata", "--target", server, "--model", "recs"], capsys)
    assert code == 0 and "  top_k (tensorflow/serving/predict)" in out
    assert "inputs:  exclude_seen: bool[?], history: int64[?,6]" in out
    code, out, _ = run_query(["predict", "--target", server, "--model", "recs", "--history", "1,2", "--show", "3"],
                             capsys)
    assert code == 0 and out.startswith("model recs version 1 signature serving_default\nuser 0 (history 1 2) scores: ")
    # the 3 best items with their scores, as the in-memory model scores them
    scores = models["recs"]({"history": requests.pad_histories([[1, 2]], MAX_LEN)}).numpy()[0]
    best = np.argsort(-scores, kind="stable")[:3]
    assert out.splitlines()[1].split(": ", 1)[1] == ", ".join(f"{i} ({scores[i]:.4f})" for i in best)
    code, out, _ = run_query(["classify", "--target", server, "--model", "ctr", "--history", "1,2", "--target-item",
                              "7"], capsys)
    p = float(models["ctr"]({"history": requests.pad_histories([[1, 2]], MAX_LEN),
                             "target_item": np.array([7])}).numpy().reshape(-1)[0])
    assert code == 0 and out.splitlines() == ["model ctr version 1", f"row 0 (1 2): 0: {1 - p:.4f}, 1: {p:.4f}"]


def test_tfmoe_query_reports_errors_readably(server, capsys):
    code, _, err = run_query(["top-k", "--target", server, "--model", "recs", "--history", "1,99"], capsys)
    assert code == 1 and err.startswith("tfmoe query: INVALID_ARGUMENT: ") and "ids must be in [0, 41)" in err
    code, _, err = run_query(["status", "--target", server, "--model", "nope"], capsys)
    assert code == 1 and "NOT_FOUND: Could not find any versions of model nope" in err
    code, _, err = run_query(["classify", "--target", server, "--model", "ctr", "--history", "1",
                              "--history", "2", "--target-item", "3"], capsys)
    assert code == 2 and "got 1 --target-item for 2 users" in err
