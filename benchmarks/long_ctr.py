"""Long-sequence CTR benchmark: MoS vs its backbones and token-routed MoE baselines.

Settings: ``benchmarks/settings/long_ctr.yaml`` (the protocol, the models' options per length, the side experiments).

Tasks (``docs/evaluation.md``, "Long-sequence CTR"):

* ``ml-1m-ctr``: ML-1M as a CTR task at history lengths 50 / 200 / 1,000: for a user and position ``t``,
  history = items before ``t``, positive = item ``t``, negative = a uniform draw from the items the user
  never touched; test on each user's last position, validate on the second-last, train on earlier
  positions (``positions: random``, ``samples_per_user`` fresh positions per user and epoch). Validation and
  test negatives are seeded by ``(eval_seed, user_id)``: the same for every model and seed. AUC, GAUC,
  LogLoss on test at the best validation-AUC epoch. Models ``<backbone>``, ``mos_<backbone>``,
  ``gshard_<backbone>``, ``expert_choice_<backbone>`` for backbones ``din``, ``transact``, ``twin``, with the
  settings of :data:`COMMON`, :data:`BACKBONES` and :data:`LENGTHS` (the CTR models' recommended ones).
* ``taobao-smoke``: the Taobao UserBehavior head sample with time-gap sessions (``tfmoe prepare``'s default
  30-minute gap, read by MoS as ``session_mode="session_ids"``): a smoke run of MoS-DIN next to DIN.
* ``synthetic-purity``: session-hopping synthetic data with planted themes (:mod:`tfmoe.data.synthetic`);
  MoS-DIN is trained on its CTR task, then every real session of the test histories is assigned its argmax
  router theme and compared with its planted theme (:func:`tfmoe.data.synthetic.theme_purity`), next to
  the purity of uniformly random assignments and of the untrained router.

Phases (``--phase``; each resumable, ``report`` always last):

1. ``prepare``: ``tfmoe prepare`` of ML-1M (``ml1m-sasrec``) and Taobao into ``<data-dir>/<name>``, skipped
   when present; the synthetic set is generated and prepared by the ``purity`` phase.
2. ``flops``: analytic and profiler forward FLOPs per example and parameter counts of all 12 models at every
   length (cached in ``<work-dir>/flops.json``).
3. ``train``: :func:`tfmoe.training.train` for every length x model x seed into
   ``<work-dir>/ml-1m-ctr/L<length>/<model>/seed<k>``. With ``--chunk`` < ``--epochs`` the models of a length
   take turns (``chunk`` epochs each), so a cut-off session leaves comparable partial results. A killed run
   resumes from its backup when the command is run again; finished runs are not retrained; raising
   ``--epochs`` extends them.
4. ``taobao`` and ``purity``: the two side experiments above.
5. ``report``: a record (:mod:`benchmarks.records`) per run this machine holds, under
   ``benchmarks/results/records/long_ctr/ml-1m-ctr/L<length>/<model>/`` (and ``taobao-smoke/<model>``; the
   ``purity`` phase writes ``synthetic-small/mos_din``): test AUC, GAUC and LogLoss at the best validation-AUC
   epoch, the Hanley-McNeil standard error of the AUC, FLOPs and parameters. Runs stopped before their budget are
   recorded from their best checkpoint; a run that does not follow the full protocol (its epoch budget or early
   stopping, ``samples_per_user``, a full epoch) is ``"partial": true``. The report prints the table of what ran.

The full protocol is one command, resumable over many sessions (hours on 2 CPU cores, most of it at
length 1,000; minutes per model on a GPU)::

    nohup .venv/bin/python benchmarks/long_ctr.py --seeds 0 1 2 --chunk 2 > /work/runs/long_ctr/full.log 2>&1 &

A bounded run (what fits in an hour on a shared 2-core machine) and the report of what has run so far::

    nohup .venv/bin/python benchmarks/long_ctr.py --phase prepare flops train --backbones din \\
        --lengths 1000 200 --epochs 2 --chunk 1 --samples-per-user 2 > /work/runs/long_ctr/din.log 2>&1 &
    .venv/bin/python benchmarks/long_ctr.py --phase report
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml

from benchmarks import _paths as paths
from benchmarks import records
from benchmarks._runs import saved_run
from benchmarks._timing import read_json, write_json

SETTINGS_FILE = os.path.join(paths.BENCHMARKS, "settings", "long_ctr.yaml")
with open(SETTINGS_FILE, encoding="utf-8") as _f:
    SETTINGS = yaml.safe_load(_f)
PROTOCOL, VARIANTS, COMMON, BACKBONES = (SETTINGS[k] for k in ("protocol", "variants", "common", "backbones"))
VARIANTS = tuple(VARIANTS)
LENGTHS, EVAL_BATCH, MOS, GSHARD, EXPERT_CHOICE = (SETTINGS[k] for k in ("lengths", "eval_batch", "mos", "gshard",
                                                                          "expert_choice"))
TAOBAO, SYNTHETIC = SETTINGS["taobao"], SETTINGS["synthetic"]
BENCHMARK = "long_ctr"
RECORDS = records.ROOT
DEFAULT_WORK_DIR = os.path.join(paths.RUNS, "long_ctr")
DEFAULT_DATA_DIR = os.path.join(paths.RUNS, "data")


def prepare_arguments(name: str) -> list[str]:
    """``tfmoe prepare`` arguments of dataset ``name`` (settings file's ``datasets``)."""
    spec = SETTINGS["datasets"][name]
    out = ["--format", spec["format"], "--input", os.path.join(paths.SHARED_DATA, spec["input"])]
    return out + (["--on-error", spec["on_error"]] if spec.get("on_error") else [])


def model_name(variant: str, backbone: str) -> str:
    return f"{variant}{backbone}"


def split_name(name: str) -> tuple[str, str]:
    for variant in VARIANTS[1:]:
        if name.startswith(variant):
            return variant, name[len(variant):]
    return "", name


def model_options(name: str, length: int) -> dict:
    """Registry name + options of ``name`` (e.g. ``"mos_din"``) at history length ``length``."""
    variant, backbone = split_name(name)
    structure = LENGTHS[length]
    options = {"name": name, **COMMON, **BACKBONES[backbone]}
    if variant == "mos_":
        options.update(MOS, **structure)
        if backbone == "transact" and length >= 1000:
            options["global_expert"] = "sessions"
    elif variant == "gshard_":
        options.update(GSHARD, num_experts=structure["num_themes"])
    elif variant == "expert_choice_":
        options.update(EXPERT_CHOICE, num_experts=structure["num_themes"])
    return options


def ctr_config(data_dir: str, model: dict, max_len: int, seed: int, output_dir: str, epochs: int, patience: int,
               samples_per_user: int, steps_per_epoch: int | None, sequence_features=(), eval_batch=1024) -> dict:
    return {
        "task": "ctr",
        "data": {"dir": data_dir, "max_len": max_len, "batch_size": PROTOCOL["batch_size"],
                 "eval_batch_size": eval_batch, "sequence_features": list(sequence_features),
                 "ctr": {"num_negatives": PROTOCOL["num_negatives"], "positions": "random",
                         "samples_per_user": samples_per_user, "min_history": 1, "eval_seed": PROTOCOL["eval_seed"]}},
        "model": model,
        "optimizer": {"name": "adam", "learning_rate": PROTOCOL["learning_rate"]},
        "training": {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "seed": seed, "verbose": 2,
                     "early_stopping": {"patience": patience}},
        "evaluation": {"splits": ["test"]},
        "output_dir": output_dir,
    }


def sampling_tag(samples_per_user: int, steps_per_epoch: int | None) -> str:
    """Run folder of a training budget: runs with another sampling budget are other runs."""
    return f"spu{samples_per_user}" + (f"-steps{steps_per_epoch}" if steps_per_epoch else "")


def parse_tag(tag: str) -> tuple[int, int | None]:
    spu, _, steps = tag.partition("-steps")
    return int(spu[3:]), int(steps) if steps else None


def ml1m_config(args, name: str, length: int, seed: int, epochs: int | None = None, samples_per_user=None,
                steps_per_epoch=None) -> dict:
    spu = samples_per_user or args.samples_per_user
    steps = steps_per_epoch if samples_per_user else args.steps_per_epoch
    return ctr_config(os.path.join(args.data_dir, "ml-1m"), model_options(name, length), length, seed,
                      os.path.join(args.work_dir, "ml-1m-ctr", f"L{length}", name, sampling_tag(spu, steps),
                                   f"seed{seed}"),
                      epochs or args.epochs, args.patience, spu, steps, eval_batch=EVAL_BATCH[length])


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----- phases ------------------------------------------------------------------------------------------
def prepare(names, data_dir: str) -> None:
    for name in names:
        out = os.path.join(data_dir, name)
        if os.path.exists(os.path.join(out, "summary.json")):
            continue
        command = [os.path.join(os.path.dirname(sys.executable), "tfmoe"), "prepare", *prepare_arguments(name),
                   "--out", out]
        _log("+ " + " ".join(command))
        subprocess.run(command, check=True)


def flops(args) -> dict:
    """``{length: {model: {"analytic", "profiler", "params"}}}`` for every model at every length (cached)."""
    import numpy as np

    from tfmoe.models import registry
    from tfmoe.utils.flops import profiler_flops

    path = os.path.join(args.work_dir, "flops.json")
    table = read_json(path)
    names = [model_name(v, b) for b in BACKBONES for v in VARIANTS]
    for length in LENGTHS:
        rng = np.random.default_rng(0)
        features = {"history": rng.integers(1, 3000, (2, length)).astype("int32"),
                    "target_item": rng.integers(1, 3000, 2).astype("int32")}
        row = table.setdefault(str(length), {})
        for name in names:
            if name in row:
                continue
            options = {k: x for k, x in model_options(name, length).items() if k != "name"}
            model = registry.build_model(name, num_items=3416, max_len=length, **options)
            row[name] = {"analytic": int(model.analytic_flops()["total"]),
                         "profiler": float(profiler_flops(model, features)), "params": int(model.count_params())}
            _log(f"flops L={length} {name}: {row[name]}")
            write_json(path, table)
    return table


def train_ml1m(args) -> None:
    """Every length x model x seed; models of a length take turns ``chunk`` epochs at a time."""
    from tfmoe.training import train

    names = [model_name(v, b) for b in args.backbones for v in VARIANTS]
    for length in args.lengths:
        for target in range(min(args.chunk, args.epochs), args.epochs + args.chunk, args.chunk):
            target = min(target, args.epochs)
            for name in names:
                for seed in args.seeds:
                    config = ml1m_config(args, name, length, seed, target)
                    _log(f"== train ml-1m-ctr L={length} {name} seed {seed} up to epoch {target}")
                    start = time.time()
                    result = train(config)
                    _log(f"== L={length} {name} seed {seed}: epochs {result.epochs_run}, best {result.best_epoch}, "
                         f"stopped early {result.stopped_early}, test {json.dumps(result.test_metrics)} "
                         f"({time.time() - start:.0f} s)")
            if target == args.epochs:
                break


# ----- side experiments --------------------------------------------------------------------------------
TAOBAO = {"max_len": 200, "epochs": 3, "patience": 2, "samples_per_user": 20,
          "mos": {"session_mode": "session_ids", "session_length": 10, "num_themes": 4, "sessions_per_theme": 5,
                  "short_window": 20, "active_themes": 1, "load_balance_weight": 1e-2}}


def taobao_config(args, name: str, seed: int = 0) -> dict:
    model = {"name": name, **COMMON}
    if name.startswith("mos_"):
        model.update(TAOBAO["mos"])
    return ctr_config(os.path.join(args.data_dir, "taobao"), model, TAOBAO["max_len"], seed,
                      os.path.join(args.work_dir, "taobao-smoke", name, f"seed{seed}"), TAOBAO["epochs"],
                      TAOBAO["patience"], TAOBAO["samples_per_user"], None, ("categories", "session_ids"), 1024)


def taobao(args) -> None:
    from tfmoe.training import train

    prepare(["taobao"], args.data_dir)
    for name in ("mos_din", "din"):
        _log(f"== train taobao-smoke {name}")
        result = train(taobao_config(args, name))
        _log(f"== taobao-smoke {name}: epochs {result.epochs_run}, test {json.dumps(result.test_metrics)}")


SYNTHETIC = {"preset": "small", "seed": 0, "max_len": 200, "epochs": 10, "patience": 3, "samples_per_user": 10,
             "mos": {"session_mode": "session_ids", "session_length": 10, "num_sessions": 20, "num_themes": 8,
                     "sessions_per_theme": 5, "short_window": 20, "active_themes": 1, "load_balance_weight": 1e-2}}


def synthetic_paths(args) -> dict:
    root = os.path.join(args.data_dir, f"synthetic-{SYNTHETIC['preset']}")
    return {"raw": os.path.join(root, "raw"), "prepared": os.path.join(root, "prepared"),
            "run": os.path.join(args.work_dir, "synthetic-purity", "mos_din", f"seed{SYNTHETIC['seed']}"),
            "result": os.path.join(args.work_dir, "synthetic-purity", "purity.json")}


def synthetic_config(args) -> dict:
    paths = synthetic_paths(args)
    return ctr_config(paths["prepared"], {"name": "mos_din", **COMMON, **SYNTHETIC["mos"]}, SYNTHETIC["max_len"],
                      SYNTHETIC["seed"], paths["run"], SYNTHETIC["epochs"], SYNTHETIC["patience"],
                      SYNTHETIC["samples_per_user"], None, ("categories", "session_ids"), 1024)


def session_assignments(model, data_dir: str, item_themes, max_len: int) -> dict:
    """Every real session of the test histories (one row per user): its router theme and its planted theme.

    Sessions are the model's own grid (``model.grouper``); a session's planted theme is the majority theme of
    its items. Returns numpy arrays over the ``N`` sessions: ``assigned`` (argmax of the router's
    ``routing_probs``), ``planted``, ``unanimous`` (all items of one theme) and ``embeddings [N, d]`` (the
    masked mean of the session's item embeddings, the ``s_m`` the router pools), plus ``num_themes``.
    """
    import numpy as np
    import tensorflow as tf

    from tfmoe.data import dataset
    from tfmoe.layers import masking

    features = tuple(dict.fromkeys((*model.input_sequence_features(), "session_ids")))
    ds = dataset.make_dataset(data_dir, "test", "ctr", max_len=max_len, batch_size=512,
                              sequence_features=features, ctr=_eval_sampling())
    assigned, planted, unanimous, embeddings = [], [], [], []
    for x, y in ds:
        keep = y.numpy() > 0.5  # one row per user: the positive (negatives repeat the history)
        routing = model.routing(x)
        sequence, mask, _ = model.encode(x)
        session_ids = model._session_ids(x, mask)
        ids = model.grouper(tf.cast(x["history"], tf.float32)[..., None], session_ids, mask=mask)
        grid, item_mask, session_mask = (t.numpy() for t in ids)
        vectors, vector_mask, _ = model.grouper(sequence, session_ids, mask=mask)
        means = masking.masked_mean(tf.cast(vectors, tf.float32), vector_mask, axis=2).numpy()  # [B, M, d]
        probs = routing["routing_probs"].numpy()
        themes = item_themes[grid[..., 0].astype(np.int64)]  # [B, M, P]
        for b in np.flatnonzero(keep):
            for m in np.flatnonzero(session_mask[b]):
                t = themes[b, m][item_mask[b, m]]
                counts = np.bincount(t[t >= 0])
                planted.append(int(counts.argmax()))
                unanimous.append(bool(counts.max() == len(t)))
                assigned.append(int(probs[b, m].argmax()))
                embeddings.append(means[b, m])
    return {"assigned": np.asarray(assigned), "planted": np.asarray(planted), "unanimous": np.asarray(unanimous),
            "embeddings": np.asarray(embeddings, np.float32), "num_themes": int(probs.shape[-1])}


def session_purity(model, data_dir: str, item_themes, max_len: int, seed: int = 0) -> dict:
    """Purity of the router's argmax theme of each real test-history session against its planted theme.

    Sessions are those of :func:`session_assignments` (sessions of the generator are single-theme, so the share
    of unanimous sessions is reported too: it checks that the prepared time-gap sessions recover the planted
    ones).
    """
    import numpy as np

    from tfmoe.data.synthetic import theme_purity

    sessions = session_assignments(model, data_dir, item_themes, max_len)
    assigned, planted, k = sessions["assigned"], sessions["planted"], sessions["num_themes"]
    random = np.random.default_rng(seed).integers(0, k, assigned.size)
    return {"purity": theme_purity(assigned, planted), "random_purity": theme_purity(random, planted),
            "sessions": int(assigned.size), "unanimous_sessions": float(np.mean(sessions["unanimous"])),
            "themes_used": int(np.unique(assigned).size), "num_themes": k}


def _eval_sampling():
    from tfmoe.data.samples import CTRSampling

    return CTRSampling(num_negatives=PROTOCOL["num_negatives"], eval_seed=PROTOCOL["eval_seed"])


def prepare_synthetic(args):
    """Generates and prepares (once) the synthetic set of :data:`SYNTHETIC`; returns ``(data, item_themes)``.

    ``item_themes[n]`` is the planted theme of prepared item index ``n`` (-1 for padding and out-of-vocabulary).
    """
    import numpy as np

    from tfmoe.data import synthetic

    paths = synthetic_paths(args)
    data = synthetic.generate(synthetic.preset_config(SYNTHETIC["preset"], seed=SYNTHETIC["seed"]))
    if not os.path.exists(os.path.join(paths["prepared"], "summary.json")):
        synthetic.write_files(data, paths["raw"])
        command = [os.path.join(os.path.dirname(sys.executable), "tfmoe"), "prepare", "--format", "tfmoe-synthetic",
                   "--input", os.path.join(paths["raw"], synthetic.INTERACTIONS_FILE), "--out", paths["prepared"]]
        _log("+ " + " ".join(command))
        subprocess.run(command, check=True)
    # prepared item index n (1-based) = line n of vocab/items.txt = raw synthetic item id
    with open(os.path.join(paths["prepared"], "vocab", "items.txt")) as f:
        raw_ids = [int(line) for line in f if line.strip()]
    item_themes = np.full(len(raw_ids) + 2, -1, np.int64)
    item_themes[1:len(raw_ids) + 1] = data.item_themes[raw_ids]
    return data, item_themes


def purity(args) -> dict:
    """Generates + prepares the synthetic set, trains MoS-DIN on its CTR task, measures session purity."""
    import keras

    from tfmoe.training import train
    from tfmoe.training.config import TrainConfig
    from tfmoe.training.trainer import build_model, data_sizes

    paths = synthetic_paths(args)
    data, item_themes = prepare_synthetic(args)
    config_dict = synthetic_config(args)
    _log("== train synthetic-purity mos_din")
    result = train(config_dict)
    _log(f"== synthetic mos_din: epochs {result.epochs_run}, test {json.dumps(result.test_metrics)}")
    trained = session_purity(result.model, paths["prepared"], item_themes, SYNTHETIC["max_len"])
    config = TrainConfig.from_dict(config_dict)
    keras.utils.set_random_seed(SYNTHETIC["seed"])
    untrained = build_model(config, "ctr", data_sizes(paths["prepared"]))
    untrained_purity = session_purity(untrained, paths["prepared"], item_themes, SYNTHETIC["max_len"])
    out = {"data": {"generator": "tfmoe.data.synthetic", "preset": SYNTHETIC["preset"], "seed": SYNTHETIC["seed"],
                    **data.summary()},
           "model": config_dict["model"], "epochs": result.epochs_run, "best_epoch": _one_based(result.best_epoch),
           "test": result.test_metrics, **trained, "untrained_router_purity": untrained_purity["purity"]}
    write_json(paths["result"], out)
    metrics = {k: x for k, x in out.items() if k not in ("model", "data", "epochs")}
    write_run_record(args, f"synthetic-{SYNTHETIC['preset']}/mos_din", config_dict, metrics, result.epochs_run,
                     SYNTHETIC["seed"], not result.stopped_early and result.epochs_run < SYNTHETIC["epochs"],
                     f"synthetic-{SYNTHETIC['preset']}", data=out["data"])
    _log(f"== purity {json.dumps(out)}")
    return out


# ----- report ------------------------------------------------------------------------------------------
def _one_based(epoch):
    """The trainer counts epochs from 0; the report from 1 (``best_epoch`` 2 of ``epochs`` 2 = the last one)."""
    return None if epoch is None else epoch + 1


def _run_result(config_dict: dict) -> dict | None:
    """Test metrics of one run: from metrics.json when finished, else from its best checkpoint (partial)."""
    run = saved_run(config_dict, "ctr")
    if run is None:
        return None
    budget_reached = run["finished"] and (run["stopped_early"] or run["epochs"] >= PROTOCOL["epochs"])
    return {"finished": run["finished"], "epochs": run["epochs"], "best_epoch": _one_based(run["best_epoch"]),
            "stopped_early": run["stopped_early"], "test": run["test"], "valid": run["valid"],
            "budget_reached": budget_reached}


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC: how far apart two models must be to mean anything."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return ((auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc))
            / (positives * negatives)) ** 0.5


def _se(test: dict) -> float | None:
    count = int(test.get("count") or 0)
    positives = count // (1 + PROTOCOL["num_negatives"])
    return auc_standard_error(test["AUC"], positives, count - positives) if positives else None


def _mean(values):
    return statistics.fmean(values) if values else None


def _entry(runs: list[dict], flops_row: dict | None, tag: str | None) -> dict:
    entry = {"auc": None, "gauc": None, "logloss": None,
             "flops": (flops_row or {}).get("analytic"), "flops_profiler": (flops_row or {}).get("profiler"),
             "params": (flops_row or {}).get("params"), "seeds": len(runs)}
    if not runs:
        entry.update(partial=True, partial_reasons=["not trained yet (FLOPs only)"])
        return entry
    spu, steps = parse_tag(tag)
    auc = [r["test"]["AUC"] for r in runs]
    gauc = [r["test"]["GAUC"] for r in runs]
    entry.update(auc=_mean(auc), gauc=_mean(gauc), logloss=_mean([r["test"]["LogLoss"] for r in runs]),
                 auc_std=statistics.pstdev(auc) if len(auc) > 1 else 0.0,
                 gauc_std=statistics.pstdev(gauc) if len(gauc) > 1 else 0.0,
                 epochs=_mean([r["epochs"] for r in runs]), best_epoch=[r["best_epoch"] for r in runs],
                 samples_per_user=spu, steps_per_epoch=steps, test_impressions=runs[0]["test"].get("count"),
                 auc_se_hanley_mcneil=_se(runs[0]["test"]))
    reasons = []
    if len(runs) < PROTOCOL["seeds"]:
        reasons.append(f"{len(runs)} of {PROTOCOL['seeds']} seeds")
    if not all(r["budget_reached"] for r in runs):
        reasons.append(f"epochs {[r['epochs'] for r in runs]} < budget {PROTOCOL['epochs']} without early stopping")
    if spu != PROTOCOL["samples_per_user"]:
        reasons.append(f"samples_per_user {spu} per epoch (protocol {PROTOCOL['samples_per_user']})")
    if steps is not None:
        reasons.append(f"steps_per_epoch {steps} (protocol: one pass over the users)")
    entry.update(partial=bool(reasons), partial_reasons=reasons, runs=runs)
    return entry


def _budget_tags(args, length: int, name: str) -> list[str]:
    """Sampling budgets run for a model (``spu<k>[-steps<n>]`` folders), the protocol's first, then largest."""
    root = os.path.join(args.work_dir, "ml-1m-ctr", f"L{length}", name)
    tags = [t for t in (os.listdir(root) if os.path.isdir(root) else []) if t.startswith("spu")]
    protocol = sampling_tag(PROTOCOL["samples_per_user"], None)
    return sorted(tags, key=lambda t: (t != protocol, -parse_tag(t)[0], parse_tag(t)[1] is not None))


def _relative(a, b):
    return None if a is None or b is None else (a - b) / b


def comparisons(section: dict) -> dict:
    """Per length and backbone: MoS's relative AUC/GAUC gain over each other model and its FLOPs ratio."""
    out = {}
    for length, models in section.items():
        for backbone in BACKBONES:
            mos = models.get(f"mos_{backbone}")
            if not mos or mos["auc"] is None:
                continue
            row = {}
            for variant in ("", "gshard_", "expert_choice_"):
                other = models.get(model_name(variant, backbone))
                if not other or other["auc"] is None:
                    continue
                row[f"vs_{model_name(variant, backbone)}"] = {
                    "auc_rel": _relative(mos["auc"], other["auc"]), "gauc_rel": _relative(mos["gauc"], other["gauc"]),
                    "auc_diff": mos["auc"] - other["auc"], "gauc_diff": mos["gauc"] - other["gauc"],
                    "flops_ratio": (mos["flops"] / other["flops"]) if mos["flops"] and other["flops"] else None,
                    "mos_wins_auc": mos["auc"] > other["auc"], "mos_wins_gauc": mos["gauc"] > other["gauc"],
                    "partial": mos["partial"] or other["partial"]}
            if row:
                out.setdefault(length, {})[f"mos_{backbone}"] = row
    return out


PROTOCOL_TEXT = ("ML-1M CTR: history = items before t, 1 uniform negative from untouched items; test = last position, "
                 "valid = second-last (negatives seeded by (eval_seed, user_id), identical across models and seeds); "
                 "train = random earlier positions, samples_per_user per user and epoch; test AUC/GAUC/LogLoss at the "
                 "best validation-AUC epoch; FLOPs = analytic forward FLOPs per example")
COMMAND = None  # the command line records name: main's, else this process's argv


def _placeholders(config: dict, args) -> dict:
    """``config`` with this machine's folders written as ``<data-dir>`` and ``<work-dir>`` (records compare across
    machines)."""
    text = json.dumps(config).replace(json.dumps(args.data_dir)[1:-1], "<data-dir>")
    return json.loads(text.replace(json.dumps(args.work_dir)[1:-1], "<work-dir>"))


def data_files(args, name: str) -> list[str]:
    """The files a dataset's runs read: the raw input when this machine has it, else the prepared data."""
    spec = SETTINGS["datasets"].get(name)
    raw = os.path.join(paths.SHARED_DATA, spec["input"]) if spec else ""
    return [raw] if os.path.isfile(raw) else [os.path.join(args.data_dir, name)]


_DATA_HASHES: dict = {}


def write_run_record(args, variant: str, config: dict, metrics: dict, epochs, seed: int, partial: bool,
                     dataset: str, root: str | None = None, **extra) -> str:
    files = tuple(data_files(args, dataset))
    if files not in _DATA_HASHES:  # hashed once per process
        _DATA_HASHES[files] = records.data_hash(files)
    record = records.make_record(BENCHMARK, variant, _placeholders(config, args), metrics, epochs=epochs, seed=seed,
                                 partial=partial, data_files=[], command=COMMAND, **extra)
    record["data_hash"] = _DATA_HASHES[files]
    return records.write_record(record, root or getattr(args, "records", None) or RECORDS)


def report(args) -> dict:
    """A record of every ML-1M CTR and Taobao run this machine holds (partial unless the run followed the full
    protocol: its epoch budget or early stopping, ``samples_per_user``, a full epoch), and the tables of what ran."""
    flops_path = os.path.join(args.work_dir, "flops.json")
    flops_table = read_json(flops_path)
    section = {}
    for length in LENGTHS:
        row = {}
        for backbone in BACKBONES:
            for variant in VARIANTS:
                name = model_name(variant, backbone)
                runs, tag = [], None
                flops_row = flops_table.get(str(length), {}).get(name) or {}
                for tag in _budget_tags(args, length, name):  # the first budget with any run
                    spu, steps = parse_tag(tag)
                    for seed in args.seeds:
                        config = ml1m_config(args, name, length, seed, None, spu, steps)
                        result = _run_result(config)
                        if result is None:
                            continue
                        runs.append({"seed": seed, **result})
                        full = result["budget_reached"] and spu == PROTOCOL["samples_per_user"] and steps is None
                        metrics = {"test": result["test"], "valid": result["valid"],
                                   "best_epoch": result["best_epoch"], "stopped_early": result["stopped_early"],
                                   "auc_se_hanley_mcneil": _se(result["test"]), "flops": flops_row.get("analytic"),
                                   "flops_profiler": flops_row.get("profiler"), "params": flops_row.get("params")}
                        write_run_record(args, f"ml-1m-ctr/L{length}/{name}", config, metrics, result["epochs"], seed,
                                         not full, "ml-1m")
                    if runs:
                        break
                row[name] = _entry(runs, flops_row or None, tag if runs else None)
        section[str(length)] = row
    payload = {"ml-1m-ctr": section, "comparisons": comparisons(section)}
    for name in ("mos_din", "din"):
        config = taobao_config(args, name)
        result = _run_result(config)
        if result is not None:
            metrics = {"test": result["test"], "valid": result["valid"], "best_epoch": result["best_epoch"],
                       "stopped_early": result["stopped_early"], "auc_se_hanley_mcneil": _se(result["test"])}
            write_run_record(args, f"taobao-smoke/{name}", config, metrics, result["epochs"], 0, True, "taobao",
                             notes="smoke run: 1 seed, few epochs")
    print_table(payload)
    print(markdown_table(payload))
    return payload


def _fmt(value, spec):
    return format(value, spec) if value is not None else "-"


def print_table(payload: dict) -> None:
    print(f"{'L':>5} {'model':22} {'AUC':>7} {'GAUC':>7} {'LogLoss':>8} {'MFLOPs':>9} {'seeds':>5} {'epochs':>6}  "
          "status")
    for length, models in payload["ml-1m-ctr"].items():
        for name, e in models.items():
            if e["auc"] is None and e["seeds"] == 0:
                continue
            print(f"{length:>5} {name:22} {_fmt(e['auc'], '7.4f')} {_fmt(e['gauc'], '7.4f')} "
                  f"{_fmt(e['logloss'], '8.4f')} {_fmt(e['flops'] and e['flops'] / 1e6, '9.2f')} {e['seeds']:5d} "
                  f"{_fmt(e.get('epochs'), '6.1f')}  {'partial' if e['partial'] else 'complete'}")


def markdown_table(payload: dict) -> str:
    """The README table: trained models at each length (AUC to 4 decimals, MFLOPs per example)."""
    lines = ["| length | model | AUC | GAUC | LogLoss | MFLOPs | params | epochs | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for length, models in payload["ml-1m-ctr"].items():
        for name, e in models.items():
            if e["seeds"] == 0:
                continue
            lines.append(f"| {length} | {name} | {_fmt(e['auc'], '.4f')} | {_fmt(e['gauc'], '.4f')} | "
                         f"{_fmt(e['logloss'], '.4f')} | {_fmt(e['flops'] and e['flops'] / 1e6, '.2f')} | "
                         f"{_fmt(e['params'], ',')} | {_fmt(e.get('epochs'), 'g')} | {e['seeds']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", nargs="+", default=["prepare", "flops", "train", "taobao", "purity", "report"],
                        choices=["prepare", "flops", "train", "taobao", "purity", "report"])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--lengths", nargs="+", type=int, default=[1000, 200, 50], choices=list(LENGTHS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(PROTOCOL["seeds"])))
    parser.add_argument("--epochs", type=int, default=PROTOCOL["epochs"], help="max epochs per run")
    parser.add_argument("--patience", type=int, default=PROTOCOL["patience"])
    parser.add_argument("--chunk", type=int, default=PROTOCOL["epochs"],
                        help="models of a length take turns training this many epochs (default: one after another)")
    parser.add_argument("--samples-per-user", type=int, default=PROTOCOL["samples_per_user"],
                        help="training positions drawn per user and epoch (bounds the cost of an epoch)")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="training batches per epoch (default: one pass over the users)")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="runs (outside the repo)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="prepared data (outside the repo)")
    parser.add_argument("--records", default=RECORDS, help="where records are written")
    args = parser.parse_args(argv)
    global COMMAND
    COMMAND = sys.argv if argv is None else ["benchmarks/long_ctr.py", *argv]
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    if "prepare" in args.phase:
        prepare(["ml-1m"], args.data_dir)
    if "flops" in args.phase:
        flops(args)
    if "train" in args.phase:
        train_ml1m(args)
    if "taobao" in args.phase:
        taobao(args)
    if "purity" in args.phase:
        purity(args)
    if "report" in args.phase:
        report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
