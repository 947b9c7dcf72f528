"""The preparation job run by 2 DirectRunner worker processes writes the same bytes as the default run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_prepare import csv_config, iter_tfrecords, make_log, tree

from tfmoe.data import schema
from tfmoe.data.prepare import prepare

PARALLEL = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
# what summary.json may differ in between two runs: when and how fast they ran, where, and the Beam options
RUN_ONLY = ("created_at", "elapsed_seconds")
RUN_ONLY_CONFIG = ("output_dir", "pipeline_args")


def comparable_summary(text: str) -> dict:
    summary = json.loads(text)
    for key in RUN_ONLY:
        summary.pop(key)
    for key in RUN_ONLY_CONFIG:
        summary["config"].pop(key)
    return summary


@pytest.mark.slow
@pytest.mark.e2e
def test_two_worker_processes_write_byte_identical_output(tmp_path):
    log = tmp_path / "log.csv"
    make_log(log)  # shuffled rows of 60 users, tied timestamps, categories, behaviors, bad rows
    # 1 KiB read splits (several parallel reads), 3 shards, k-core rounds and truncation: every global stage runs
    settings = dict(kcore_users=2, kcore_items=2)
    default = prepare(csv_config(str(log), tmp_path / "default", **settings))
    parallel = prepare(csv_config(str(log), tmp_path / "parallel", **settings, pipeline_args=PARALLEL))
    assert parallel["config"]["pipeline_args"] == list(PARALLEL)
    assert default["input"]["splits"] > 3 and default["kcore"]["rounds_with_removals"] >= 1

    expected, got = tree(tmp_path / "default"), tree(tmp_path / "parallel")
    assert sorted(got) == sorted(expected)
    shards = sorted(name for name in expected if name.endswith(schema.RECORD_SUFFIX))
    assert shards == sorted(f"{split}/{schema.shard_file_name(i, 3)}" for split in schema.SPLITS for i in range(3))
    for name in shards:  # the records first (a clearer failure), then the compressed bytes
        records = list(iter_tfrecords(tmp_path / "default" / name))
        assert records, name
        assert list(iter_tfrecords(tmp_path / "parallel" / name)) == records, name
    # TensorFlow's GZIP writer stores no timestamp or file name in the gzip header, so equal records compress to
    # equal bytes: the shards are compared whole, like every other file
    for name in expected:
        if name != schema.SUMMARY_FILE:
            assert got[name] == expected[name], name
    summary = {name: comparable_summary(Path(tmp_path, name, schema.SUMMARY_FILE).read_text())
               for name in ("default", "parallel")}
    assert summary["parallel"] == summary["default"]
