"""Training speed: tfmoe's models against a plain Keras 3 SASRec, on the same batches, with the gap to the hardware.

One run trains, in turns of one epoch each (so that drifting load on a shared machine hits every model alike):

* ``sasrec_peer``: tfmoe's :class:`~tfmoe.models.SASRec` at the peers' settings (length 200, d 50, 2 blocks, 1 head,
  dropout 0.2, batch 128, BCE with one negative per position, Adam), ``compile`` + ``fit``;
* ``sasrec_peer_bucketed``: the same tfmoe model on the same sequences, batched by history length (each batch
  padded to its length bucket's bound, ``peer.bucket_boundaries``) instead of every row padded to 200: what
  ``data.bucket_boundaries`` does in the trainer. Other batches train to other results (lower NDCG@10 on ML-1M
  and Beauty, ``docs/experiments/2026-12-05-next-item-studies.md``), so this ratio shows what the padding
  costs, not a speed-up at equal results;
* ``sasrec_peer_length_groups``: the same model, batches and results as ``sasrec_peer``, with ``length_groups``
  (``peer.length_groups``): each batch is encoded in groups of rows of similar history length, each cut to its
  longest (:mod:`tfmoe.models.length_groups`);
* ``sasrec_peer_xla``, ``sasrec_peer_bf16`` (on request, ``--models``): ``sasrec_peer`` compiled with XLA
  (``jit_compile=True``), and under the ``mixed_bfloat16`` policy (oneDNN's AVX512-BF16 / AMX kernels where the
  CPU has them);
* ``keras_hub_sasrec``: the same model written the way a Keras user would (:class:`KerasHubSASRec`: keras-hub's
  ``TransformerDecoder``, ``ReversibleEmbedding`` and ``PositionEmbedding``, adapted from keras-rs's SASRec example);
* ``sasrec``, ``fame``, ``hymoerec``: the next-item benchmark's ML-1M main settings (d 64, full cross-entropy);
* ``din``, ``mos_din``, ``gshard_din``, ``expert_choice_din``: long-sequence CTR at length 1,000 (one positive and
  one negative per user): DIN, MoS around it, and the token-routed MoE baselines around it (GShard top-2 and expert
  choice, 8 experts as MoS has 8 themes);
* ``din_length_groups``, ``mos_din_length_groups``, ``gshard_din_length_groups``,
  ``expert_choice_din_length_groups``: the same four models on the same batches with ``length_groups``
  (``ctr.length_groups``): DIN scores each batch in groups of rows of similar history length, each cut to its
  longest; MoS-DIN runs its backbone experts so, the baselines route each group at its width (the same loss and
  gradients);
* on request (``--models``), the same eight around TWIN (``twin``, ``mos_twin``, ... with ``ctr.backbones.twin``'s
  options), on the same batches.

Settings: ``benchmarks/settings/train_speed.yaml``. Data: ML-1M (``../shared/data/ml-1m/ml-1m.txt``) when present,
else the synthetic log of :mod:`tfmoe.data.synthetic`; each user's items but the last two (the evaluation items of
the leave-one-out protocol) train. Per model the record holds the epoch times, their median over the steady epochs
(all but the first, which traces the step), the analytic training FLOPs of an epoch (3 x the forward FLOPs of
:func:`sequence_model_flops`, or of a CTR model's ``analytic_flops()``), the achieved GFLOP/s and its fraction of
the float32 and bfloat16 matmul peak measured in the same run (:func:`matmul_peak`). Ratios:

    sasrec_speedup_over_keras_hub = t(keras_hub_sasrec) / t(sasrec_peer)
    sasrec_bucketed_speedup_over_keras_hub = t(keras_hub_sasrec) / t(sasrec_peer_bucketed)
    sasrec_length_groups_speedup_over_keras_hub = t(keras_hub_sasrec) / t(sasrec_peer_length_groups)
    fame_over_sasrec_time         = t(fame) / t(sasrec)
    hymoerec_over_sasrec_time     = t(hymoerec) / t(sasrec)
    and for each backbone b (din; twin on request) and each model m around it (mos_b, gshard_b, expert_choice_b):
    b_length_groups_speedup       = t(b) / t(b_length_groups)
    m_over_b_time                 = t(m) / t(b)
    m_length_groups_speedup       = t(m) / t(m_length_groups)
    m_over_b_length_groups_time   = t(m_length_groups) / t(b_length_groups)

Nothing else should run on the cores meanwhile: a 1-minute load average above ``max_load`` (0.5) at the start is
warned about and recorded, with the load averages before and after. One record per run
(:mod:`benchmarks.records`): ``benchmarks/results/records/train_speed/<data>/seed<k>-<hash>.json``.

    .venv/bin/python benchmarks/train_speed.py                       # ML-1M, every model, 5 epochs
    .venv/bin/python benchmarks/train_speed.py --users 500 --epochs 3 --models sasrec_peer keras_hub_sasrec
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import yaml

from benchmarks import _paths as paths
from benchmarks import records

SETTINGS_FILE = os.path.join(paths.BENCHMARKS, "settings", "train_speed.yaml")
with open(SETTINGS_FILE, encoding="utf-8") as _f:
    SETTINGS = yaml.safe_load(_f)
BENCHMARK = "train_speed"
PEER_MODELS = ("sasrec_peer", "sasrec_peer_bucketed", "sasrec_peer_length_groups", "keras_hub_sasrec")
MAIN_MODELS = ("sasrec", "fame", "hymoerec")
CTR_BACKBONES = tuple(SETTINGS["ctr"]["backbones"])  # din (the default run), twin (on request)


def ctr_models(backbone: str) -> tuple:
    """The CTR models around ``backbone``: alone, in MoS, and in the token-routed baselines."""
    return backbone, f"mos_{backbone}", f"gshard_{backbone}", f"expert_choice_{backbone}"


def ctr_family(backbone: str) -> tuple:
    """:func:`ctr_models`, each also in length groups (``<model>_length_groups``)."""
    return tuple(name for model in ctr_models(backbone) for name in (model, f"{model}_length_groups"))


def ctr_ratios(b: str) -> dict:
    """The speed ratios of :func:`ctr_family`'s models (see the module docstring)."""
    ratios = {f"{b}_length_groups_speedup": (b, f"{b}_length_groups")}
    for model in ctr_models(b)[1:]:
        ratios.update({f"{model}_over_{b}_time": (model, b),
                       f"{model}_length_groups_speedup": (model, f"{model}_length_groups"),
                       f"{model}_over_{b}_length_groups_time": (f"{model}_length_groups", f"{b}_length_groups")})
    return ratios


CTR_MODELS = tuple(name for backbone in CTR_BACKBONES for name in ctr_family(backbone))
MODELS = PEER_MODELS + MAIN_MODELS + ctr_family("din")  # the default run
HARDWARE_OPTIONS = {"sasrec_peer_xla": {"jit_compile": True}, "sasrec_peer_bf16": {"dtype": "mixed_bfloat16"}}
RATIOS = {"sasrec_speedup_over_keras_hub": ("keras_hub_sasrec", "sasrec_peer"),
          "sasrec_bucketed_speedup_over_keras_hub": ("keras_hub_sasrec", "sasrec_peer_bucketed"),
          "sasrec_length_groups_speedup_over_keras_hub": ("keras_hub_sasrec", "sasrec_peer_length_groups"),
          "fame_over_sasrec_time": ("fame", "sasrec"),
          "hymoerec_over_sasrec_time": ("hymoerec", "sasrec"),
          **{key: pair for backbone in CTR_BACKBONES for key, pair in ctr_ratios(backbone).items()}}


# ----- FLOPs ---------------------------------------------------------------------------------------------
def _mm(rows: int, inner: int, cols: int) -> float:
    return 2.0 * rows * inner * cols


def sequence_model_flops(length: int, hidden_dim: int, num_blocks: int, inner_dim: int, num_heads: int = 1, *,
                         num_items: int, loss: str, scored_positions: float, facet_experts: int = 0,
                         facet_inner_dim: int | None = None, moe: dict | None = None) -> dict:
    """Forward FLOPs of one sequence through a SASRec-family model, by part (2 FLOPs per multiply-add).

    With ``L`` = ``length``, ``d`` = ``hidden_dim``, ``f`` = ``inner_dim``, per plain transformer block::

        attention_projections    4 * 2 L d^2          (Q, K, V, output)
        attention_scores         2 L^2 d              (Q K^T over all heads; the causal half is computed too)
        attention_weighted_sums  2 L^2 d              (softmax(.) V)
        ffn                      2 * 2 L d f

    ``embeddings``: ``L d`` (the position add; lookups are gathers). ``scoring`` per scored position: ``"bce"``
    ``2 * 2 d`` (the positive's and the negative's dot product), ``"softmax"`` ``2 d V`` with ``V = num_items + 1``
    (full catalogue). FAME (``facet_experts`` = ``N`` > 0) makes the last block a facet block of ``H`` heads of
    ``d' = d / H``: ``N`` expert queries (projections ``(N + 2) 2 L d^2``, no output projection, ``N`` times the
    scores and weighted sums), expert routers ``2 L N^2 d``, per-head FFN' ``d' -> g -> d'`` (``g`` =
    ``facet_inner_dim``, default ``d'``) and the head gate and query projection ``2 L d H + 2 L d^2``
    (``facet_head``). HyMoERec (``moe`` = ``{"num_experts": E, "k": k, "expert_hidden_dim": e}``) adds to every
    block's FFN a router ``2 L d E`` and ``k`` routed experts ``k * 2 * 2 L d e`` (the routed rows; capacity
    padding is not useful work). Biases, LayerNorms, softmaxes, activations and dropout are not counted (each
    ``O(L d)`` or ``O(L^2)`` element-wise).

    Example:
        >>> parts = sequence_model_flops(4, 2, 1, 3, num_items=9, loss="bce", scored_positions=4)
        >>> parts["attention_projections"], parts["attention_scores"], parts["ffn"], parts["scoring"]
        (128.0, 64.0, 96.0, 32.0)
        >>> parts["total"]
        392.0
    """
    L, d, f = length, hidden_dim, inner_dim
    parts = dict.fromkeys(("embeddings", "attention_projections", "attention_scores", "attention_weighted_sums",
                           "routers", "ffn", "experts", "facet_head", "scoring"), 0.0)
    parts["embeddings"] = float(L * d)
    for block in range(num_blocks):
        facet = facet_experts and block == num_blocks - 1
        queries = facet_experts if facet else 1
        parts["attention_projections"] += (queries + 2 + (0 if facet else 1)) * _mm(L, d, d)
        parts["attention_scores"] += queries * _mm(L, d, L)
        parts["attention_weighted_sums"] += queries * _mm(L, L, d)
        if facet:
            head_dim = d // num_heads
            inner = facet_inner_dim or head_dim
            parts["routers"] += num_heads * _mm(L, queries * head_dim, queries)
            parts["ffn"] += num_heads * (_mm(L, head_dim, inner) + _mm(L, inner, head_dim))
            parts["facet_head"] += _mm(L, d, num_heads) + _mm(L, d, d)
            continue
        parts["ffn"] += _mm(L, d, f) + _mm(L, f, d)
        if moe:
            e = moe["expert_hidden_dim"]
            parts["routers"] += _mm(L, d, moe["num_experts"])
            parts["experts"] += moe["k"] * (_mm(L, d, e) + _mm(L, e, d))
    per_position = {"bce": 2 * 2.0 * d, "softmax": 2.0 * d * (num_items + 1)}[loss]
    parts["scoring"] = scored_positions * per_position
    parts["total"] = sum(parts.values())
    return parts


def model_flops(name: str, config: dict, num_items: int, scored_positions: float) -> dict:
    """:func:`sequence_model_flops` of a next-item model of this benchmark from its config."""
    options = config["options"]
    d = options["hidden_dim"]
    moe = None
    if name == "hymoerec":
        moe = {"num_experts": options["num_experts"], "k": options["k"],
               "expert_hidden_dim": options.get("expert_hidden_dim") or options.get("inner_dim") or 4 * d}
    return sequence_model_flops(
        config["max_len"], d, options["num_blocks"], options.get("inner_dim") or 4 * d, options["num_heads"],
        num_items=num_items, loss=options.get("loss", "softmax"), scored_positions=scored_positions,
        facet_experts=options["num_experts"] if name == "fame" else 0,
        facet_inner_dim=options.get("facet_inner_dim"), moe=moe)


# ----- the matmul peak ------------------------------------------------------------------------------------
def matmul_peak(size: int, repeats: int) -> dict:
    """GFLOP/s of a ``[size, size] x [size, size]`` ``tf.matmul`` in float32 and bfloat16: ``2 size^3`` FLOPs over
    the median time of ``repeats`` calls after one warm-up call."""
    import tensorflow as tf

    from benchmarks._timing import time_callable

    rng = np.random.default_rng(0)
    out = {"size": size, "repeats": repeats}
    for dtype in ("float32", "bfloat16"):
        a = tf.cast(tf.constant(rng.standard_normal((size, size)), tf.float32), dtype)
        b = tf.cast(tf.constant(rng.standard_normal((size, size)), tf.float32), dtype)
        timing = time_callable(lambda a=a, b=b: tf.matmul(a, b).shape, warmup=1, repeats=repeats)
        out[dtype] = {"gflops_per_s": 2.0 * size ** 3 / timing["median_s"] / 1e9, "median_s": timing["median_s"],
                      "times_s": timing["times_s"]}
    return out


# ----- data -----------------------------------------------------------------------------------------------
def read_sequences(users: int | None, seed: int) -> tuple[list[np.ndarray], int, str, list[str]]:
    """``(sequences, num_items, data name, files read)``: each user's items in time order, the first ``users``
    users; ML-1M when ``../shared/data`` holds it, else the synthetic log."""
    path = os.path.join(paths.SHARED_DATA, SETTINGS["data"]["input"])
    if os.path.isfile(path):
        pairs = np.loadtxt(path, dtype=np.int64, ndmin=2)
        starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
        sequences = np.split(pairs[:, 1], starts[1:])[:users]
        return sequences, int(pairs[:, 1].max()), "ml-1m", [path]
    return synthetic_sequences(users or 1000, seed) + ("synthetic", [])


def synthetic_sequences(users: int, seed: int) -> tuple[list[np.ndarray], int]:
    """``(sequences, num_items)`` of the synthetic log of ``users`` users (:mod:`tfmoe.data.synthetic`)."""
    from tfmoe.data import synthetic

    data = synthetic.generate(synthetic.preset_config(SETTINGS["data"]["synthetic"]["preset"], num_users=users,
                                                      seed=seed))
    return [data.user_sequence(u) for u in range(1, users + 1)], int(data.config.num_items)


def _full_batches(count: int, batch_size: int) -> np.ndarray:
    """Row indices ``0..count-1`` repeated from the start up to a multiple of ``batch_size`` (every batch full)."""
    steps = -(-count // batch_size)
    return np.arange(steps * batch_size) % count


def _left_pad(rows, length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        row = row[-length:]
        if len(row):
            out[i, length - len(row):] = row
    return out


def next_item_arrays(sequences, max_len: int, batch_size: int) -> dict:
    """``{"history", "labels"}`` ``[N, max_len]`` int32, left-padded: each user's training items (all but the last
    two) shifted by one, ``labels[i] = history[i + 1]``; ``N`` is the users with two or more training items,
    repeated from the first up to a multiple of ``batch_size``."""
    train = [s[:-2] for s in sequences if len(s) >= 4]
    order = _full_batches(len(train), batch_size)
    return {"history": _left_pad([train[i][:-1] for i in order], max_len),
            "labels": _left_pad([train[i][1:] for i in order], max_len)}


def uniform_negatives(labels: np.ndarray, num_items: int, seed: int) -> np.ndarray:
    """One item per label, uniform over ``1..num_items`` without the label (0 where the label is 0)."""
    draws = np.random.default_rng(seed).integers(1, num_items, labels.shape)  # 1..num_items-1
    return np.where(labels > 0, draws + (draws >= labels), 0).astype(np.int32)


def ctr_arrays(sequences, num_items: int, max_len: int, batch_size: int, samples_per_user: int, seed: int) -> dict:
    """``{"history" [N, max_len], "target_item" [N], "labels" [N]}``: per user, its last ``samples_per_user``
    training items as positives (history: the items before, left-padded) and one uniform negative target in the
    place of each; rows repeated up to a multiple of ``batch_size``."""
    rng = np.random.default_rng(seed)
    histories, targets, labels = [], [], []
    for sequence in sequences:
        train = sequence[:-2]
        for end in range(max(1, len(train) - samples_per_user), len(train)):
            negative = int(rng.integers(1, num_items))
            negative += negative >= train[end]
            for target, label in ((train[end], 1.0), (negative, 0.0)):
                histories.append(train[:end])
                targets.append(target)
                labels.append(label)
    order = _full_batches(len(targets), batch_size)
    return {"history": _left_pad([histories[i] for i in order], max_len),
            "target_item": np.asarray(targets, np.int32)[order], "labels": np.asarray(labels, np.float32)[order]}


def arrays_key(name: str, config: dict) -> tuple:
    """What a model's arrays depend on: the task, the length and the batch size (models sharing it share them)."""
    return ("ctr" if name in CTR_MODELS else "next_item", config["max_len"], config["batch_size"])


def model_arrays(name: str, config: dict, sequences, num_items: int, seed: int) -> dict:
    """The arrays ``name`` trains on: :func:`ctr_arrays` for a CTR model, else :func:`next_item_arrays`."""
    if name in CTR_MODELS:
        return ctr_arrays(sequences, num_items, config["max_len"], config["batch_size"],
                          SETTINGS["ctr"]["samples_per_user"], seed)
    return next_item_arrays(sequences, config["max_len"], config["batch_size"])


def digest(array: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of an array's bytes: which sequences a model trained on, in which order."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


# ----- the keras-hub SASRec -------------------------------------------------------------------------------
def keras_hub_sasrec_class():
    """The class of the plain Keras 3 SASRec (keras-hub layers; imports keras-hub on first use)."""
    import keras
    import keras_hub
    from keras import ops

    class KerasHubSASRec(keras.Model):
        """SASRec as keras-rs's example writes it: item + position embeddings, pre-norm ``TransformerDecoder``
        blocks (causal self-attention, no cross-attention), a final LayerNorm, and BCE of the positive and the
        negative item's logits ``h_i . E[y_i]``, ``h_i . E[n_i]`` weighted by ``sample_weight`` (0 at padding).

        Inputs ``{"item_ids" [B, L], "padding_mask" [B, L] bool}``; targets ``{"positive_sequence",
        "negative_sequence"}`` ``[B, L]``. Returns ``{"item_sequence_embedding": [B, L, d]}``.

        Example:
            >>> import numpy as np
            >>> model = keras_hub_sasrec_class()(vocabulary_size=10, num_layers=1, num_heads=1, hidden_dim=8,
            ...                                  max_sequence_length=4)
            >>> out = model({"item_ids": np.ones((2, 4), "int32"), "padding_mask": np.ones((2, 4), bool)})
            >>> tuple(out["item_sequence_embedding"].shape)
            (2, 4, 8)
        """

        def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, dropout=0.0, max_sequence_length=100,
                     **kwargs):
            super().__init__(**kwargs)
            self.item_embedding = keras_hub.layers.ReversibleEmbedding(
                input_dim=vocabulary_size, output_dim=hidden_dim, embeddings_initializer="glorot_uniform",
                embeddings_regularizer=keras.regularizers.l2(0.001), name="item_embedding")
            self.position_embedding = keras_hub.layers.PositionEmbedding(
                initializer="glorot_uniform", sequence_length=max_sequence_length, name="position_embedding")
            self.embeddings_add = keras.layers.Add(name="embeddings_add")
            self.embeddings_dropout = keras.layers.Dropout(dropout, name="embeddings_dropout")
            self.transformer_layers = [
                keras_hub.layers.TransformerDecoder(
                    intermediate_dim=hidden_dim, num_heads=num_heads, dropout=dropout, layer_norm_epsilon=1e-05,
                    activation="relu", kernel_initializer="glorot_uniform", normalize_first=True,
                    name=f"transformer_layer_{i}")
                for i in range(num_layers)]
            self.layer_norm = keras.layers.LayerNormalization(axis=-1, epsilon=1e-8, name="layer_norm")
            self.loss_fn = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)
            self.hidden_dim = hidden_dim

        def build(self, input_shape):
            input_shape = input_shape["item_ids"] if isinstance(input_shape, dict) else input_shape
            embedding_shape = list(input_shape) + [self.hidden_dim]
            self.item_embedding.build(input_shape)
            self.position_embedding.build(embedding_shape)
            self.embeddings_add.build((embedding_shape, embedding_shape))
            self.embeddings_dropout.build(embedding_shape)
            for layer in self.transformer_layers:
                layer.build(decoder_sequence_shape=embedding_shape)
            self.layer_norm.build(embedding_shape)
            self.built = True

        def call(self, inputs, training=False):
            item_ids, padding_mask = inputs["item_ids"], inputs["padding_mask"]
            x = self.item_embedding(item_ids)
            x = self.embeddings_add((x, self.position_embedding(x)))
            x = self.embeddings_dropout(x)
            for layer in self.transformer_layers:
                x = layer(x, decoder_padding_mask=padding_mask)
            return {"item_sequence_embedding": self.layer_norm(x)}

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True, **kwargs):
            hidden = y_pred["item_sequence_embedding"]
            positive = ops.sum(self.item_embedding(y["positive_sequence"]) * hidden, axis=-1)
            negative = ops.sum(self.item_embedding(y["negative_sequence"]) * hidden, axis=-1)
            logits = ops.concatenate([positive, negative], axis=1)
            labels = ops.concatenate([ops.ones_like(positive), ops.zeros_like(negative)], axis=1)
            weights = ops.concatenate([sample_weight, sample_weight], axis=1)
            loss = self.loss_fn(ops.expand_dims(labels, -1), ops.expand_dims(logits, -1), sample_weight=weights)
            return ops.divide_no_nan(ops.sum(loss), ops.sum(weights))

    return KerasHubSASRec


# ----- models ---------------------------------------------------------------------------------------------
def model_configs(num_items: int, overrides: dict | None = None) -> dict:
    """``{model: config}`` of every model: ``max_len``, ``batch_size``, ``options`` (the model's arguments) and
    ``optimizer`` (Adam's). ``overrides``: ``{"max_len", "batch_size", "bucket_boundaries", "ctr_max_len",
    "ctr_batch_size"}`` and
    ``"mos"``: MoS options on top of the preset's, for MoS around every backbone (its sessions must fit a shorter
    ``ctr_max_len``)."""
    from tfmoe.models import presets

    o = overrides or {}
    peer, main, ctr = SETTINGS["peer"], SETTINGS["main"], SETTINGS["ctr"]
    common = {k: peer[k] for k in ("hidden_dim", "num_blocks", "num_heads", "dropout")}
    peer_len, peer_batch = o.get("max_len") or peer["max_len"], o.get("batch_size") or peer["batch_size"]
    bounds = o.get("bucket_boundaries") or peer["bucket_boundaries"]
    # every peer model: the peers' length, batch and optimizer; tfmoe's ones add their options to tfmoe_peer
    shared = {"max_len": peer_len, "batch_size": peer_batch, "optimizer": peer["optimizer"]}
    tfmoe_peer = {**shared, "options": {**common, **peer["tfmoe"]}}
    configs = {
        "sasrec_peer": tfmoe_peer,
        "sasrec_peer_bucketed": {**tfmoe_peer, "bucket_boundaries": [b for b in bounds if b < peer_len]},
        "sasrec_peer_length_groups": {**tfmoe_peer, "options": {**tfmoe_peer["options"],
                                                                "length_groups": peer["length_groups"]}},
        **{name: {**tfmoe_peer, **option} for name, option in HARDWARE_OPTIONS.items()},
        "keras_hub_sasrec": {**shared, "options": {**common, "inner_dim": peer["hidden_dim"], "loss": "bce"}},
    }
    for name, preset_name in main["presets"].items():
        preset = presets.get(preset_name)
        configs[name] = {"max_len": o.get("max_len") or preset["max_len"],
                         "batch_size": o.get("batch_size") or main["batch_size"], "optimizer": main["optimizer"],
                         "preset": preset_name, "options": preset["options"]}
    ctr_len, ctr_batch = o.get("ctr_max_len") or ctr["max_len"], o.get("ctr_batch_size") or ctr["batch_size"]
    mos = presets.get(ctr["mos"]["preset"])
    mos_options = {**mos["options"], **ctr["mos"]["options"], **(o.get("mos") or {})}
    for backbone, backbone_options in ctr["backbones"].items():
        alone, in_mos, gshard, expert_choice = ctr_models(backbone)
        options = {**ctr["common"], **(backbone_options or {})}
        configs[alone] = {"max_len": ctr_len, "batch_size": ctr_batch, "optimizer": ctr["optimizer"],
                          "options": options}
        configs[in_mos] = {**configs[alone], "preset": ctr["mos"]["preset"],
                           "options": {**mos_options, **(backbone_options or {})}}
        for name, routing in ((gshard, "gshard"), (expert_choice, "expert_choice")):
            configs[name] = {**configs[alone], "options": {**options, **ctr[routing]}}  # the backbone's + routing
        for name in (alone, in_mos, gshard, expert_choice):  # the same model and batches, in length groups
            configs[f"{name}_length_groups"] = {**configs[name], "model": name, "options": {
                **configs[name]["options"], "length_groups": ctr["length_groups"]}}
    for config in configs.values():
        config["num_items"] = num_items
    return copy.deepcopy(configs)


def build(name: str, config: dict, seed: int):
    """The compiled model ``name`` of ``config``."""
    import keras

    from tfmoe.models import registry

    keras.utils.set_random_seed(seed)
    num_items, max_len, options = config["num_items"], config["max_len"], config["options"]
    if name == "keras_hub_sasrec":
        model = keras_hub_sasrec_class()(vocabulary_size=num_items + 1, num_layers=options["num_blocks"],
                                         num_heads=options["num_heads"], hidden_dim=options["hidden_dim"],
                                         dropout=options["dropout"], max_sequence_length=max_len)
        model.build({"item_ids": (None, max_len)})
    elif name.startswith("sasrec_peer"):
        policy = config.get("dtype")  # a mixed policy: float32 weights, bfloat16 compute
        model = registry.build_model("sasrec", num_items=num_items, max_len=max_len, seed=seed,
                                     **({"dtype": policy} if policy else {}), **options)
    else:
        model = registry.build_model(config.get("model", name), num_items=num_items, max_len=max_len, **options)
    model.compile(optimizer=keras.optimizers.Adam(**config["optimizer"]), jit_compile=config.get("jit_compile", "auto"))
    return model


def length_buckets(history: np.ndarray, boundaries) -> list[tuple[int, np.ndarray]]:
    """``[(bound, rows)]``: the rows of left-padded ``history`` whose length is in ``(previous bound, bound]``, for
    the bounds ``boundaries + [L]``; empty buckets are left out.

    Example:
        >>> history = np.array([[0, 0, 5], [1, 2, 3], [0, 4, 6]])
        >>> [(bound, rows.tolist()) for bound, rows in length_buckets(history, [1, 2])]
        [(1, [0]), (2, [2]), (3, [1])]
    """
    lengths = np.count_nonzero(history, axis=1)
    bounds = [*boundaries, history.shape[1]]
    out, low = [], 0
    for bound in bounds:
        rows = np.flatnonzero((lengths > low) & (lengths <= bound))
        if rows.size:
            out.append((bound, rows))
        low = bound
    return out


def group_flops(flops_at_width, config: dict, history: np.ndarray, position_cost: float) -> float:
    """Forward FLOPs of an epoch with ``length_groups``: every group's rows at the group's width, as the model cuts
    them (:func:`length_group_widths` with the model's split cost ``position_cost``); ``flops_at_width(width)`` is
    the forward count of one row at ``width``, computed once per width."""
    at_width = {}
    total = 0.0
    for width, rows in length_group_widths(history, config["batch_size"], config["options"]["length_groups"],
                                           position_cost):
        if width not in at_width:
            at_width[width] = flops_at_width(width)
        total += at_width[width] * rows
    return total


def length_group_widths(history: np.ndarray, batch_size: int, groups: int,
                        position_cost: float = 0.0) -> list[tuple[int, int]]:
    """``[(width, rows)]`` of every length group of every full batch of ``history`` (consecutive rows), as
    :func:`tfmoe.models.length_groups.encode_in_length_groups` cuts them: the analytic work of ``length_groups``.

    Example:
        >>> history = np.array([[0, 0, 5], [1, 2, 3], [0, 4, 6], [0, 0, 0]])
        >>> length_group_widths(history, batch_size=4, groups=2)  # widths 0 1 | 2 3: 2*1 + 2*9 < 1*1 + 3*9
        [(1, 2), (3, 2)]
    """
    from tfmoe.models.length_groups import plan_length_groups

    out = []
    for start in range(0, history.shape[0] - batch_size + 1, batch_size):
        _, starts, widths = plan_length_groups(history[start:start + batch_size], groups, position_cost)
        out += [(int(w), int(n)) for w, n in zip(widths.numpy(), np.diff(starts.numpy())) if n > 0]
    return out


def bucketed_batches(history: np.ndarray, labels: np.ndarray, boundaries, batch_size: int, seed: int):
    """``[(history [b, bound], labels [b, bound])]``: every row once, batched within its length bucket and cut to
    the bucket's bound (the last batch of a bucket may be smaller), in a seeded random order of the batches."""
    batches = []
    for bound, rows in length_buckets(history, boundaries):
        for start in range(0, rows.size, batch_size):
            chunk = rows[start:start + batch_size]
            batches.append((history[chunk, -bound:], labels[chunk, -bound:]))
    order = np.random.default_rng(seed).permutation(len(batches))
    return [batches[i] for i in order]


def training_data(name: str, arrays: dict, num_items: int, batch_size: int, seed: int, bucket_boundaries=None):
    """``(tf.data.Dataset, the array its sequences come from)`` of ``name``'s batches."""
    import tensorflow as tf

    if bucket_boundaries:
        batches = bucketed_batches(arrays["history"], arrays["labels"], bucket_boundaries, batch_size, seed)
        signature = ({"history": tf.TensorSpec([None, None], tf.int32)}, tf.TensorSpec([None, None], tf.int32))
        ds = tf.data.Dataset.from_generator(lambda: (({"history": h}, y) for h, y in batches),
                                            output_signature=signature)
        return ds.prefetch(tf.data.AUTOTUNE), arrays["history"]
    if name in CTR_MODELS:
        x = {"history": arrays["history"], "target_item": arrays["target_item"]}
        elements = (x, arrays["labels"])
    elif name == "keras_hub_sasrec":
        labels = arrays["labels"]
        x = {"item_ids": arrays["history"], "padding_mask": arrays["history"] != 0}
        y = {"positive_sequence": labels, "negative_sequence": uniform_negatives(labels, num_items, seed)}
        elements = (x, y, (labels != 0).astype(np.float32))
    else:
        elements = ({"history": arrays["history"]}, arrays["labels"])
    ds = tf.data.Dataset.from_tensor_slices(elements).batch(batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE), arrays["history"]


def _epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Wall time and steps of every epoch."""

        def __init__(self):
            super().__init__()
            self.times, self.steps = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._start, self._steps = time.perf_counter(), 0

        def on_train_batch_end(self, batch, logs=None):
            self._steps += 1

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)
            self.steps.append(self._steps)

    return EpochTimer()


# ----- the run --------------------------------------------------------------------------------------------
def steady_time(times: list[float]) -> float:
    """The median epoch time over the epochs after the first.

    Example:
        >>> steady_time([9.0, 2.0, 4.0, 3.0])
        3.0
    """
    return statistics.median(times[1:])


def ratios(epoch_times: dict) -> dict:
    """:data:`RATIOS` of ``{model: steady epoch time}`` (``None`` where a model did not run)."""
    return {key: (epoch_times[a] / epoch_times[b] if a in epoch_times and b in epoch_times else None)
            for key, (a, b) in RATIOS.items()}


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (``uptime``'s)."""
    return [round(x, 2) for x in os.getloadavg()]


def environment() -> dict:
    """Versions that decide the speed: TensorFlow, Keras, keras-hub, numpy; oneDNN and thread settings."""
    env = {"numpy": np.__version__}
    for module in ("tensorflow", "keras", "keras_hub"):
        try:
            env[module] = __import__(module).__version__
        except ImportError:
            env[module] = None
    import tensorflow as tf

    env.update(inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
               intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
               TF_ENABLE_ONEDNN_OPTS=os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
    return env


def run(models=MODELS, epochs: int = SETTINGS["epochs"], users: int | None = None, seed: int = 0,
        overrides: dict | None = None, matmul: dict | None = None, synthetic: bool = False,
        out_records: str | None = None, command=None) -> dict:
    """Trains ``models`` for ``epochs`` epochs each, in turns, and writes the record; returns it (with its
    ``"path"``). ``synthetic``: the synthetic log even where ML-1M is present; ``matmul``: ``{"size",
    "repeats"}`` of the peak."""
    if epochs < 2:
        raise ValueError(f"train_speed: need at least 2 epochs (the first is not timed), got {epochs}")
    before = load_average()
    if before[0] > SETTINGS["max_load"]:
        print(f"WARNING: 1-minute load average {before[0]} > {SETTINGS['max_load']} at the start: other work shares "
              f"the cores, the epoch times are noisy", file=sys.stderr, flush=True)
    if synthetic:
        sequences, num_items = synthetic_sequences(users or 1000, seed)
        data_name, files = "synthetic", []
    else:
        sequences, num_items, data_name, files = read_sequences(users, seed)
    configs = model_configs(num_items, overrides)
    matmul = {**SETTINGS["matmul"], **(matmul or {})}
    peak = matmul_peak(matmul["size"], matmul["repeats"])
    ctr = SETTINGS["ctr"]
    arrays, turns = {}, {}
    for name in models:
        config = configs[name]
        key = arrays_key(name, config)
        if key not in arrays:
            arrays[key] = model_arrays(name, config, sequences, num_items, seed)
        ds, history = training_data(name, arrays[key], num_items, config["batch_size"], seed,
                                    config.get("bucket_boundaries"))
        turns[name] = (build(name, config, seed), ds, history, _epoch_timer())
    for epoch in range(epochs):
        for name, (model, ds, _, timer) in turns.items():
            model.fit(ds, epochs=epoch + 1, initial_epoch=epoch, shuffle=False, verbose=0, callbacks=[timer])
            print(f"epoch {epoch + 1} {name}: {timer.times[-1]:.2f} s", flush=True)
    after = load_average()
    results = {}
    for name, (_, _, history, timer) in turns.items():
        config = configs[name]
        sequences_per_epoch = int(history.shape[0])
        if name in CTR_MODELS:
            forward = {"total": float(turns[name][0].analytic_flops()["total"])}
            epoch_forward = forward["total"] * sequences_per_epoch
            if config["options"].get("length_groups", 1) > 1:  # the work done: each group's rows at its width
                from tfmoe.models.ctr.backbones import LINEAR_WIDTH_COST

                def flops_at(width, model=turns[name][0]):  # whole rows, or MoS's experts, at the group's width
                    return model.analytic_flops(width)["total"]

                epoch_forward = group_flops(flops_at, config, history, LINEAR_WIDTH_COST)
        else:
            labels = arrays[arrays_key(name, config)]["labels"]
            scored = (config["max_len"] if config["options"].get("loss") == "bce"
                      else float(np.count_nonzero(labels)) / labels.shape[0])
            forward = model_flops(name, config, num_items, scored)
            epoch_forward = forward["total"] * sequences_per_epoch
            if config.get("bucket_boundaries"):  # the work done: each bucket's rows at its bound
                epoch_forward = sum(model_flops(name, {**config, "max_len": bound}, num_items, bound)["total"]
                                    * rows.size for bound, rows in length_buckets(history, config["bucket_boundaries"]))
            if config["options"].get("length_groups", 1) > 1:  # the work done: each group's rows at its width
                from tfmoe.models.length_groups import transformer_position_cost

                def flops_at(width, name=name, config=config):
                    return model_flops(name, {**config, "max_len": width}, num_items, width)["total"]

                epoch_forward = group_flops(flops_at, config, history, transformer_position_cost(
                    config["options"]["hidden_dim"], config["options"]["inner_dim"]))
        epoch_time = steady_time(timer.times)
        train_flops = 3.0 * epoch_forward
        achieved = train_flops / epoch_time / 1e9
        results[name] = {
            "epoch_times_s": [round(t, 4) for t in timer.times], "epoch_time_s": epoch_time,
            "steps_per_epoch": timer.steps, "sequences_per_epoch": sequences_per_epoch, "batches": digest(history),
            "forward_flops_per_sequence": forward, "train_flops_per_epoch": train_flops, "gflops_per_s": achieved,
            "peak_fraction_fp32": achieved / peak["float32"]["gflops_per_s"],
            "peak_fraction_bf16": achieved / peak["bfloat16"]["gflops_per_s"],
        }
    metrics = {"models": results, **ratios({n: r["epoch_time_s"] for n, r in results.items()}),
               "matmul_peak": peak, "load_average_before": before, "load_average_after": after,
               "load_warning": before[0] > SETTINGS["max_load"], "environment": environment(),
               "data": {"name": data_name, "users": len(sequences), "num_items": num_items}}
    config = {"models": {n: configs[n] for n in turns}, "epochs": epochs, "matmul": matmul,
              "data": {"name": data_name, "users": users, "ctr_samples_per_user": ctr["samples_per_user"]}}
    record = records.make_record(BENCHMARK, variant_label(data_name, models), config, metrics, epochs=epochs,
                                 seed=seed, partial=False, data_files=files, command=command)
    record["path"] = records.write_record(record, out_records or records.ROOT)
    return record


def variant_label(data_name: str, models) -> str:
    """The record's variant: the data's name for a run of the default models, else ``<data>/<model>+<model>...``
    with the models sorted (a run of some models is a record of its own, not the current full run).

    Example:
        >>> variant_label("ml-1m", MODELS), variant_label("ml-1m", ["din", "mos_din"])
        ('ml-1m', 'ml-1m/din+mos_din')
    """
    return data_name if sorted(models) == sorted(MODELS) else f"{data_name}/{'+'.join(sorted(models))}"


def summary(record: dict) -> str:
    """A text table of a record: per model the steady epoch time, GFLOP/s and peak fractions; then the ratios."""
    metrics = record["metrics"]
    lines = [f"{'model':18} {'s/epoch':>8} {'GFLOP/s':>8} {'fp32 peak':>9} {'bf16 peak':>9}"]
    for name, r in metrics["models"].items():
        lines.append(f"{name:18} {r['epoch_time_s']:8.3f} {r['gflops_per_s']:8.2f} {r['peak_fraction_fp32']:9.3f} "
                     f"{r['peak_fraction_bf16']:9.3f}")
    peak = metrics["matmul_peak"]
    lines.append(f"matmul peak {peak['size']}^2: fp32 {peak['float32']['gflops_per_s']:.1f} GFLOP/s, "
                 f"bf16 {peak['bfloat16']['gflops_per_s']:.1f} GFLOP/s")
    lines += [f"{key}: {metrics[key]:.3f}" for key in RATIOS if metrics.get(key) is not None]
    lines.append(f"load average before {metrics['load_average_before']}, after {metrics['load_average_after']}")
    return "\n".join(lines)


def speed_table(record: dict) -> str:
    """The record as ``benchmarks/README.md`` shows it: per model the steady epoch time, the training FLOPs of an
    epoch, GFLOP/s and the fractions of the matmul peak; the ratios; the peak, load and versions."""
    metrics = record["metrics"]
    rows = ["| model | s / epoch | epochs timed | steps / epoch | training GFLOP / epoch | GFLOP/s | of fp32 peak | "
            "of bf16 peak |", "|---|---|---|---|---|---|---|---|"]
    for name, r in metrics["models"].items():
        rows.append(f"| {name} | {r['epoch_time_s']:.3f} | {len(r['epoch_times_s']) - 1} | {r['steps_per_epoch'][-1]} "
                    f"| {r['train_flops_per_epoch'] / 1e9:.1f} | {r['gflops_per_s']:.1f} | "
                    f"{r['peak_fraction_fp32']:.3f} | {r['peak_fraction_bf16']:.3f} |")
    rows += ["", "| ratio | value |", "|---|---|"]
    rows += [f"| {key} | {metrics[key]:.3f} |" for key in RATIOS if metrics.get(key) is not None]
    peak, env = metrics["matmul_peak"], metrics["environment"]
    rows += ["", f"Matmul peak ({peak['size']} x {peak['size']}): float32 {peak['float32']['gflops_per_s']:.1f} "
                 f"GFLOP/s, bfloat16 {peak['bfloat16']['gflops_per_s']:.1f} GFLOP/s. Load average (1, 5, 15 min) "
                 f"before {metrics['load_average_before']}, after {metrics['load_average_after']}"
                 + (" (other work shared the cores)" if metrics["load_warning"] else "")
                 + f". keras-hub {env.get('keras_hub')}, numpy {env.get('numpy')}."]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        choices=[*dict.fromkeys([*MODELS, *CTR_MODELS]), *HARDWARE_OPTIONS])
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"], help="epochs per model (>= 2)")
    parser.add_argument("--users", type=int, help="the first N users only (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-records", default=records.ROOT, help="where the record is written")
    parser.add_argument("--synthetic", action="store_true", help="the synthetic log even where ML-1M is present")
    parser.add_argument("--max-len", type=int, help="next-item length (default: the settings')")
    parser.add_argument("--batch-size", type=int, help="next-item batch size (default: the settings')")
    parser.add_argument("--ctr-max-len", type=int, help="CTR history length (default 1,000)")
    parser.add_argument("--ctr-batch-size", type=int, help="CTR batch size (default: the settings')")
    parser.add_argument("--matmul-size", type=int, help="side of the peak matmul (default: the settings')")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not timed)")
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    overrides = {"max_len": args.max_len, "batch_size": args.batch_size, "ctr_max_len": args.ctr_max_len,
                 "ctr_batch_size": args.ctr_batch_size}
    record = run(args.models, args.epochs, args.users, args.seed, overrides,
                 {"size": args.matmul_size} if args.matmul_size else None, args.synthetic, args.out_records,
                 command=sys.argv if argv is None else ["benchmarks/train_speed.py", *argv])
    print(summary(record))
    print("record:", record["path"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
