"""What a pipeline run did, read back from ML Metadata and the artifacts (no TFX import; MLMD and TFMA only).

* :func:`run_states`: ``{node id: "COMPLETE" | "CACHED" | "FAILED" | ...}`` of one run (default:
  the latest), from the SQLite MLMD store the local runner writes. A rerun with caching shows
  ``CACHED`` for every component whose inputs, properties and code did not change.
* :func:`latest_artifact_uri`: where the latest artifact of a node's output lives.
* :func:`tfma_metrics`: the overall-slice metrics of an Evaluator ``evaluation`` artifact.
* :func:`is_blessed`: whether an Evaluator ``blessing`` artifact says BLESSED.

Example:
    >>> from tfmoe.tfx.run_report import run_states
    >>> run_states("runs/tfx/metadata/tfmoe-sasrec.db")  # doctest: +SKIP
    {'PrepareExamples': 'CACHED', 'StatisticsGen': 'CACHED', ..., 'Evaluator': 'COMPLETE', 'Pusher': 'COMPLETE'}
"""

from __future__ import annotations

import glob
import os


def _store(metadata_path: str):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.exists(metadata_path):
        raise FileNotFoundError(f"no ML Metadata store at {metadata_path!r} (has the pipeline run?)")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def run_ids(metadata_path: str) -> list[str]:
    """The pipeline run ids of the store, oldest first."""
    store = _store(metadata_path)
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: (c.create_time_since_epoch, c.id))
    return [c.name for c in runs]


def run_states(metadata_path: str, run_id: str | None = None) -> dict:
    """``{node id: execution state}`` of run ``run_id`` (default: the latest run)."""
    from ml_metadata.proto import metadata_store_pb2

    store = _store(metadata_path)
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: (c.create_time_since_epoch, c.id))
    if not runs:
        return {}
    run = runs[-1] if run_id is None else next((c for c in runs if c.name == run_id), None)
    if run is None:
        raise ValueError(f"run {run_id!r} not found; runs: {[c.name for c in runs]}")
    node_type = store.get_context_type("node").id
    states = {}
    for execution in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
        nodes = [c.name for c in store.get_contexts_by_execution(execution.id) if c.type_id == node_type]
        name = nodes[0].split(".", 1)[-1] if nodes else execution.type
        states[name] = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
    return states


def latest_artifact_uri(pipeline_root: str, node: str, output: str) -> str | None:
    """``<pipeline_root>/<node>/<output>/<largest id>``, or ``None`` if the node wrote nothing yet."""
    candidates = [p for p in glob.glob(os.path.join(pipeline_root, node, output, "*")) if os.path.basename(p).isdigit()]
    return max(candidates, key=lambda p: int(os.path.basename(p))) if candidates else None


def tfma_metrics(evaluation_uri: str) -> dict:
    """``{metric name: value}`` of the overall slice of an Evaluator ``evaluation`` artifact."""
    import tensorflow_model_analysis as tfma

    out = {}
    for metrics in tfma.load_metrics(evaluation_uri):
        if metrics.slice_key.single_slice_keys:
            continue
        for kv in metrics.metric_keys_and_values:
            if kv.key.model_name and kv.key.is_diff:
                continue
            value = kv.value
            if value.HasField("double_value"):
                name = kv.key.name + (" (diff vs baseline)" if kv.key.is_diff else "")
                out[name] = value.double_value.value
    return out


def is_blessed(blessing_uri: str) -> bool:
    """Whether the Evaluator blessed the model (its ``blessing`` artifact holds a ``BLESSED`` file)."""
    return os.path.exists(os.path.join(blessing_uri, "BLESSED"))
