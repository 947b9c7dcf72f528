"""The long-sequence CTR tables from the ``long_ctr`` records (:mod:`benchmarks.records`): ``summary`` and ``paired``.

Run records have the variant ``<task>/L<length>/<model>`` and hold ``metrics.test`` (AUC, GAUC, LogLoss),
``metrics.buckets`` (the same by history-length bucket), ``metrics.flops`` and ``metrics.train_examples_per_s``;
paired records (``<task>/L<length>/paired/<backbone>``) hold MoS - backbone with its bootstrap intervals
(:func:`tfmoe.metrics.bootstrap.paired_bootstrap`).

* ``summary``: ``{task: {length: {model: {"auc_mean", "auc_std", "gauc_mean", "gauc_std", "logloss_mean", "seeds",
  "mflops", "train_examples_per_s", "partial", "buckets": {bucket: {"auc_mean", "gauc_mean", "logloss_mean",
  "impressions"}}}}}}``, standard deviations over seeds (population; 0 for one seed); ``partial`` when a run is
  partial or fewer than the protocol's seeds ran.
* ``paired``: ``{task: {length: {backbone: {"auc_diff", "auc_ci95": [lo, hi], "gauc_diff", "gauc_ci95": [lo, hi],
  "seeds", "partial"}}}}``.

Example:
    >>> run = {"variant": "ml-1m-ctr-pop/L200/din", "seed": 0, "partial": False, "date": "2026-12-06",
    ...        "metrics": {"test": {"AUC": 0.8, "GAUC": 0.7, "LogLoss": 0.5}, "flops": 2.0e6}}
    >>> summary([run, {**run, "seed": 1}], protocol_seeds=2)["ml-1m-ctr-pop"]["200"]["din"]["auc_mean"]
    0.8
"""

from __future__ import annotations

import statistics

PAIRED = "paired"


def _parts(variant: str):
    """``(task, length, rest)`` of a long-CTR variant ``<task>/L<length>/<rest>``, or None for other records."""
    parts = variant.split("/")
    if len(parts) < 3 or not parts[1].startswith("L") or not parts[1][1:].isdigit():
        return None
    return parts[0], parts[1][1:], "/".join(parts[2:])


def bucket_key(name: str) -> int:
    """Sort key of a history-length bucket name (``<=200`` < ``201-1000`` < ``>1000``): its smallest length."""
    if name.startswith("<="):
        return 0
    return int(name[1:]) + 1 if name.startswith(">") else int(name.split("-")[0])


def _mean(values):
    values = [x for x in values if x is not None]
    return statistics.fmean(values) if values else None


def _std(values):
    values = [x for x in values if x is not None]
    return statistics.pstdev(values) if len(values) > 1 else (0.0 if values else None)


def summary(found: list[dict], protocol_seeds: int) -> dict:
    """The ``summary`` of the run records in ``found`` (one record per seed; the newest of a seed wins)."""
    groups = {}
    for record in sorted(found, key=lambda r: r["date"] or ""):
        parts = _parts(record["variant"])
        if parts is None or parts[2].startswith(PAIRED + "/") or "test" not in record["metrics"]:
            continue
        task, length, model = parts
        groups.setdefault(task, {}).setdefault(length, {}).setdefault(model, {})[record.get("seed")] = record
    out = {}
    for task, lengths in groups.items():
        for length, models in lengths.items():
            for model, by_seed in models.items():
                runs = list(by_seed.values())
                tests = [r["metrics"]["test"] for r in runs]
                auc, gauc = [t.get("AUC") for t in tests], [t.get("GAUC") for t in tests]
                flops = _mean([r["metrics"].get("flops") for r in runs])
                entry = {"auc_mean": _mean(auc), "auc_std": _std(auc), "gauc_mean": _mean(gauc), "gauc_std": _std(gauc),
                         "logloss_mean": _mean([t.get("LogLoss") for t in tests]), "seeds": len(runs),
                         "mflops": flops / 1e6 if flops is not None else None,
                         "train_examples_per_s": _mean([r["metrics"].get("train_examples_per_s") for r in runs]),
                         "partial": any(r["partial"] for r in runs) or len(runs) < protocol_seeds}
                buckets = {}
                for r in runs:
                    for name, m in (r["metrics"].get("buckets") or {}).items():
                        buckets.setdefault(name, []).append(m)
                if buckets:
                    entry["buckets"] = {name: {"auc_mean": _mean([m.get("AUC") for m in ms]),
                                               "gauc_mean": _mean([m.get("GAUC") for m in ms]),
                                               "logloss_mean": _mean([m.get("LogLoss") for m in ms]),
                                               "impressions": ms[0].get("count")}
                                        for name, ms in sorted(buckets.items(), key=lambda kv: bucket_key(kv[0]))}
                out.setdefault(task, {}).setdefault(length, {})[model] = entry
    return out


def paired(found: list[dict]) -> dict:
    """The ``paired`` block of the paired records in ``found`` (the newest per task, length and backbone)."""
    out = {}
    for record in sorted(found, key=lambda r: r["date"] or ""):
        parts = _parts(record["variant"])
        if parts is None or not parts[2].startswith(PAIRED + "/"):
            continue
        task, length, rest = parts
        m = record["metrics"]
        out.setdefault(task, {}).setdefault(length, {})[rest.split("/", 1)[1]] = {
            "auc_diff": m["auc_diff"], "auc_ci95": m["auc_ci95"], "gauc_diff": m["gauc_diff"],
            "gauc_ci95": m["gauc_ci95"], "seeds": record.get("seeds", record.get("seed")),
            "partial": record["partial"]}
    return out


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _spread(mean, std, seeds) -> str:
    return _fmt(mean, ".4f") + (f" ± {std:.4f}" if seeds > 1 and std is not None else "")


def summary_table(table: dict) -> str:
    """``| task | length | model | AUC | GAUC | LogLoss | per-bucket AUC | MFLOPs | examples/s | seeds |``."""
    lines = ["| task | length | model | AUC | GAUC | LogLoss | AUC by history (≤200 / 201-1000 / >1000) | MFLOPs | "
             "train examples/s | seeds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for task, lengths in sorted(table.items()):
        for length, models in sorted(lengths.items(), key=lambda kv: -int(kv[0])):
            for model, e in sorted(models.items()):
                buckets = " / ".join(_fmt(b["auc_mean"], ".4f") for b in (e.get("buckets") or {}).values()) or "-"
                lines.append(f"| {task} | {length} | {model} | {_spread(e['auc_mean'], e['auc_std'], e['seeds'])} | "
                             f"{_spread(e['gauc_mean'], e['gauc_std'], e['seeds'])} | {_fmt(e['logloss_mean'], '.4f')} "
                             f"| {buckets} | {_fmt(e['mflops'], '.2f')} | {_fmt(e['train_examples_per_s'], '.0f')} | "
                             f"{e['seeds']}{' (partial)' if e['partial'] else ''} |")
    return "\n".join(lines)


def paired_table(table: dict) -> str:
    """``| task | length | MoS - backbone | AUC diff [95% CI] | GAUC diff [95% CI] | seeds |``."""
    lines = ["| task | length | MoS - backbone | AUC diff [95% CI] | GAUC diff [95% CI] | seeds |",
             "|---|---|---|---|---|---|"]
    for task, lengths in sorted(table.items()):
        for length, backbones in sorted(lengths.items(), key=lambda kv: -int(kv[0])):
            for backbone, e in sorted(backbones.items()):
                lo, hi = e["auc_ci95"]
                glo, ghi = e["gauc_ci95"]
                lines.append(f"| {task} | {length} | mos_{backbone} - {backbone} | {e['auc_diff']:+.4f} "
                             f"[{lo:+.4f}, {hi:+.4f}] | {e['gauc_diff']:+.4f} [{glo:+.4f}, {ghi:+.4f}] | "
                             f"{e['seeds']}{' (partial)' if e['partial'] else ''} |")
    return "\n".join(lines)
