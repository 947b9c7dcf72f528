"""Config files and command lines for the real TensorFlow Serving (``tensorflow_model_server``).

* ``models.config``: a ``ModelServerConfig`` text proto (``--model_config_file``): one entry per
  model with its base path, version policy (``latest`` N / ``all`` / ``specific`` versions) and
  version labels (``stable`` -> 3, ``canary`` -> 4).
* ``batching.config``: a ``BatchingParameters`` text proto (``--batching_parameters_file``, with
  ``--enable_batching=true``).
* ``monitoring.config``: a ``MonitoringConfig`` text proto (``--monitoring_config_file``) that
  exposes Prometheus metrics on the REST port at ``/monitoring/prometheus/metrics``.

:func:`server_command` returns the exact ``tensorflow_model_server`` argv and
:func:`docker_command` the ``docker run tensorflow/serving`` argv for the same files (ports 8500
gRPC and 8501 REST; the models directory mounted read-only at ``/models``; the image's
entrypoint already passes ``--port=8500 --rest_api_port=8501``). The local model server
(:mod:`tfmoe.serving.model_server`) reads the same ``models.config`` and ``batching.config``.

Example:
    >>> from tfmoe.serving import config
    >>> models = [config.ModelEntry("recs", version_labels={"stable": 1})]
    >>> files = config.write_server_configs("/srv/models", models)  # doctest: +SKIP
    >>> print(config.shell_line(config.server_command(files)))  # doctest: +SKIP
    tensorflow_model_server --port=8500 --rest_api_port=8501 --model_config_file=/srv/models/models.config ...
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tfmoe.utils import validation as v
from tfmoe.utils.files import write_atomic

VERSION_POLICIES = ("latest", "all", "specific")
MODEL_CONFIG_FILE = "models.config"
BATCHING_CONFIG_FILE = "batching.config"
MONITORING_CONFIG_FILE = "monitoring.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
GRPC_PORT = 8500
REST_API_PORT = 8501
DOCKER_IMAGE = "tensorflow/serving:2.16.1"
DOCKER_MOUNT = "/models"


@dataclass(frozen=True)
class ModelEntry:
    """One model of ``models.config``.

    ``base_path``: the directory holding the integer version sub-directories (default
    ``<models_root>/<name>`` in :func:`write_server_configs`). ``version_policy``: ``latest``
    serves the ``num_versions`` highest versions, ``all`` every version, ``specific`` the listed
    ``versions``. ``version_labels``: ``{label: version}``.
    """

    name: str
    base_path: str | None = None
    version_policy: str = "latest"
    num_versions: int = 1
    versions: tuple = ()
    version_labels: Mapping = field(default_factory=dict)

    def __post_init__(self):
        owner = f"ModelEntry({self.name!r})"
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"{owner}: `name` must be a non-empty string without '/', got {self.name!r}")
        v.check_choice(owner, "version_policy", self.version_policy, VERSION_POLICIES)
        v.check_int(owner, "num_versions", self.num_versions, minimum=1)
        versions = tuple(v.check_int_sequence(owner, "versions", list(self.versions), minimum=0, allow_empty=True))
        object.__setattr__(self, "versions", versions)
        if (self.version_policy == "specific") != bool(versions):
            raise ValueError(f"{owner}: `versions` must be given exactly when version_policy='specific', "
                             f"got policy {self.version_policy!r} and versions {versions}")
        labels = dict(self.version_labels)
        for label, version in labels.items():
            if not isinstance(label, str) or not label:
                raise ValueError(f"{owner}: version labels must be non-empty strings, got {label!r}")
            v.check_int(owner, f"version_labels[{label!r}]", version, minimum=0)
        object.__setattr__(self, "version_labels", labels)


@dataclass(frozen=True)
class BatchingConfig:
    """``BatchingParameters`` for ``--enable_batching``.

    Requests with more rows than ``max_batch_size`` are rejected (``INVALID_ARGUMENT``), by the
    real server and by the local one. ``pad_variable_length_inputs`` stays False: it pads on the
    right, which would break right-aligned histories, so clients send ``[batch, max_len]``.
    """

    max_batch_size: int = 64
    batch_timeout_micros: int = 1000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        owner = "BatchingConfig"
        v.check_int(owner, "max_batch_size", self.max_batch_size, minimum=1)
        v.check_int(owner, "batch_timeout_micros", self.batch_timeout_micros, minimum=0)
        v.check_int(owner, "max_enqueued_batches", self.max_enqueued_batches, minimum=1)
        v.check_int(owner, "num_batch_threads", self.num_batch_threads, minimum=1)
        sizes = tuple(v.check_int_sequence(owner, "allowed_batch_sizes", list(self.allowed_batch_sizes),
                                           minimum=1, allow_empty=True))
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ValueError(f"{owner}: `allowed_batch_sizes` must increase and end with max_batch_size="
                             f"{self.max_batch_size}, got {list(sizes)}")
        object.__setattr__(self, "allowed_batch_sizes", sizes)
        v.check_bool(owner, "pad_variable_length_inputs", self.pad_variable_length_inputs)


@dataclass(frozen=True)
class ServerFiles:
    """Config file paths as the server sees them (container paths for Docker) and the host directory."""

    model_config_file: str
    batching_parameters_file: str | None
    monitoring_config_file: str | None
    host_dir: str
    mount_point: str | None = None


def model_server_config(models: Sequence[ModelEntry], models_root=None):
    """The ``ModelServerConfig`` proto of ``models`` (base paths default to ``<models_root>/<name>``)."""
    from tensorflow_serving.config import model_server_config_pb2

    names = [m.name for m in models]
    if not models or len(set(names)) != len(names):
        raise ValueError(f"model_server_config: need at least one model and unique names, got {names}")
    proto = model_server_config_pb2.ModelServerConfig()
    for model in models:
        entry = proto.model_config_list.config.add(name=model.name, model_platform="tensorflow")
        if model.base_path is not None:
            entry.base_path = model.base_path
        elif models_root is not None:
            entry.base_path = os.path.join(os.fspath(models_root), model.name)
        else:
            raise ValueError(f"model_server_config: model {model.name!r} has no base_path and no models_root is given")
        policy = entry.model_version_policy
        if model.version_policy == "latest":
            policy.latest.num_versions = model.num_versions
        elif model.version_policy == "all":
            policy.all.SetInParent()
        else:
            policy.specific.versions.extend(model.versions)
        for label, version in sorted(model.version_labels.items()):
            entry.version_labels[label] = version
    return proto


def render_model_config(models: Sequence[ModelEntry], models_root=None) -> str:
    """``models.config`` text (a ``ModelServerConfig`` text proto)."""
    from google.protobuf import text_format

    return text_format.MessageToString(model_server_config(models, models_root))


def models_from_proto(proto) -> list[ModelEntry]:
    """A ``ModelServerConfig`` proto -> :class:`ModelEntry` s (``ValueError`` naming the problem)."""
    if proto.WhichOneof("config") != "model_config_list":
        raise ValueError("models.config: only model_config_list is supported (no custom_model_config)")
    models = []
    for entry in proto.model_config_list.config:
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"models.config: model {entry.name!r} has platform {entry.model_platform!r}; "
                             "only 'tensorflow' is served")
        if not entry.base_path:
            raise ValueError(f"models.config: model {entry.name!r} has no base_path")
        which = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        kwargs = {}
        if which == "latest":
            kwargs["num_versions"] = entry.model_version_policy.latest.num_versions or 1
        elif which == "specific":
            kwargs["versions"] = tuple(entry.model_version_policy.specific.versions)
        models.append(ModelEntry(entry.name, base_path=entry.base_path, version_policy=which,
                                 version_labels=dict(entry.version_labels), **kwargs))
    if not models:
        raise ValueError("models.config: the model_config_list is empty")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"models.config: model names must be unique, got {names}")
    return models


def parse_model_config(text: str) -> list[ModelEntry]:
    """``models.config`` text -> :class:`ModelEntry` s (``ValueError`` naming the problem)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as err:
        raise ValueError(f"models.config: not a ModelServerConfig text proto: {err}") from err
    return models_from_proto(proto)


def read_model_config(path) -> list[ModelEntry]:
    """Parses a ``models.config`` file."""
    with open(os.fspath(path), encoding="utf-8") as f:
        try:
            return parse_model_config(f.read())
        except ValueError as err:
            raise ValueError(f"{os.fspath(path)}: {err}") from err


def render_batching_config(batching: BatchingConfig) -> str:
    """``batching.config`` text (a ``BatchingParameters`` text proto)."""
    from google.protobuf import text_format

    from tfmoe.serving.server_protos import batching_parameters_class

    proto = batching_parameters_class()()
    proto.max_batch_size.value = batching.max_batch_size
    proto.batch_timeout_micros.value = batching.batch_timeout_micros
    proto.max_enqueued_batches.value = batching.max_enqueued_batches
    proto.num_batch_threads.value = batching.num_batch_threads
    proto.allowed_batch_sizes.extend(batching.allowed_batch_sizes)
    proto.pad_variable_length_inputs = batching.pad_variable_length_inputs
    return text_format.MessageToString(proto)


def parse_batching_config(text: str) -> BatchingConfig:
    """``batching.config`` text -> :class:`BatchingConfig` (unset fields keep this module's defaults)."""
    from google.protobuf import text_format

    from tfmoe.serving.server_protos import batching_parameters_class

    proto = batching_parameters_class()()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as err:
        raise ValueError(f"batching.config: not a BatchingParameters text proto: {err}") from err
    kwargs = {name: getattr(proto, name).value for name in
              ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
              if proto.HasField(name)}
    return BatchingConfig(allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
                          pad_variable_length_inputs=proto.pad_variable_length_inputs, **kwargs)


def render_monitoring_config(path: str = PROMETHEUS_PATH) -> str:
    """``monitoring.config`` text: Prometheus metrics at ``path`` on the REST port."""
    from google.protobuf import text_format

    from tfmoe.serving.server_protos import monitoring_config_class

    proto = monitoring_config_class()()
    proto.prometheus_config.enable = True
    proto.prometheus_config.path = path
    return text_format.MessageToString(proto)


def _server_path(host_path: str, host_dir: str, mount_point: str | None) -> str:
    if mount_point is None:
        return host_path
    relative = os.path.relpath(host_path, host_dir)
    if relative == ".." or relative.startswith(".." + os.sep):
        raise ValueError(f"{host_path!r} lies outside {host_dir!r}, which is what the container mounts at "
                         f"{mount_point!r}; put the model under it or give a base_path inside it")
    return mount_point if relative == "." else f"{mount_point.rstrip('/')}/{relative.replace(os.sep, '/')}"


def write_server_configs(models_root, models: Sequence[ModelEntry], batching: BatchingConfig | None = BatchingConfig(),
                         monitoring: bool = True, mount_point: str | None = None) -> ServerFiles:
    """Writes ``models.config`` (+ ``batching.config``, ``monitoring.config``) into ``models_root``.

    With ``mount_point`` (e.g. ``"/models"`` for Docker) every path inside the files, and the
    returned :class:`ServerFiles`, is translated to where ``models_root`` is mounted.
    """
    host_dir = os.path.abspath(os.fspath(models_root))
    os.makedirs(host_dir, exist_ok=True)
    resolved = [m if m.base_path is not None else
                ModelEntry(m.name, os.path.join(host_dir, m.name), m.version_policy, m.num_versions, m.versions,
                           m.version_labels) for m in models]
    served = [ModelEntry(m.name, _server_path(os.path.abspath(m.base_path), host_dir, mount_point),
                         m.version_policy, m.num_versions, m.versions, m.version_labels) for m in resolved]
    contents = {MODEL_CONFIG_FILE: render_model_config(served)}
    if batching is not None:
        contents[BATCHING_CONFIG_FILE] = render_batching_config(batching)
    if monitoring:
        contents[MONITORING_CONFIG_FILE] = render_monitoring_config()
    for name, text in contents.items():
        write_atomic(os.path.join(host_dir, name), text)  # a polling server never reads a half-written file

    def server_path(name):
        return _server_path(os.path.join(host_dir, name), host_dir, mount_point) if name in contents else None

    return ServerFiles(model_config_file=server_path(MODEL_CONFIG_FILE),
                       batching_parameters_file=server_path(BATCHING_CONFIG_FILE),
                       monitoring_config_file=server_path(MONITORING_CONFIG_FILE),
                       host_dir=host_dir, mount_point=mount_point)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def server_flags(files: ServerFiles, file_system_poll_wait_seconds: int = 1,
                 model_config_file_poll_wait_seconds: int = 60, enable_model_warmup: bool = True,
                 allow_version_labels_for_unavailable_models: bool = False, grpc_channel_arguments: str = "",
                 tensorflow_intra_op_parallelism: int = 0, tensorflow_inter_op_parallelism: int = 0) -> list[str]:
    """``tensorflow_model_server`` flags for ``files`` (everything but the ports).

    ``file_system_poll_wait_seconds``: how often base paths are polled for new versions.
    ``model_config_file_poll_wait_seconds``: how often ``models.config`` is re-read (labels and
    policies change without a restart; 0 reads it once). Thread counts of 0 let TF pick.
    """
    flags = [f"--model_config_file={files.model_config_file}",
             f"--model_config_file_poll_wait_seconds={int(model_config_file_poll_wait_seconds)}",
             f"--file_system_poll_wait_seconds={int(file_system_poll_wait_seconds)}",
             f"--enable_model_warmup={_bool(enable_model_warmup)}"]
    if allow_version_labels_for_unavailable_models:
        flags.append("--allow_version_labels_for_unavailable_models=true")
    if files.batching_parameters_file:
        flags += ["--enable_batching=true", f"--batching_parameters_file={files.batching_parameters_file}"]
    if files.monitoring_config_file:
        flags.append(f"--monitoring_config_file={files.monitoring_config_file}")
    if grpc_channel_arguments:
        flags.append(f"--grpc_channel_arguments={grpc_channel_arguments}")
    if tensorflow_intra_op_parallelism:
        flags.append(f"--tensorflow_intra_op_parallelism={int(tensorflow_intra_op_parallelism)}")
    if tensorflow_inter_op_parallelism:
        flags.append(f"--tensorflow_inter_op_parallelism={int(tensorflow_inter_op_parallelism)}")
    return flags


def server_command(files: ServerFiles, grpc_port: int = GRPC_PORT, rest_api_port: int = REST_API_PORT,
                   binary: str = "tensorflow_model_server", **flags) -> list[str]:
    """The ``tensorflow_model_server`` argv (``flags``: see :func:`server_flags`)."""
    if files.mount_point is not None:
        raise ValueError("server_command: these files were written for a container mount; use docker_command, "
                         "or write_server_configs without mount_point")
    return [binary, f"--port={int(grpc_port)}", f"--rest_api_port={int(rest_api_port)}", *server_flags(files, **flags)]


def docker_command(files: ServerFiles, grpc_port: int = GRPC_PORT, rest_api_port: int = REST_API_PORT,
                   image: str = DOCKER_IMAGE, container_name: str | None = None, **flags) -> list[str]:
    """The ``docker run`` argv serving ``files`` (written with ``mount_point``) from ``image``.

    Host ports ``grpc_port`` / ``rest_api_port`` map to the container's 8500 / 8501.
    """
    if files.mount_point is None:
        raise ValueError(f"docker_command: write the configs with mount_point={DOCKER_MOUNT!r} so that their "
                         "paths are container paths")
    argv = ["docker", "run", "--rm", "--init"]
    if container_name:
        argv += ["--name", container_name]
    argv += ["-p", f"{int(grpc_port)}:{GRPC_PORT}", "-p", f"{int(rest_api_port)}:{REST_API_PORT}",
             "--mount", f"type=bind,source={files.host_dir},target={files.mount_point},readonly",
             image, *server_flags(files, **flags)]
    return argv


def shell_line(argv: Sequence[str]) -> str:
    """``argv`` as one copy-pastable shell line."""
    return shlex.join(argv)
