"""tfmoe's own TFX components (Python function components; importing this module imports TFX).

* :func:`PrepareExamples`: the ingestion step. Runs tfmoe's Beam preparation job
  (:func:`tfmoe.data.prepare.prepare`) on interaction logs straight into an ``Examples`` artifact:
  ``Split-train`` / ``Split-valid`` / ``Split-test`` hold the sharded GZIP TFRecords of
  :mod:`tfmoe.data.schema`, and ``vocab/`` + ``summary.json`` sit next to them (the Trainer's
  ``run_fn`` reads them). For CTR models it adds ``Split-ctr_eval``, labelled rows for TFMA
  (:mod:`tfmoe.tfx.ctr_eval`). ``input_fingerprint`` (sizes and content hashes of the inputs,
  computed by :func:`tfmoe.tfx.data.input_fingerprint` when the pipeline is built) is an execution property, so
  the component is cached exactly while its inputs and options are unchanged.
* :func:`AnomaliesGate`: stops the run after ExampleValidator when any split has anomalies, with
  an error naming every anomalous feature and why (ExampleValidator itself only records them).

Example:
    >>> from tfmoe.tfx import components  # doctest: +SKIP
    >>> prepare = components.PrepareExamples(inputs='["logs.csv"]', data_format="tfmoe-synthetic",
    ...                                      input_fingerprint="...", options="{}", ctr_eval="")  # doctest: +SKIP
"""

import json
import os

from tfx.components.util import examples_utils
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts

from tfmoe.tfx.anomalies import raise_if_anomalies
from tfmoe.tfx.run_fn import DATA_SPLITS, SPLIT_PREFIX

CTR_EVAL_SPLIT = "ctr_eval"


@component
def PrepareExamples(
    examples: OutputArtifact[standard_artifacts.Examples],
    inputs: Parameter[str],
    data_format: Parameter[str],
    input_fingerprint: Parameter[str],
    options: Parameter[str] = "{}",
    ctr_eval: Parameter[str] = "",
) -> None:
    """tfmoe's Beam preparation job -> an Examples artifact (see the module docstring).

    ``inputs``: JSON list of files/globs; ``options``: JSON object of extra
    :class:`tfmoe.data.prepare.PrepareConfig` fields; ``ctr_eval``: empty, or a JSON object
    ``{"max_len": ..., "ctr": {CTRSampling fields}}`` to add the ``ctr_eval`` split.
    """
    from tfmoe.data.prepare import PrepareConfig, prepare, quiet_beam_logs

    del input_fingerprint  # only part of the cache key
    quiet_beam_logs()
    root = examples.uri
    config = PrepareConfig(format=data_format, inputs=tuple(json.loads(inputs)), output_dir=root,
                           **json.loads(options))
    summary = prepare(config)
    splits = list(DATA_SPLITS)
    if ctr_eval:
        from tfmoe.tfx.ctr_eval import write_ctr_eval_split

        settings = json.loads(ctr_eval)
        rows = write_ctr_eval_split(root, os.path.join(root, SPLIT_PREFIX + CTR_EVAL_SPLIT), settings["max_len"],
                                    settings.get("ctr"))
        examples.set_int_custom_property("ctr_eval_rows", rows)
        splits.append(CTR_EVAL_SPLIT)
    for split in DATA_SPLITS:
        os.rename(os.path.join(root, split), os.path.join(root, SPLIT_PREFIX + split))
    examples.split_names = artifact_utils.encode_split_names(splits)
    examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
    examples_utils.set_file_format(examples, "tfrecords_gzip")
    counts = summary.get("counts", {})
    for key in ("users", "items", "interactions"):
        if isinstance(counts.get(key), int):
            examples.set_int_custom_property(key, counts[key])


@component
def AnomaliesGate(
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
) -> None:
    """Raises :class:`tfmoe.tfx.anomalies.AnomaliesFound` (failing the run) if ExampleValidator found anomalies."""
    raise_if_anomalies(anomalies.uri, artifact_utils.decode_split_names(anomalies.split_names))
