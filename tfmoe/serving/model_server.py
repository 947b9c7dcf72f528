"""The local model server: a stand-in for the real ``tensorflow_model_server`` binary, which cannot be installed here.

It implements the same gRPC services, from the ``tensorflow-serving-api`` protos, over the same
on-disk layout and the same ``models.config`` / ``batching.config`` files:

* ``PredictionService``: ``Predict``, ``Classify`` (classify signatures only), ``GetModelMetadata``
  (``signature_def``); ``Regress`` and ``MultiInference`` answer ``UNIMPLEMENTED``.
* ``ModelService``: ``GetModelStatus`` and ``HandleReloadConfigRequest``.

Versions are polled, loaded, warmed up and unloaded by :class:`tfmoe.serving.manager.ModelManager`;
requests run on :class:`tfmoe.serving.servable.Servable` s, concurrently on a thread pool. The status
codes are the real server's: ``NOT_FOUND`` for an unknown model or version ("Servable not found
for request: ..."), ``INVALID_ARGUMENT`` for bad inputs, unknown labels and a Classify on an
unknown or non-classify signature, ``FAILED_PRECONDITION`` for a Predict on an unknown signature
(as the real server's default runtime; see :mod:`tfmoe.serving.servable`),
``RESOURCE_EXHAUSTED`` for messages over the receive limit, ``DEADLINE_EXCEEDED`` when the
client's deadline passed. A bad request never affects the next one.

Differences from the real server: it listens on 127.0.0.1 by default (the real one on 0.0.0.0),
has no REST API, and checks ``max_batch_size`` of ``batching.config`` per request instead of
batching requests together. Start it with ``python -m tfmoe.serving.model_server`` or ``tfmoe serve``
(flags: :mod:`tfmoe.serving.server_cli`).

Example:
    >>> from tfmoe.serving.config import ModelEntry
    >>> from tfmoe.serving.model_server import LocalModelServer
    >>> server = LocalModelServer([ModelEntry("recs", "/tmp/models/recs")], port=0).start()  # doctest: +SKIP
    >>> server.target  # doctest: +SKIP
    '127.0.0.1:41237'
    >>> server.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent import futures

import grpc

from tfmoe.serving.errors import ServingError
from tfmoe.serving.manager import ModelManager

log = logging.getLogger("tfmoe.serving.model_server")

SIGNATURE_DEF_FIELD = "signature_def"
INT32_MAX = 2**31 - 1  # the real server's message size limit (ServerBuilder::SetMaxMessageSize(kint32max))


def _model_choice(model_spec) -> tuple:
    """``(name, version or None, label or None)`` of a ``ModelSpec``."""
    which = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if which == "version" else None
    label = model_spec.version_label if which == "version_label" else None
    return model_spec.name, version, label


def _handle(context, call):
    """Runs ``call``; a ``ServingError`` becomes the RPC status, anything else ``INTERNAL``."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline exceeded before the request was processed")
    try:
        return call()
    except ServingError as err:
        context.abort(err.code, err.details)
    except Exception as err:  # a server bug must answer INTERNAL, never crash the handler thread
        log.exception("request failed")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")


class PredictionService:
    """``tensorflow.serving.PredictionService`` on a :class:`ModelManager`."""

    def __init__(self, manager: ModelManager, max_batch_size: int | None = None):
        self.manager = manager
        self.max_batch_size = max_batch_size

    def Predict(self, request, context):
        def run():
            with self.manager.servable(*_model_choice(request.model_spec)) as servable:
                return servable.predict(request, self.max_batch_size)

        return _handle(context, run)

    def Classify(self, request, context):
        def run():
            with self.manager.servable(*_model_choice(request.model_spec)) as servable:
                return servable.classify(request, self.max_batch_size)

        return _handle(context, run)

    def GetModelMetadata(self, request, context):
        from tensorflow_serving.apis import get_model_metadata_pb2

        def run():
            if not request.metadata_field:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != SIGNATURE_DEF_FIELD:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported")
            with self.manager.servable(*_model_choice(request.model_spec)) as servable:
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map())
                return response

        return _handle(context, run)

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not implemented by the local model server "
                                                     "(tfmoe exports no regression signatures)")

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not implemented by the local model server")


class ModelService:
    """``tensorflow.serving.ModelService`` on a :class:`ModelManager`."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        from tensorflow_serving.apis import get_model_status_pb2

        def run():
            response = get_model_status_pb2.GetModelStatusResponse()
            for version, state in self.manager.status(*_model_choice(request.model_spec)):
                status = response.model_version_status.add(version=version, state=state.state)
                status.status.error_code = state.error_code
                status.status.error_message = state.error_message
            return response

        return _handle(context, run)

    def HandleReloadConfigRequest(self, request, context):
        from tensorflow_serving.apis import model_management_pb2

        from tfmoe.serving.config import models_from_proto

        def run():
            try:
                models = models_from_proto(request.config)
            except ValueError as err:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from err
            self.manager.reload(models)
            return model_management_pb2.ReloadConfigResponse()

        return _handle(context, run)


class LocalModelServer:
    """The gRPC server: binds ``host:port`` (port 0 picks a free one), serves until :meth:`stop`.

    ``channel_options``: extra gRPC server options (``grpc.max_receive_message_length`` ...);
    ``max_batch_size``: requests with more rows get ``INVALID_ARGUMENT``; ``model_config_file`` with
    ``config_poll_seconds > 0``: the file is re-read and applied when it changes.
    """

    def __init__(self, models, host: str = "127.0.0.1", port: int = 8500, poll_seconds: float = 1.0,
                 max_workers: int | None = None, channel_options=(), max_batch_size: int | None = None,
                 enable_warmup: bool = True, model_config_file: str | None = None, config_poll_seconds: float = 0):
        self.manager = ModelManager(models, poll_seconds=poll_seconds, enable_warmup=enable_warmup,
                                    max_batch_size=max_batch_size)
        self.host = host
        self.requested_port = int(port)
        self.port: int | None = None
        self.max_workers = max_workers or max(8, 4 * (os.cpu_count() or 1))
        options = {"grpc.max_receive_message_length": INT32_MAX, "grpc.max_send_message_length": INT32_MAX,
                   "grpc.so_reuseport": 0}
        options.update(dict(channel_options))
        self.options = list(options.items())
        self.max_batch_size = max_batch_size
        self.model_config_file = model_config_file
        self.config_poll_seconds = float(config_poll_seconds)
        self._server: grpc.Server | None = None
        self._stopped = threading.Event()
        self._config_thread: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> LocalModelServer:
        """Loads the initial model versions, then starts serving gRPC; returns ``self``."""
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.manager.start()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="grpc"),
                             options=self.options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.manager, self.max_batch_size), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.manager), server)
        try:
            port = server.add_insecure_port(f"{self.host}:{self.requested_port}")
        except RuntimeError as err:
            port = 0
            log.error("%s", err)
        if not port:
            self.manager.stop()
            raise OSError(f"local model server: cannot listen on {self.host}:{self.requested_port} (port in use?)")
        self.port = port
        server.start()
        self._server = server
        if self.model_config_file and self.config_poll_seconds > 0:
            self._config_thread = threading.Thread(target=self._watch_config, name="model-config-poll", daemon=True)
            self._config_thread.start()
        log.info("Running gRPC ModelServer at %s ...", self.target)
        return self

    def _watch_config(self) -> None:
        from tfmoe.serving.config import parse_model_config

        last = _read_text(self.model_config_file)
        while not self._stopped.wait(self.config_poll_seconds):
            text = _read_text(self.model_config_file)
            if text is None or text == last:
                continue
            try:
                self.manager.set_models(parse_model_config(text))
                log.info("Applied the changed model config %s", self.model_config_file)
            except ValueError as err:
                log.error("Ignoring the changed model config %s: %s", self.model_config_file, err)
            last = text

    def wait(self) -> None:
        """Blocks until :meth:`stop` is called (from another thread or a signal handler)."""
        self._stopped.wait()

    def stop(self, grace: float = 5.0) -> None:
        """Graceful shutdown: refuses new RPCs, lets in-flight ones finish (up to ``grace`` s), unloads models."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._server is not None:
            self._server.stop(grace).wait()
        self.manager.stop()
        log.info("Model server stopped")


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


if __name__ == "__main__":
    from tfmoe.serving import server_cli

    sys.exit(server_cli.main())
