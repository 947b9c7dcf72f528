"""Export -> serve -> gRPC query, against the real ``tensorflow_model_server`` when it is on PATH, else the local one.

The ``served`` fixture spawns the server process (``tfmoe.serving.launcher``: the real binary if
``shutil.which("tensorflow_model_server")``, else ``python -m tfmoe.serving.model_server``) on a free
loopback port with the same flags either way, exports the models while it starts, and waits
until they are AVAILABLE. Every answer is compared with the in-memory Keras model; every error
with the status code the real server uses (message fragments are checked for the local server,
whose messages are ours). The config-file tests parse the generated files back with the protos.
"""

import os
import shutil
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import classification_pb2, regression_pb2
from tensorflow_serving.config import model_server_config_pb2

from tfmoe.commands import serve
from tfmoe.serving import config, demo_models, launcher, requests, server_cli
from tfmoe.serving.client import ServingClient
from tfmoe.serving.errors import ServingError
from tfmoe.serving.export import export_model
from tfmoe.serving.server_protos import batching_parameters_class, monitoring_config_class

NUM_ITEMS, MAX_LEN, TOP_K, MAX_BATCH = 40, 6, 5, 16
MAX_MESSAGE = 1 << 20
HISTORIES = [[3, 4, 5], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [40, 39, 38, 37, 36, 35]]
TARGETS = np.array([4, 9, 1, 40])
INVALID, NOT_FOUND, PRECONDITION = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                    grpc.StatusCode.FAILED_PRECONDITION)


@dataclass
class Served:
    server: launcher.ServerProcess
    client: ServingClient
    root: str
    models: dict  # (model name, version) -> in-memory Keras model

    @property
    def local(self) -> bool:
        return self.server.kind == "local"


def padded(histories=HISTORIES):
    return requests.pad_histories(histories, MAX_LEN)


def ctr_examples(histories=HISTORIES, targets=TARGETS):
    return [{"items": h, "target_item": int(t)} for h, t in zip(histories, targets)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("served"))
    entries = [
        config.ModelEntry("recs"),
        config.ModelEntry("ctr", version_policy="all", version_labels={"stable": 1, "canary": 2}),
        config.ModelEntry("ctr_pinned", base_path=os.path.join(root, "ctr"), version_policy="specific",
                          versions=(1,)),
    ]
    files = config.write_server_configs(root, entries, batching=config.BatchingConfig(max_batch_size=MAX_BATCH),
                                        monitoring=False)
    server = launcher.spawn_server(
        files.model_config_file, files.batching_parameters_file, poll_seconds=1,
        extra_flags=[f"--grpc_channel_arguments=grpc.max_receive_message_length={MAX_MESSAGE}",
                     "--max_num_load_retries=1000", "--load_retry_interval_micros=500000"])
    client = None
    try:  # export while the server process starts; it loads the versions at its next poll
        models = {("recs", 1): demo_models.next_item_model(NUM_ITEMS, MAX_LEN, seed=1),
                  ("ctr", 1): demo_models.ctr_model(NUM_ITEMS, MAX_LEN, seed=2),
                  ("ctr", 2): demo_models.ctr_model(NUM_ITEMS, MAX_LEN, seed=3)}
        next_item_spec = demo_models.next_item_spec(NUM_ITEMS, MAX_LEN, top_k=TOP_K)
        export_model(models[("recs", 1)], os.path.join(root, "recs"), next_item_spec, version=1, model_name="recs")
        for version in (1, 2):
            export_model(models[("ctr", version)], os.path.join(root, "ctr"), demo_models.ctr_spec(NUM_ITEMS, MAX_LEN),
                         version=version, model_name="ctr")
        server.wait_until_available(["recs", "ctr", "ctr_pinned"], timeout=300)
        client = ServingClient(server.target, timeout=30.0)
        client.wait_until_available("ctr", version=2, timeout=60)
        yield Served(server, client, root, models)
    finally:
        if client is not None:
            client.close()
        code = server.stop()
        if server.kind == "local":
            assert code == 0, f"the local server did not shut down cleanly:\n{server.log_tail()}"


def assert_serving_error(call, code, fragment=None, local=True):
    with pytest.raises(ServingError) as err:
        call()
    assert err.value.code == code, err.value
    if fragment is not None and local:
        assert fragment in err.value.details, err.value.details
    return err.value


# ---------------------------------------------------------------- config files and commands


def test_models_config_parses_back_with_the_real_proto(tmp_path):
    entries = [config.ModelEntry("recs", version_labels={"stable": 3, "canary": 4}),
               config.ModelEntry("ctr", "/data/ctr", version_policy="specific", versions=(2, 5)),
               config.ModelEntry("all_of_them", version_policy="all")]
    files = config.write_server_configs(tmp_path, entries, monitoring=False)
    proto = text_format.Parse(open(files.model_config_file).read(), model_server_config_pb2.ModelServerConfig())
    recs, ctr, every = proto.model_config_list.config
    assert (recs.name, recs.base_path, recs.model_platform) == ("recs", str(tmp_path / "recs"), "tensorflow")
    assert recs.model_version_policy.latest.num_versions == 1
    assert dict(recs.version_labels) == {"stable": 3, "canary": 4}
    assert list(ctr.model_version_policy.specific.versions) == [2, 5] and ctr.base_path == "/data/ctr"
    assert every.model_version_policy.WhichOneof("policy_choice") == "all"
    assert config.read_model_config(files.model_config_file) == [
        config.ModelEntry("recs", str(tmp_path / "recs"), version_labels={"stable": 3, "canary": 4}), entries[1],
        config.ModelEntry("all_of_them", str(tmp_path / "all_of_them"), version_policy="all")]


def test_batching_and_monitoring_configs_parse_back(tmp_path):
    batching = config.BatchingConfig(max_batch_size=64, batch_timeout_micros=2000, num_batch_threads=2,
                                     allowed_batch_sizes=(8, 32, 64))
    files = config.write_server_configs(tmp_path, [config.ModelEntry("recs")], batching=batching)
    text = open(files.batching_parameters_file).read()
    assert "max_batch_size {\n  value: 64\n}" in text
    proto = text_format.Parse(text, batching_parameters_class()())
    assert (proto.max_batch_size.value, proto.batch_timeout_micros.value, proto.num_batch_threads.value,
            list(proto.allowed_batch_sizes), proto.pad_variable_length_inputs) == (64, 2000, 2, [8, 32, 64], False)
    assert config.parse_batching_config(text) == batching
    monitoring = text_format.Parse(open(files.monitoring_config_file).read(), monitoring_config_class()())
    assert monitoring.prometheus_config.enable and monitoring.prometheus_config.path == config.PROMETHEUS_PATH
    with pytest.raises(ValueError, match="must increase and end with max_batch_size=64"):
        config.BatchingConfig(max_batch_size=64, allowed_batch_sizes=(8, 32))
    with pytest.raises(ValueError, match="not a BatchingParameters text proto"):
        config.parse_batching_config("max_batch_sise { value: 3 }")


def test_server_and_docker_command_lines_are_exact(tmp_path):
    models = [config.ModelEntry("recs", version_labels={"stable": 1})]
    files = config.write_server_configs(tmp_path, models)
    assert config.server_command(files) == [
        "tensorflow_model_server", "--port=8500", "--rest_api_port=8501",
        f"--model_config_file={tmp_path}/models.config", "--model_config_file_poll_wait_seconds=60",
        "--file_system_poll_wait_seconds=1", "--enable_model_warmup=true", "--enable_batching=true",
        f"--batching_parameters_file={tmp_path}/batching.config",
        f"--monitoring_config_file={tmp_path}/monitoring.config"]
    docker_files = config.write_server_configs(tmp_path, models, mount_point="/models")
    assert 'base_path: "/models/recs"' in open(tmp_path / "models.config").read()
    assert config.docker_command(docker_files, grpc_port=9000) == [
        "docker", "run", "--rm", "--init", "-p", "9000:8500", "-p", "8501:8501",
        "--mount", f"type=bind,source={tmp_path},target=/models,readonly", "tensorflow/serving:2.16.1",
        "--model_config_file=/models/models.config", "--model_config_file_poll_wait_seconds=60",
        "--file_system_poll_wait_seconds=1", "--enable_model_warmup=true", "--enable_batching=true",
        "--batching_parameters_file=/models/batching.config", "--monitoring_config_file=/models/monitoring.config"]
    with pytest.raises(ValueError, match="lies outside"):
        config.write_server_configs(tmp_path, [config.ModelEntry("x", "/elsewhere/x")], mount_point="/models")
    with pytest.raises(ValueError, match="use docker_command"):
        config.server_command(docker_files)


def test_local_server_flags_parse_like_the_real_ones():
    args = server_cli.build_parser().parse_args(
        ["--port=9001", "--model_config_file=m.config", "--enable_batching", "--batching_parameters_file=b.config",
         "--grpc_channel_arguments=grpc.max_receive_message_length=1024,grpc.primary_user_agent=x",
         "--enable_model_warmup=false", "--file_system_poll_wait_seconds=2"])
    assert (args.port, args.enable_batching, args.enable_model_warmup, args.file_system_poll_wait_seconds) == (
        9001, True, False, 2.0)
    assert server_cli.parse_channel_arguments(args.grpc_channel_arguments) == [
        ("grpc.max_receive_message_length", 1024), ("grpc.primary_user_agent", "x")]


def test_tfmoe_serve_prints_the_real_server_command(tmp_path, capsys):
    import argparse

    files = config.write_server_configs(tmp_path, [config.ModelEntry("recs")])
    parser = argparse.ArgumentParser(prog="tfmoe")
    serve.register(parser.add_subparsers())
    args = parser.parse_args(["serve", f"--model_config_file={files.model_config_file}", "--port=9000",
                              f"--batching_parameters_file={files.batching_parameters_file}", "--enable_batching",
                              f"--monitoring_config_file={files.monitoring_config_file}",
                              "--print_real_server_command"])
    assert args.func(args) == 0
    assert capsys.readouterr().out == (
        f"tensorflow_model_server --port=9000 --rest_api_port=8501 --model_config_file={tmp_path}/models.config "
        "--model_config_file_poll_wait_seconds=0 --file_system_poll_wait_seconds=1 --enable_model_warmup=true "
        f"--enable_batching=true --batching_parameters_file={tmp_path}/batching.config "
        f"--monitoring_config_file={tmp_path}/monitoring.config --tensorflow_intra_op_parallelism=1\n")


# ---------------------------------------------------------------- answers equal the model


def test_predict_on_serialized_examples_equals_the_model(served):
    result = served.client.predict_examples("recs", [{"items": h} for h in HISTORIES])
    want = served.models[("recs", 1)]({"history": padded()}).numpy()
    np.testing.assert_allclose(result.outputs["scores"], want, rtol=1e-5, atol=1e-6)
    assert (result.model, result.version, result.signature) == ("recs", 1, "serving_default")


def test_predict_raw_and_top_k_equal_the_model(served):
    model = served.models[("recs", 1)]
    raw = served.client.predict("recs", {"history": padded()}, signature="predict_raw")
    np.testing.assert_allclose(raw.outputs["scores"], model({"history": padded()}).numpy(), rtol=1e-5, atol=1e-6)
    exclude = [True, False, True, True]
    top = served.client.top_k("recs", HISTORIES, exclude_seen=exclude)
    scores = model({"history": padded()}).numpy()
    for row, history in enumerate(padded()):
        banned = {0} | (set(history.tolist()) if exclude[row] else set())
        want = [i for i in np.argsort(-scores[row], kind="stable") if i not in banned][:TOP_K]
        assert top.item_ids[row].tolist() == want
        np.testing.assert_allclose(top.scores[row], scores[row][want], rtol=1e-5, atol=1e-6)


def test_classify_equals_the_ctr_model_per_version_and_label(served):
    for how, version in (({"label": "stable"}, 1), ({"label": "canary"}, 2), ({"version": 1}, 1), ({}, 2)):
        result = served.client.classify("ctr", ctr_examples(), **how)
        p = served.models[("ctr", version)]({"history": padded(), "target_item": TARGETS}).numpy()
        assert result.version == version, how
        np.testing.assert_allclose(result.scores, np.concatenate([1 - p, p], axis=1), rtol=1e-5, atol=1e-6)
        assert result.labels.tolist() == [["0", "1"]] * len(HISTORIES)
    raw = served.client.predict("ctr", {"history": padded(), "target_item": TARGETS}, signature="predict_raw",
                                version=1)
    np.testing.assert_allclose(raw.outputs["probability"],
                               served.models[("ctr", 1)]({"history": padded(), "target_item": TARGETS}).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_metadata_reports_signatures_and_method_names(served):
    meta = served.client.metadata("ctr", version=1)
    assert (meta.model, meta.version) == ("ctr", 1)
    assert {"serving_default", "predict_raw", "classify"} <= set(meta.signatures)
    assert meta.signatures["classify"].method_name == "tensorflow/serving/classify"
    assert meta.signatures["predict_raw"].method_name == "tensorflow/serving/predict"
    assert meta.signatures["predict_raw"].inputs["history"].shape == (-1, MAX_LEN)
    assert meta.signatures["predict_raw"].inputs["history"].dtype == "DT_INT64"
    assert set(served.client.metadata("recs").signatures["top_k"].outputs) == {"item_ids", "scores"}


def test_version_policies_show_in_model_status(served):
    assert [(s.version, s.state) for s in served.client.status("recs")] == [(1, "AVAILABLE")]
    assert [(s.version, s.state) for s in served.client.status("ctr")] == [(1, "AVAILABLE"), (2, "AVAILABLE")]
    pinned = [(s.version, s.state) for s in served.client.status("ctr_pinned")]
    assert pinned == [(1, "AVAILABLE")]
    assert served.client.status("ctr", label="canary")[0].version == 2


# ---------------------------------------------------------------- status codes, bad requests


def test_unknown_model_version_and_label(served):
    c, local = served.client, served.local
    assert_serving_error(lambda: c.predict("nope", {"history": padded()}), NOT_FOUND,
                         "Servable not found for request: Latest(nope)", local)
    assert_serving_error(lambda: c.predict("recs", {"history": padded()}, signature="predict_raw", version=99),
                         NOT_FOUND, "Servable not found for request: Specific(recs, 99)", local)
    assert_serving_error(lambda: c.classify("ctr_pinned", ctr_examples(), version=2), NOT_FOUND,
                         "Servable not found for request: Specific(ctr_pinned, 2)", local)
    assert_serving_error(lambda: c.classify("ctr", ctr_examples(), label="nope"), INVALID,
                         "Unrecognized servable version label: nope", local)
    assert_serving_error(lambda: c.status("nope"), NOT_FOUND, "Could not find any versions of model nope", local)
    assert_serving_error(lambda: c.status("recs", version=99), NOT_FOUND, "Could not find version 99 of model recs",
                         local)
    assert_serving_error(lambda: c.metadata("recs", version=99), NOT_FOUND, "Specific(recs, 99)", local)


def test_wrong_signature_status_codes(served):
    c = served.client
    assert_serving_error(lambda: c.predict("recs", {"history": padded()}, signature="nope"), PRECONDITION,
                         'Serving signature key "nope" not found.', served.local)
    # Classify on a predict signature or an unknown one: INVALID_ARGUMENT, as the real server's default
    # (TF1 session) runtime answers in classifier.cc; its TFRT runtime (--use_tfrt) says FAILED_PRECONDITION.
    for signature, fragment in (("serving_default", "Expected classification signature method_name to be "
                                                    "tensorflow/serving/classify. Was: tensorflow/serving/predict"),
                                ("nope", "No signature was found with the name: nope")):
        with pytest.raises(ServingError) as err:
            c.classify("recs", [{"items": HISTORIES[0]}], signature=signature)
        if served.local:
            assert err.value.code == INVALID
            assert fragment in err.value.details
        else:
            assert err.value.code in (INVALID, PRECONDITION)


BAD_REQUESTS = {
    "wrong dtype": (lambda: {"history": padded().astype(np.int32)}, "predict_raw",
                    "input 'history' expects int64 but int32 was sent"),
    "wrong rank": (lambda: {"history": padded()[0]}, "predict_raw", "expects shape [?,6] but shape [6] was sent"),
    "over-long history": (lambda: {"history": np.ones((1, MAX_LEN + 1), np.int64)}, "predict_raw",
                          "expects shape [?,6] but shape [1,7] was sent"),
    "missing input": (lambda: {"history": padded()}, "top_k", "Missing but required: ['exclude_seen']"),
    "unknown alias": (lambda: {"history": padded(), "hist": padded()}, "predict_raw", "Sent extra: ['hist']"),
    "item id out of range": (lambda: {"history": padded([[1, 2, 41]])}, "predict_raw",
                             "ids must be in [0, 41); out-of-range ids:] [41]"),
    "negative item id": (lambda: {"history": padded([[1, -3]])}, "predict_raw", "out-of-range ids:] [-3]"),
    "empty history": (lambda: {"history": padded([[], [5]])}, "predict_raw",
                      "every row needs at least 1 non-padding id(s) (empty history); rows:] [0]"),
    "batch over max_batch_size": (lambda: {"history": np.ones((MAX_BATCH + 1, MAX_LEN), np.int64)}, "predict_raw",
                                  "Task size 17 is larger than maximum input batch size 16"),
    "batch sizes differ": (lambda: {"history": padded(), "exclude_seen": np.ones(2, bool)}, "top_k",
                           "have different batch sizes"),
    "example with unknown item": (lambda: [{"items": [1, 99]}], "serving_default",
                                  "feature `items`: ids must be in [0, 41)"),
    "example with empty history": (lambda: [{"items": [1]}, {"items": []}], "serving_default",
                                   "every row needs at least 1 non-padding id(s)"),
    "example with float items": (lambda: [{"items": [1.5]}], "serving_default", "items"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_invalid_argument_and_the_server_keeps_serving(served, case):
    make, signature, fragment = BAD_REQUESTS[case]
    c = served.client
    if signature == "serving_default":
        call = lambda: c.predict_examples("recs", make())
    else:
        call = lambda: c.predict("recs", make(), signature=signature)
    error = assert_serving_error(call, INVALID, fragment, served.local)
    if served.local:
        assert "model 'recs' version 1 signature" in error.details  # says where
    good = c.predict("recs", {"history": padded()}, signature="predict_raw")
    np.testing.assert_allclose(good.outputs["scores"], served.models[("recs", 1)]({"history": padded()}).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_oversized_message_is_resource_exhausted_and_the_server_keeps_serving(served):
    rows = MAX_MESSAGE // (8 * MAX_LEN) + 100  # > 1 MiB of int64
    assert_serving_error(lambda: served.client.predict("recs", {"history": np.ones((rows, MAX_LEN), np.int64)},
                                                       signature="predict_raw"),
                         grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max", served.local)
    assert served.client.top_k("recs", HISTORIES[:1]).item_ids.shape == (1, TOP_K)


def test_regress_and_multi_inference_are_unimplemented(served):
    if not served.local:
        pytest.skip("the real server implements Regress and MultiInference")
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "ctr"
    assert_serving_error(lambda: served.client.call("Regress", request), grpc.StatusCode.UNIMPLEMENTED,
                         "Regress is not implemented by the local model server")
    empty = classification_pb2.ClassificationRequest()
    empty.model_spec.name, empty.model_spec.signature_name = "ctr", "classify"
    assert_serving_error(lambda: served.client.call("Classify", empty), INVALID, "Input is empty.")


def test_reload_config_moves_a_label(served):
    from tensorflow_serving.apis import model_management_pb2

    def reload(stable):
        entries = [config.ModelEntry("recs", os.path.join(served.root, "recs")),
                   config.ModelEntry("ctr", os.path.join(served.root, "ctr"), version_policy="all",
                                     version_labels={"stable": stable, "canary": 2}),
                   config.ModelEntry("ctr_pinned", os.path.join(served.root, "ctr"), version_policy="specific",
                                     versions=(1,))]
        request = model_management_pb2.ReloadConfigRequest(config=config.model_server_config(entries))
        served.client.call("HandleReloadConfigRequest", request)

    reload(stable=2)
    try:
        assert served.client.classify("ctr", ctr_examples(), label="stable").version == 2
    finally:
        reload(stable=1)
    assert served.client.classify("ctr", ctr_examples(), label="stable").version == 1


# ---------------------------------------------------------------- version lifecycle (runs last: changes "recs")


def _wait_for(predicate, timeout=120.0, what=""):
    give_up = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def _states(client, model):
    return {s.version: s.state for s in client.status(model)}


def test_new_version_is_picked_up_under_load_and_the_old_one_unloaded(served, tmp_path):
    c = served.client
    spec = demo_models.next_item_spec(NUM_ITEMS, MAX_LEN, top_k=TOP_K)
    model2 = demo_models.next_item_model(NUM_ITEMS, MAX_LEN, seed=7)
    seen_versions, failures, stop = [], [], threading.Event()

    def hammer():
        with ServingClient(served.server.target, timeout=30.0) as own:
            while not stop.is_set():
                try:
                    seen_versions.append(own.top_k("recs", HISTORIES, max_len=MAX_LEN).version)
                except ServingError as err:
                    failures.append(err)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        export_model(model2, os.path.join(served.root, "recs"), spec, version=2, model_name="recs")
        _wait_for(lambda: _states(c, "recs").get(2) == "AVAILABLE" and _states(c, "recs").get(1) != "AVAILABLE",
                  what="version 2 AVAILABLE and version 1 unloaded")
        time.sleep(0.5)  # a few more requests on the new version
    finally:
        stop.set()
        thread.join()
    assert failures == [], failures[:3]
    assert seen_versions and seen_versions[-1] == 2 and seen_versions == sorted(seen_versions)
    if served.local:
        assert _states(c, "recs") == {1: "END", 2: "AVAILABLE"}
    raw = c.predict("recs", {"history": padded()}, signature="predict_raw")
    assert raw.version == 2
    np.testing.assert_allclose(raw.outputs["scores"], model2({"history": padded()}).numpy(), rtol=1e-5, atol=1e-6)
    assert_serving_error(lambda: c.predict("recs", {"history": padded()}, signature="predict_raw", version=1),
                         NOT_FOUND, "Servable not found for request: Specific(recs, 1)", served.local)

    # A pusher copying version 3 (saved_model.pb last): not served until the copy is complete.
    model3 = demo_models.next_item_model(NUM_ITEMS, MAX_LEN, seed=8)
    source = export_model(model3, tmp_path / "staging", spec, version=3, model_name="recs").path
    target = os.path.join(served.root, "recs", "3")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("saved_model.pb"))
    time.sleep(3.0)  # three polls
    assert _states(c, "recs").get(3) != "AVAILABLE"
    assert c.predict("recs", {"history": padded()}, signature="predict_raw").version == 2
    shutil.copy2(os.path.join(source, "saved_model.pb"), os.path.join(target, "saved_model.pb"))
    _wait_for(lambda: _states(c, "recs").get(3) == "AVAILABLE", what="version 3 AVAILABLE once complete")
    _wait_for(lambda: c.predict("recs", {"history": padded()}, signature="predict_raw").version == 3,
              what="requests served by version 3")
    np.testing.assert_allclose(c.predict("recs", {"history": padded()}, signature="predict_raw").outputs["scores"],
                               model3({"history": padded()}).numpy(), rtol=1e-5, atol=1e-6)
