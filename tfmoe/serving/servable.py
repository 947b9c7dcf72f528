"""One loaded model version of the local model server: request protos in, response protos out.

The hot path of a Predict call is: look the signature up in a dict, check each input's dtype and
shape against the ``SignatureDef`` from ``saved_model.pb`` (no conversion), turn each
``TensorProto`` into a numpy array with ``tf.make_ndarray`` (a buffer view for packed
``tensor_content``), call the signature's restored concrete function directly (traced once at
export: no retracing per request), and turn each output back with ``tf.make_tensor_proto``.
No Python loop runs over items or rows, except when filling a Classify response.

Errors are :class:`~tfmoe.serving.errors.ServingError` s with the codes of the real server's default
runtime: ``FAILED_PRECONDITION`` for a Predict on an unknown signature (predict_util.cc),
``INVALID_ARGUMENT`` for a Classify on an unknown signature or one of the wrong kind (a predict
signature; classifier.cc: the TFRT runtime, ``--use_tfrt``, says ``FAILED_PRECONDITION`` there)
and for bad inputs (missing or unknown alias, wrong dtype, wrong shape, too many rows, ids out of
range, empty histories), each message naming the model, version, signature and input.

Example:
    >>> from tfmoe.serving.servable import Servable
    >>> from tfmoe.serving import requests
    >>> servable = Servable("recs", 1, "/tmp/models/recs/1")  # doctest: +SKIP
    >>> response = servable.predict(requests.predict_request(
    ...     "recs", {"history": [[0, 0, 3, 4]]}, signature="predict_raw"))  # doctest: +SKIP
"""

from __future__ import annotations

import threading

import grpc
import numpy as np

from tfmoe.serving import saved_model_proto, warmup
from tfmoe.serving.errors import ServingError, from_tf_error
from tfmoe.serving.features import CLASSES, CLASSIFY_INPUTS, CLASSIFY_METHOD, SCORES, SERVING_DEFAULT

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def _shape_text(dims) -> str:
    return "[" + ",".join("?" if d < 0 else str(d) for d in dims) + "]"


def _dtype_name(enum_value: int) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(enum_value).replace("DT_", "").lower() if enum_value else "invalid"


class Servable:
    """A loaded SavedModel version: signatures, their input specs, warmup and in-flight accounting."""

    def __init__(self, name: str, version: int, path: str):
        import tensorflow as tf

        self.name, self.version, self.path = name, int(version), path
        self._model = tf.saved_model.load(path, tags=[saved_model_proto.SERVE_TAG])
        self._functions = dict(self._model.signatures)
        self.signature_defs = saved_model_proto.signature_defs(path)
        # signature -> alias -> (dtype enum, dims with -1 for unknown)
        self._input_specs = {
            sig: {alias: (info.dtype, tuple(d.size for d in info.tensor_shape.dim)
                          if not info.tensor_shape.unknown_rank else None)
                  for alias, info in sdef.inputs.items()}
            for sig, sdef in self.signature_defs.items() if sig in self._functions
        }
        self._in_flight = 0
        self._idle = threading.Condition()

    # ---- in-flight accounting (the manager acquires under its routing lock) ----
    def acquire(self) -> None:
        with self._idle:
            self._in_flight += 1

    def release(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Waits until no request uses this version; returns False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    # ---- requests ----
    def _where(self, signature: str) -> str:
        return f"model {self.name!r} version {self.version} signature {signature!r}"

    def _signature(self, signature: str):
        if signature not in self._input_specs:
            known = sorted(self._input_specs)
            raise ServingError(_PRECONDITION, f'Serving signature key "{signature}" not found. '
                                              f"Model {self.name!r} version {self.version} has signatures {known}.")
        return self.signature_defs[signature]

    def _feed(self, signature: str, inputs, max_batch_size: int | None) -> dict:
        import tensorflow as tf

        where = self._where(signature)
        specs = self._input_specs[signature]
        if set(inputs) != set(specs):
            sent, expected = set(inputs), set(specs)
            raise ServingError(_INVALID, f"{where}: input size does not match signature: sent {sorted(sent)}, "
                                         f"expected {sorted(expected)}. Sent extra: {sorted(sent - expected)}. "
                                         f"Missing but required: {sorted(expected - sent)}.")
        feed, batch = {}, None
        for alias, proto in inputs.items():
            dtype, dims = specs[alias]
            if proto.dtype != dtype:
                raise ServingError(_INVALID, f"{where}: input {alias!r} expects {_dtype_name(dtype)} but "
                                             f"{_dtype_name(proto.dtype)} was sent")
            sent = tuple(d.size for d in proto.tensor_shape.dim)
            if dims is not None and (len(sent) != len(dims) or any(e >= 0 and e != s for e, s in zip(dims, sent))):
                raise ServingError(_INVALID, f"{where}: input {alias!r} expects shape {_shape_text(dims)} but "
                                             f"shape {_shape_text(sent)} was sent")
            try:
                array = tf.make_ndarray(proto)
            except (ValueError, TypeError) as err:
                raise ServingError(_INVALID, f"{where}: tensor parsing error: input {alias!r}: {err}") from err
            if array.ndim:
                if batch is not None and array.shape[0] != batch[1]:
                    raise ServingError(_INVALID, f"{where}: inputs {batch[0]!r} and {alias!r} have different "
                                                 f"batch sizes {batch[1]} and {array.shape[0]}")
                batch = (alias, array.shape[0])
            feed[alias] = array
        if batch is not None and max_batch_size is not None and batch[1] > max_batch_size:
            raise ServingError(_INVALID, f"{where}: Task size {batch[1]} is larger than maximum input batch size "
                                         f"{max_batch_size}")
        return feed

    def _run(self, signature: str, feed: dict) -> dict:
        import tensorflow as tf

        try:
            outputs = self._functions[signature](**feed)
        except tf.errors.OpError as err:
            error = from_tf_error(err)
            raise ServingError(error.code, f"{self._where(signature)}: {error.details}") from err
        except (TypeError, ValueError) as err:
            raise ServingError(_INVALID, f"{self._where(signature)}: {err}") from err
        return {alias: value.numpy() for alias, value in outputs.items()}

    def predict(self, request, max_batch_size: int | None = None):
        """Runs a ``PredictRequest``; returns the ``PredictResponse``."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        signature = request.model_spec.signature_name or SERVING_DEFAULT
        sdef = self._signature(signature)
        aliases = list(request.output_filter) or list(sdef.outputs)
        unknown = [a for a in aliases if a not in sdef.outputs]
        if unknown or len(set(aliases)) != len(aliases):
            raise ServingError(_INVALID, f"{self._where(signature)}: output tensor alias not found in signature or "
                                         f"duplicated: {unknown or aliases}. Outputs expected to be in the set "
                                         f"{sorted(sdef.outputs)}.")
        outputs = self._run(signature, self._feed(signature, request.inputs, max_batch_size))
        response = predict_pb2.PredictResponse()
        self._fill_model_spec(response.model_spec, signature)
        for alias in aliases:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias]))
        return response

    def classify(self, request, max_batch_size: int | None = None):
        """Runs a ``ClassificationRequest`` on a classify signature; returns the ``ClassificationResponse``."""
        from tensorflow_serving.apis import classification_pb2

        signature = request.model_spec.signature_name or SERVING_DEFAULT
        where = self._where(signature)
        # TF Serving's default (TF1 session) runtime answers INVALID_ARGUMENT for every signature
        # problem of a Classify call (classifier.cc); only Predict uses FAILED_PRECONDITION.
        if signature not in self._input_specs:
            raise ServingError(_INVALID, f"No signature was found with the name: {signature} (model {self.name!r} "
                                         f"version {self.version} has signatures {sorted(self._input_specs)})")
        sdef = self.signature_defs[signature]
        if sdef.method_name != CLASSIFY_METHOD:
            raise ServingError(_INVALID, f"{where}: Expected classification signature method_name to be "
                                         f"{CLASSIFY_METHOD}. Was: {sdef.method_name}")
        if list(sdef.inputs) != [CLASSIFY_INPUTS] or not ({CLASSES, SCORES} & set(sdef.outputs)):
            raise ServingError(_INVALID, f"{where}: a classification signature needs the single input "
                                         f"{CLASSIFY_INPUTS!r} and outputs {CLASSES!r} and/or {SCORES!r}")
        examples = serialized_examples(request.input)
        if not examples:
            raise ServingError(_INVALID, f"{where}: Input is empty.")
        if max_batch_size is not None and len(examples) > max_batch_size:
            raise ServingError(_INVALID, f"{where}: Task size {len(examples)} is larger than maximum input batch "
                                         f"size {max_batch_size}")
        outputs = self._run(signature, {CLASSIFY_INPUTS: np.array(examples, dtype=object)})
        scores, classes = outputs.get(SCORES), outputs.get(CLASSES)
        for value in (scores, classes):
            if value is not None and (value.ndim != 2 or value.shape[0] != len(examples)):
                raise ServingError(_INVALID, f"{where}: Expected Tensor shape: [batch_size num_classes] but got "
                                             f"{list(value.shape)}")
        response = classification_pb2.ClassificationResponse()
        self._fill_model_spec(response.model_spec, signature)
        num_classes = (scores if scores is not None else classes).shape[1]
        for row in range(len(examples)):
            classifications = response.result.classifications.add()
            for column in range(num_classes):
                entry = classifications.classes.add()
                if classes is not None:
                    entry.label = classes[row, column].decode()
                if scores is not None:
                    entry.score = float(scores[row, column])
        return response

    def signature_def_map(self):
        """The ``SignatureDefMap`` that GetModelMetadata returns."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        proto = get_model_metadata_pb2.SignatureDefMap()
        for name, sdef in self.signature_defs.items():
            proto.signature_def[name].CopyFrom(sdef)
        return proto

    def _fill_model_spec(self, spec, signature: str) -> None:
        spec.name = self.name
        spec.version.value = self.version
        spec.signature_name = signature

    def warm_up(self, max_batch_size: int | None = None) -> int:
        """Replays ``assets.extra/tf_serving_warmup_requests``; returns how many requests ran."""
        logs = warmup.read(self.path)
        for log in logs:
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                self.predict(log.predict_log.request, max_batch_size)
            elif kind == "classify_log":
                self.classify(log.classify_log.request, max_batch_size)
            else:
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"model {self.name!r} version {self.version}: warmup {kind} requests are not "
                                   "supported by the local model server (Predict and Classify are)")
        return len(logs)


def serialized_examples(input_proto) -> list[bytes]:
    """Serialized ``tf.Example`` s of a Classify/Regress ``Input`` (context merged into each example)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return [example.SerializeToString() for example in input_proto.example_list.examples]
    if kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        context = with_context.context.SerializeToString()
        # Concatenated serialized messages merge: example features override context features.
        return [context + example.SerializeToString() for example in with_context.examples]
    return []
