"""Does MoS's router find the planted themes? Session purity and NMI of its assignments.

Data: the ``synthetic-purity`` set of ``benchmarks/long_ctr.py`` (:data:`long_ctr.SYNTHETIC`: preset ``small``,
data seed 0, 8 planted themes, single-theme sessions, prepared with 30-minute time-gap sessions), unchanged.
Models: MoS-DIN with the settings of :data:`long_ctr.SYNTHETIC` (``num_themes = 8``: one theme per planted
theme), trained on the synthetic CTR task once with each router (``--routers``). Every real session of the test
histories (one row per user; sessions from the model's own grid) gets an assignment from:

* ``softmax`` / ``codebook``: the argmax router theme of the MoS-DIN trained with that router;
* ``random``: uniform over the 8 themes (seeded);
* ``untrained``: the argmax theme of the untrained MoS-DIN (softmax router) with the same seed;
* ``kmeans``: k-means (k = 8, k-means++, 10 restarts, numpy) on the sessions' mean item embeddings taken from
  the MoS-DIN trained with the softmax router (``s_m``, the vector both routers start from);

and is compared with its planted theme (the majority theme of its items) by purity and normalised mutual
information (:func:`purity`, :func:`nmi`). ``purity_meta`` adds what explains the numbers: the CTR test AUC of
each trained model, k-means on other session representations (the codebook model's ``s_m``, the untrained
``s_m``, each router's projected ``W_s^T s_m``), and the codebook router trained alone by its VQ losses on fixed
session embeddings with and without the commitment loss (:func:`codebook_on_fixed_embeddings`).

The result is a record (:mod:`benchmarks.records`) under
``benchmarks/results/records/theme_purity/synthetic-small/<routers>/``: ``metrics`` holds ``purity``, ``nmi`` and
``purity_meta`` (what the assignments, data and diagnostics were), ``config`` each router's run config. Trained runs
live in ``<work-dir>/theme-purity/<router>/seed<k>``; a
finished run is loaded, not retrained. One command (about 10 minutes per router on 2 CPU cores)::

    .venv/bin/python benchmarks/theme_purity.py --epochs 10 --seed 0
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from benchmarks import long_ctr, records

BENCHMARK = "theme_purity"
ROUTERS = ("softmax", "codebook")
PREPARED = f"<data-dir>/synthetic-{long_ctr.SYNTHETIC['preset']}/prepared"
KEYS = ("softmax", "codebook", "random", "untrained", "kmeans")
ROUTER_OPTIONS = ("router", "codebook_weight", "commitment_weight", "router_temperature", "assignment",
                  "session_pooling", "probability_scaling", "load_balance_weight", "diversity_weight")


# ----- clustering scores ------------------------------------------------------------------------------------------
def contingency(assigned, planted) -> np.ndarray:
    """``counts[i, j]`` = entries in the ``i``-th distinct cluster and the ``j``-th distinct planted theme.

    Entries with a negative planted theme (padding) are left out.
    """
    a, t = np.asarray(assigned), np.asarray(planted)
    if a.ndim != 1 or a.shape != t.shape:
        raise ValueError(f"contingency: `assigned` and `planted` must be 1-D of equal length, got shapes {a.shape} "
                         f"and {t.shape}")
    keep = t >= 0
    if not keep.any():
        raise ValueError("contingency: no entry with a non-negative planted theme")
    _, cluster = np.unique(a[keep], return_inverse=True)
    _, theme = np.unique(t[keep], return_inverse=True)
    counts = np.zeros((cluster.max() + 1, theme.max() + 1), np.int64)
    np.add.at(counts, (cluster, theme), 1)
    return counts


def purity(assigned, planted) -> float:
    """``(1/N) sum_clusters max_theme |cluster & theme|``, in ``(0, 1]``: 1 when every cluster holds one theme."""
    counts = contingency(assigned, planted)
    return float(counts.max(axis=1).sum() / counts.sum())


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def nmi(assigned, planted) -> float:
    """Normalised mutual information ``2 I(A; T) / (H(A) + H(T))`` (arithmetic normalisation), in ``[0, 1]``.

    1 when the clusters are the themes up to renaming, 0 when they are independent; unlike purity it does not
    reward many small clusters. Two constant labelings (``H(A) = H(T) = 0``) score 1.
    """
    counts = contingency(assigned, planted).astype(np.float64)
    joint = counts / counts.sum()
    pa, pt = joint.sum(axis=1), joint.sum(axis=0)
    ha, ht = _entropy(pa), _entropy(pt)
    if ha + ht == 0.0:
        return 1.0
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pt)[nz])).sum())
    return float(np.clip(2.0 * mutual / (ha + ht), 0.0, 1.0))


def kmeans(points, k: int, seed: int = 0, restarts: int = 10, iterations: int = 100) -> np.ndarray:
    """Labels ``[N]`` of Lloyd's k-means with k-means++ seeding; the best of ``restarts`` runs by inertia."""
    x = np.asarray(points, np.float64)
    if x.ndim != 2 or len(x) < k:
        raise ValueError(f"kmeans: `points` must be [N >= {k}, d], got shape {x.shape}")
    rng = np.random.default_rng(seed)
    squared = (x * x).sum(axis=1)
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        centers = [x[rng.integers(len(x))]]
        for _ in range(1, k):  # k-means++: the next center with probability ~ squared distance to the nearest
            d2 = np.min([((x - c) ** 2).sum(axis=1) for c in centers], axis=0)
            centers.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0 else x[rng.integers(len(x))])
        centers = np.asarray(centers)
        labels = None
        for _ in range(iterations):
            distances = squared[:, None] - 2 * x @ centers.T + (centers * centers).sum(axis=1)[None, :]
            new = distances.argmin(axis=1)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = x[labels == j]
                centers[j] = members.mean(axis=0) if len(members) else x[rng.integers(len(x))]
        inertia = float(((x - centers[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def scores(assigned, planted) -> dict:
    return {"purity": purity(assigned, planted), "nmi": nmi(assigned, planted)}


def codebook_on_fixed_embeddings(embeddings, planted, k: int, seed: int, commitment_weight: float,
                                 steps: int = 200, batch: int = 2048) -> dict:
    """The codebook router alone (``router="codebook"``, its projection trainable) trained by its VQ losses only on
    fixed session embeddings (Adam 1e-3, ``steps`` batches of ``batch`` random sessions, no CTR loss): purity and NMI
    of its codes. Isolates what the commitment loss does to the routing when nothing else moves the embeddings."""
    import keras
    import tensorflow as tf

    from tfmoe.layers import SessionThemeRouter

    x = np.asarray(embeddings, np.float32)[:, None, None, :]  # every session one "item": its mean is itself
    keras.utils.set_random_seed(seed)
    router = SessionThemeRouter(num_themes=k, sessions_per_theme=1, router="codebook", load_balance_weight=0.0,
                                commitment_weight=commitment_weight)
    router(x[:2], np.ones((2, 1, 1), bool))
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def step(sessions):
        with tf.GradientTape() as tape:
            router(sessions, tf.ones(tf.shape(sessions)[:3], tf.bool), training=True)
            loss = tf.add_n(router.losses)
        optimizer.apply_gradients(zip(tape.gradient(loss, router.trainable_weights), router.trainable_weights))

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        step(tf.constant(x[rng.choice(len(x), min(batch, len(x)), replace=False)]))
    codes = router(x, np.ones(x.shape[:3], bool))["session_codes"].numpy()[:, 0]
    return scores(codes, planted)


# ----- runs --------------------------------------------------------------------------------------------------------
def run_config(args, router: str, **options) -> dict:
    """The trainer config of MoS-DIN with ``router`` (and other model ``options``) on the synthetic set (long_ctr's,
    with this run's budget)."""
    config = long_ctr.synthetic_config(args)
    config["model"].update(router=router, **options)
    config["training"]["epochs"] = args.epochs
    config["training"]["seed"] = args.seed
    name = "-".join([router, *(f"{key}{value:g}" for key, value in sorted(options.items()))])
    config["output_dir"] = os.path.join(args.work_dir, "theme-purity", name, f"seed{args.seed}")
    return config


COMMITMENT_ABLATION = ("codebook_commitment_0.25", "codebook", {"commitment_weight": 0.25})


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _projected(model, embeddings: np.ndarray) -> np.ndarray:
    """The router's ``z = W_s^T s`` of session means ``s`` (l2-normalised if its similarity is cosine)."""
    import tensorflow as tf

    return model.router.project(tf.constant(embeddings, tf.float32))[0].numpy()


def measure(args) -> dict:
    """Trains (or loads) the two MoS-DINs and scores every assignment; returns the three result entries."""
    import keras

    from tfmoe.training import train
    from tfmoe.training.config import TrainConfig
    from tfmoe.training.trainer import build_model, data_sizes

    data, item_themes = long_ctr.prepare_synthetic(args)
    prepared = long_ctr.synthetic_paths(args)["prepared"]
    max_len = long_ctr.SYNTHETIC["max_len"]
    sessions, runs, configs = {}, {}, {}
    variants = [(router, router, {}) for router in args.routers]
    variants += [COMMITMENT_ABLATION] if args.ablate_commitment else []
    for router, kind, options in variants:
        configs[router] = run_config(args, kind, **options)
        _log(f"== train mos_din {router} seed {args.seed} ({args.epochs} epochs at most)")
        start = time.time()
        result = train(configs[router])
        runs[router] = {"auc": result.test_metrics.get("AUC"), "test": result.test_metrics,
                        "epochs_run": result.epochs_run, "best_epoch": long_ctr._one_based(result.best_epoch),
                        "stopped_early": result.stopped_early,
                        "router_options": {key: value for key, value in result.model.get_config().items()
                                           if key in ROUTER_OPTIONS}}
        _log(f"== router={router}: {runs[router]} ({time.time() - start:.0f} s)")
        sessions[router] = long_ctr.session_assignments(result.model, prepared, item_themes, max_len)
        sessions[router]["projected"] = _projected(result.model, sessions[router]["embeddings"])
    keras.utils.set_random_seed(args.seed)
    untrained = build_model(TrainConfig.from_dict(run_config(args, "softmax")), "ctr", data_sizes(prepared))
    sessions["untrained"] = long_ctr.session_assignments(untrained, prepared, item_themes, max_len)

    reference = sessions[args.routers[0]]
    planted, k = reference["planted"], reference["num_themes"]
    for name, entry in sessions.items():  # the same sessions, in the same order, for every model
        if not np.array_equal(entry["planted"], planted):
            raise RuntimeError(f"theme_purity: the sessions of {name!r} differ from those of {args.routers[0]!r}")
    kmeans_source = "softmax" if "softmax" in sessions else args.routers[0]
    assignments = {router: sessions[router]["assigned"] for router in args.routers}
    assignments["random"] = np.random.default_rng(args.seed).integers(0, k, planted.size)
    assignments["untrained"] = sessions["untrained"]["assigned"]
    assignments["kmeans"] = kmeans(sessions[kmeans_source]["embeddings"], k, seed=args.seed)
    table = {name: scores(labels, planted) for name, labels in assignments.items()}

    diagnostics = {f"kmeans_{name}_embeddings": scores(kmeans(entry["embeddings"], k, seed=args.seed), planted)
                   for name, entry in sessions.items() if name != kmeans_source}
    if args.ablate_commitment:
        name = COMMITMENT_ABLATION[0]
        diagnostics[name] = {**scores(sessions[name]["assigned"], planted), "auc": runs[name]["auc"],
                             "model": "MoS-DIN, router=codebook with commitment_weight=0.25 (VQ-VAE's beta)"}
    diagnostics["codebook_on_fixed_embeddings"] = {
        "setup": f"codebook router alone, VQ losses only, 200 Adam steps of 2048 sessions, on the session embeddings "
                 f"of the MoS-DIN trained with router={kmeans_source}",
        **{f"commitment_{beta:g}": codebook_on_fixed_embeddings(sessions[kmeans_source]["embeddings"], planted, k,
                                                                args.seed, beta) for beta in (0.25, 0.0)}}
    for router in args.routers:
        diagnostics[f"kmeans_{router}_projected"] = scores(kmeans(sessions[router]["projected"], k, seed=args.seed),
                                                           planted)
        diagnostics[f"{router}_themes_used"] = int(np.unique(assignments[router]).size)
        diagnostics[f"{router}_theme_sizes"] = np.bincount(assignments[router], minlength=k).tolist()
    meta = {
        "description": "purity / NMI (2 I / (H_A + H_T)) of the session -> theme assignments against the planted "
                       "themes, over every real session of the test histories (one row per user)",
        "data": {"generator": "tfmoe.data.synthetic", "preset": long_ctr.SYNTHETIC["preset"],
                 "seed": long_ctr.SYNTHETIC["seed"], **data.summary(), "sessions_scored": int(planted.size),
                 "unanimous_sessions": float(np.mean(reference["unanimous"]))},
        "config": {name: {"model": config["model"], "data": {**config["data"], "dir": PREPARED},
                          "optimizer": config["optimizer"], "training": config["training"]}
                   for name, config in configs.items()},
        "epochs": args.epochs,
        "seed": args.seed,
        "kmeans": f"k={k}, k-means++, 10 restarts, on the sessions' mean item embeddings of the MoS-DIN trained with "
                  f"router={kmeans_source}",
        "untrained": "the MoS-DIN (router=softmax) built with the same seed, not trained",
        "ctr_auc": {router: runs[router]["auc"] for router in args.routers},
        "runs": runs,
        "diagnostics": diagnostics,
    }
    purity_row = {name: table[name]["purity"] for name in KEYS if name in table}
    nmi_row = {name: table[name]["nmi"] for name in KEYS if name in table}
    return {"purity": purity_row, "nmi": nmi_row, "purity_meta": meta}


def purity_record(entries: dict, args, command) -> dict:
    """The record of one :func:`measure`: partial when a trained run stopped before ``--epochs`` without early
    stopping; ``data_hash`` over the prepared synthetic set."""
    meta = entries["purity_meta"]
    partial = any(not run["stopped_early"] and run["epochs_run"] < args.epochs for run in meta["runs"].values())
    prepared = long_ctr.synthetic_paths(args)["prepared"]
    return records.make_record(BENCHMARK, f"synthetic-{long_ctr.SYNTHETIC['preset']}/{'+'.join(meta['config'])}",
                               meta["config"], entries, epochs=args.epochs, seed=args.seed, partial=partial,
                               data_files=[prepared], command=command)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=long_ctr.SYNTHETIC["epochs"], help="max epochs per model")
    parser.add_argument("--seed", type=int, default=0, help="training seed (also of the random and k-means baselines)")
    parser.add_argument("--records", default=records.ROOT, help="where the record is written")
    parser.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=list(ROUTERS))
    parser.add_argument("--ablate-commitment", action="store_true",
                        help="also train MoS-DIN with the codebook router and VQ-VAE's commitment weight 0.25")
    parser.add_argument("--work-dir", default=long_ctr.DEFAULT_WORK_DIR, help="runs (outside the repo)")
    parser.add_argument("--data-dir", default=long_ctr.DEFAULT_DATA_DIR, help="prepared data (outside the repo)")
    args = parser.parse_args(argv)
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    entries = measure(args)
    command = sys.argv if argv is None else ["benchmarks/theme_purity.py", *argv]
    print("record:", records.write_record(purity_record(entries, args, command), args.records))
    print(f"{'assignment':12} {'purity':>7} {'NMI':>7}")
    for name in entries["purity"]:
        print(f"{name:12} {entries['purity'][name]:7.3f} {entries['nmi'][name]:7.3f}")
    print("CTR test AUC:", entries["purity_meta"]["ctr_auc"])
    print("diagnostics:", entries["purity_meta"]["diagnostics"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
