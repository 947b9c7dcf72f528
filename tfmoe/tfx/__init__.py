"""The TFX pipeline of tfmoe (TFX 1.16): ``pipelines/moe_pipeline.py`` is the file the ``tfx`` CLI loads.

``import tfmoe`` never imports this package, and only :mod:`tfmoe.tfx.components` and
:mod:`tfmoe.tfx.pipeline`'s builders import TFX:

===============================  ==============================================================
module                           what
===============================  ==============================================================
:mod:`tfmoe.tfx.pipeline`    the pipeline, the local / Kubeflow V2 runners, ``main`` (flags)
:mod:`tfmoe.tfx.config`          ``PipelineConfig``: every knob, from ``TFMOE_*`` variables or flags
:mod:`tfmoe.tfx.components`      ``PrepareExamples`` (ingestion) and ``AnomaliesGate``
:mod:`tfmoe.tfx.run_fn`          the Trainer's ``run_fn`` (tfmoe's trainer + serving export)
:mod:`tfmoe.tfx.serving_export`  the serving SavedModel TFMA evaluates and TF Serving serves
:mod:`tfmoe.tfx.eval_config`     TFMA ``EvalConfig`` per task, thresholds of the blessing
:mod:`tfmoe.tfx.ctr_eval`        labelled CTR evaluation examples for TFMA
:mod:`tfmoe.tfx.anomalies`       ExampleValidator's anomalies -> one clear error
:mod:`tfmoe.tfx.data`            built-in synthetic data and input fingerprints
:mod:`tfmoe.tfx.run_report`      what a run did: MLMD states, TFMA metrics, blessing
:mod:`tfmoe.tfx.demo`            serve the pushed model and query it over gRPC
``tfmoe/tfx/schema/schema.pbtxt``  the curated schema ImportSchemaGen imports
===============================  ==============================================================
"""
