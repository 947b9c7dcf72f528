"""The README's next-item tables, rendered from the committed results (so the README shows what the JSON holds).

    .venv/bin/python benchmarks/next_item_tables.py                       # the main table
    .venv/bin/python benchmarks/next_item_tables.py --cost ml-1m          # the MoE models' cost table
    .venv/bin/python benchmarks/next_item_tables.py --ablation beauty --epochs 2 5 10 20 25 \\
        --labels sasrec "sasrec random batches"                           # rows of the ablation table
    .venv/bin/python benchmarks/next_item_tables.py --seed-means beauty \\
        --labels "sasrec random batches" "sasrec dropout=0.3"             # variants' means over their seeds

Example:
    >>> payload = {"toy": {"sasrec": {"ndcg@10": 0.05, "ndcg@10_std": 0.001, "hr@10": 0.08, "seeds": 3,
    ...     "unfiltered": {"ndcg@10": 0.04, "hr@10": 0.07}, "epochs": 35.0, "partial": False,
    ...     "sequences_per_s": 476.2, "epoch_time_vs_sasrec": 1.0}}}
    >>> print(main_table(payload).splitlines()[-1])
    | toy | sasrec | 0.0500 ± 0.0010 | 0.0800 | 0.0400 / 0.0700 | 3 | 35 | 476 | 1.00 |
    >>> payload["toy"]["sasrec"].update(unfiltered=None, sequences_per_s=None, epoch_time_vs_sasrec=None)
    >>> print(main_table(payload).splitlines()[-1])  # seeds known only from the ablation results
    | toy | sasrec | 0.0500 ± 0.0010 | 0.0800 | n/a | 3 | 35 | n/a | n/a |
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.next_item import (  # imports no TensorFlow
    ABLATION_RESULTS,
    COST_RESULTS,
    DATASETS,
    MODELS,
    RESULTS,
    variant_seed_keys,
)

MODEL_ORDER, DATASET_ORDER = tuple(MODELS), tuple(DATASETS)
MAIN_HEADER = ("| dataset | model | NDCG@10 | HR@10 | unfiltered NDCG@10 / HR@10 | seeds | epochs (mean) | "
               "sequences/s (2 CPU cores) | epoch time / SASRec |\n|---|---|---|---|---|---|---|---|---|")


def main_table(payload: dict) -> str:
    """The main results table: one row per dataset x model of ``benchmarks/results/next_item.json``."""
    rows = [MAIN_HEADER]
    for dataset in sorted((d for d in payload if not d.startswith("_")), key=lambda d: _rank(DATASET_ORDER, d)):
        section = payload[dataset]
        for model in sorted(section, key=lambda m: _rank(MODEL_ORDER, m)):
            e = section[model]
            epochs = f"{e['epochs']:.0f}" + (" (partial)" if e["partial"] else "")
            spread = f"± {e['ndcg@10_std']:.4f}" if e["seeds"] > 1 else "(1 seed)"
            rows.append(f"| {dataset} | {model} | {e['ndcg@10']:.4f} {spread} | {e['hr@10']:.4f} | "
                        f"{_unfiltered(e)} | {e['seeds']} | {epochs} | {_number(e['sequences_per_s'], '.0f')} | "
                        f"{_number(e['epoch_time_vs_sasrec'], '.2f')} |")
    return "\n".join(rows)


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _unfiltered(entry: dict) -> str:
    """``NDCG@10 / HR@10`` without seen-item filtering; runs known only from the ablation results have none, so a
    mean over fewer seeds than the row says ``(k of n seeds)``, and none at all ``n/a``."""
    unfiltered = entry.get("unfiltered")
    if not unfiltered:
        return "n/a"
    cell = f"{unfiltered['ndcg@10']:.4f} / {unfiltered['hr@10']:.4f}"
    count = entry.get("unfiltered_seeds", entry["seeds"])
    return cell if count == entry["seeds"] else f"{cell} ({count} of {entry['seeds']} seeds)"


def cost_table(payload: dict, dataset: str) -> str:
    """The cost variants (HyMoERec, FAME) on ``dataset`` from ``benchmarks/results/next_item_cost.json``."""
    rows = [f"| cost on {dataset} | sequences/s | epoch time / SASRec |\n|---|---|---|"]
    rows += [f"| {label} | {e['sequences_per_s']:.0f} | {e['epoch_time_vs_sasrec']:.2f} |"
             for label, e in payload[dataset].items()]
    return "\n".join(rows)


MAIN_LABEL = " (benchmark settings)"


def main_run_test(results: dict, dataset: str, model: str, curve: list) -> dict | None:
    """The test metrics of the main run whose validation curve the ablation file holds for ``model`` (the
    ablation phase records main runs' curves only): the report's run of the same curve, else ``None``."""
    for run in results.get(dataset, {}).get(model, {}).get("runs", []):
        if [round(x, 5) for x in curve] == run["valid_ndcg@10_curve"]:
            return run["test"]
    return None


def _rank(order: tuple, name: str) -> tuple:
    return (order.index(name), "") if name in order else (len(order), name)


def ablation_row(label: str, entry: dict, epochs, test: dict | None = None) -> str:
    """``| label | validation NDCG@10 at epochs... | best validation (epoch b of n) | test NDCG@10 / HR@10 |``
    (``test``: when the entry has none); a run without test metrics shows ``cut off`` (``partial`` when it has
    some but was cut off)."""
    curve = entry["valid_ndcg@10"]
    cells = [f"{curve[e - 1]:.4f}" if e <= len(curve) else "" for e in epochs]
    best = max(range(len(curve)), key=curve.__getitem__) if curve else None
    best_cell = f"{curve[best]:.4f} (epoch {best + 1} of {len(curve)})" if curve else ""
    test = entry.get("test") or test
    result = f"{test['NDCG@10']:.4f} / {test['HR@10']:.4f}" if test else "cut off"
    if test and entry.get("partial"):
        result += " (partial)"
    return f"| {label} | " + " | ".join(cells + [best_cell, result]) + " |"


SEED_MEANS_HEADER = ("| {dataset}, variants over their seeds | seeds | test NDCG@10 | test HR@10 | best validation "
                     "NDCG@10 | epochs (mean) |\n|---|---|---|---|---|---|")


def seed_means_row(label: str, section: dict) -> str:
    """``| label | seeds | test NDCG@10 mean ± sample std | HR@10 mean | best validation mean | epochs mean |`` over the
    finished runs of variant ``label``: the ablation results' keys ``label``, ``label (seed 1)``, ... (``seeds`` names
    them, so a mean over fewer seeds cannot pass for a 3-seed one).

    >>> run = lambda ndcg, curve: {"test": {"NDCG@10": ndcg, "HR@10": 2 * ndcg}, "valid_ndcg@10": curve}
    >>> section = {"v": run(0.05, [0.05, 0.06]), "v (seed 1)": run(0.07, [0.07, 0.06, 0.05]), "w": run(0.1, [0.1])}
    >>> seed_means_row("v", section)
    '| v | 0, 1 | 0.0600 ± 0.0141 | 0.1200 | 0.0650 | 2.5 |'
    """
    runs = [(seed, section[key]) for seed, key in variant_seed_keys(section, label).items()]
    runs = [(seed, e) for seed, e in runs if e.get("test") and not e.get("partial")]
    if not runs:
        raise ValueError(f"seed_means_row: variant {label!r} has no finished run in the ablation results")
    ndcg = [e["test"]["NDCG@10"] for _, e in runs]
    spread = f" ± {statistics.stdev(ndcg):.4f}" if len(runs) > 1 else ""
    hr = statistics.fmean(e["test"]["HR@10"] for _, e in runs)
    best = statistics.fmean(max(e["valid_ndcg@10"]) for _, e in runs)
    epochs = statistics.fmean(len(e["valid_ndcg@10"]) for _, e in runs)
    seeds = ", ".join(str(seed) for seed, _ in runs)
    return f"| {label} | {seeds} | {statistics.fmean(ndcg):.4f}{spread} | {hr:.4f} | {best:.4f} | {epochs:.1f} |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ablation", metavar="DATASET", help="rows of this dataset's ablation table instead")
    parser.add_argument("--cost", metavar="DATASET", help="this dataset's cost table (HyMoERec, FAME) instead")
    parser.add_argument("--seed-means", metavar="DATASET", help="means of the variants --labels over their seeds")
    parser.add_argument("--epochs", nargs="+", type=int, default=[2, 5, 10, 20, 25])
    parser.add_argument("--labels", nargs="+", help="ablation: these variants (default all)")
    args = parser.parse_args(argv)
    if args.seed_means is not None:
        if not args.labels:
            parser.error("--seed-means needs --labels")
        section = json.load(open(ABLATION_RESULTS))[args.seed_means]
        print("\n".join([SEED_MEANS_HEADER.format(dataset=args.seed_means)] +
                        [seed_means_row(label, section) for label in args.labels]))
        return 0
    if args.cost is not None:
        print(cost_table(json.load(open(COST_RESULTS)), args.cost))
        return 0
    if args.ablation is None:
        print(main_table(json.load(open(RESULTS))))
        return 0
    section, results = json.load(open(ABLATION_RESULTS))[args.ablation], json.load(open(RESULTS))
    for key in args.labels or [k for k, e in section.items() if e["valid_ndcg@10"]]:
        entry = section[key]
        main_model = key in MODEL_ORDER
        test = main_run_test(results, args.ablation, key, entry["valid_ndcg@10"]) if main_model else None
        print(ablation_row(key + (MAIN_LABEL if main_model else ""), entry, args.epochs, test))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
