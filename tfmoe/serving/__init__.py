"""Export to TF Serving, the gRPC client and the local model server (land with the serving issue).

Nothing here is imported by ``import tfmoe``; import the module you need:

=============================  ===================================================================
module                         what
=============================  ===================================================================
:mod:`tfmoe.serving.features`        ``ServingSpec``: task and inputs of a model to serve (no TF import)
:mod:`tfmoe.serving.export`          ``export_model``: ``<base>/<version>/`` with signatures + warmup, atomic
:mod:`tfmoe.serving.model_specs`     ``spec_for_model`` (ServingSpec of a tfmoe model), ``load_model`` (.keras)
:mod:`tfmoe.serving.signatures`      ``serving_default`` / ``predict_raw`` / ``top_k`` / ``classify``
:mod:`tfmoe.serving.preprocessing`   in-graph ``tf.Example`` parsing, left padding, id and length checks
:mod:`tfmoe.serving.warmup`          ``assets.extra/tf_serving_warmup_requests`` (``PredictionLog`` TFRecord)
:mod:`tfmoe.serving.saved_model_proto`  signature defs and method-name rewrite in ``saved_model.pb``
:mod:`tfmoe.serving.layout`          version directories, completeness, atomic publish / push
:mod:`tfmoe.serving.config`          ``models.config``, ``batching.config``, server and ``docker run`` commands
:mod:`tfmoe.serving.requests`        request protos, ``tf.Example`` s, ``pad_histories``
:mod:`tfmoe.serving.client`          ``ServingClient``: deadlines, bounded retries, versions and labels
:mod:`tfmoe.serving.model_server`    local stand-in for ``tensorflow_model_server`` (same gRPC services)
:mod:`tfmoe.serving.server_cli`      its flags (``python -m tfmoe.serving.model_server``, ``tfmoe serve``)
:mod:`tfmoe.serving.manager`         version polling, loading, warmup, unloading, lookups
:mod:`tfmoe.serving.servable`        one loaded version: Predict / Classify on request protos
:mod:`tfmoe.serving.launcher`        start the real or the local server on a free port, wait until ready
:mod:`tfmoe.serving.errors`          ``ServingError``: gRPC status code + details
:mod:`tfmoe.serving.demo_models`     small Keras models with the serving contracts (tests, ``--quick``)
=============================  ===================================================================

Example:
    >>> from tfmoe.serving.features import SequenceFeature, ServingSpec
    >>> spec = ServingSpec("next_item", (SequenceFeature("history", max_len=200, vocab_size=3501,
    ...                                                  example_key="items"),), top_k=20)
    >>> spec.signature_names()
    ('serving_default', 'predict_raw', 'top_k')
"""
