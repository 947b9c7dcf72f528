"""Reading ExampleValidator's anomalies and turning them into one clear error (no TFX import).

ExampleValidator records anomalies per split in ``<anomalies uri>/Split-<split>/SchemaDiff.pb``
(a ``tensorflow_metadata`` ``Anomalies`` proto) but does not fail; the pipeline's
``AnomaliesGate`` (:mod:`tfmoe.tfx.components`) raises :class:`AnomaliesFound` with
:func:`anomalies_message`, which names every split, feature and reason.

Example:
    >>> from tfmoe.tfx.anomalies import anomalies_message
    >>> print(anomalies_message({"train": [("user_id", "Out-of-range values", "Unexpectedly small value: 0.")]}))
    ExampleValidator found anomalies in 1 split(s); the run stops before training:
      split 'train', feature 'user_id': Out-of-range values: Unexpectedly small value: 0.
    Fix the data, or update the schema (TFMOE_SCHEMA / --schema) if the change is expected.
"""

from __future__ import annotations

import os

SPLIT_PREFIX = "Split-"
SCHEMA_DIFF_FILE = "SchemaDiff.pb"  # what ExampleValidator writes per split


class AnomaliesFound(RuntimeError):
    """ExampleValidator found anomalies: the message lists them per split and feature."""


def read_anomalies(anomalies_uri: str, split_names) -> dict:
    """``{split: [(feature or "<dataset>", short description, description)]}`` of the splits with anomalies."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = {}
    for split in split_names:
        path = os.path.join(anomalies_uri, SPLIT_PREFIX + split, SCHEMA_DIFF_FILE)
        if not os.path.exists(path):
            continue
        proto = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
        rows = [(feature, info.short_description, info.description)
                for feature, info in sorted(proto.anomaly_info.items())]
        if proto.HasField("dataset_anomaly_info"):
            info = proto.dataset_anomaly_info
            rows.append(("<dataset>", info.short_description, info.description))
        if rows:
            found[split] = rows
    return found


def anomalies_message(found: dict) -> str:
    """One readable error message for :func:`read_anomalies`' result."""
    lines = [f"ExampleValidator found anomalies in {len(found)} split(s); the run stops before training:"]
    for split, rows in sorted(found.items()):
        for feature, short, description in rows:
            lines.append(f"  split {split!r}, feature {feature!r}: {short}: {description}")
    lines.append("Fix the data, or update the schema (TFMOE_SCHEMA / --schema) if the change is expected.")
    return "\n".join(lines)


def raise_if_anomalies(anomalies_uri: str, split_names) -> None:
    """Raises :class:`AnomaliesFound` when any split has anomalies."""
    found = read_anomalies(anomalies_uri, split_names)
    if found:
        raise AnomaliesFound(anomalies_message(found))
