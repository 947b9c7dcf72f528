"""Message classes for ``tensorflow_model_server`` config files that ``tensorflow-serving-api`` does not ship.

``--batching_parameters_file`` holds a ``tensorflow.serving.BatchingParameters`` text proto
(``tensorflow_serving/servables/tensorflow/session_bundle_config.proto``) and
``--monitoring_config_file`` a ``tensorflow.serving.MonitoringConfig``
(``tensorflow_serving/config/monitoring_config.proto``). The pip package has neither module, so
when the upstream ``*_pb2`` module cannot be imported, the class is built from a descriptor
that restates the upstream definition (same package, message and field names, numbers and
types, in a private descriptor pool), so text files that parse here parse in the real server.
Only the fields of TF Serving 2.16 that tfmoe writes are restated for ``BatchingParameters``.

Example:
    >>> from google.protobuf import text_format
    >>> from tfmoe.serving.server_protos import batching_parameters_class
    >>> params = text_format.Parse("max_batch_size { value: 64 }", batching_parameters_class()())
    >>> params.max_batch_size.value
    64
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_F = descriptor_pb2.FieldDescriptorProto

# (name, number, label, type, type_name) as in session_bundle_config.proto (TF Serving 2.16).
_BATCHING_FIELDS = (
    ("max_batch_size", 1, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("num_batch_threads", 4, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("thread_pool_name", 5, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, _F.LABEL_REPEATED, _F.TYPE_INT64, None),
    ("pad_variable_length_inputs", 7, _F.LABEL_OPTIONAL, _F.TYPE_BOOL, None),
)
_PROMETHEUS_FIELDS = (
    ("enable", 1, _F.LABEL_OPTIONAL, _F.TYPE_BOOL, None),
    ("path", 2, _F.LABEL_OPTIONAL, _F.TYPE_STRING, None),
)
_MONITORING_FIELDS = (
    ("prometheus_config", 1, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig"),
)


def _add_message(file_proto, name: str, fields) -> None:
    message = file_proto.message_type.add(name=name)
    for field_name, number, label, field_type, type_name in fields:
        field = message.field.add(name=field_name, number=number, label=label, type=field_type)
        if type_name:
            field.type_name = type_name


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    batching = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    _add_message(batching, "BatchingParameters", _BATCHING_FIELDS)
    pool.Add(batching)
    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3")
    _add_message(monitoring, "PrometheusConfig", _PROMETHEUS_FIELDS)
    _add_message(monitoring, "MonitoringConfig", _MONITORING_FIELDS)
    pool.Add(monitoring)
    return pool


def _message_class(full_name: str):
    descriptor = _pool().FindMessageTypeByName(full_name)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(_pool()).GetPrototype(descriptor)


@functools.cache
def batching_parameters_class():
    """``tensorflow.serving.BatchingParameters`` (the upstream module if installed, else restated)."""
    try:
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2
    except ImportError:
        return _message_class("tensorflow.serving.BatchingParameters")
    return session_bundle_config_pb2.BatchingParameters


@functools.cache
def monitoring_config_class():
    """``tensorflow.serving.MonitoringConfig`` (the upstream module if installed, else restated)."""
    try:
        from tensorflow_serving.config import monitoring_config_pb2
    except ImportError:
        return _message_class("tensorflow.serving.MonitoringConfig")
    return monitoring_config_pb2.MonitoringConfig
