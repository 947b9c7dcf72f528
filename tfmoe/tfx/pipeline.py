"""The tfmoe production pipeline (TFX 1.16): logs -> validated TFRecords -> trained MoE model -> TFMA gate -> push.

Components (ids as they appear in MLMD, the pipeline root and the logs):

1. ``PrepareExamples``: tfmoe's Beam preparation job on the interaction logs (built-in synthetic
   data unless ``TFMOE_DATA`` is set) -> ``Examples`` (train/valid/test; ctr_eval for CTR models).
2. ``StatisticsGen`` -> ``ImportSchemaGen`` (the curated ``tfmoe/tfx/schema/schema.pbtxt``) or
   ``SchemaGen`` (``TFMOE_SCHEMA=infer``) -> ``ExampleValidator`` -> ``AnomaliesGate`` (any
   anomaly stops the run with a message naming the split, feature and reason).
3. ``Trainer`` with ``run_fn="tfmoe.tfx.run_fn.run_fn"``: tfmoe's trainer
   (:func:`tfmoe.training.train`) under the configured tf.distribute strategy, hyper-parameters
   from ``custom_config``; writes the serving SavedModel plus tfmoe's NDCG@10 & co.
4. ``latest_blessed_model_resolver`` + ``Evaluator`` (TFMA, :mod:`tfmoe.tfx.eval_config`):
   next-item HR@10 (``SparseTopKCategoricalAccuracy`` k=10), CTR AUC & co., each gated by a lower
   bound and a change threshold against the last blessed model.
5. ``Pusher``: copies a blessed model to ``<serving-dir>/<serving-model-name>/<version>``, the
   layout ``tfmoe serve --model_name=recs --model_base_path=<serving-dir>/recs`` (or the real
   ``tensorflow_model_server``) serves.

Run it (every knob is a ``TFMOE_*`` variable or a flag; the table is in :mod:`tfmoe.tfx.config`):

    # the real TFX CLI (the CLI runs this file without arguments: use the variables)
    export TFMOE_HOME=$PWD/runs/tfx LOCAL_HOME=$PWD/runs/tfx/cli
    tfx pipeline create --engine local --pipeline_path pipelines/moe_pipeline.py
    tfx run create --engine local --pipeline_name tfmoe-sasrec
    # or directly, with flags
    python pipelines/moe_pipeline.py --model fame --epochs 5 --hr-threshold 0.05
    # compile a Kubeflow Pipelines v2 / Vertex AI pipeline spec (JSON) instead of running
    python pipelines/moe_pipeline.py --runner kubeflow_v2 --image gcr.io/my-project/tfmoe:1 \\
        --home gs://my-bucket/tfmoe --data gs://my-bucket/logs/*.csv

Key variables: ``TFMOE_HOME`` (outputs, default ``./runs/tfx``), ``TFMOE_DATA`` /
``TFMOE_DATA_FORMAT`` (logs; default built-in synthetic data, ``TFMOE_SYNTHETIC_PRESET``),
``TFMOE_MODEL`` (``sasrec``, ``fame``, ``hymoerec``, CTR models), ``TFMOE_MODEL_ARGS`` (JSON),
``TFMOE_EPOCHS``, ``TFMOE_MAX_LEN``, ``TFMOE_BATCH_SIZE``, ``TFMOE_STRATEGY`` (``mirrored``,
``multi_worker``, ``tpu``, ...), ``TFMOE_TRAIN_CONFIG`` / ``TFMOE_TRAIN_OVERRIDES``,
``TFMOE_HR_THRESHOLD`` / ``TFMOE_AUC_THRESHOLD`` / ``TFMOE_CHANGE_TOLERANCE`` (the blessing),
``TFMOE_SERVING_DIR`` / ``TFMOE_SERVING_MODEL_NAME`` (the Pusher), ``TFMOE_SCHEMA``,
``TFMOE_ENABLE_CACHE``, ``TFMOE_RUNNER``. The CLI also wants ``LOCAL_HOME`` (where it records
pipelines) and ``pip`` on ``PATH``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ start-up chatter
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\..*")

from tfmoe.tfx.config import PipelineConfig, from_args  # noqa: E402

log = logging.getLogger("tfmoe.tfx.pipeline")


def create_pipeline(config: PipelineConfig):
    """The ``tfx.orchestration.pipeline.Pipeline`` of ``config`` (see the module docstring)."""
    from tfx.components import Evaluator, ExampleValidator, Pusher, SchemaGen, StatisticsGen, Trainer
    from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
    from tfx.dsl.components.common.resolver import Resolver
    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
    from tfx.orchestration import metadata, pipeline
    from tfx.proto import pusher_pb2, trainer_pb2
    from tfx.types import Channel, standard_artifacts

    from tfmoe.tfx import components
    from tfmoe.tfx.data import ensure_data, input_fingerprint
    from tfmoe.tfx.eval_config import EVAL_SPLIT, eval_config

    task = config.resolved_task()
    patterns, data_format = ensure_data(config)
    fingerprint = input_fingerprint(patterns)
    train_dict = config.train_dict()
    ctr_eval = ""
    if task == "ctr":
        ctr_eval = json.dumps({"max_len": train_dict["data"]["max_len"], "ctr": train_dict["data"].get("ctr", {})})
    prepare = components.PrepareExamples(inputs=json.dumps(patterns), data_format=data_format,
                                         input_fingerprint=fingerprint,
                                         options=json.dumps(config.prepare_options, sort_keys=True), ctr_eval=ctr_eval)
    examples = prepare.outputs["examples"]
    data_splits = ["ctr_eval"] if task == "ctr" else []
    statistics = StatisticsGen(examples=examples, exclude_splits=data_splits)
    if config.schema_file is None:
        schema_gen = SchemaGen(statistics=statistics.outputs["statistics"], infer_feature_shape=False)
    else:
        schema_gen = ImportSchemaGen(schema_file=config.schema_file)
    validator = ExampleValidator(statistics=statistics.outputs["statistics"], schema=schema_gen.outputs["schema"])
    gate = components.AnomaliesGate(anomalies=validator.outputs["anomalies"])

    trainer = Trainer(
        run_fn="tfmoe.tfx.run_fn.run_fn",
        examples=examples,
        schema=schema_gen.outputs["schema"],
        train_args=trainer_pb2.TrainArgs(splits=["train"]),
        eval_args=trainer_pb2.EvalArgs(splits=["valid"]),
        custom_config={"train_config": train_dict, "train_overrides": list(config.train_overrides),
                       "serving_model_name": config.serving_model_name, "top_k": 10},
    )
    trainer.add_upstream_node(gate)

    baseline = Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    threshold = config.hr_threshold if task == "next_item" else config.auc_threshold
    evaluator = Evaluator(
        examples=examples,
        model=trainer.outputs["model"],
        baseline_model=baseline.outputs["model"],
        example_splits=[EVAL_SPLIT[task]],
        eval_config=eval_config(task, threshold, config.change_tolerance),
    )
    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=config.serving_model_dir)),
    )
    return pipeline.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=[prepare, statistics, schema_gen, validator, gate, trainer, baseline, evaluator, pusher],
        enable_cache=config.enable_cache,
        metadata_connection_config=(None if config.runner != "local" else
                                    metadata.sqlite_metadata_connection_config(config.metadata_path)),
        beam_pipeline_args=list(config.beam_args),
    )


def compile_kubeflow_v2(config: PipelineConfig, pipeline=None) -> str:
    """Compiles the pipeline to a Kubeflow Pipelines v2 / Vertex AI Pipelines spec (JSON); returns its path.

    Nothing runs: submit the file with Vertex AI (``aiplatform.PipelineJob(template_path=...)``)
    or a KFP v2 client. The image must hold tfmoe (``pip install tfmoe[tfx]``).
    """
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    pipeline = pipeline or create_pipeline(config)
    out_dir = os.path.dirname(config.spec_path)
    if "://" not in out_dir:
        os.makedirs(out_dir, exist_ok=True)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=config.image),
        output_dir=out_dir, output_filename=os.path.basename(config.spec_path))
    runner.run(pipeline, write_out=True)
    return config.spec_path


def run_local(config: PipelineConfig):
    """Runs the pipeline with ``LocalDagRunner`` in this process (what ``tfx run create --engine local`` does)."""
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    _prepare_process(config)
    return LocalDagRunner().run(create_pipeline(config))


def _prepare_process(config: PipelineConfig) -> None:
    """Process set-up before TensorFlow starts: logical CPU devices for MirroredStrategy, quieter logs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if config.cpu_replicas > 1:
        from tfmoe.utils.devices import split_cpu_into_logical_devices

        split_cpu_into_logical_devices(config.cpu_replicas)
    os.makedirs(os.path.dirname(config.metadata_path), exist_ok=True)


_HARMLESS = ("ArtifactQuery.property_predicate is not supported",)


class ComponentProgress(logging.Handler):
    """Prints one line when a component starts, finishes or is taken from the cache (TFX's own INFO log is long)."""

    def __init__(self, prefix: str = "   ", stream=None):
        super().__init__(logging.INFO)
        self.prefix, self.stream = prefix, stream
        self._started: dict = {}

    def emit(self, record):
        import time

        message = record.getMessage()
        text = None
        if message.startswith("Component ") and message.endswith(" is running."):
            node = message[len("Component "):-len(" is running.")]
            self._started[node] = time.monotonic()
            text = f"{node} ..."
        elif message.startswith("Component ") and message.endswith(" is finished."):
            node = message[len("Component "):-len(" is finished.")]
            text = f"{node} done ({time.monotonic() - self._started.pop(node, time.monotonic()):.1f} s)"
        elif message.startswith("A cached execution ") and message.endswith(" is used."):
            text = "  (result taken from the cache)"
        if text is not None:
            print(f"{self.prefix}{text}", file=self.stream or sys.stdout, flush=True)


def quiet_logs(progress: bool = True) -> None:
    """Warnings and errors only from TFX, Beam and TensorFlow; component progress lines when ``progress``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "tensorflow", "root"):
        logging.getLogger(noisy).setLevel(logging.ERROR if noisy == "tensorflow" else logging.WARNING)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)  # via absl's flag: flag parsing later keeps INFO (setLevel would not)
    absl = logging.getLogger("absl")
    if progress and not any(isinstance(h, ComponentProgress) for h in absl.handlers):
        absl.addHandler(ComponentProgress())

        class _WarningsUp(logging.Filter):  # the rest of absl's INFO stays quiet, and TFX's known-harmless warnings
            def filter(self, record):
                return record.levelno >= logging.WARNING and not str(record.msg).startswith(_HARMLESS)

        for handler in logging.getLogger().handlers:
            handler.addFilter(_WarningsUp())


def main(argv=None) -> int:
    quiet_logs()
    config = from_args(argv)
    if config.runner == "kubeflow_v2":
        path = compile_kubeflow_v2(config)
        print(f"compiled pipeline {config.pipeline_name!r} to {path}")
        return 0
    from tfmoe.tfx.anomalies import AnomaliesFound

    try:
        run_local(config)
    except AnomaliesFound as err:  # the data broke the schema: the message says where, a traceback adds nothing
        print(f"\n{config.pipeline_name}: {err}", file=sys.stderr)
        return 1
    return 0
