"""Reading and editing ``saved_model.pb``: signature defs and their method names.

TF2 ``tf.saved_model.save`` writes every signature with the method name
``tensorflow/serving/predict``. TF Serving's Classify and Regress APIs look for
``tensorflow/serving/classify`` / ``.../regress``, so :func:`set_method_names` rewrites the
``SignatureDef.method_name`` fields of the serving meta graph in place (the graph and the
variables are untouched; ``tf.saved_model.load`` ignores method names).

Example:
    >>> from tfmoe.serving import saved_model_proto
    >>> methods = {"classify": "tensorflow/serving/classify"}
    >>> saved_model_proto.set_method_names("/models/ctr/1", methods)  # doctest: +SKIP
    >>> saved_model_proto.signature_defs("/models/ctr/1")["classify"].method_name  # doctest: +SKIP
    'tensorflow/serving/classify'
"""

from __future__ import annotations

import os

from tfmoe.utils.files import write_atomic

SAVED_MODEL_PB = "saved_model.pb"
SERVE_TAG = "serve"


def read(export_dir):
    """The ``SavedModel`` proto of ``export_dir`` (``<export_dir>/saved_model.pb``)."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(os.fspath(export_dir), SAVED_MODEL_PB)
    proto = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def serving_meta_graph(proto, export_dir=""):
    """The meta graph tagged ``serve`` (what TF Serving loads); ``ValueError`` if there is none."""
    for meta_graph in proto.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ValueError(f"SavedModel {os.fspath(export_dir)!r} has no meta graph tagged {SERVE_TAG!r}")


def signature_defs(export_dir) -> dict:
    """``{name: SignatureDef}`` of the serving meta graph, as TF Serving's GetModelMetadata reports them."""
    return dict(serving_meta_graph(read(export_dir), export_dir).signature_def)


def set_method_names(export_dir, method_names: dict) -> None:
    """Sets ``SignatureDef.method_name`` of the named signatures and rewrites ``saved_model.pb``.

    Raises ``ValueError`` naming the missing signature if one of ``method_names`` does not exist.
    The file is replaced atomically (written next to it, then renamed).
    """
    export_dir = os.fspath(export_dir)
    proto = read(export_dir)
    meta_graph = serving_meta_graph(proto, export_dir)
    for name, method in method_names.items():
        if name not in meta_graph.signature_def:
            raise ValueError(f"set_method_names: {export_dir!r} has no signature {name!r}; signatures are "
                             f"{sorted(meta_graph.signature_def)}")
        meta_graph.signature_def[name].method_name = method
    path = os.path.join(export_dir, SAVED_MODEL_PB)
    write_atomic(path, proto.SerializeToString(deterministic=True))
