"""Next-item benchmark: SASRec, FAME and HyMoERec on ML-1M and Beauty, full ranking, seen items filtered.

The variants and their settings are ``benchmarks/settings/next_item.yaml`` (each a preset of
``tfmoe/models/presets.py`` with overrides, resolved by :func:`run_config` into a complete run config). Phases,
each resumable and each selectable (``--phase``):

1. ``prepare``: ``tfmoe prepare`` of ``../shared/data`` into ``<work-dir>/data/<dataset>`` (skipped when present).
2. ``train``: :func:`tfmoe.training.train` of every dataset x model (``--models``: the main variants) x seed into
   ``<work-dir>/<dataset>/<variant>/seed<k>`` (max epochs, early stopping on validation NDCG@10). A run that is
   cut off resumes from its last backup when the command is run again; finished runs are not retrained.
3. ``throughput``: training sequences per second of each model, in interleaved rounds on the same cached batches.
4. ``cost``: the epoch time of the ``cost`` variants relative to the dataset's SASRec.
5. ``ablation``: the other variants of each dataset (``--ablations``), ``--ablation-epochs`` at most.
6. ``report`` (always last): a record (:mod:`benchmarks.records`) for every run of the datasets, models, ablations
   and seeds asked for that this machine holds, finished or not (``"partial": true`` with the epochs run), and the
   table of :func:`benchmarks.next_item_tables.main_table` over every committed record.

Records: ``benchmarks/results/records/next_item/<dataset>/<variant>/`` (test metrics with and without seen-item
filtering, validation NDCG@10 by epoch), ``next_item_throughput/`` and ``next_item_cost/``. Training, throughput
and cost records are also written when their phase ends. ``--chunk 5`` makes the models take turns (5 epochs
each), so a run cut off at any time leaves comparable partial results:

    nohup .venv/bin/python benchmarks/next_item.py --datasets ml-1m --seeds 0 --chunk 5 > /tmp/next_item.log 2>&1 &
    .venv/bin/python benchmarks/next_item.py --phase report        # records + table from what has run so far
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml

from benchmarks import _paths as paths
from benchmarks import records
from benchmarks._runs import saved_run
from benchmarks._timing import read_json, time_interleaved, write_json
from tfmoe.models import presets

SETTINGS_FILE = os.path.join(paths.BENCHMARKS, "settings", "next_item.yaml")
with open(SETTINGS_FILE, encoding="utf-8") as _f:
    SETTINGS = yaml.safe_load(_f)
DATASETS, VARIANTS, COST_VARIANTS = SETTINGS["datasets"], SETTINGS["variants"], SETTINGS["cost"]
MODELS, BUDGET = tuple(SETTINGS["models"]), SETTINGS["budget"]
DEFAULT_WORK_DIR = os.path.join(paths.RUNS, "next_item")
RECORDS = records.ROOT
BENCHMARK, THROUGHPUT, COST = "next_item", "next_item_throughput", "next_item_cost"
COMMAND = None  # the command line records name: main's, else this process's argv


def run_dir(work_dir: str, dataset: str, variant: str, seed: int) -> str:
    return os.path.join(work_dir, dataset, *records.variant_dir(variant).split("/"), f"seed{seed}")


def run_config(dataset: str, variant: str, seed: int, work_dir: str, epochs: int, patience: int,
               overrides: dict | None = None) -> dict:
    """The complete run config of ``variant`` on ``dataset`` (see the settings file's header); ``overrides``
    (``{section: {option: value}}``) on top of the variant's own."""
    spec, entry = DATASETS[dataset], VARIANTS[dataset][variant]
    preset = presets.get(entry["preset"])
    sections = {"data": {"dir": os.path.join(work_dir, "data", dataset), **copy.deepcopy(spec["data"])},
                "model": {"name": preset["model"], **preset["options"]},
                "optimizer": copy.deepcopy(spec["optimizer"])}
    for extra in (entry.get("overrides") or {}, overrides or {}):
        for section, values in extra.items():
            if section not in sections:
                raise ValueError(f"next_item: variant {variant!r} overrides {section!r}; only data, model and "
                                 f"optimizer can be overridden")
            sections[section].update(copy.deepcopy(values))
    return {**sections,
            "training": {"epochs": epochs, "seed": seed, "verbose": 2, "early_stopping": {"patience": patience}},
            "evaluation": copy.deepcopy(SETTINGS["evaluation"]),
            "output_dir": run_dir(work_dir, dataset, variant, seed)}


def ablations(dataset: str) -> list[str]:
    """The dataset's variants that are not a main model run."""
    return [label for label in VARIANTS[dataset] if label not in MODELS]


_DATA_HASHES: dict = {}


def data_files(dataset: str, work_dir: str) -> list[str]:
    """The files the dataset's runs read: the raw input when this machine has it, else the prepared data."""
    raw = os.path.join(paths.SHARED_DATA, DATASETS[dataset].get("input", ""))
    return [raw] if os.path.isfile(raw) else [os.path.join(work_dir, "data", dataset)]


def _record(benchmark: str, variant: str, config: dict, metrics: dict, dataset: str, work_dir: str, **kwargs) -> dict:
    files = data_files(dataset, work_dir)
    key = tuple(files)
    if key not in _DATA_HASHES:
        _DATA_HASHES[key] = records.data_hash(files)
    record = records.make_record(benchmark, variant, config, metrics, data_files=[], command=COMMAND, **kwargs)
    return {**record, "data_hash": _DATA_HASHES[key]}


def record_run(dataset: str, variant: str, seed: int, work_dir: str, epochs: int, patience: int,
               unfiltered: bool = True, root: str | None = None) -> str | None:
    """Writes the record of one run as far as it ran (``None``: nothing saved yet); ``unfiltered``: also its test
    metrics without seen-item filtering (one more evaluation, cached in the run directory)."""
    from tfmoe.training.trainer import sequences_per_s, train_records

    config = run_config(dataset, variant, seed, work_dir, epochs, patience)
    run = saved_run(config, "next_item")
    if run is None:
        return None
    budget_left = not run["stopped_early"] and run["epochs"] < epochs  # stopped by a chunk, not done
    metrics = {"test": run["test"], "test_unfiltered": _unfiltered_test(config, run) if unfiltered else None,
               "valid": run["valid"], "best_epoch": run["best_epoch"] + 1, "stopped_early": run["stopped_early"],
               "valid_ndcg@10_curve": [round(x, 5) for x in _valid_curve(run["history"])],
               "sequences_per_s_training": sequences_per_s(run["history"], train_records(config["data"]["dir"]), 0),
               "device": run["device"]}
    record = _record(BENCHMARK, f"{dataset}/{variant}", run_config(dataset, variant, seed, "<work-dir>", epochs,
                                                                   patience),
                     metrics, dataset, work_dir, epochs=run["epochs"], seed=seed,
                     partial=not run["finished"] or budget_left)
    return records.write_record(record, root or RECORDS)


# ----- phases ------------------------------------------------------------------------------------------
def prepare(datasets, work_dir: str) -> None:
    for name in datasets:
        out = os.path.join(work_dir, "data", name)
        if os.path.exists(os.path.join(out, "summary.json")):
            continue
        spec = DATASETS[name]
        command = [os.path.join(os.path.dirname(sys.executable), "tfmoe"), "prepare", "--format", spec["format"],
                   "--input", os.path.join(paths.SHARED_DATA, spec["input"]), "--out", out]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)


def train_all(datasets, variants, seeds, work_dir: str, epochs: int, patience: int, chunk: int,
              root: str | None = None) -> None:
    """Trains every run, writing its record after each turn; with ``chunk`` < ``epochs`` the variants take turns,
    ``chunk`` epochs each, so that at any time (a cut-off session) all have had about the same number of epochs."""
    from tfmoe.training import train

    for dataset in datasets:
        for target in range(min(chunk, epochs), epochs + chunk, chunk):
            target = min(target, epochs)
            for variant in variants:
                if variant not in VARIANTS[dataset]:
                    continue
                for seed in seeds:
                    config = run_config(dataset, variant, seed, work_dir, target, patience)
                    print(f"== train {dataset} {variant} seed {seed} up to epoch {target} -> {config['output_dir']}",
                          flush=True)
                    result = train(config)
                    print(f"== {dataset} {variant} seed {seed}: epochs {result.epochs_run}, best {result.best_epoch}, "
                          f"stopped early {result.stopped_early}, test {json.dumps(result.test_metrics)}", flush=True)
                    record_run(dataset, variant, seed, work_dir, epochs, patience, unfiltered=False, root=root)
            if target == epochs:
                break


def _timing_config(dataset: str, model: str, rounds: int, steps: int, overrides: dict | None = None) -> dict:
    return {**run_config(dataset, model, 0, "<work-dir>", 1, 1, overrides),
            "timing": {"rounds": rounds, "steps_per_round": steps, "warmup_rounds": 1}}


def throughput(datasets, models, work_dir: str, rounds: int, steps: int, root: str | None = None) -> dict:
    """``{dataset: {model: sequences/s}}``: ``steps`` training steps per round on the same cached batches; one
    record per dataset and model."""
    rates = _throughput(datasets, {m: (m, {}) for m in models}, work_dir, rounds, steps)
    for dataset, section in rates.items():
        for model, rate in section.items():
            config = _timing_config(dataset, model, rounds, steps)
            records.write_record(_record(THROUGHPUT, f"{dataset}/{model}", config, {"sequences_per_s": rate}, dataset,
                                         work_dir, epochs=None, seed=0, partial=False), root or RECORDS)
    return rates


def cost_ablation(datasets, work_dir: str, rounds: int, steps: int, root: str | None = None) -> dict:
    """Sequences/s of SASRec and the cost variants, interleaved on the same batches, and each variant's epoch time
    relative to SASRec; one record per dataset and variant."""
    variants = {"sasrec": ("sasrec", {}), **{label: (v["model"], v.get("overrides") or {})
                                             for label, v in COST_VARIANTS.items()}}
    rates = _throughput(datasets, variants, work_dir, rounds, steps)
    print(f"{'dataset':8} {'variant':44} {'seq/s':>7} {'t/SASRec':>8}")
    for dataset, section in rates.items():
        for label, rate in section.items():
            model, overrides = variants[label]
            metrics = {"sequences_per_s": rate, "epoch_time_vs_sasrec": section["sasrec"] / rate}
            records.write_record(_record(COST, f"{dataset}/{label}",
                                         _timing_config(dataset, model, rounds, steps, overrides), metrics, dataset,
                                         work_dir, epochs=None, seed=0, partial=False), root or RECORDS)
            print(f"{dataset:8} {label:44} {rate:7.0f} {metrics['epoch_time_vs_sasrec']:8.2f}")
    return rates


def ablation(datasets, seeds, work_dir: str, epochs: int, labels=None, patience: int | None = None,
             root: str | None = None) -> None:
    """Trains the ablation variants ``labels`` (default: all of each dataset) for ``epochs`` at most (early stopping
    after ``patience`` epochs without gain, default none) and writes their records."""
    from tfmoe.training import train

    for dataset in datasets:
        for label in ablations(dataset):
            if labels is not None and label not in labels:
                continue
            for seed in seeds:
                config = run_config(dataset, label, seed, work_dir, epochs, patience or epochs)
                print(f"== ablation {dataset} {label} seed {seed} up to epoch {epochs}", flush=True)
                train(config)
                record_run(dataset, label, seed, work_dir, epochs, patience or epochs, root=root)


def _throughput(datasets, variants: dict, work_dir: str, rounds: int, steps: int) -> dict:
    """``{dataset: {label: sequences/s}}`` for ``variants`` = ``{label: (model, overrides)}``."""
    import keras

    from tfmoe.data import dataset as data
    from tfmoe.training.config import TrainConfig
    from tfmoe.training.trainer import build_model, data_sizes, make_optimizer

    out = {}
    for name in datasets:
        configs = {label: TrainConfig.from_dict(run_config(name, m, 0, work_dir, 1, 1, overrides))
                   for label, (m, overrides) in variants.items()}
        first = next(iter(configs.values()))
        ds = data.make_dataset(first.data.dir, "train", "next_item", max_len=first.data.max_len,
                               batch_size=first.data.batch_size, sequence_features=(), seed=0,
                               bucket_boundaries=first.data.bucket_boundaries)
        batches = [b for _, b in zip(range(steps), ds)]
        rows = sum(int(x["history"].shape[0]) for x, _ in batches)
        steppers = {}
        for model_name, config in configs.items():
            keras.utils.set_random_seed(0)
            model = build_model(config, "next_item", data_sizes(config.data.dir))
            model.compile(optimizer=make_optimizer(config.optimizer))

            def run(model=model, batches=batches):
                for x, y in batches:
                    logs = model.train_on_batch(x, y, return_dict=True)
                return float(logs["loss"])

            steppers[model_name] = run
        timings = time_interleaved(steppers, warmup=1, rounds=rounds)
        out[name] = {m: rows / t["median_s"] for m, t in timings.items()}
    return out


UNFILTERED_FILE = "metrics_unfiltered.json"


def _unfiltered_test(config: dict, run: dict) -> dict:
    """Test metrics of the run's best checkpoint without seen-item filtering, cached in the run directory for the
    checkpoint it was computed from."""
    from tfmoe.training import evaluate_best

    path = os.path.join(config["output_dir"], UNFILTERED_FILE)
    checkpoint = {"best_epoch": run["best_epoch"], "epochs": run["epochs"]}
    saved = read_json(path)
    if saved.get("checkpoint") != checkpoint:
        unfiltered = {**config, "evaluation": {**config["evaluation"], "filter_seen": False}}
        saved = {"checkpoint": checkpoint, "test": evaluate_best(unfiltered, ["test"])["test"]}
        write_json(path, saved)
    return saved["test"]


def _valid_curve(history: list) -> list[float]:
    """Validation NDCG@10 after each validated epoch, in epoch order."""
    return [h["val_NDCG@10"] for h in sorted(history, key=lambda h: h["epoch"]) if "val_NDCG@10" in h]


def report(datasets, models, labels, seeds, work_dir: str, epochs: int, patience: int, ablation_epochs: int,
           ablation_patience: int | None, root: str | None = None) -> dict:
    """Writes the records of the runs this machine holds and prints the main table over every record."""
    from benchmarks import next_item_tables as tables

    for dataset in datasets:
        for variant in VARIANTS[dataset]:
            main = variant in MODELS
            if (variant not in models) if main else (labels is not None and variant not in labels):
                continue
            budget = (epochs, patience) if main else (ablation_epochs, ablation_patience or ablation_epochs)
            for seed in seeds:
                if os.path.isdir(run_dir(work_dir, dataset, variant, seed)):
                    record_run(dataset, variant, seed, work_dir, *budget, root=root)
    payload = tables.aggregate(records.load_records(root or RECORDS))
    print(tables.main_table(payload))
    return payload


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--phase", nargs="+", default=["prepare", "train", "throughput", "report"],
                        choices=["prepare", "train", "throughput", "cost", "ablation", "report"])
    parser.add_argument("--ablation-epochs", type=int, default=BUDGET["epochs"])
    parser.add_argument("--ablation-patience", type=int, default=BUDGET["patience"],
                        help="ablation: early stopping patience")
    parser.add_argument("--ablations", nargs="+", help="ablation: these variants only (default: all)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="prepared data and runs (outside the repo)")
    parser.add_argument("--records", default=RECORDS, help="where records are written and read")
    parser.add_argument("--epochs", type=int, default=BUDGET["epochs"], help="max epochs per run")
    parser.add_argument("--patience", type=int, default=BUDGET["patience"])
    parser.add_argument("--chunk", type=int, default=BUDGET["epochs"],
                        help="models take turns training this many epochs (default: one model after the other)")
    parser.add_argument("--rounds", type=int, default=5, help="throughput: interleaved rounds")
    parser.add_argument("--steps", type=int, default=10, help="throughput: training steps per round")
    args = parser.parse_args(argv)
    global COMMAND
    COMMAND = sys.argv if argv is None else ["benchmarks/next_item.py", *argv]
    known = {label for dataset in args.datasets for label in ablations(dataset)}
    if args.ablations and not set(args.ablations) <= known:
        parser.error(f"unknown ablations {sorted(set(args.ablations) - known)}; known: {sorted(known)}")
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    if "prepare" in args.phase:
        prepare(args.datasets, args.work_dir)
    if "train" in args.phase:
        train_all(args.datasets, args.models, args.seeds, args.work_dir, args.epochs, args.patience, args.chunk,
                  args.records)
    if "throughput" in args.phase:
        rates = throughput(args.datasets, args.models, args.work_dir, args.rounds, args.steps, args.records)
        print("sequences/s:", json.dumps(rates), flush=True)
    if "cost" in args.phase:
        cost_ablation(args.datasets, args.work_dir, args.rounds, args.steps, args.records)
    if "ablation" in args.phase:
        ablation(args.datasets, args.seeds, args.work_dir, args.ablation_epochs, args.ablations,
                 args.ablation_patience, args.records)
    if "report" in args.phase:
        report(args.datasets, args.models, args.ablations, args.seeds, args.work_dir, args.epochs, args.patience,
               args.ablation_epochs, args.ablation_patience, args.records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
