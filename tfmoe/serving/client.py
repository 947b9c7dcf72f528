"""gRPC client for TF Serving (the real ``tensorflow_model_server`` or the local model server).

:class:`ServingClient` wraps ``PredictionService`` (Predict, Classify, GetModelMetadata) and
``ModelService`` (GetModelStatus) with

* a deadline on every call (``timeout`` seconds, per call or per client);
* bounded retries with exponential backoff and jitter on ``UNAVAILABLE`` only (server starting
  or restarting, connection reset); every other status fails at once;
* version (``version=3``) or version-label (``label="canary"``) selection;
* batches: many users per request (``top_k(histories=[...])``);
* send/receive message limits (``max_message_bytes``, default 64 MiB);
* one exception type, :class:`tfmoe.serving.errors.ServingError`, carrying the gRPC status code, the
  server's details, the method, the target and the number of attempts.

Example:
    >>> from tfmoe.serving.client import ServingClient
    >>> with ServingClient("127.0.0.1:8500", timeout=2.0) as client:  # doctest: +SKIP
    ...     client.wait_until_available("recs")
    ...     top = client.top_k("recs", histories=[[5, 9, 12], [7]], exclude_seen=True)
    ...     top.item_ids.shape, top.version
    ((2, 10), 1)
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc
import numpy as np

from tfmoe.serving import requests
from tfmoe.serving.errors import ServingError
from tfmoe.serving.features import CLASSIFY, EXCLUDE_SEEN, ITEM_IDS, SCORES, SERVING_DEFAULT, TOP_K

STATE_NAMES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
PREDICTION_SERVICE_METHODS = ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")
MODEL_SERVICE_METHODS = ("GetModelStatus", "HandleReloadConfigRequest")


@dataclass(frozen=True)
class Prediction:
    """Predict outputs ``{alias: array}`` and which model version and signature answered."""

    outputs: dict
    model: str
    version: int
    signature: str


@dataclass(frozen=True)
class TopK:
    """``item_ids`` [users, k] int64 (-1 = no candidate) and ``scores`` [users, k] float32."""

    item_ids: np.ndarray
    scores: np.ndarray
    version: int


@dataclass(frozen=True)
class Classification:
    """``labels`` [rows, classes] str and ``scores`` [rows, classes] float32."""

    labels: np.ndarray
    scores: np.ndarray
    version: int


@dataclass(frozen=True)
class TensorSpecInfo:
    dtype: str  # e.g. "DT_INT64"
    shape: tuple  # -1 = unknown; None = unknown rank


@dataclass(frozen=True)
class SignatureInfo:
    method_name: str
    inputs: dict  # alias -> TensorSpecInfo
    outputs: dict


@dataclass(frozen=True)
class ModelMetadata:
    model: str
    version: int
    signatures: dict  # name -> SignatureInfo


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str  # grpc code name, "OK" when fine
    error_message: str


def _tensor_info(info) -> TensorSpecInfo:
    from tensorflow.core.framework import types_pb2

    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    return TensorSpecInfo(types_pb2.DataType.Name(info.dtype), shape)


class ServingClient:
    """A client of one server ``target`` (``host:port``); see the module docstring."""

    def __init__(self, target: str = "127.0.0.1:8500", timeout: float = 10.0, retries: int = 3,
                 backoff: float = 0.1, max_backoff: float = 2.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 channel_options=()):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if timeout is not None and timeout <= 0:
            raise ValueError(f"ServingClient: `timeout` must be positive seconds or None, got {timeout!r}")
        if retries < 0 or backoff < 0 or max_backoff < backoff:
            raise ValueError(f"ServingClient: need retries >= 0 and 0 <= backoff <= max_backoff, got "
                             f"retries={retries}, backoff={backoff}, max_backoff={max_backoff}")
        self.target = target
        self.timeout = timeout
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        options = dict([("grpc.max_send_message_length", int(max_message_bytes)),
                        ("grpc.max_receive_message_length", int(max_message_bytes)),
                        # Reconnect within a second or two after a server restart (gRPC's default backoff
                        # grows to 120 s, long after the server is back).
                        ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                        ("grpc.max_reconnect_backoff_ms", 2000)])
        options.update(dict(channel_options))
        self._channel = grpc.insecure_channel(target, options=list(options.items()))
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._input_shapes: dict = {}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- transport ----
    def call(self, method: str, request, timeout: float | None = None):
        """Sends ``request`` to ``method`` (e.g. ``"Predict"``) with deadline and retries; returns the response."""
        if method in MODEL_SERVICE_METHODS:
            rpc = getattr(self._models, method)
        elif method in PREDICTION_SERVICE_METHODS:
            rpc = getattr(self._predictions, method)
        else:
            raise ValueError(f"ServingClient.call: unknown method {method!r}; methods are "
                             f"{sorted(PREDICTION_SERVICE_METHODS + MODEL_SERVICE_METHODS)}")
        deadline = timeout if timeout is not None else self.timeout
        delay, attempt = self.backoff, 0
        while True:
            attempt += 1
            try:
                return rpc(request, timeout=deadline)
            except grpc.RpcError as err:
                code = err.code()
                if code != grpc.StatusCode.UNAVAILABLE or attempt > self.retries:
                    raise ServingError(code, err.details() or "", method=method, target=self.target,
                                       attempts=attempt) from None
            time.sleep(min(delay, self.max_backoff) * (0.5 + random.random() / 2))  # jitter: 50-100 %
            delay *= 2

    # ---- PredictionService ----
    def predict(self, model: str, inputs: dict, signature: str = SERVING_DEFAULT, version: int | None = None,
                label: str | None = None, output_filter=(), timeout: float | None = None) -> Prediction:
        """Predict with ``inputs`` ``{alias: array-like}``; returns every (or the filtered) output as numpy."""
        request = requests.predict_request(model, inputs, signature, version, label, output_filter)
        return self._prediction(self.call("Predict", request, timeout))

    def predict_examples(self, model: str, examples, signature: str = SERVING_DEFAULT, version: int | None = None,
                         label: str | None = None, timeout: float | None = None) -> Prediction:
        """Predict on serialized ``tf.Example`` s (``tf.train.Example`` s, feature dicts or bytes)."""
        request = requests.examples_request(model, examples, signature, version, label)
        return self._prediction(self.call("Predict", request, timeout))

    def top_k(self, model: str, histories, exclude_seen=True, max_len: int | None = None,
              signature: str = TOP_K, history_input: str = "history", extra_inputs: dict | None = None,
              version: int | None = None, label: str | None = None, timeout: float | None = None) -> TopK:
        """Top-k items for each history (ids oldest first), many users in one request.

        Histories are right-aligned and left-padded to the signature's ``max_len`` (read once from
        GetModelMetadata when not given). ``exclude_seen``: one bool, or one per user.
        """
        if max_len is None:
            max_len = self.input_shape(model, signature, history_input, version, label)[1]
        padded = requests.pad_histories(histories, max_len)
        exclude = np.broadcast_to(np.asarray(exclude_seen, bool), (len(padded),)).copy()
        inputs = {history_input: padded, EXCLUDE_SEEN: exclude, **(extra_inputs or {})}
        result = self.predict(model, inputs, signature, version, label, timeout=timeout)
        return TopK(result.outputs[ITEM_IDS], result.outputs[SCORES], result.version)

    def classify(self, model: str, examples, signature: str = CLASSIFY, version: int | None = None,
                 label: str | None = None, timeout: float | None = None) -> Classification:
        """Classify ``tf.Example`` s (or feature dicts); ``labels`` and ``scores`` are ``[rows, classes]``."""
        request = requests.classify_request(model, examples, signature, version, label)
        response = self.call("Classify", request, timeout)
        rows = response.result.classifications
        labels = np.array([[c.label for c in row.classes] for row in rows], dtype=object)
        scores = np.array([[c.score for c in row.classes] for row in rows], dtype=np.float32)
        return Classification(labels, scores, response.model_spec.version.value)

    def metadata(self, model: str, version: int | None = None, label: str | None = None,
                 timeout: float | None = None) -> ModelMetadata:
        """The signatures of a model version (GetModelMetadata ``signature_def``)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        requests.set_model_spec(request.model_spec, model, None, version, label)
        response = self.call("GetModelMetadata", request, timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        signatures = {
            name: SignatureInfo(sdef.method_name, {a: _tensor_info(i) for a, i in sdef.inputs.items()},
                                {a: _tensor_info(i) for a, i in sdef.outputs.items()})
            for name, sdef in signature_map.signature_def.items()
        }
        return ModelMetadata(response.model_spec.name, response.model_spec.version.value, signatures)

    def input_shape(self, model: str, signature: str, alias: str, version: int | None = None,
                    label: str | None = None) -> tuple:
        """The declared shape of one signature input (cached per model, signature and version choice)."""
        key = (model, signature, alias, version, label)
        if key not in self._input_shapes:
            signatures = self.metadata(model, version, label).signatures
            if signature not in signatures or alias not in signatures[signature].inputs:
                raise ValueError(f"model {model!r} has no input {alias!r} in signature {signature!r}; signatures: "
                                 f"{ {n: sorted(s.inputs) for n, s in signatures.items()} }")
            self._input_shapes[key] = signatures[signature].inputs[alias].shape
        return self._input_shapes[key]

    # ---- ModelService ----
    def status(self, model: str, version: int | None = None, label: str | None = None,
               timeout: float | None = None) -> list[VersionStatus]:
        """GetModelStatus: every version the server tracks for ``model`` (or the one asked for)."""
        from tensorflow_serving.apis import get_model_status_pb2

        from tfmoe.serving.errors import status_code

        request = get_model_status_pb2.GetModelStatusRequest()
        requests.set_model_spec(request.model_spec, model, None, version, label)
        response = self.call("GetModelStatus", request, timeout)
        return [VersionStatus(s.version, STATE_NAMES.get(s.state, str(s.state)), status_code(s.status.error_code).name,
                              s.status.error_message) for s in response.model_version_status]

    def wait_until_available(self, model: str, version: int | None = None, timeout: float = 60.0,
                             poll: float = 0.1) -> VersionStatus:
        """Blocks until ``model`` (``version``, or any version) is AVAILABLE; returns its status.

        While waiting, ``UNAVAILABLE`` (server not up yet) and ``NOT_FOUND`` (not loaded yet) are
        expected; on timeout a ``ServingError(DEADLINE_EXCEEDED)`` says what was last seen.
        """
        give_up = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            try:
                statuses = self.status(model, version, timeout=max(0.5, min(5.0, timeout)))
                available = [s for s in statuses if s.state == "AVAILABLE"]
                if available:
                    return max(available, key=lambda s: s.version)
                last = f"versions {[(s.version, s.state, s.error_message) for s in statuses]}"
            except ServingError as err:
                if err.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                last = str(err)
            if time.monotonic() >= give_up:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"model {model!r} version {version or 'any'} not AVAILABLE on {self.target} "
                                   f"after {timeout:.0f} s; last seen: {last}", method="GetModelStatus",
                                   target=self.target)
            time.sleep(poll)

    # ---- helpers ----
    @staticmethod
    def _prediction(response) -> Prediction:
        import tensorflow as tf

        outputs = {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}
        spec = response.model_spec
        return Prediction(outputs, spec.name, spec.version.value, spec.signature_name)
