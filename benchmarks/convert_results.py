"""One-off conversion of the results files that hold current numbers into records (:mod:`benchmarks.records`).

    .venv/bin/python benchmarks/convert_results.py

It reads ``benchmarks/results/archive/converted/`` (the next-item, MoE-layer, data-pipeline and serving files) and
``benchmarks/results/archive/`` (the ablation file).

Every record says ``"converted_from": "<file>"`` and keeps the file's ``_meta`` command and machine where it has
them; ``commit``, ``date`` and ``data_hash`` are ``null`` (the files did not record them). What is converted:

* ``next_item.json``: each main run (dataset x model x seed) -> ``next_item`` records, with test metrics with and
  without seen-item filtering, validation NDCG@10 by epoch and epochs; the throughput phase's rate of each model
  -> ``next_item_throughput`` records;
* ``next_item_cost.json`` -> ``next_item_cost`` records;
* ``next_item_ablation.json``: the runs of the ablation variants of ``benchmarks/settings/next_item.yaml`` (the
  labels of :data:`ABLATION_LABELS`, whose settings are those of the settings file) -> ``next_item`` records;
* ``long_ctr.json``: its planted-theme purity measurement (keys ``purity``, ``nmi``, ``purity_meta``, which
  record their own command, commit, machine and date) -> a ``theme_purity`` record;
* ``moe_layers.json``, ``data_pipeline.json``, ``serving.json`` -> one record each (variant ``default``).
"""

from __future__ import annotations

import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _paths as paths
from benchmarks import records
from benchmarks.next_item import BENCHMARK, COST, THROUGHPUT, run_dir

SOURCES = os.path.join(paths.RESULTS, "archive", "converted")
# (dataset, label in next_item_ablation.json) -> label in the settings file
ABLATION_LABELS = {
    ("ml-1m", "sasrec reference random batches"): "sasrec attention_output_dropout=0",
    ("ml-1m", "sasrec original torch attention init random batches"): "sasrec torch attention init",
    ("ml-1m", "sasrec pytorch settings random batches"): "sasrec pytorch settings",
    **{("beauty", f"{model} dropout=0.3"): f"{model} dropout=0.3" for model in ("sasrec", "fame", "hymoerec")},
}


def _converted(benchmark, variant, config, metrics, epochs, seed, partial, source, meta, **extra) -> dict:
    command = meta.get("command")
    return records.validate({
        "benchmark": benchmark, "variant": variant, "config": config, "metrics": metrics, "epochs": epochs,
        "seed": seed, "machine": meta.get("machine"), "command": command, "commit": None, "date": None,
        "data_hash": None, "partial": partial, "converted_from": f"benchmarks/results/{source}", **extra})


def _seeded(config: dict, dataset: str, label: str, seed: int) -> dict:
    config = copy.deepcopy(config)
    config["training"]["seed"] = seed
    config["output_dir"] = run_dir("<work-dir>", dataset, label, seed)
    return config


def next_item(payload: dict) -> list[dict]:
    meta, out = payload["_meta"], []
    for dataset, section in payload.items():
        if dataset.startswith("_"):
            continue
        for model, entry in section.items():
            for run in entry["runs"]:
                notes = {k: run[k] for k in ("trained_as", "source", "reported_earlier") if k in run}
                metrics = {"test": run["test"], "test_unfiltered": run["test_unfiltered"], "valid": run["valid"],
                           "best_epoch": run["best_epoch"] + 1, "stopped_early": run["stopped_early"],
                           "valid_ndcg@10_curve": run["valid_ndcg@10_curve"],
                           "sequences_per_s_training": run["sequences_per_s"], "device": run["device"]}
                out.append(_converted(BENCHMARK, f"{dataset}/{model}", _seeded(entry["config"], dataset, model,
                                                                                run["seed"]),
                                      metrics, run["epochs"], run["seed"], run["partial"], "next_item.json", meta,
                                      **({"notes": notes} if notes else {})))
            if entry.get("sequences_per_s_source", "").startswith("throughput phase"):
                config = {**entry["config"], "timing": entry["sequences_per_s_source"]}
                out.append(_converted(THROUGHPUT, f"{dataset}/{model}", config,
                                      {"sequences_per_s": entry["sequences_per_s"]}, None, 0, False,
                                      "next_item.json", meta))
    return out


def next_item_cost(payload: dict) -> list[dict]:
    meta, out = payload["_meta"], []
    timing = {"what": meta["what"], "rounds": meta["rounds"], "steps_per_round": meta["steps_per_round"]}
    for dataset, section in payload.items():
        if dataset.startswith("_"):
            continue
        for label, entry in section.items():
            config = {"model": {"name": entry["model"]}, "model_options": entry["model_options"], "timing": timing}
            metrics = {k: entry[k] for k in ("sequences_per_s", "epoch_time_vs_sasrec")}
            out.append(_converted(COST, f"{dataset}/{label}", config, metrics, None, 0, False, "next_item_cost.json",
                                  meta))
    return out


def next_item_ablation(payload: dict) -> list[dict]:
    """Its ``_meta`` describes only the last command that merged into the file: the records keep no machine nor
    command."""
    out = []
    for dataset in {dataset for dataset, _ in ABLATION_LABELS}:
        for key, entry in payload[dataset].items():
            for (source_dataset, source_label), label in ABLATION_LABELS.items():
                seed = entry.get("seed", 0)  # the file keyed seed 0 by the bare label
                if dataset != source_dataset or key not in (source_label, f"{source_label} (seed {seed})"):
                    continue
                config = {"data": entry.get("data"), "model": entry["model_options"], "optimizer": entry["optimizer"]}
                metrics = {"test": entry["test"], "test_unfiltered": None, "valid": None,
                           "best_epoch": entry["best_epoch"], "stopped_early": entry["stopped_early"],
                           "valid_ndcg@10_curve": [round(x, 5) for x in entry["valid_ndcg@10"]],
                           "sequences_per_s_training": None, "device": entry["device"]}
                out.append(_converted(BENCHMARK, f"{dataset}/{label}", config, metrics, entry["epochs"],
                                      seed, entry["partial"], "next_item_ablation.json", {},
                                      notes={"label_in_source": key}))
    return out


def theme_purity(payload: dict) -> dict:
    """The purity measurement of ``long_ctr.json`` (the file's other keys are superseded)."""
    meta = payload["purity_meta"]
    own = ("command", "commit", "worktree_dirty", "machine", "date")
    metrics = {"purity": payload["purity"], "nmi": payload["nmi"],
               "purity_meta": {k: x for k, x in meta.items() if k not in own}}
    partial = any(not run["stopped_early"] and run["epochs_run"] < meta["epochs"] for run in meta["runs"].values())
    record = _converted("theme_purity", f"synthetic-small/{'+'.join(meta['config'])}", meta["config"], metrics,
                        meta["epochs"], meta["seed"], partial, "long_ctr.json", meta)
    return records.validate({**record, "commit": {"sha": meta["commit"], "dirty": meta["worktree_dirty"]},
                             "date": meta["date"]})


def single(name: str, payload: dict) -> dict:
    """A results file of one measurement: its settings as the config, the rest as the metrics."""
    settings_key = next(k for k in ("settings", "setup", "config") if k in payload)
    meta = {"command": payload.get("command"), "machine": payload.get("machine")}
    metrics = {k: x for k, x in payload.items() if k not in (settings_key, "command", "machine")}
    return _converted(name, "default", payload[settings_key], metrics, None, 0, False, f"{name}.json", meta)


def main() -> int:
    def load(name):
        with open(os.path.join(SOURCES, name), encoding="utf-8") as f:
            return json.load(f)

    converted = next_item(load("next_item.json")) + next_item_cost(load("next_item_cost.json"))
    converted += next_item_ablation(load(os.path.join("..", "next_item_ablation.json")))
    converted.append(theme_purity(load(os.path.join("..", "long_ctr.json"))))
    converted += [single(name, load(f"{name}.json"))
                  for name in ("moe_layers", "data_pipeline", "serving")]
    for record in converted:
        records.write_record(record)
    print(f"{len(converted)} records -> {records.ROOT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
