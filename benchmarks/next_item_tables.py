"""The next-item tables: the main and cost tables from the records (:mod:`benchmarks.records`), and the rows of the
archived ablation results (``benchmarks/results/archive/next_item_ablation.json``).

    .venv/bin/python benchmarks/next_item_tables.py                       # the main table
    .venv/bin/python benchmarks/next_item_tables.py --cost ml-1m          # the MoE models' cost table
    .venv/bin/python benchmarks/next_item_tables.py --papers-protocol     # writes benchmarks/results/next_item.json
    .venv/bin/python benchmarks/next_item_tables.py --ablation beauty --epochs 2 5 10 20 25 \\
        --labels sasrec "sasrec random batches"                           # rows of an archived ablation table
    .venv/bin/python benchmarks/next_item_tables.py --seed-means beauty \\
        --labels "sasrec random batches" "sasrec dropout=0.3"             # archived variants' means over seeds

Example:
    >>> payload = {"toy": {"sasrec": {"ndcg@10": 0.05, "ndcg@10_std": 0.001, "hr@10": 0.08, "seeds": 3,
    ...     "unfiltered": {"ndcg@10": 0.04, "hr@10": 0.07}, "epochs": 35.0, "partial": False,
    ...     "sequences_per_s": 476.2, "epoch_time_vs_sasrec": 1.0}}}
    >>> print(main_table(payload).splitlines()[-1])
    | toy | sasrec | 0.0500 ± 0.0010 | 0.0800 | 0.0400 / 0.0700 | 3 | 35 | 476 | 1.00 |
    >>> payload["toy"]["sasrec"].update(unfiltered=None, sequences_per_s=None, epoch_time_vs_sasrec=None)
    >>> print(main_table(payload).splitlines()[-1])  # no unfiltered metrics nor rate recorded
    | toy | sasrec | 0.0500 ± 0.0010 | 0.0800 | n/a | 3 | 35 | n/a | n/a |
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _paths as paths
from benchmarks import records
from benchmarks.next_item import BENCHMARK, COST, COST_VARIANTS, DATASETS, MODELS, THROUGHPUT, VARIANTS, run_config

ARCHIVE = os.path.join(paths.RESULTS, "archive")
ABLATION_ARCHIVE = os.path.join(ARCHIVE, "next_item_ablation.json")
MODEL_ORDER, DATASET_ORDER = tuple(MODELS), tuple(DATASETS)
MAIN_HEADER = ("| dataset | model | NDCG@10 | HR@10 | unfiltered NDCG@10 / HR@10 | seeds | epochs (mean) | "
               "sequences/s (2 CPU cores) | epoch time / SASRec |\n|---|---|---|---|---|---|---|---|---|")


# ----- records -> tables -------------------------------------------------------------------------------------------
def _settings(config: dict) -> str:
    """A run's settings without its budget, seed, paths and timing: what makes two runs the same variant."""
    kept = {k: x for k, x in config.items() if k not in ("training", "output_dir", "timing")}
    return json.dumps({**kept, "data": {**(kept.get("data") or {}), "dir": None}}, sort_keys=True)


def _current(benchmark: str, dataset: str, label: str) -> str | None:
    """The settings of the variant as the settings file defines it now (``None``: it defines no such variant)."""
    if benchmark == COST:
        if label == "sasrec":
            return _settings(run_config(dataset, "sasrec", 0, "<work-dir>", 1, 1))
        if label not in COST_VARIANTS:
            return None
        variant = COST_VARIANTS[label]
        return _settings(run_config(dataset, variant["model"], 0, "<work-dir>", 1, 1, variant.get("overrides")))
    return _settings(run_config(dataset, label, 0, "<work-dir>", 1, 1)) if label in VARIANTS.get(dataset, {}) else None


def select(found: list[dict]) -> dict:
    """``{(benchmark, variant, seed): record}``: of several records of one run, the one of the settings the settings
    file defines now, then a measured one over a converted one, then the one of more epochs, then the newest."""
    chosen, current = {}, {}
    for record in found:
        dataset, _, label = record["variant"].partition("/")
        key = (record["benchmark"], record["variant"], record.get("seed"))
        if (record["benchmark"], dataset, label) not in current:
            try:
                current[record["benchmark"], dataset, label] = _current(record["benchmark"], dataset, label)
            except KeyError:
                current[record["benchmark"], dataset, label] = None
        rank = (_settings(record["config"]) == current[record["benchmark"], dataset, label],
                record.get("converted_from") is None, record["epochs"] or 0, record["date"] or "")
        if key not in chosen or rank > chosen[key][0]:
            chosen[key] = (rank, record)
    return {key: record for key, (_, record) in chosen.items()}


def _mean(values):
    return statistics.fmean(values) if values else None


def aggregate(found: list[dict]) -> dict:
    """``{dataset: {variant: entry}}`` over the next-item run records (and throughput records): test NDCG@10 and
    HR@10 means over the seeds, population std, the mean without seen-item filtering over the seeds that have it,
    mean epochs, the throughput phase's rate (else the median training rate) and the epoch time relative to SASRec;
    ``partial`` when any seed is."""
    chosen = select([r for r in found if r["benchmark"] in (BENCHMARK, THROUGHPUT)])
    runs, rates = {}, {}
    for (benchmark, variant, _), record in sorted(chosen.items(), key=lambda item: (item[0][1], item[0][2])):
        if benchmark == THROUGHPUT:
            rates[variant] = record["metrics"]["sequences_per_s"]
        else:
            runs.setdefault(variant, []).append(record)
    payload = {}
    for variant, rows in runs.items():
        dataset, _, label = variant.partition("/")
        ndcg = [r["metrics"]["test"]["NDCG@10"] for r in rows]
        unfiltered = [r["metrics"]["test_unfiltered"] for r in rows if r["metrics"].get("test_unfiltered")]
        trained = [r["metrics"]["sequences_per_s_training"] for r in rows
                   if r["metrics"].get("sequences_per_s_training")]
        payload.setdefault(dataset, {})[label] = {
            "ndcg@10": statistics.fmean(ndcg),
            "hr@10": statistics.fmean(r["metrics"]["test"]["HR@10"] for r in rows),
            "ndcg@10_std": statistics.pstdev(ndcg) if len(ndcg) > 1 else 0.0,
            "unfiltered": {name: statistics.fmean(u[metric] for u in unfiltered) for name, metric in
                           (("ndcg@10", "NDCG@10"), ("hr@10", "HR@10"))} if unfiltered else None,
            "unfiltered_seeds": len(unfiltered),
            "seeds": len(rows),
            "epochs": _mean([r["epochs"] for r in rows if r["epochs"] is not None]),
            "sequences_per_s": rates.get(variant) or (statistics.median(trained) if trained else None),
            "partial": any(r["partial"] for r in rows),
            "runs": [{"seed": r["seed"], "test": r["metrics"]["test"],
                      "valid_ndcg@10_curve": r["metrics"]["valid_ndcg@10_curve"]} for r in rows],
            "records": rows,
        }
    for section in payload.values():
        reference = section.get("sasrec", {}).get("sequences_per_s")
        for entry in section.values():
            rate = entry["sequences_per_s"]
            entry["epoch_time_vs_sasrec"] = reference / rate if reference and rate else None
    return payload


def main_table(payload: dict, models=MODEL_ORDER) -> str:
    """The main results table: one row per dataset x model (``models``) of :func:`aggregate`'s payload."""
    rows = [MAIN_HEADER]
    for dataset in sorted((d for d in payload if not d.startswith("_")), key=lambda d: _rank(DATASET_ORDER, d)):
        section = payload[dataset]
        for model in sorted((m for m in section if m in models), key=lambda m: _rank(MODEL_ORDER, m)):
            e = section[model]
            epochs = f"{e['epochs']:.0f}" + (" (partial)" if e["partial"] else "")
            spread = f"± {e['ndcg@10_std']:.4f}" if e["seeds"] > 1 else "(1 seed)"
            rows.append(f"| {dataset} | {model} | {e['ndcg@10']:.4f} {spread} | {e['hr@10']:.4f} | "
                        f"{_unfiltered(e)} | {e['seeds']} | {epochs} | {_number(e['sequences_per_s'], '.0f')} | "
                        f"{_number(e['epoch_time_vs_sasrec'], '.2f')} |")
    return "\n".join(rows)


# key -> (variant, loss): SASRec trained as the papers' baselines were (BCE, one negative per position) beside the
# cross-entropy FAME and HyMoERec (the main runs), the same models with BCE, and the cross-entropy SASRec
PAPERS_PROTOCOL = {"sasrec": ("sasrec bce", "bce"), "fame_ce": ("fame", "softmax"),
                   "hymoerec_ce": ("hymoerec", "softmax"), "fame": ("fame bce", "bce"),
                   "hymoerec": ("hymoerec bce", "bce"), "sasrec_ce": ("sasrec", "softmax")}
PAPERS_PROTOCOL_JSON = os.path.join(paths.RESULTS, "next_item.json")


def papers_protocol(payload: dict) -> dict:
    """``{dataset: {key: {"ndcg@10", "hr@10", "ndcg@10_std", "seeds", "loss", "variant", "partial"}}}`` of the keys of
    :data:`PAPERS_PROTOCOL` that have runs in :func:`aggregate`'s payload.

    >>> entry = {"ndcg@10": 0.03, "hr@10": 0.05, "ndcg@10_std": 0.0, "seeds": 1, "partial": False}
    >>> papers_protocol({"toy": {"sasrec bce": entry, "sasrec dropout=0.3": entry}})["toy"]["sasrec"]["loss"]
    'bce'
    """
    out = {}
    for dataset in sorted((d for d in payload if not d.startswith("_")), key=lambda d: _rank(DATASET_ORDER, d)):
        for key, (variant, loss) in PAPERS_PROTOCOL.items():
            entry = payload[dataset].get(variant)
            if entry is not None:
                out.setdefault(dataset, {})[key] = {
                    "ndcg@10": entry["ndcg@10"], "hr@10": entry["hr@10"], "ndcg@10_std": entry["ndcg@10_std"],
                    "seeds": entry["seeds"], "loss": loss, "variant": variant, "partial": entry["partial"]}
    return out


def papers_protocol_table(protocol: dict) -> str:
    """:func:`papers_protocol` as a table: per dataset and model, each loss's NDCG@10 (mean ± std, seeds) and HR@10.

    >>> cell = lambda n, s: {"ndcg@10": n, "hr@10": 2 * n, "ndcg@10_std": 0.001, "seeds": s, "partial": False}
    >>> print(papers_protocol_table({"toy": {"sasrec": cell(0.03, 3), "sasrec_ce": cell(0.05, 1)}}))
    | dataset | model | BCE, 1 negative: NDCG@10 | HR@10 | cross-entropy: NDCG@10 | HR@10 |
    |---|---|---|---|---|---|
    | toy | sasrec | 0.0300 ± 0.0010 (3 seeds) | 0.0600 | 0.0500 (1 seed) | 0.1000 |
    """
    def cells(entry):
        if entry is None:
            return "not run | n/a"
        spread = f" ± {entry['ndcg@10_std']:.4f}" if entry["seeds"] > 1 else ""
        seeds = f"{entry['seeds']} seed{'s' if entry['seeds'] > 1 else ''}" + (", partial" if entry["partial"] else "")
        return f"{entry['ndcg@10']:.4f}{spread} ({seeds}) | {entry['hr@10']:.4f}"

    rows = ["| dataset | model | BCE, 1 negative: NDCG@10 | HR@10 | cross-entropy: NDCG@10 | HR@10 |",
            "|---|---|---|---|---|---|"]
    for dataset, section in protocol.items():
        for model in MODEL_ORDER:
            bce, ce = section.get(model), section.get(f"{model}_ce")
            if bce or ce:
                rows.append(f"| {dataset} | {model} | {cells(bce)} | {cells(ce)} |")
    return "\n".join(rows)


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _unfiltered(entry: dict) -> str:
    """``NDCG@10 / HR@10`` without seen-item filtering; a mean over fewer seeds than the row's says ``(k of n
    seeds)``, none at all ``n/a``."""
    unfiltered = entry.get("unfiltered")
    if not unfiltered:
        return "n/a"
    cell = f"{unfiltered['ndcg@10']:.4f} / {unfiltered['hr@10']:.4f}"
    count = entry.get("unfiltered_seeds", entry["seeds"])
    return cell if count == entry["seeds"] else f"{cell} ({count} of {entry['seeds']} seeds)"


def cost_rows(found: list[dict], dataset: str) -> dict:
    """``{label: record}`` of the cost records of ``dataset``: SASRec, then the settings file's order."""
    chosen = [r for (benchmark, variant, _), r in select(found).items()
              if benchmark == COST and variant.partition("/")[0] == dataset]
    order = ["sasrec", *COST_VARIANTS]
    rows = {r["variant"].partition("/")[2]: r for r in chosen}
    return {label: rows[label] for label in sorted(rows, key=lambda label: _rank(tuple(order), label))}


def cost_table(rows: dict, dataset: str) -> str:
    """The cost variants (HyMoERec, FAME) on ``dataset``: ``rows`` = :func:`cost_rows`."""
    lines = [f"| cost on {dataset} | sequences/s | epoch time / SASRec |\n|---|---|---|"]
    lines += [f"| {label} | {r['metrics']['sequences_per_s']:.0f} | {r['metrics']['epoch_time_vs_sasrec']:.2f} |"
              for label, r in rows.items()]
    return "\n".join(lines)


def _rank(order: tuple, name: str) -> tuple:
    return (order.index(name), "") if name in order else (len(order), name)


# ----- archived ablation results -----------------------------------------------------------------------------------
MAIN_LABEL = " (benchmark settings)"


def main_run_test(results: dict, dataset: str, model: str, curve: list) -> dict | None:
    """The test metrics of the main run whose validation curve the archived ablation file holds for ``model``: the
    run of ``results`` (:func:`aggregate`) with the same curve, else ``None``."""
    for run in results.get(dataset, {}).get(model, {}).get("runs", []):
        if [round(x, 5) for x in curve] == run["valid_ndcg@10_curve"]:
            return run["test"]
    return None


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


def archived_seed_keys(section: dict, label: str) -> dict[int, str]:
    """``{seed: key}`` of variant ``label``'s runs in one dataset's section of the archived ablation file, which
    keys seed 0's run by the label and seed k's by ``"<label> (seed k)"``."""
    seeded = re.compile(re.escape(label) + r"(?: \(seed ([1-9]\d*)\))?")
    return dict(sorted((int(m.group(1) or 0), key) for key in section if (m := seeded.fullmatch(key))))


def seed_means_row(label: str, section: dict) -> str:
    """``| label | seeds | test NDCG@10 mean ± sample std | HR@10 mean | best validation mean | epochs mean |`` over the
    finished runs of variant ``label`` in one dataset's section of the archived ablation file.

    >>> run = lambda ndcg, curve: {"test": {"NDCG@10": ndcg, "HR@10": 2 * ndcg}, "valid_ndcg@10": curve}
    >>> section = {"v": run(0.05, [0.05, 0.06]), "v (seed 1)": run(0.07, [0.07, 0.06, 0.05]), "w": run(0.1, [0.1])}
    >>> seed_means_row("v", section)
    '| v | 0, 1 | 0.0600 ± 0.0141 | 0.1200 | 0.0650 | 2.5 |'
    """
    runs = [(seed, section[key]) for seed, key in archived_seed_keys(section, label).items()]
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
    parser.add_argument("--ablation", metavar="DATASET", help="rows of this dataset's archived ablation table")
    parser.add_argument("--cost", metavar="DATASET", help="this dataset's cost table (HyMoERec, FAME) instead")
    parser.add_argument("--seed-means", metavar="DATASET", help="means of the archived variants --labels")
    parser.add_argument("--papers-protocol", action="store_true",
                        help=f"write the papers' protocol comparison to {PAPERS_PROTOCOL_JSON} and print its table")
    parser.add_argument("--epochs", nargs="+", type=int, default=[2, 5, 10, 20, 25])
    parser.add_argument("--labels", nargs="+", help="ablation: these variants (default all)")
    parser.add_argument("--records", default=records.ROOT)
    args = parser.parse_args(argv)
    found = records.load_records(args.records)
    if args.seed_means is not None:
        if not args.labels:
            parser.error("--seed-means needs --labels")
        section = json.load(open(ABLATION_ARCHIVE))[args.seed_means]
        print("\n".join([SEED_MEANS_HEADER.format(dataset=args.seed_means)] +
                        [seed_means_row(label, section) for label in args.labels]))
        return 0
    if args.papers_protocol:
        protocol = papers_protocol(aggregate(found))
        with open(PAPERS_PROTOCOL_JSON, "w", encoding="utf-8") as f:
            json.dump({"papers_protocol": protocol}, f, indent=2, sort_keys=True)
            f.write("\n")
        print(papers_protocol_table(protocol))
        return 0
    if args.cost is not None:
        print(cost_table(cost_rows(found, args.cost), args.cost))
        return 0
    results = aggregate(found)
    if args.ablation is None:
        print(main_table(results))
        return 0
    section = json.load(open(ABLATION_ARCHIVE))[args.ablation]
    for key in args.labels or [k for k, e in section.items() if e["valid_ndcg@10"]]:
        entry = section[key]
        main_model = key in MODEL_ORDER
        test = main_run_test(results, args.ablation, key, entry["valid_ndcg@10"]) if main_model else None
        print(ablation_row(key + (MAIN_LABEL if main_model else ""), entry, args.epochs, test))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
