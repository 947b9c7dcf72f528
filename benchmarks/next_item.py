"""Next-item benchmark: SASRec, FAME and HyMoERec on ML-1M and Beauty, full ranking, seen items filtered.

Phases, each resumable and each selectable (``--phase``):

1. ``prepare``: ``tfmoe prepare`` of ``../shared/data`` (ML-1M ``ml-1m.txt``, Beauty S3-Rec ``Beauty.txt``) into
   ``<work-dir>/data/<dataset>`` (skipped when present).
2. ``train``: :func:`tfmoe.training.train` for every dataset x model x seed into
   ``<work-dir>/<dataset>/<model>/seed<k>`` with the settings of :data:`DATASETS` / :data:`MODELS` (same
   budget for every model: max epochs, early stopping on validation NDCG@10, patience). A run that is cut
   off resumes from its last backup when the command is run again; finished runs are not retrained.
3. ``throughput``: training sequences per second of each model in one process, in interleaved rounds on the
   same cached batches (ratios comparable on a shared machine), and the epoch-time ratio to SASRec.
4. ``cost``: the epoch time of HyMoERec (expert sizes, MoE depths, routing) and FAME (experts per head) relative
   to SASRec (:data:`COST_VARIANTS`)
   -> ``benchmarks/results/next_item_cost.json``.
5. ``ablation``: :data:`ABLATIONS` trained for ``--ablation-epochs`` (resumable; early stopping with
   ``--ablation-patience``), their validation NDCG@10 per epoch next to the main runs' and their test metrics
   -> ``benchmarks/results/next_item_ablation.json``.
6. ``report`` (always last): ``benchmarks/results/next_item.json`` shaped
   ``{dataset: {model: {"ndcg@10", "hr@10", "ndcg@10_std", "seeds", "epochs", "sequences_per_s", ...}}}``
   (``"unfiltered"``: the same test metrics without seen-item filtering).
   Unfinished runs are reported from their best checkpoint so far, marked ``"partial": true`` with the
   epochs actually run.

Run it in the background on a 2-core machine (hours); on a GPU it is minutes per model. ``--chunk 5`` makes
the models take turns (5 epochs each), so a run cut off at any time leaves comparable partial results:

    nohup .venv/bin/python benchmarks/next_item.py --datasets ml-1m --models sasrec fame hymoerec \\
        --seeds 0 --chunk 5 > /tmp/next_item.log 2>&1 &
    .venv/bin/python benchmarks/next_item.py --phase report        # table + JSON from what has run so far
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _paths as paths
from benchmarks._runs import saved_run
from benchmarks._timing import command_line, machine_info, merge_json, read_json, time_interleaved, write_json
from tfmoe.models import presets

SHARED = paths.SHARED_DATA
RESULTS = os.path.join(paths.RESULTS, "next_item.json")
DEFAULT_WORK_DIR = os.path.join(paths.RUNS, "next_item")

# The reference code's settings of SASRec (Klenitskiy & Vasilev, RecSys'23, source of the published full-CE numbers)
# that differ from tfmoe's defaults: N(0, 0.02) initialisation, FFN d -> d with ReLU (inner_dim 64 = both datasets'
# d), queries and residual from the normalised input (norm="sasrec"), positions counted from the first item; with
# Adam beta_2 0.999 (ORIGINAL_ADAM). ML-1M's main settings since they gave its best SASRec (ablation below).
ORIGINAL_SASREC = {key: value for key, value in presets.RECSYS23_SASREC.items()
                   if key not in ("hidden_dim", "num_blocks", "dropout")}
ORIGINAL_ADAM = {"beta_2": 0.999}
# Batches of users drawn at random from the whole training set (shuffle buffer over every user) and padded to
# max_len, as in the reference code, instead of length buckets: the loss is a mean over a batch's items, so
# with buckets a batch of short histories weighs as much as one of long histories (ML-1M: histories <= 50 items
# are 31% of users and 9% of training items but get 31% of the steps).
RANDOM_BATCHES = {"bucket_boundaries": None, "shuffle_buffer": 32768}

# dataset -> (prepare format, raw file, data settings, the model presets' suffix); published settings of SASRec+
# (Klenitskiy & Vasilev, RecSys'23: d 64, 2 blocks, 1 head, dropout 0.1, lr 1e-3, batch 128, patience 10) and
# eSASRec for Beauty (1 block, dropout 0.2, max length 50). The models' options are the presets
# <model>_<preset suffix> of tfmoe/models/presets.py. Optional key: "optimizer" (on top of Adam, lr
# BUDGET["learning_rate"], beta_2 0.98).
DATASETS = {
    "ml-1m": {
        "format": "ml1m-sasrec", "input": os.path.join(SHARED, "ml-1m", "ml-1m.txt"),
        # random batches and the reference code's model settings: SASRec 0.1788 test NDCG@10 over 3 seeds vs 0.1668
        # with length buckets and tfmoe's defaults (ML1M_EARLIER_*: the runs of next_item_ml1m_length_buckets.json)
        "data": {"max_len": 200, "batch_size": 128, "eval_batch_size": 256, **RANDOM_BATCHES},
        "presets": "ml1m",
        "optimizer": ORIGINAL_ADAM,
    },
    "beauty": {
        "format": "beauty-s3rec", "input": os.path.join(SHARED, "beauty", "s3rec", "Beauty.txt"),
        # random batches (see RANDOM_BATCHES): 0.0554 test NDCG@10 vs 0.0518 with length buckets (SASRec, seed 0)
        "data": {"max_len": 50, "batch_size": 128, "eval_batch_size": 512, "bucket_boundaries": None,
                 "shuffle_buffer": 32768},
        # d 64: at the eSASRec benchmark's d 256 (its SASRec gives the 0.0531 target, with sampled softmax) full-CE
        # SASRec reaches in 4 epochs what d 64 reaches in 11 but peaks at epoch 5 and overfits, below where d 64
        # plateaus (`--phase ablation`)
        "presets": "beauty",
    },
}
# The models, each at its preset's settings (SASRec: 1 head, as published; FAME: 2 facets x 2 expert queries, W_f
# started as head-chunk selectors; HyMoERec: top-2 of 4 experts of inner size 2d on ML-1M, alpha warm-up over the
# first epoch's steps).
MODELS = ("sasrec", "fame", "hymoerec")
BUDGET = {"epochs": 200, "patience": 10, "learning_rate": 1e-3}


# Cost ablation (``--phase cost``): label -> (model, options on top of the benchmark's model). HyMoERec: experts of
# inner size 4d, 2d or d and/or the hybrid FFN in the last block only; capacity E/k (no token dropped), or
# ``routing="dropless"`` (each assignment computed once: k/E of the buffers' expert work, no XLA). FAME: experts per
# head.
COST_VARIANTS = {
    "hymoerec expert_hidden_dim=256 (4d)": ("hymoerec", {"expert_hidden_dim": 256}),
    "hymoerec expert_hidden_dim=128": ("hymoerec", {"expert_hidden_dim": 128}),
    "hymoerec expert_hidden_dim=64": ("hymoerec", {"expert_hidden_dim": 64}),
    "hymoerec moe_blocks=1": ("hymoerec", {"moe_blocks": 1}),
    "hymoerec moe_blocks=1 expert_hidden_dim=64": ("hymoerec", {"moe_blocks": 1, "expert_hidden_dim": 64}),
    "hymoerec routing=dropless": ("hymoerec", {"routing": "dropless"}),
    "hymoerec routing=dropless expert_hidden_dim=256 (4d)": ("hymoerec", {"routing": "dropless",
                                                                         "expert_hidden_dim": 256}),
    # FAME's facet block attends once per head and expert query: H N score maps of L x L where SASRec's block has H
    "fame num_experts=4": ("fame", {"num_experts": 4}),
    "fame num_experts=2 (benchmark)": ("fame", {"num_experts": 2}),
    "fame num_experts=1": ("fame", {"num_experts": 1}),
}
COST_RESULTS = os.path.join(paths.RESULTS, "next_item_cost.json")
# Accuracy ablation (``--phase ablation``): label -> (model, model options, optimizer options, {dataset: data
# options}) for the datasets it runs on, on top of the benchmark's settings, trained for ``--ablation-epochs``
# (early stopping with ``--ablation-patience``) and compared by validation NDCG@10 per epoch with the main runs and
# by test metrics at the best epoch.
# Beauty: ``hidden_dim=256`` is the eSASRec benchmark's size (HyMoERec experts 2d); FAME ``num_blocks=2`` puts an
# ordinary SASRec block under the facet block (with one block the facet block is the whole transformer),
# ``num_heads=1`` keeps one facet of size d (no split of the embedding), ``num_experts=1`` on top of it leaves the
# facet block without its MoE query router; dropout 0.5 is the original SASRec's for sparse data.
# ML-1M: one difference at a time between tfmoe's SASRec and the reference code of the published full-CE numbers
# (Klenitskiy & Vasilev, RecSys'23), then all of them together (inner_dim 64: the FFN is d -> d at both datasets' d 64).
# Beauty ``sampled_softmax``: the eSASRec benchmark's SASRec (source of the 0.0531 target): d 256, one block, one
# head, dropout 0.2, softmax over the positive and 256 uniform negatives (uniform Q: the logQ correction is a
# constant and cancels), alone and with the reference code's other settings (FFN d -> d ReLU there too).
# Beauty ``item_dropout=0.2``: RecTools' dropout on the item table that scores items (the benchmark's dropout rate).
# Beauty ``hymoerec expert_hidden_dim=128``: experts of 2d as on ML-1M (the routed experts a token activates then
# cost one dense FFN) instead of 4d: does HyMoERec trail SASRec there for its extra FFN capacity?
# ORIGINAL_SASREC without dropout on the attention output (the reference code drops attention probabilities, FFN
# hidden units and FFN outputs, not the attention output); the runs labelled "original" predate this option.
REFERENCE_SASREC = {**ORIGINAL_SASREC, "attention_output_dropout": 0.0}
# ORIGINAL_SASREC with the reference code's attention initialization: its N(0, 0.02^2) reaches nn.Linear and
# embeddings only, so the query/key/value in-projection of nn.MultiheadAttention keeps PyTorch's Glorot uniform
# over [3d, d] (both datasets' d is 64); tfmoe.utils.initializers.torch_in_projection(64), written out so that the
# benchmark's settings import no TensorFlow
TORCH_IN_PROJECTION_64 = {"class_name": "RandomUniform", "config": {"minval": -(6 / 256) ** 0.5,
                                                                    "maxval": (6 / 256) ** 0.5, "seed": None}}
TORCH_ATTENTION_SASREC = {**ORIGINAL_SASREC, "attention_initializer": TORCH_IN_PROJECTION_64}
# ... and PyTorch's epsilons as well: LayerNorm 1e-8 (the reference code's) and Adam 1e-8 (torch.optim.Adam's; Keras'
# is 1e-7): every setting of the reference code that tfmoe can express, with its optimizer options
PYTORCH_SASREC = {**TORCH_ATTENTION_SASREC, "layer_norm_epsilon": 1e-8}
PYTORCH_ADAM = {"beta_2": 0.999, "epsilon": 1e-8}
# ML-1M's main settings before this release (length buckets, tfmoe's model defaults, beta_2 0.98): the ML-1M
# variants trained on top of them carry them, so that a label means the run its results came from (the options are
# tfmoe's defaults written out, no-ops where a variant also runs on Beauty)
ML1M_EARLIER_MODEL = {"initializer_range": None, "inner_dim": None, "activation": "gelu", "norm": "pre",
                      "positions": "recency"}
ML1M_EARLIER_ADAM = {"beta_2": 0.98}
ML1M_LENGTH_BUCKETS = {"bucket_boundaries": [50, 100, 150], "shuffle_buffer": 10_000}
# Beauty's data settings before random batches became its main setting: the Beauty variants trained with them
# keep them, so that a label means the run its results came from.
BEAUTY_LENGTH_BUCKETS = {"bucket_boundaries": [10, 20, 30], "shuffle_buffer": 10_000}
BUCKETED_BEAUTY = {"beauty": BEAUTY_LENGTH_BUCKETS}
EARLIER_ML1M = {"ml-1m": ML1M_LENGTH_BUCKETS}
MAIN_BEAUTY = {"beauty": {}}  # Beauty's main data settings (random batches)
# FAME's main settings before 2 experts per head: 4 experts per head (the FAME variants trained then carry it, so that
# a label means the run its results came from)
FOUR_EXPERTS = {"num_experts": 4}
# ... and W_f drawn from the kernel initializer, as every FAME run before item_projection_init="chunks" (a no-op with
# "slice")
RANDOM_W_F = {**FOUR_EXPERTS, "item_projection_init": "random"}
SAMPLED_SOFTMAX_256 = {"loss": "sampled_softmax", "num_negatives": 256, "proposal": "uniform"}
ABLATIONS = {
    "sasrec hidden_dim=256": ("sasrec", {"hidden_dim": 256}, {}, BUCKETED_BEAUTY),
    "hymoerec hidden_dim=256": ("hymoerec", {"hidden_dim": 256, "expert_hidden_dim": 512}, {}, BUCKETED_BEAUTY),
    "fame hidden_dim=256": ("fame", {"hidden_dim": 256, **RANDOM_W_F}, {}, BUCKETED_BEAUTY),
    "fame num_blocks=2": ("fame", {"num_blocks": 2, **RANDOM_W_F}, {}, BUCKETED_BEAUTY),
    "fame num_heads=1": ("fame", {"num_heads": 1, **RANDOM_W_F}, {}, BUCKETED_BEAUTY),
    "fame num_heads=1 num_experts=1": ("fame", {**RANDOM_W_F, "num_heads": 1, "num_experts": 1}, {},
                                       BUCKETED_BEAUTY),
    "sasrec dropout=0.5": ("sasrec", {"dropout": 0.5}, {}, BUCKETED_BEAUTY),
    "sasrec initializer_range=0.02": ("sasrec", {**ML1M_EARLIER_MODEL, "initializer_range": 0.02}, ML1M_EARLIER_ADAM,
                                      {**EARLIER_ML1M, **BUCKETED_BEAUTY}),
    "sasrec ffn=d relu": ("sasrec", {**ML1M_EARLIER_MODEL, "inner_dim": 64, "activation": "relu"}, ML1M_EARLIER_ADAM,
                          EARLIER_ML1M),
    "sasrec norm=sasrec": ("sasrec", {**ML1M_EARLIER_MODEL, "norm": "sasrec"}, ML1M_EARLIER_ADAM, EARLIER_ML1M),
    "sasrec positions=absolute": ("sasrec", {**ML1M_EARLIER_MODEL, "positions": "absolute"}, ML1M_EARLIER_ADAM,
                                  EARLIER_ML1M),
    "sasrec beta_2=0.999": ("sasrec", ML1M_EARLIER_MODEL, ORIGINAL_ADAM, EARLIER_ML1M),
    "sasrec original": ("sasrec", ORIGINAL_SASREC, ORIGINAL_ADAM, {**EARLIER_ML1M, **BUCKETED_BEAUTY}),
    "sasrec item_dropout=0.2": ("sasrec", {"item_dropout": 0.2}, {}, BUCKETED_BEAUTY),
    "hymoerec expert_hidden_dim=128": ("hymoerec", {"expert_hidden_dim": 128}, {}, BUCKETED_BEAUTY),
    # Beauty's main settings before this release, for the variants above to be compared with
    "sasrec length buckets": ("sasrec", ML1M_EARLIER_MODEL, ML1M_EARLIER_ADAM, {**EARLIER_ML1M, **BUCKETED_BEAUTY}),
    "fame length buckets": ("fame", {**ML1M_EARLIER_MODEL, **RANDOM_W_F}, ML1M_EARLIER_ADAM,
                            {**EARLIER_ML1M, **BUCKETED_BEAUTY}),
    "hymoerec length buckets": ("hymoerec", ML1M_EARLIER_MODEL, ML1M_EARLIER_ADAM,
                                {**EARLIER_ML1M, **BUCKETED_BEAUTY}),
    "sasrec random batches": ("sasrec", {}, {}, {"beauty": RANDOM_BATCHES}),
    "hymoerec random batches": ("hymoerec", {}, {}, {"beauty": RANDOM_BATCHES}),
    "fame random batches": ("fame", RANDOM_W_F, {}, {"beauty": RANDOM_BATCHES}),
    "sasrec shuffle_buffer=32768": ("sasrec", {}, {}, {"beauty": {**BEAUTY_LENGTH_BUCKETS, "shuffle_buffer": 32768}}),
    # ML-1M's main settings (the main SASRec runs' twins: the report takes their seeds for the main table)
    "sasrec original random batches": ("sasrec", ORIGINAL_SASREC, ORIGINAL_ADAM, {"ml-1m": RANDOM_BATCHES}),
    "sasrec reference random batches": ("sasrec", REFERENCE_SASREC, ORIGINAL_ADAM, {"ml-1m": RANDOM_BATCHES}),
    "sasrec original torch attention init random batches": (
        "sasrec", TORCH_ATTENTION_SASREC, ORIGINAL_ADAM, {"ml-1m": RANDOM_BATCHES}),
    "sasrec pytorch settings random batches": ("sasrec", PYTORCH_SASREC, PYTORCH_ADAM, {"ml-1m": RANDOM_BATCHES}),
    "sasrec d256 sampled_softmax": ("sasrec", {"hidden_dim": 256, **SAMPLED_SOFTMAX_256}, {}, BUCKETED_BEAUTY),
    "sasrec original d256 sampled_softmax": (
        "sasrec", {**ORIGINAL_SASREC, "hidden_dim": 256, "inner_dim": 256, **SAMPLED_SOFTMAX_256}, {"beta_2": 0.999},
        BUCKETED_BEAUTY),
    # FAME's facet block against SASRec's block, one difference at a time, at Beauty's main settings (where the
    # facet block is the whole transformer): FFN' of 4d' instead of d', pre-LN inside the block, item
    # sub-embeddings as chunks of e_v instead of W_f projections, and a plain SASRec block under the facet block
    "fame facet_inner_dim=128": ("fame", {"facet_inner_dim": 128, **RANDOM_W_F}, {}, MAIN_BEAUTY),
    "fame facet_norm=pre": ("fame", {"facet_norm": "pre", **RANDOM_W_F}, {}, MAIN_BEAUTY),
    "fame item_projection=slice": ("fame", {"item_projection": "slice", **RANDOM_W_F}, {}, MAIN_BEAUTY),
    "fame num_blocks=2 random batches": ("fame", {"num_blocks": 2, **RANDOM_W_F}, {}, MAIN_BEAUTY),
    # FAME and HyMoERec at ML-1M's main settings, trained as variants (twins of the main runs, like SASRec's above)
    "hymoerec original random batches": ("hymoerec", ORIGINAL_SASREC, ORIGINAL_ADAM, {"ml-1m": RANDOM_BATCHES}),
    "fame original random batches": ("fame", {**ORIGINAL_SASREC, **RANDOM_W_F}, ORIGINAL_ADAM,
                                     {"ml-1m": RANDOM_BATCHES}),
    # FAME's W_f started as chunk selectors (the "slice" sub-embeddings, then learned) instead of a random draw, which
    # under N(0, 0.02^2) shrinks the head scores about 6x: at Beauty's and at ML-1M's main settings (the main settings
    # with 4 experts per head)
    "fame item_projection_init=chunks": ("fame", {**FOUR_EXPERTS, "item_projection_init": "chunks"}, {}, MAIN_BEAUTY),
    "fame original chunks random batches": ("fame", {**ORIGINAL_SASREC, **FOUR_EXPERTS,
                                                     "item_projection_init": "chunks"},
                                            ORIGINAL_ADAM, {"ml-1m": RANDOM_BATCHES}),
    # FAME with 2 experts per head instead of 4 at both datasets' main settings: 1.34x SASRec's epoch time on ML-1M
    # against 1.66x in the `--phase cost` run of the time: what do the two experts it drops buy? (Nothing measurable:
    # since then the main settings, and these runs are the main FAME runs' twins.)
    "fame num_experts=2": ("fame", {"num_experts": 2}, {}, {"ml-1m": {}, "beauty": {}}),
    # HyMoERec on Beauty fits the training sequences better than SASRec and validates worse: is it short of
    # regularisation? All three with dropout 0.3 instead of the main settings' 0.2 (Beauty's main settings otherwise).
    # (Mostly: every model gains, HyMoERec most; it is 0.9% behind SASRec at 0.3 against 2.8% at 0.2, 3 seeds.)
    "hymoerec dropout=0.3": ("hymoerec", {"dropout": 0.3}, {}, MAIN_BEAUTY),
    "sasrec dropout=0.3": ("sasrec", {"dropout": 0.3}, {}, MAIN_BEAUTY),
    "fame dropout=0.3": ("fame", {"dropout": 0.3}, {}, MAIN_BEAUTY),
}
ABLATION_RESULTS = os.path.join(paths.RESULTS, "next_item_ablation.json")


def run_config(dataset: str, model: str, seed: int, work_dir: str, epochs: int, patience: int,
               model_overrides: dict | None = None, optimizer_overrides: dict | None = None,
               data_overrides: dict | None = None) -> dict:
    spec = DATASETS[dataset]
    return {
        "data": {"dir": os.path.join(work_dir, "data", dataset), **spec["data"], **(data_overrides or {})},
        "model": {"name": model, **presets.get(f"{model}_{spec['presets']}")["options"], **(model_overrides or {})},
        "optimizer": {"name": "adam", "learning_rate": BUDGET["learning_rate"], "beta_2": 0.98,
                      **spec.get("optimizer", {}), **(optimizer_overrides or {})},
        "training": {"epochs": epochs, "seed": seed, "verbose": 2, "early_stopping": {"patience": patience}},
        "evaluation": {"filter_seen": True, "splits": ["test"]},
        "output_dir": os.path.join(work_dir, dataset, model, f"seed{seed}"),
    }


# ----- phases ------------------------------------------------------------------------------------------
def prepare(datasets, work_dir: str) -> None:
    for name in datasets:
        out = os.path.join(work_dir, "data", name)
        if os.path.exists(os.path.join(out, "summary.json")):
            continue
        spec = DATASETS[name]
        command = [os.path.join(os.path.dirname(sys.executable), "tfmoe"), "prepare", "--format", spec["format"],
                   "--input", spec["input"], "--out", out]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)


def train_all(datasets, models, seeds, work_dir: str, epochs: int, patience: int, chunk: int) -> None:
    """Trains every run; with ``chunk`` < ``epochs`` the models take turns, ``chunk`` epochs each, so that at any
    time (a cut-off session) all models have had about the same number of epochs."""
    from tfmoe.training import train

    for dataset in datasets:
        for target in range(min(chunk, epochs), epochs + chunk, chunk):
            target = min(target, epochs)
            for model in models:
                for seed in seeds:
                    config = run_config(dataset, model, seed, work_dir, target, patience)
                    print(f"== train {dataset} {model} seed {seed} up to epoch {target} -> {config['output_dir']}",
                          flush=True)
                    result = train(config)
                    print(f"== {dataset} {model} seed {seed}: epochs {result.epochs_run}, best {result.best_epoch}, "
                          f"stopped early {result.stopped_early}, test {json.dumps(result.test_metrics)}", flush=True)
            if target == epochs:
                break


def throughput(datasets, models, work_dir: str, rounds: int, steps: int) -> dict:
    """``{dataset: {model: sequences/s}}``: ``steps`` training steps per round on the same cached batches."""
    return _throughput(datasets, {m: (m, {}) for m in models}, work_dir, rounds, steps)


def cost_ablation(datasets, work_dir: str, rounds: int, steps: int) -> dict:
    """Sequences/s of SASRec and the :data:`COST_VARIANTS` of HyMoERec and FAME, interleaved on the same batches,
    and each variant's epoch time relative to SASRec; merged into ``benchmarks/results/next_item_cost.json``."""
    variants = {"sasrec": ("sasrec", {}), **COST_VARIANTS}
    rates = _throughput(datasets, variants, work_dir, rounds, steps)
    payload = read_json(COST_RESULTS)
    print(f"{'dataset':8} {'variant':44} {'seq/s':>7} {'t/SASRec':>8}")
    for dataset, section in rates.items():
        payload[dataset] = {label: {"sequences_per_s": rate, "epoch_time_vs_sasrec": section["sasrec"] / rate,
                                    "model": variants[label][0], "model_options": variants[label][1]}
                            for label, rate in section.items()}
        for label, entry in payload[dataset].items():
            print(f"{dataset:8} {label:44} {entry['sequences_per_s']:7.0f} {entry['epoch_time_vs_sasrec']:8.2f}")
    payload["_meta"] = {"what": "training sequences/s, interleaved rounds on the same cached batches",
                        "rounds": rounds, "steps_per_round": steps, "machine": machine_info(),
                        "command": command_line("benchmarks/next_item.py")}
    write_json(COST_RESULTS, payload)
    return payload


def ablation_dir(work_dir: str, dataset: str, label: str, seed: int) -> str:
    """Where the ablation phase trains variant ``label`` with ``seed``."""
    return os.path.join(work_dir, dataset, "ablation", label.replace(" ", "_"), f"seed{seed}")


def seed_suffix(seed: int) -> str:
    """The ablation results' key of a variant's run with ``seed``: ``label + seed_suffix(seed)``."""
    return "" if seed == 0 else f" (seed {seed})"


def variant_seed_keys(section: dict, label: str) -> dict[int, str]:
    """``{seed: key}`` of variant ``label``'s runs among the keys of ``section`` (one dataset's ablation results),
    in seed order: the inverse of :func:`seed_suffix`."""
    seeded = re.compile(re.escape(label) + r"(?: \(seed ([1-9]\d*)\))?")
    return dict(sorted((int(m.group(1) or 0), key) for key in section if (m := seeded.fullmatch(key))))


def ablation_twins(dataset: str, model: str) -> list[str]:
    """The :data:`ABLATIONS` labels whose runs on ``dataset`` have the main ``model`` run's settings (model,
    optimizer, data): a variant trained with the main settings is a main run, and the report takes its seeds."""
    def settings(config):
        return {**config, "data": {**config["data"], "dir": None}, "training": None, "output_dir": None}

    main = settings(run_config(dataset, model, 0, "w", 1, 1))
    return [label for label, (variant_model, options, optimizer, datasets_data) in ABLATIONS.items()
            if variant_model == model and dataset in datasets_data and settings(
                run_config(dataset, model, 0, "w", 1, 1, options, optimizer, datasets_data[dataset])) == main]


def ablation(datasets, seed: int, work_dir: str, epochs: int, labels=None, patience: int | None = None,
             train_missing: bool = True) -> dict:
    """Trains the :data:`ABLATIONS` variants ``labels`` (default all) of each dataset for ``epochs`` (resumable,
    ``<work-dir>/<dataset>/ablation/``; early stopping after ``patience`` epochs without gain, default none) and
    writes their validation NDCG@10 per epoch next to the main runs' (``benchmarks/results/next_item_ablation.json``)
    with the test metrics of each variant's best epoch; other variants keep their saved entries. Seed 0's entries
    are keyed by the variant's label, another seed's by ``"<label> (seed <k>)"``.
    ``train_missing=False`` trains nothing: variants are reported as far as they ran (``"partial": true`` when cut
    off; without a best checkpoint, validation curve only)."""
    from tfmoe.training import train
    from tfmoe.training.callbacks import TrainingState

    def state_curve(output_dir):
        path = os.path.join(output_dir, "state.json")
        return _valid_curve(TrainingState.load(path, "NDCG@10").history if os.path.exists(path) else [])[:epochs]

    payload, updates = read_json(ABLATION_RESULTS), {}
    suffix = seed_suffix(seed)
    for dataset in datasets:
        section = payload.setdefault(dataset, {})
        updated = updates.setdefault(dataset, {})
        for model in MODELS:
            config = run_config(dataset, model, seed, work_dir, epochs, 1)
            curve = state_curve(config["output_dir"])
            if curve:  # main runs not on this machine (or never trained for this seed): saved curves stay, none added
                section[model + suffix] = updated[model + suffix] = {"model_options": config["model"], "seed": seed,
                                                                     "valid_ndcg@10": curve}
        for label, (model, options, optimizer, datasets_data) in ABLATIONS.items():
            if dataset not in datasets_data or (labels is not None and label not in labels):
                continue
            data = datasets_data[dataset]
            config = run_config(dataset, model, seed, work_dir, epochs, patience or epochs, options, optimizer, data)
            config["output_dir"] = ablation_dir(work_dir, dataset, label, seed)
            run = saved_run(config, "next_item")
            done = run is not None and (run["stopped_early"] or run["epochs"] >= epochs)
            if not done and train_missing:
                print(f"== ablation {dataset} {label} seed {seed} up to epoch {epochs}", flush=True)
                train(config)
                run, done = saved_run(config, "next_item"), True
            entry = {"model_options": config["model"], "optimizer": config["optimizer"], "seed": seed,
                     **({"data": data} if data else {}), "valid_ndcg@10": state_curve(config["output_dir"]),
                     "partial": not done}
            if run is not None:
                entry.update(epochs=run["epochs"], best_epoch=run["best_epoch"] + 1, stopped_early=run["stopped_early"],
                             test=run["test"], device=run["device"])
            if entry["valid_ndcg@10"] or run is not None:
                section[label + suffix] = updated[label + suffix] = entry
        print(f"{'dataset':8} {'variant':32} {'test NDCG@10':>12}  validation NDCG@10 by epoch")
        for label, entry in section.items():
            test = entry.get("test", {}).get("NDCG@10") if entry.get("test") else None
            print(f"{dataset:8} {label:32} {'' if test is None else f'{test:.4f}':>12}  "
                  + " ".join(f"{x:.4f}" for x in entry["valid_ndcg@10"][:40]))
    meta = {"seed": seed, "epochs": epochs, "patience": patience, "machine": machine_info(),
            "command": command_line("benchmarks/next_item.py")}
    return merge_json(ABLATION_RESULTS, updates, meta)


def _throughput(datasets, variants: dict, work_dir: str, rounds: int, steps: int) -> dict:
    """``{dataset: {label: sequences/s}}`` for ``variants`` = ``{label: (model, model options)}``."""
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


def _mean_curve(curves: list[list[float]]) -> list[float]:
    """Mean over seeds, epoch by epoch, for the epochs every seed ran (equal-epoch comparisons)."""
    return [round(statistics.fmean(values), 5) for values in zip(*curves)]


def _local_run(dataset: str, model: str, seed: int, work_dir: str, epochs: int, patience: int,
               twins: list[str]):
    """``(config, run, twin)`` of the main ``model`` run with ``seed`` on this machine: from its own directory, else
    from the directory of one of its ablation ``twins`` (``twin`` = its label); ``None`` if neither."""
    config = run_config(dataset, model, seed, work_dir, epochs, patience)
    run = saved_run(config, "next_item")
    if run is not None:
        return config, run, None
    for label in twins:
        twin = {**config, "output_dir": ablation_dir(work_dir, dataset, label, seed)}
        run = saved_run(twin, "next_item")
        if run is not None:
            return twin, run, label
    return None


def _seed_results(dataset: str, model: str, seeds, work_dir: str, epochs: int, patience: int,
                  twins: list[str]) -> list[dict]:
    """Test metrics per seed: finished runs from metrics.json, unfinished ones from their best checkpoint (the main
    run's directory or an ablation twin's, :func:`_local_run`)."""
    from tfmoe.training.trainer import sequences_per_s, train_records

    rows = []
    for seed in seeds:
        found = _local_run(dataset, model, seed, work_dir, epochs, patience, twins)
        if found is None:
            continue
        config, run, twin = found
        budget_left = not run["stopped_early"] and run["epochs"] < epochs  # stopped by a chunk, not done
        rows.append({"seed": seed, "partial": not run["finished"] or budget_left, "epochs": run["epochs"],
                     "best_epoch": run["best_epoch"], "stopped_early": run["stopped_early"], "test": run["test"],
                     "test_unfiltered": _unfiltered_test(config, run),
                     "valid": run["valid"], "device": run["device"],
                     "valid_ndcg@10_curve": [round(x, 5) for x in _valid_curve(run["history"])],
                     "sequences_per_s": sequences_per_s(run["history"], train_records(config["data"]["dir"]), 0),
                     **({"trained_as": twin} if twin else {})})
    return rows


def _ablation_result_runs(section: dict, twins: list[str], seeds, have: set, epochs: int,
                          patience: int) -> list[dict]:
    """The seeds of the main settings (none of ``have``) that only the ablation results' ``section`` (one dataset's)
    holds: runs of an ablation twin (``twins``) trained on a machine that is gone, from their entries: test metrics
    at the best epoch, epochs and validation curve; no unfiltered metrics nor training rate (``None``). An entry
    counts only if it ran the main budget: stopped early after ``patience`` epochs without gain, or ran ``epochs``,
    or was cut off (``"partial"``)."""
    rows = []
    for seed in (s for s in seeds if s not in have):
        for label in twins:
            entry = section.get(label + seed_suffix(seed))
            if not entry or not entry.get("test") or entry.get("seed") != seed:
                continue
            ran_budget = (entry["stopped_early"] and entry["epochs"] - entry["best_epoch"] == patience
                          or entry["epochs"] >= epochs)
            if not (ran_budget or entry["partial"]):
                continue
            rows.append({"seed": seed, "partial": entry["partial"], "epochs": entry["epochs"],
                         "best_epoch": entry["best_epoch"] - 1, "stopped_early": entry["stopped_early"],
                         "test": entry["test"], "test_unfiltered": None, "valid": None, "device": entry["device"],
                         "valid_ndcg@10_curve": [round(x, 5) for x in entry["valid_ndcg@10"]],
                         "sequences_per_s": None, "trained_as": label, "source": "next_item_ablation.json"})
            break
    return rows


def _earlier_runs(entry: dict | None, config: dict, seeds, local_seeds: set) -> list[dict]:
    """The runs of seeds ``seeds`` that an earlier report of the same settings holds and this machine does not
    (run directories do not outlive the machine that trained them: sessions on different machines add seeds to
    one entry), marked ``"reported_earlier"``; other settings keep none."""
    if not entry or entry.get("config") != json.loads(json.dumps(config)):
        return []
    return [{**run, "reported_earlier": True} for run in entry.get("runs", [])
            if run["seed"] in seeds and run["seed"] not in local_seeds]


THROUGHPUT_SOURCE = "throughput phase (interleaved rounds, same batches)"


def _previous_throughput(entry: dict | None, config: dict) -> float | None:
    """The throughput-phase rate of an earlier report of the same model config, kept when this report does not
    re-measure it (a changed config drops it)."""
    if entry and entry.get("sequences_per_s_source") == THROUGHPUT_SOURCE and \
            entry.get("config", {}).get("model") == config["model"]:
        return entry["sequences_per_s"]
    return None


def report(datasets, models, seeds, work_dir: str, epochs: int, patience: int, rates: dict | None) -> dict:
    previous = read_json(RESULTS)
    payload = {k: x for k, x in previous.items()}
    ablation_results = read_json(ABLATION_RESULTS)
    for dataset in datasets:
        section = dict(payload.get(dataset, {}))
        for model in models:
            config = run_config(dataset, model, 0, "<work-dir>", epochs, patience)
            twins = ablation_twins(dataset, model)
            runs = _seed_results(dataset, model, seeds, work_dir, epochs, patience, twins)
            runs += _earlier_runs(section.get(model), config, seeds, {r["seed"] for r in runs})
            runs += _ablation_result_runs(ablation_results.get(dataset, {}), twins, seeds, {r["seed"] for r in runs},
                                          epochs, patience)
            runs.sort(key=lambda r: r["seed"])
            if not runs:
                if section.get(model, {}).get("config") != json.loads(json.dumps(config)):
                    section.pop(model, None)  # an entry of other settings is not these settings' result
                continue
            ndcg = [r["test"]["NDCG@10"] for r in runs]
            measured = (rates or {}).get(dataset, {}).get(model) or _previous_throughput(section.get(model), config)
            unfiltered = [r["test_unfiltered"] for r in runs if r["test_unfiltered"]]
            trained_rates = [r["sequences_per_s"] for r in runs if r["sequences_per_s"]]
            entry = {
                "ndcg@10": statistics.fmean(ndcg),
                "hr@10": statistics.fmean(r["test"]["HR@10"] for r in runs),
                "ndcg@10_std": statistics.pstdev(ndcg) if len(ndcg) > 1 else 0.0,
                "unfiltered": {name: statistics.fmean(u[metric] for u in unfiltered) for name, metric in
                               (("ndcg@10", "NDCG@10"), ("hr@10", "HR@10"))} if unfiltered else None,
                "unfiltered_seeds": len(unfiltered),
                "seeds": len(runs),
                "epochs": statistics.fmean(r["epochs"] for r in runs),
                "sequences_per_s": measured or (statistics.median(trained_rates) if trained_rates else None),
                "sequences_per_s_source": THROUGHPUT_SOURCE if measured else (
                    "median training epoch (models train in turns)" if trained_rates else None),
                "partial": any(r["partial"] for r in runs),
                "trained_on": sorted({r["device"] or "unrecorded" for r in runs}),
                "valid_ndcg@10_mean_curve": _mean_curve([r["valid_ndcg@10_curve"] for r in runs]),
                "runs": runs,
                "config": config,
            }
            section[model] = entry
        reference = section.get("sasrec", {}).get("sequences_per_s")
        for entry in section.values():
            entry["epoch_time_vs_sasrec"] = reference / entry["sequences_per_s"] if reference and entry[
                "sequences_per_s"] else None
        payload[dataset] = section
    payload["_meta"] = {"protocol": "leave-one-out, full ranking over all items, seen items (the whole history) "
                                    "filtered, test split at the best validation NDCG@10 epoch",
                        "budget": {**BUDGET, "epochs": epochs, "patience": patience}, "machine": machine_info(),
                        "command": command_line("benchmarks/next_item.py")}
    write_json(RESULTS, payload)
    print_table(payload)
    return payload


def print_table(payload: dict) -> None:
    print(f"{'dataset':8} {'model':9} {'NDCG@10':>8} {'HR@10':>7} {'std':>6} {'seeds':>5} {'epochs':>6} "
          f"{'seq/s':>7} {'t/SASRec':>8}  status")
    for dataset, section in payload.items():
        if dataset.startswith("_"):
            continue
        for model, e in section.items():
            rate = e.get("sequences_per_s")
            ratio = e.get("epoch_time_vs_sasrec")
            print(f"{dataset:8} {model:9} {e['ndcg@10']:8.4f} {e['hr@10']:7.4f} {e['ndcg@10_std']:6.4f} "
                  f"{e['seeds']:5d} {e['epochs']:6.1f} {rate or float('nan'):7.0f} {ratio or float('nan'):8.2f}  "
                  f"{'partial' if e['partial'] else 'complete'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--phase", nargs="+", default=["prepare", "train", "throughput", "report"],
                        choices=["prepare", "train", "throughput", "cost", "ablation", "report"],
                        help="cost: HyMoERec and FAME cost ablation (COST_VARIANTS) -> results/next_item_cost.json; "
                             "ablation: ABLATIONS trained for --ablation-epochs -> results/next_item_ablation.json")
    parser.add_argument("--ablation-epochs", type=int, default=10)
    parser.add_argument("--ablation-patience", type=int, help="ablation: early stopping patience (default: none)")
    parser.add_argument("--no-train", action="store_true",
                        help="ablation: train nothing, report the variants as far as they ran")
    parser.add_argument("--ablations", nargs="+", choices=list(ABLATIONS), help="ablation: these variants only")
    parser.add_argument("--work-dir", default=DEFAULT_WORK_DIR, help="prepared data and runs (outside the repo)")
    parser.add_argument("--epochs", type=int, default=BUDGET["epochs"], help="max epochs per run")
    parser.add_argument("--patience", type=int, default=BUDGET["patience"])
    parser.add_argument("--chunk", type=int, default=BUDGET["epochs"],
                        help="models take turns training this many epochs (default: one model after the other)")
    parser.add_argument("--rounds", type=int, default=5, help="throughput: interleaved rounds")
    parser.add_argument("--steps", type=int, default=10, help="throughput: training steps per round")
    args = parser.parse_args(argv)
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    if "prepare" in args.phase:
        prepare(args.datasets, args.work_dir)
    if "train" in args.phase:
        train_all(args.datasets, args.models, args.seeds, args.work_dir, args.epochs, args.patience, args.chunk)
    rates = None
    if "throughput" in args.phase:
        rates = throughput(args.datasets, args.models, args.work_dir, args.rounds, args.steps)
        print("sequences/s:", json.dumps(rates), flush=True)
    if "cost" in args.phase:
        cost_ablation(args.datasets, args.work_dir, args.rounds, args.steps)
    if "ablation" in args.phase:
        for seed in args.seeds:
            ablation(args.datasets, seed, args.work_dir, args.ablation_epochs, args.ablations,
                     args.ablation_patience, train_missing=not args.no_train)
    if "report" in args.phase:
        report(args.datasets, args.models, args.seeds, args.work_dir, args.epochs, args.patience, rates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
