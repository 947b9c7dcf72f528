"""Long-sequence CTR benchmark: MoS vs its backbones and token-routed MoE baselines.

Settings: ``benchmarks/settings/long_ctr.yaml`` (the protocol, the tasks, the models' options per length, the side
experiments).

Tasks (``tasks`` of the settings):

* ``ml-1m-ctr-pop``: ML-1M as a CTR task. Each user's positions are split in time
  (``CTRSampling(holdout="fraction")``): test = the last 10% (at least 1), validation = the 10% before, training =
  the rest. Every validation and test position ``t`` is an impression (history = the ``t`` items before it,
  positive = item ``t``) with one negative drawn in proportion to item popularity among the items the user never
  touched (``negatives="popularity"``: popularity alone scores AUC 0.5), seeded by ``(eval_seed, user_id)``, the
  same for every model and seed. Training draws ``samples_per_user`` positions per user and epoch, the same number
  for every model, with fresh negatives each epoch. Sessions are fixed-length chunks (ML-1M has no timestamps).
* ``ml-1m-ctr-uniform``: the same trained models on the same test positions with uniform negatives from the
  untouched items (evaluation only).
* ``ml-latest-small``: MovieLens ``ratings.csv`` with real labels: every rating is an impression of its own movie,
  label = rating >= 4 (``CTRSampling(impressions="labelled")``), history = the user's earlier ratings, the same
  time split; MoS reads the 30-minute time-gap sessions of ``tfmoe prepare`` (``session_mode="session_ids"``).
* side experiments: ``taobao-smoke`` (the Taobao UserBehavior head sample with time-gap sessions: MoS-DIN next to
  DIN) and ``synthetic-purity`` (session-hopping synthetic data with planted themes: the router's session purity).

Metrics of a run (test split, best validation-AUC checkpoint): AUC, GAUC and LogLoss overall and by history-length
bucket (``buckets``: <= 200, 201-1,000, > 1,000 items of history at the impression), from every impression's user id,
label, score and history length, kept in ``<run>/impressions-<task>.npz`` (:mod:`benchmarks.ctr_impressions`).

Phases (``--phase``; each resumable, ``report`` always last):

1. ``prepare``: ``tfmoe prepare`` of the tasks' datasets into ``<data-dir>/<name>``, skipped when present.
2. ``flops``: analytic and profiler forward FLOPs per example and parameter counts (cached in
   ``<work-dir>/flops-<tree>.json``, ``<tree>`` the git tree hash of the committed ``tfmoe/``: code changes
   recount; nothing is cached from uncommitted code).
3. ``train``: :func:`tfmoe.training.train` for every task x length x model x seed into
   ``<work-dir>/<task>/L<length>/<model>/spu<k>/seed<s>``, then the per-impression evaluation of each finished run on
   its task and evaluation-only columns. With ``--chunk`` < ``--epochs`` the models of a length take turns
   (``chunk`` epochs each). A killed run resumes from its backup; finished runs are not retrained.
4. ``taobao`` and ``purity``: the side experiments.
5. ``report``: a record (:mod:`benchmarks.records`) per run and task column,
   ``benchmarks/results/records/long_ctr/<task>/L<length>/<model>/``, with the overall and per-bucket metrics, FLOPs
   and training examples/s; and per task, length and backbone a ``<task>/L<length>/paired/<backbone>`` record: MoS -
   backbone as the difference of the seed means of AUC and GAUC with a 95% interval from a paired bootstrap over test
   users (:mod:`tfmoe.metrics.bootstrap`). A run that does not follow the full protocol (its epoch budget or early
   stopping, ``samples_per_user``, a full epoch) is ``"partial": true``; ``benchmarks/report.py`` builds the
   ``summary`` and ``paired`` tables from the records (:mod:`benchmarks.long_ctr_tables`).

The full protocol, resumable over many sessions (hours on 2 CPU cores; minutes per model on a GPU)::

    nohup .venv/bin/python benchmarks/long_ctr.py --seeds 0 1 2 --chunk 2 > /work/runs/long_ctr/full.log 2>&1 &

A smoke run of the protocol (a few steps per model, recorded as partial) and the report of what has run so far::

    .venv/bin/python benchmarks/long_ctr.py --phase prepare train report --tasks ml-1m-ctr-pop --backbones din \\
        --variants "" mos_ --lengths 200 --seeds 0 --epochs 1 --steps-per-epoch 20
    .venv/bin/python benchmarks/long_ctr.py --phase report
"""

from __future__ import annotations

import argparse
import json
import os
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
TASKS, BUCKETS, BOOTSTRAP = SETTINGS["tasks"], SETTINGS["buckets"], SETTINGS["bootstrap"]
TRAINED_TASKS = tuple(task for task, spec in TASKS.items() if "evaluates" not in spec)
TAOBAO, SYNTHETIC = SETTINGS["taobao"], SETTINGS["synthetic"]
LENGTH_GROUPS = SETTINGS["length_groups"]
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


def model_options(name: str, length: int, task: str | None = None) -> dict:
    """Registry name + options of ``name`` (e.g. ``"mos_din"``) at history length ``length`` for ``task``."""
    variant, backbone = split_name(name)
    structure = LENGTHS[length]
    options = {"name": name, **COMMON, **BACKBONES[backbone]}
    if variant == "mos_":
        options.update(MOS, **structure)
        options.update(TASKS[task].get("mos", {}) if task else {})
        if backbone == "transact" and length >= 1000:
            options["global_expert"] = "sessions"
    elif variant == "gshard_":
        options.update(GSHARD, num_experts=structure["num_themes"])
    elif variant == "expert_choice_":
        options.update(EXPERT_CHOICE, num_experts=structure["num_themes"])
    return options


def task_epochs(task: str, requested: int | None = None) -> int:
    """The epoch budget of trained task ``task``: ``requested`` (``--epochs``), else the task's own ``epochs``, else
    the protocol's."""
    return requested or TASKS[task].get("epochs", PROTOCOL["epochs"])


def training_model(name: str, length: int, task: str) -> dict:
    """:func:`model_options` plus the speed option ``length_groups`` (the same results)."""
    return {**model_options(name, length, task), "length_groups": LENGTH_GROUPS}


def ctr_config(data_dir: str, model: dict, max_len: int, seed: int, output_dir: str, epochs: int, patience: int,
               samples_per_user: int, steps_per_epoch: int | None, sequence_features=(), eval_batch=1024,
               sampling: dict | None = None) -> dict:
    """A CTR training config; ``sampling`` adds :class:`~tfmoe.data.samples.CTRSampling` fields (the time split)."""
    return {
        "task": "ctr",
        "data": {"dir": data_dir, "max_len": max_len, "batch_size": PROTOCOL["batch_size"],
                 "eval_batch_size": eval_batch, "sequence_features": list(sequence_features),
                 "ctr": {"num_negatives": PROTOCOL["num_negatives"], "positions": "random",
                         "samples_per_user": samples_per_user, "min_history": 1, "eval_seed": PROTOCOL["eval_seed"],
                         **(sampling or {})}},
        "model": model,
        "optimizer": {"name": "adam", "learning_rate": PROTOCOL["learning_rate"]},
        "training": {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "seed": seed, "verbose": 2,
                     "early_stopping": {"patience": patience}},
        "evaluation": {"splits": ["test"]},
        "output_dir": output_dir,
    }


def trained_task(task: str) -> str:
    """The task whose models ``task`` scores (itself, unless ``task`` is an evaluation-only column)."""
    return TASKS[task].get("evaluates", task)


def columns(task: str) -> list[str]:
    """The tasks a model trained on ``task`` is evaluated on: ``task`` and its evaluation-only columns."""
    return [task] + [name for name, spec in TASKS.items() if spec.get("evaluates") == task]


def task_sampling(task: str) -> dict:
    """The CTRSampling fields of ``task`` beyond :func:`ctr_config`'s: the time split, then the task's own (an
    evaluation-only column starts from the fields of the task it scores)."""
    out = {"holdout": "fraction", "holdout_fraction": PROTOCOL["holdout_fraction"]}
    out.update(TASKS[trained_task(task)]["ctr"])
    out.update(TASKS[task]["ctr"])
    return out


def sampling_tag(samples_per_user: int, steps_per_epoch: int | None) -> str:
    """Run folder of a training budget: runs with another sampling budget are other runs."""
    return f"spu{samples_per_user}" + (f"-steps{steps_per_epoch}" if steps_per_epoch else "")


def parse_tag(tag: str) -> tuple[int, int | None]:
    spu, _, steps = tag.partition("-steps")
    return int(spu[3:]), int(steps) if steps else None


def task_config(args, task: str, name: str, length: int, seed: int, epochs: int | None = None,
                samples_per_user=None, steps_per_epoch=None) -> dict:
    """The training config of ``name`` at ``length`` and ``seed`` on trained task ``task``."""
    spec = TASKS[task]
    spu = samples_per_user or args.samples_per_user
    steps = steps_per_epoch if samples_per_user else args.steps_per_epoch
    return ctr_config(os.path.join(args.data_dir, spec["dataset"]), training_model(name, length, task), length, seed,
                      os.path.join(args.work_dir, task, f"L{length}", name, sampling_tag(spu, steps), f"seed{seed}"),
                      epochs or task_epochs(task, args.epochs), args.patience, spu, steps,
                      spec.get("sequence_features", ()), EVAL_BATCH[length], task_sampling(task))


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


def _names(args) -> list[str]:
    return [model_name(v, b) for b in args.backbones for v in args.variants]


def flops(args) -> dict:
    """``{length: {model: {"analytic", "profiler", "params"}}}`` of the chosen models and lengths (cached)."""
    import numpy as np

    from tfmoe.models import registry
    from tfmoe.utils.flops import profiler_flops

    tree = records.package_tree()
    path = os.path.join(args.work_dir, f"flops-{tree}.json") if tree else None
    table = read_json(path) if path else {}
    for length in args.lengths:
        rng = np.random.default_rng(0)
        features = {"history": rng.integers(1, 3000, (2, length)).astype("int32"),
                    "target_item": rng.integers(1, 3000, 2).astype("int32")}
        row = table.setdefault(str(length), {})
        for name in _names(args):
            if name in row:
                continue
            options = {k: x for k, x in model_options(name, length).items() if k != "name"}
            model = registry.build_model(name, num_items=3416, max_len=length, **options)
            row[name] = {"analytic": int(model.analytic_flops()["total"]),
                         "profiler": float(profiler_flops(model, features)), "params": int(model.count_params())}
            _log(f"flops L={length} {name}: {row[name]}")
            if path:
                write_json(path, table)
    return table


def train_tasks(args) -> None:
    """Every trained task x length x model x seed (models of a length take turns ``chunk`` epochs at a time), then
    the per-impression evaluation of every run on its task columns."""
    from tfmoe.training import train

    for task in args.tasks:
        epochs = task_epochs(task, args.epochs)
        chunk = args.chunk or epochs
        for length in args.lengths:
            for target in range(min(chunk, epochs), epochs + chunk, chunk):
                target = min(target, epochs)
                for name in _names(args):
                    for seed in args.seeds:
                        config = task_config(args, task, name, length, seed, target)
                        if target < epochs:  # the records score test from the impressions of the final checkpoint
                            config["evaluation"]["splits"] = []
                        _log(f"== train {task} L={length} {name} seed {seed} up to epoch {target}")
                        start = time.time()
                        result = train(config)
                        _log(f"== {task} L={length} {name} seed {seed}: epochs {result.epochs_run}, best "
                             f"{result.best_epoch}, stopped early {result.stopped_early}, test "
                             f"{json.dumps(result.test_metrics)} ({time.time() - start:.0f} s)")
                if target == epochs:
                    break
            for name in _names(args):
                for seed in args.seeds:
                    evaluate_run(task_config(args, task, name, length, seed), task)


# ----- per-impression evaluation -----------------------------------------------------------------------
_USER_ITEMS: dict = {}


def impressions_path(config_dict: dict, task: str) -> str:
    return os.path.join(config_dict["output_dir"], f"impressions-{task}.npz")


def evaluate_run(config_dict: dict, task: str) -> dict | None:
    """``{column: {"overall", "buckets"}}`` of the best checkpoint of a run trained on ``task``, on each of the task's
    columns, from the impressions files (scored now when missing or older than the checkpoint); ``None`` before a
    checkpoint exists."""
    from benchmarks import ctr_impressions

    weights = os.path.join(config_dict["output_dir"], "best.weights.h5")
    if not os.path.exists(weights):
        return None
    out, model = {}, None
    for column in columns(task):
        path = impressions_path(config_dict, column)
        if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(weights):
            if model is None:
                model, features = _best_model(config_dict)
            ctr_impressions.save_impressions(path, _score(config_dict, column, model, features))
        out[column] = ctr_impressions.bucket_metrics(ctr_impressions.load_impressions(path), BUCKETS)
    return out


def _best_model(config_dict: dict):
    """The run's model with its best weights, and the sequence features it reads."""
    from tfmoe.training.config import TrainConfig
    from tfmoe.training.trainer import build_model, data_sizes, with_model_inputs

    config = TrainConfig.from_dict(config_dict)
    model = build_model(config, "ctr", data_sizes(config.data.dir))
    model.load_weights(os.path.join(config.output_dir, "best.weights.h5"))
    return model, tuple(with_model_inputs(config, model).data.sequence_features)


def _score(config_dict: dict, task: str, model, features) -> dict:
    from benchmarks import ctr_impressions
    from tfmoe.data import dataset
    from tfmoe.data.samples import CTRSampling

    data_dir = config_dict["data"]["dir"]
    if data_dir not in _USER_ITEMS:
        _USER_ITEMS[data_dir] = dataset.load_user_items(data_dir)
    sampling = CTRSampling(**{**config_dict["data"]["ctr"], **task_sampling(task)})
    _log(f"== score {task} {config_dict['output_dir']}")
    return ctr_impressions.score_impressions(model, data_dir, "test", sampling, config_dict["data"]["max_len"],
                                             features, config_dict["data"]["eval_batch_size"],
                                             touched_items=_USER_ITEMS[data_dir])


# ----- side experiments --------------------------------------------------------------------------------
# ----- side experiments --------------------------------------------------------------------------------
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


def _run_result(config_dict: dict, budget: int = PROTOCOL["epochs"]) -> dict | None:
    """Trainer results of one run: from metrics.json when finished, else from its best checkpoint (partial); the
    budget is reached when it stopped early or trained ``budget`` epochs."""
    run = saved_run(config_dict, "ctr")
    if run is None:
        return None
    budget_reached = run["finished"] and (run["stopped_early"] or run["epochs"] >= budget)
    return {"finished": run["finished"], "epochs": run["epochs"], "best_epoch": _one_based(run["best_epoch"]),
            "stopped_early": run["stopped_early"], "test": run["test"], "valid": run["valid"],
            "history": run.get("history", []), "budget_reached": budget_reached, "budget": budget}


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC: how far apart two models must be to mean anything."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return ((auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc))
            / (positives * negatives)) ** 0.5


def _se(test: dict) -> float | None:
    positives, count = test.get("positives"), int(test.get("count") or 0)
    if test.get("AUC") is None or not positives or positives >= count:
        return None
    return auc_standard_error(test["AUC"], positives, count - positives)


def partial_reasons(result: dict, samples_per_user: int, steps_per_epoch: int | None) -> list[str]:
    """Why a run is not the full protocol (empty: it is)."""
    reasons = []
    if not result["budget_reached"]:
        reasons.append(f"{result['epochs']} epochs < budget {result.get('budget', PROTOCOL['epochs'])} without early "
                       f"stopping")
    if samples_per_user != PROTOCOL["samples_per_user"]:
        reasons.append(f"samples_per_user {samples_per_user} per epoch (protocol {PROTOCOL['samples_per_user']})")
    if steps_per_epoch is not None:
        reasons.append(f"steps_per_epoch {steps_per_epoch} (protocol: one pass over the users)")
    return reasons


def _budget_tags(args, task: str, length: int, name: str) -> list[str]:
    """Sampling budgets run for a model (``spu<k>[-steps<n>]`` folders), the protocol's first, then largest."""
    root = os.path.join(args.work_dir, task, f"L{length}", name)
    tags = [t for t in (os.listdir(root) if os.path.isdir(root) else []) if t.startswith("spu")]
    protocol = sampling_tag(PROTOCOL["samples_per_user"], None)
    return sorted(tags, key=lambda t: (t != protocol, -parse_tag(t)[0], parse_tag(t)[1] is not None))


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


def write_run_record(args, variant: str, config: dict, metrics: dict, epochs, seed, partial: bool,
                     dataset: str, root: str | None = None, **extra) -> str:
    files = tuple(data_files(args, dataset))
    if files not in _DATA_HASHES:  # hashed once per process
        _DATA_HASHES[files] = records.data_hash(files)
    record = records.make_record(BENCHMARK, variant, _placeholders(config, args), metrics, epochs=epochs, seed=seed,
                                 partial=partial, data_files=[], command=COMMAND, **extra)
    record["data_hash"] = _DATA_HASHES[files]
    return records.write_record(record, root or getattr(args, "records", None) or RECORDS)


def _train_examples_per_s(history: list) -> float | None:
    from tfmoe.training.trainer import sequences_per_s

    return sequences_per_s(history, None, PROTOCOL["batch_size"])


def task_runs(args, task: str, length: int, name: str) -> list[dict]:
    """The runs of ``name`` on trained task ``task`` at ``length`` (the first budget with any run), each with its
    config, trainer result, per-column evaluation and partial reasons."""
    for tag in _budget_tags(args, task, length, name):
        spu, steps = parse_tag(tag)
        runs = []
        for seed in args.seeds:
            config = task_config(args, task, name, length, seed, None, spu, steps)
            result = _run_result(config, task_epochs(task, args.epochs))
            evaluation = evaluate_run(config, task) if result is not None else None
            if evaluation is None:
                continue
            runs.append({"seed": seed, "config": config, "result": result, "evaluation": evaluation,
                         "partial_reasons": partial_reasons(result, spu, steps)})
        if runs:
            return runs
    return []


def run_metrics(args, run: dict, column: str, flops_row: dict) -> dict:
    """The record metrics of ``run`` on task column ``column``."""
    result, evaluation = run["result"], run["evaluation"][column]
    return {"test": evaluation["overall"], "buckets": evaluation["buckets"], "valid": result["valid"],
            "best_epoch": result["best_epoch"], "stopped_early": result["stopped_early"],
            "auc_se_hanley_mcneil": _se(evaluation["overall"]), "flops": flops_row.get("analytic"),
            "flops_profiler": flops_row.get("profiler"), "params": flops_row.get("params"),
            "train_examples_per_s": _train_examples_per_s(result["history"]),
            "evaluation_ctr": task_sampling(column), "partial_reasons": run["partial_reasons"],
            "impressions_file": _placeholders({"f": impressions_path(run["config"], column)}, args)["f"]}


def paired_comparison(column: str, mos_runs: list[dict], backbone_runs: list[dict]) -> dict:
    """MoS - backbone on ``column``: the paired bootstrap over test users of the seed-averaged AUC and GAUC."""
    import numpy as np

    from benchmarks import ctr_impressions
    from tfmoe.metrics.bootstrap import paired_bootstrap

    loaded = {side: [ctr_impressions.load_impressions(impressions_path(r["config"], column)) for r in runs]
              for side, runs in (("mos", mos_runs), ("backbone", backbone_runs))}
    first = loaded["mos"][0]
    for arrays in loaded["mos"] + loaded["backbone"]:
        if not (np.array_equal(arrays["users"], first["users"]) and np.array_equal(arrays["labels"],
                                                                                    first["labels"])):
            raise ValueError(f"paired_comparison: the runs on {column} were not scored on the same impressions")
    out = paired_bootstrap(first["users"], first["labels"], [a["scores"] for a in loaded["mos"]],
                           [a["scores"] for a in loaded["backbone"]], num_samples=BOOTSTRAP["samples"],
                           seed=BOOTSTRAP["seed"], confidence=BOOTSTRAP["confidence"])
    return {**out, "seeds_mos": [r["seed"] for r in mos_runs], "seeds_backbone": [r["seed"] for r in backbone_runs]}


def report(args) -> dict:
    """Records of every run this machine holds, per task column; the paired MoS - backbone records; the tables."""
    flops_table = flops(args)
    written = {}
    for task in args.tasks:
        dataset = TASKS[task]["dataset"]
        for length in args.lengths:
            runs = {name: task_runs(args, task, length, name) for name in _names(args)}
            for name, found in runs.items():
                flops_row = flops_table.get(str(length), {}).get(name) or {}
                for run in found:
                    for column in columns(task):
                        metrics = run_metrics(args, run, column, flops_row)
                        path = write_run_record(args, f"{column}/L{length}/{name}", run["config"], metrics,
                                                run["result"]["epochs"], run["seed"], bool(run["partial_reasons"]),
                                                dataset)
                        written.setdefault(column, {}).setdefault(str(length), {}).setdefault(name, []).append(path)
            for backbone in args.backbones:
                mos, other = runs.get(f"mos_{backbone}"), runs.get(backbone)
                if not mos or not other:
                    continue
                for column in columns(task):
                    paired = paired_comparison(column, mos, other)
                    partial = (any(r["partial_reasons"] for r in mos + other)
                               or min(len(mos), len(other)) < PROTOCOL["seeds"])
                    config = {"task": column, "length": length, "mos": f"mos_{backbone}", "backbone": backbone,
                              "bootstrap": BOOTSTRAP, "runs": [_placeholders(r["config"], args)["output_dir"]
                                                               for r in mos + other]}
                    write_run_record(args, f"{column}/L{length}/paired/{backbone}", config, paired, None,
                                     sorted({r["seed"] for r in mos + other}), partial, dataset)
                    _log(f"== paired {column} L={length} mos_{backbone} - {backbone}: AUC {paired['auc_diff']:+.4f} "
                         f"{paired['auc_ci95']}, GAUC {paired['gauc_diff']:+.4f} {paired['gauc_ci95']}")
    for name in ("mos_din", "din"):
        config = taobao_config(args, name)
        result = _run_result(config)
        if result is not None:
            metrics = {"test": result["test"], "valid": result["valid"], "best_epoch": result["best_epoch"],
                       "stopped_early": result["stopped_early"]}
            write_run_record(args, f"taobao-smoke/{name}", config, metrics, result["epochs"], 0, True, "taobao",
                             notes="smoke run: 1 seed, few epochs")
    from benchmarks import long_ctr_tables

    found = records.load_records(getattr(args, "records", None) or RECORDS, BENCHMARK)
    print(long_ctr_tables.summary_table(long_ctr_tables.summary(found, PROTOCOL["seeds"])))
    print(long_ctr_tables.paired_table(long_ctr_tables.paired(found)))
    return written


def impression_counts(args) -> dict:
    """Test impressions of each trained task's time split, overall and per history-length bucket (data only)."""
    from benchmarks import ctr_impressions
    from tfmoe.data.samples import CTRSampling

    out = {}
    for task in args.tasks:
        sampling = CTRSampling(**task_sampling(task))
        out[task] = ctr_impressions.impression_counts(os.path.join(args.data_dir, TASKS[task]["dataset"]), sampling,
                                                      BUCKETS)
        _log(f"== {task}: test impressions {json.dumps(out[task])}")
    return out


PHASES = ["prepare", "counts", "flops", "train", "taobao", "purity", "report"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", nargs="+", default=["prepare", "flops", "train", "taobao", "purity", "report"],
                        choices=PHASES)
    parser.add_argument("--tasks", nargs="+", default=list(TRAINED_TASKS), choices=list(TRAINED_TASKS),
                        help="trained tasks (their evaluation-only columns come with them)")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[1000, 200], choices=list(LENGTHS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(PROTOCOL["seeds"])))
    parser.add_argument("--epochs", type=int, default=None,
                        help="max epochs per run (default: the task's budget, `epochs` of the task or the protocol)")
    parser.add_argument("--patience", type=int, default=PROTOCOL["patience"])
    parser.add_argument("--chunk", type=int, default=None,
                        help="models of a length take turns training this many epochs (default: one after another)")
    parser.add_argument("--samples-per-user", type=int, default=PROTOCOL["samples_per_user"],
                        help="training positions drawn per user and epoch (the same for every model)")
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
        prepare(sorted({TASKS[t]["dataset"] for t in args.tasks}), args.data_dir)
    if "counts" in args.phase:
        impression_counts(args)
    if "flops" in args.phase:
        flops(args)
    if "train" in args.phase:
        train_tasks(args)
    if "taobao" in args.phase:
        taobao(args)
    if "purity" in args.phase:
        purity(args)
    if "report" in args.phase:
        report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
