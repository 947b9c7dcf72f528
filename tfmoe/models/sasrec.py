"""SASRec (Kang & McAuley, ICDM 2018): a causal transformer over the item sequence with tied item embeddings.

The composition of a :class:`~tfmoe.models.sequence_encoder.SequenceEncoder` backbone (no head) and the
:class:`~tfmoe.models.next_item_task.NextItemTask`, which scores and trains.

``scores[b, i, v] = h[b, i] . E[v]`` where ``h`` is the output of the last block at position ``i``
(it predicts the item after position ``i``) and ``E`` the item table of the
:class:`~tfmoe.models.blocks.ItemEncoder` (``V = num_items + 1`` rows, row 0 = padding).

Inputs: a features dict with the left-padded item ids ``[B, L]`` under ``"history"`` (the key of
:mod:`tfmoe.data.samples`) or ``"items"``, or the ``[B, L]`` tensor itself. The most recent item is at
position ``L - 1``; other keys are ignored.

Methods (all models of :mod:`tfmoe.models`):

* ``call(features, training)`` / ``sequence_representation(features)``: ``[B, L, d]`` hidden states.
* ``sequence_scores(features)``: ``[B, L, V]`` float32 logits at every position (training/analysis).
* ``last_scores(features)``: ``[B, V]`` float32 scores of the most recent position, column 0 = ``-inf``
  (evaluation and serving; never builds ``[B, L, V]``).
* ``compute_loss``: the :class:`~tfmoe.models.losses.NextItemLoss` chosen by ``loss`` on
  ``(features, labels [B, L])`` batches, plus the auxiliary losses of the layers, so
  ``model.compile(optimizer)`` + ``model.fit(dataset)`` trains it.

Example:
    >>> import numpy as np
    >>> from tfmoe.models import SASRec
    >>> model = SASRec(num_items=20, max_len=5, hidden_dim=16, num_heads=2)
    >>> model.last_scores({"history": np.array([[0, 0, 3, 4, 5]])}).shape
    TensorShape([1, 21])

References:
    Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. https://arxiv.org/abs/1808.09781
"""

from __future__ import annotations

import inspect

import keras

from tfmoe.models import registry
from tfmoe.models.next_item_task import (  # noqa: F401 (re-exported: the helpers of every next-item model)
    ITEM_KEYS,
    NextItemTask,
    item_ids,
    labels_at_last_position,
    last_position,
    mask_padding_column,
    with_placeholder_frequencies,
)
from tfmoe.models.sequence_encoder import SequenceEncoder
from tfmoe.utils import validation as v
from tfmoe.utils.initializers import optional_initializer, serialize_optional

# the SequenceEncoder arguments of the SASRec family, with their defaults
ENCODER_DEFAULTS = {
    "hidden_dim": 64, "num_blocks": 2, "num_heads": 1, "inner_dim": None, "dropout": 0.2, "attention_dropout": None,
    "attention_output_dropout": None, "norm": "pre", "activation": "gelu", "scale_embeddings": True,
    "positions": "recency", "initializer_range": None, "attention_initializer": None, "layer_norm_epsilon": 1e-6,
    "length_groups": 1,
}
# the NextItemTask arguments, with their defaults
TASK_DEFAULTS = {"item_dropout": 0.0, "loss": "softmax", "num_negatives": 256, "proposal": "uniform",
                 "item_frequencies": None, "remove_accidental_hits": True, "seed": None}


def split_arguments(kwargs: dict) -> tuple[dict, dict, dict]:
    """``(encoder arguments, task arguments, the rest: Keras model arguments)`` of a SASRec-family ``kwargs``,
    the missing ones at their defaults."""
    encoder = {name: kwargs.get(name, default) for name, default in ENCODER_DEFAULTS.items()}
    task = {name: kwargs.get(name, default) for name, default in TASK_DEFAULTS.items()}
    rest = {name: value for name, value in kwargs.items() if name not in encoder and name not in task}
    return encoder, task, rest


def sasrec_encoder(owner: str, num_items, max_len, encoder: dict, num_blocks=None, feedforward=None, dtype=None):
    """The :class:`SequenceEncoder` of the arguments ``encoder`` (``num_blocks`` replaces theirs); errors name
    ``owner``."""
    options = dict(encoder, attention_initializer=optional_initializer(owner, "attention_initializer",
                                                                       encoder["attention_initializer"]))
    if num_blocks is not None:
        options["num_blocks"] = num_blocks
    try:
        return SequenceEncoder(num_items, max_len, feedforward=feedforward, dtype=dtype, name="sequence_encoder",
                               **options)
    except ValueError as error:
        raise ValueError(f"{owner}: {error}") from error


def encoder_arguments(model) -> dict:
    """The SASRec-family arguments a model stores (each under its own name), as its config writes them."""
    config = {"name": model.name, "trainable": model.trainable, "num_items": model.num_items,
              "max_len": model.max_len}
    config.update({name: getattr(model, name) for name in ENCODER_DEFAULTS})
    config["attention_initializer"] = serialize_optional(model.attention_initializer)
    config.update(model.loss_config())
    return config


def store_encoder_arguments(model, backbone) -> None:
    """Stores the backbone's arguments on ``model``, each under its own name."""
    for name in ENCODER_DEFAULTS:
        setattr(model, name, getattr(backbone, name))


@registry.register_model("sasrec", task="next_item")
@keras.saving.register_keras_serializable(package="tfmoe")
class SASRec(NextItemTask):
    """SASRec with learned positions, tied item embeddings and a switchable loss.

    Args:
        num_items: catalogue size without padding (item ids ``1..num_items``).
        max_len: longest input sequence ``L``.
        hidden_dim: ``d`` (default 64).
        num_blocks: transformer blocks (default 2).
        num_heads: attention heads (default 1; ``d`` must be divisible by it).
        inner_dim: FFN inner size (default ``4 d``).
        dropout: embedding, residual and FFN dropout (default 0.2).
        item_dropout: dropout on the tied item table where it scores items in training (one mask over the
            ``[V, d]`` table per step, as RecTools' item-net dropout); the input lookups keep ``dropout``. Default 0.
        attention_dropout: attention-probability dropout (default ``dropout``).
        attention_output_dropout: dropout on each attention output before its residual sum (default
            ``dropout``; 0 in the original SASRec code).
        norm: ``"pre"`` (default), ``"sasrec"`` (the original code: queries and residual from the normalised
            input) or ``"post"``; ``"pre"`` and ``"sasrec"`` end with a final LayerNorm. See
            :class:`~tfmoe.models.blocks.TransformerBlock`.
        activation: FFN activation (default ``"gelu"``; the original uses ``"relu"``).
        scale_embeddings: multiply item embeddings by ``sqrt(d)`` (original SASRec; default True).
        positions: ``"recency"`` (default) or ``"absolute"`` (original SASRec); see
            :class:`~tfmoe.models.blocks.ItemEncoder`.
        initializer_range: if given, every embedding table and kernel starts from ``N(0, initializer_range^2)``
            (0.02 in the SASRec reference code of Klenitskiy & Vasilev and in RecBole); default None: the
            layers' own initializers (embeddings ``N(0, 1/d)`` truncated, kernels Glorot uniform).
        layer_norm_epsilon: epsilon of every LayerNorm (blocks and the final one; default 1e-6, 1e-8 in the
            original SASRec code).
        attention_initializer: initializer of every block's attention query, key and value kernels (a Keras
            initializer name, config or instance); default None: as the other kernels. That reference code
            leaves those three at PyTorch's Glorot uniform over the stacked ``[3d, d]`` in-projection, limit
            ``sqrt(6 / 4d)`` (:func:`tfmoe.utils.initializers.torch_in_projection`); ``initializer_range`` sets
            the rest.
        length_groups: encode each training and evaluation batch in this many groups of rows of similar history
            length, each cut to its longest (default 1). Same batches, same outputs and loss, less work on padding:
            see :mod:`tfmoe.models.length_groups` and ``benchmarks/train_speed.py``. Not with XLA
            (``compile(jit_compile=True)`` is an error; ``"auto"`` compiles without it).
        loss: ``"softmax"`` (full CE, default), ``"sampled_softmax"`` or ``"bce"``; see
            :mod:`tfmoe.models.losses`. Stored as ``loss_kind`` (``Model.loss`` is Keras' compiled loss).
        num_negatives, proposal, item_frequencies, remove_accidental_hits: sampled-softmax options.
            ``item_frequencies`` ([V] counts) become the non-trainable weight ``proposal_log_q`` (saved
            with the weights, not in the config).
        seed: seed of the negative sampler.

    The backbone is ``sequence_encoder``; the model has no scoring head (``scoring_head`` is None).
    """

    def __init__(
        self,
        num_items,
        max_len,
        hidden_dim=64,
        num_blocks=2,
        num_heads=1,
        inner_dim=None,
        dropout=0.2,
        item_dropout=0.0,
        attention_dropout=None,
        attention_output_dropout=None,
        norm="pre",
        activation="gelu",
        scale_embeddings=True,
        positions="recency",
        initializer_range=None,
        attention_initializer=None,
        layer_norm_epsilon=1e-6,
        length_groups=1,
        loss="softmax",
        num_negatives=256,
        proposal="uniform",
        item_frequencies=None,
        remove_accidental_hits=True,
        seed=None,
        **kwargs,
    ):
        owner = type(self).__name__
        v.check_int(owner, "num_blocks", num_blocks, minimum=1)
        encoder = dict(
            hidden_dim=hidden_dim, num_blocks=num_blocks, num_heads=num_heads, inner_dim=inner_dim, dropout=dropout,
            attention_dropout=attention_dropout, attention_output_dropout=attention_output_dropout, norm=norm,
            activation=activation, scale_embeddings=scale_embeddings, positions=positions,
            initializer_range=initializer_range, attention_initializer=attention_initializer,
            layer_norm_epsilon=layer_norm_epsilon, length_groups=length_groups,
        )
        backbone = sasrec_encoder(owner, num_items, max_len, encoder, dtype=kwargs.get("dtype"))
        super().__init__(backbone, item_dropout=item_dropout, loss=loss, num_negatives=num_negatives,
                         proposal=proposal, item_frequencies=item_frequencies,
                         remove_accidental_hits=remove_accidental_hits, seed=seed, **kwargs)
        store_encoder_arguments(self, backbone)

    def get_config(self):
        return encoder_arguments(self)

    @classmethod
    def from_config(cls, config):
        return cls(**with_placeholder_frequencies(config))


def with_sasrec_arguments(init):
    """Decorates ``__init__(self, num_items, max_len, <own arguments>, **kwargs)`` whose ``kwargs`` are
    :class:`SASRec`'s arguments: its signature lists them (keyword-only, SASRec's defaults where the model has no
    default of its own), so that ``inspect.signature`` (``help``, the trainer's option defaults) sees every option."""
    own = inspect.signature(init).parameters
    listed = [p for p in own.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    listed += [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for name, p in inspect.signature(SASRec.__init__).parameters.items()
        if name not in own and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default is not p.empty
    ]
    listed += [p for p in own.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    init.__signature__ = inspect.Signature(listed)
    return init
