"""Export a Keras 3 model (or any callable ``tf.Module``) as a TF Serving model version.

:func:`export_model` writes ``<base_path>/<version>/`` with

* the signatures of :mod:`tfmoe.serving.signatures` (``serving_default`` on serialized ``tf.Example``,
  ``predict_raw`` on padded tensors, ``top_k`` for next-item models, ``classify`` for CTR models
  with its method name rewritten to ``tensorflow/serving/classify`` in ``saved_model.pb``);
* ``assets.extra/tf_serving_warmup_requests`` (:mod:`tfmoe.serving.warmup`);

and publishes it atomically: everything is written into a staging directory next to the
versions, the SavedModel is reloaded and every signature is checked against the in-memory
model on the warmup inputs (``verify_export=True``), and only then is the directory renamed to its
version number. A server polling ``base_path`` never sees a half-written version, and a failed
export leaves nothing behind.

The model is called with ``{feature name: tensor}`` (a single-input Keras model whose input is
not a dict gets the tensor). Next-item models return scores ``[batch, num_items]`` (column ``i``
= item id ``i``, 0 = padding); CTR models return ``[batch, 1]`` or ``[batch]`` probabilities
(or logits with ``ServingSpec(ctr_output="logit")``).

Example:
    >>> import keras
    >>> from tfmoe.serving.export import export_model
    >>> from tfmoe.serving.features import SequenceFeature, ServingSpec
    >>> history = keras.Input((20,), dtype="int64", name="history")
    >>> pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(101, 8)(history))
    >>> model = keras.Model({"history": history}, keras.layers.Dense(101)(pooled))
    >>> spec = ServingSpec("next_item", (SequenceFeature("history", max_len=20, vocab_size=101,
    ...                                                  example_key="items"),), top_k=10)
    >>> result = export_model(model, "/tmp/models/recs", spec, model_name="recs")  # doctest: +SKIP
    >>> result.path, result.signatures  # doctest: +SKIP
    ('/tmp/models/recs/1', ('serving_default', 'predict_raw', 'top_k'))

A tfmoe model (or its ``.keras`` file) needs no spec: :func:`tfmoe.serving.model_specs.spec_for_model`
derives it, and the signatures serve ``last_scores`` / ``probabilities``:

    >>> from tfmoe.models import SASRec
    >>> export_model(SASRec(num_items=50, max_len=20), "/tmp/models/sasrec")  # doctest: +SKIP
    >>> export_model("runs/sasrec", "/tmp/models/sasrec")  # trainer output dir  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import numpy as np

from tfmoe.serving import layout, model_specs, saved_model_proto, warmup
from tfmoe.serving.features import (
    CLASSIFY,
    CLASSIFY_INPUTS,
    CLASSIFY_METHOD,
    EXAMPLES,
    EXCLUDE_SEEN,
    SERVING_DEFAULT,
    TOP_K,
    ServingSpec,
)
from tfmoe.utils import validation as v

_VERIFY_BATCH = 3
_EXAMPLE_INPUTS = {SERVING_DEFAULT: EXAMPLES, CLASSIFY: CLASSIFY_INPUTS}  # signatures fed serialized tf.Example


class ExportVerificationError(RuntimeError):
    """The reloaded SavedModel does not reproduce the in-memory model (the version is not published)."""


@dataclass(frozen=True)
class ExportResult:
    """Where a version was written and what it serves."""

    path: str
    version: int
    signatures: tuple
    warmup_records: int
    spec: ServingSpec | None = None


def _sample_feed(spec: ServingSpec, signature: str, batch_size: int) -> dict:
    """Inputs of ``signature`` as the loaded SavedModel takes them (keyword tensors)."""
    if signature in _EXAMPLE_INPUTS:
        return {_EXAMPLE_INPUTS[signature]: np.array(warmup.sample_examples(spec, batch_size), dtype=object)}
    feed = warmup.sample_inputs(spec, batch_size)
    if signature == TOP_K:
        feed[EXCLUDE_SEEN] = np.arange(batch_size) % 2 == 0
    return feed


def _call_concrete(fn, feed: dict) -> dict:
    """Calls an in-memory concrete function whose input is either one dict or named tensors."""
    args, _ = fn.structured_input_signature
    if len(args) == 1 and isinstance(args[0], dict):
        return fn(feed)
    return fn(*[feed[spec.name] for spec in args])


def _assert_same(signature: str, expected: dict, got: dict) -> None:
    if sorted(expected) != sorted(got):
        raise ExportVerificationError(f"export verify: signature {signature!r} outputs {sorted(got)} after reload, "
                             f"expected {sorted(expected)}")
    for key in expected:
        want, have = expected[key].numpy(), got[key].numpy()
        same = (want.shape == have.shape and
                (np.array_equal(want, have) if want.dtype.kind in "OSUbiu" else
                 np.allclose(want, have, rtol=1e-5, atol=1e-6, equal_nan=True)))
        if not same:
            raise ExportVerificationError(f"export verify: signature {signature!r} output {key!r} differs after reload "
                                 f"(in memory {want.ravel()[:5]}..., reloaded {have.ravel()[:5]}...)")


def verify(export_dir: str, signatures: dict, spec: ServingSpec) -> None:
    """Reloads ``export_dir`` and checks every signature against its in-memory concrete function."""
    import tensorflow as tf

    loaded = tf.saved_model.load(export_dir)
    for name, fn in signatures.items():
        feed = _sample_feed(spec, name, _VERIFY_BATCH)
        _assert_same(name, _call_concrete(fn, feed), loaded.signatures[name](**{k: tf.constant(x)
                                                                                 for k, x in feed.items()}))


def export_model(model, base_path, spec: ServingSpec | None = None, version: int | None = None,
                 model_name: str = "", warmup_batch_sizes=(1,), verify_export: bool = True,
                 warmup_requests: bool = True, jit_compile: bool = False) -> ExportResult:
    """Writes ``model`` as version ``version`` (default: the next integer) of ``base_path``.

    ``model``: a Keras model, or the path of a ``.keras`` file or trainer output directory
    (:func:`tfmoe.serving.model_specs.load_model`). ``spec``: default
    :func:`tfmoe.serving.model_specs.spec_for_model` (tfmoe models need none). ``model_name`` goes into
    the warmup requests' model spec. ``warmup_batch_sizes``: one warmup request per signature and
    size (use the sizes clients send, e.g. ``(1, 64)``); ``warmup_requests=False`` writes no warmup
    file. ``jit_compile``: compile the model with XLA (see :func:`tfmoe.serving.signatures.build_signatures`).
    Raises ``FileExistsError`` if the version exists, ``ValueError`` for a model that does not fit
    ``spec`` and :class:`ExportVerificationError` if the reloaded SavedModel disagrees with the model.
    """
    import tensorflow as tf

    from tfmoe.serving.signatures import build_signatures

    if isinstance(model, (str, os.PathLike)):
        model = model_specs.load_model(model)
    if spec is None:
        spec = model_specs.spec_for_model(model)
    if not isinstance(spec, ServingSpec):
        raise ValueError(f"export_model: `spec` must be a ServingSpec, got {type(spec).__name__}")
    base_path = os.path.abspath(os.fspath(base_path))
    os.makedirs(base_path, exist_ok=True)
    version = layout.next_version(base_path) if version is None else v.check_int("export_model", "version",
                                                                                    version, minimum=0)
    batch_sizes = v.check_int_sequence("export_model", "warmup_batch_sizes", list(warmup_batch_sizes), minimum=1)
    if os.path.exists(layout.version_path(base_path, version)):
        raise FileExistsError(f"export_model: version {version} already exists at "
                              f"{layout.version_path(base_path, version)!r}")
    signatures = build_signatures(model, spec, jit_compile=jit_compile)
    root = tf.Module()
    root.model = model
    # Layers may keep state (e.g. MoE routing statistics) in variables the Keras object graph does not
    # expose to SavedModel; tracking every model variable on the root saves them all.
    root.model_variables = list(getattr(model, "variables", ()))
    staging = layout.staging_dir(base_path, version)
    try:
        tf.saved_model.save(root, staging, signatures=signatures)
        if CLASSIFY in signatures:
            saved_model_proto.set_method_names(staging, {CLASSIFY: CLASSIFY_METHOD})
        logs = warmup.sample_requests(spec, model_name=model_name, batch_sizes=batch_sizes) if warmup_requests else []
        if logs:
            warmup.write(staging, logs)
        if verify_export:
            verify(staging, signatures, spec)
        path = layout.publish(staging, base_path, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(path=path, version=version, signatures=tuple(signatures), warmup_records=len(logs),
                        spec=spec)
