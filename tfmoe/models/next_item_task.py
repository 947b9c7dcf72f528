"""The next-item task: a sequence-encoder backbone, an optional scoring head, tied item scoring and the loss.

``NextItemTask(backbone, head)`` computes ``h = backbone(items)`` (:class:`~tfmoe.models.sequence_encoder.
SequenceEncoder`, ``[B, L, d]``) and the model output ``o = head(h)`` (``o = h`` without a head). Items are
scored against the backbone's tied item table ``E`` (``V = num_items + 1`` rows, row 0 = padding)::

    no head:      s(v) = o . E[v]
    with a head:  s(v) = head.scores(o, E)(v)      (dot products q . E[v] when head.dot_product, q = head.query(o))

A head is a layer called as ``head(h, mask=mask, training=training, last_only=False)`` with ``dot_product``
(bool), ``query(o)`` (``[..., d]`` float32, when ``dot_product``) and ``scores(o, table)`` (``[..., V]``
float32); FAME's :class:`~tfmoe.models.fame.FacetHead` is one. The training loss is the
:class:`~tfmoe.models.losses.NextItemLoss` of ``(q, E, labels)`` (with ``item_dropout``, one dropout mask on
``E`` per step), or for a head whose scores are not dot products, the full softmax cross-entropy of its scores;
plus the layers' auxiliary losses. ``compile``/``fit``/``evaluate``/``predict`` follow
:class:`~tfmoe.models.keras_conventions.KerasConventions`: ``predict`` returns ``last_scores`` ``[B, V]``.

Inputs: a features dict with the left-padded item ids ``[B, L]`` under ``"history"`` or ``"items"``, or the
``[B, L]`` tensor itself (the most recent item at position ``L - 1``).

Example:
    >>> import numpy as np
    >>> from tfmoe.models.next_item_task import NextItemTask
    >>> from tfmoe.models.sequence_encoder import SequenceEncoder
    >>> task = NextItemTask(SequenceEncoder(num_items=20, max_len=5, hidden_dim=16))
    >>> task.last_scores({"history": np.array([[0, 0, 3, 4, 5]])}).shape
    TensorShape([1, 21])

References:
    Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018. https://arxiv.org/abs/1808.09781
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmoe.models import losses as next_item_losses
from tfmoe.models.keras_conventions import KerasConventions
from tfmoe.models.length_groups import resolve_jit_compile
from tfmoe.models.sequence_encoder import SequenceEncoder
from tfmoe.utils import validation as v

ITEM_KEYS = ("history", "items")
HEAD_METHODS = ("query", "scores", "dot_product")


def item_ids(features):
    """The ``[B, L]`` item ids of a features dict (``"history"`` or ``"items"``) or a tensor."""
    if isinstance(features, dict):
        for key in ITEM_KEYS:
            if key in features:
                return features[key]
        raise ValueError(f"features must contain one of {ITEM_KEYS}, got keys {sorted(features)}")
    return features


def labels_at_last_position(y, features):
    """``labels [B, L]`` as they are, or targets ``[B]`` placed at the last of ``L`` positions (0 elsewhere)."""
    y = tf.convert_to_tensor(y)
    if y.shape.rank == 2:
        return y
    # rank 1, or unknown in a function traced for both: [B, W] with W = L or 1, left-padded with zeros to L
    ids = item_ids(features)
    labels = tf.reshape(y, [tf.shape(y)[0], -1])
    labels = tf.pad(labels, [[0, 0], [tf.shape(ids)[1] - tf.shape(labels)[1], 0]])
    return tf.reshape(labels, tf.shape(ids))


def mask_padding_column(scores):
    """Sets column 0 (the padding item) of ``scores [..., V]`` to ``-inf``."""
    column = tf.one_hot(0, tf.shape(scores)[-1], on_value=True, off_value=False)
    return tf.where(column, tf.constant(-np.inf, scores.dtype), scores)


def last_position(output):
    """The last position ``[B, ...]`` of a model output ``[B, L, ...]`` (a tensor or a dict of them)."""
    return tf.nest.map_structure(lambda value: value[:, -1], output)


@keras.saving.register_keras_serializable(package="tfmoe")
class NextItemTask(KerasConventions, keras.Model):
    """Next-item recommendation from a :class:`~tfmoe.models.sequence_encoder.SequenceEncoder` (see the module).

    Args:
        backbone: the :class:`~tfmoe.models.sequence_encoder.SequenceEncoder`; its item table scores the items.
        head: None (the backbone's output is the query) or a scoring head layer (see the module docstring).
        item_dropout: dropout on the item table where it scores items in training (one mask over the ``[V, d]``
            table per step); default 0.
        loss: ``"softmax"`` (default), ``"sampled_softmax"`` or ``"bce"`` (:mod:`tfmoe.models.losses`).
        num_negatives, proposal, item_frequencies, remove_accidental_hits: sampled-softmax options;
            ``item_frequencies`` ([V] counts) become the non-trainable weight ``proposal_log_q`` (saved with the
            weights, not in the config).
        seed: seed of the negative sampler and of the item-table dropout.

    The backbone's layers are attributes of the task too (``encoder``, ``transformer_blocks``, ``final_norm``),
    set before the backbone itself: Keras saves each layer once, under the first attribute that reaches it, so
    saved files and ``save_weights`` checkpoints address the weights as ``encoder/...``,
    ``layers/transformer_block[_i]/...`` and ``final_norm/...`` whatever the composition.
    """

    def __init__(
        self,
        backbone,
        head=None,
        item_dropout=0.0,
        loss="softmax",
        num_negatives=256,
        proposal="uniform",
        item_frequencies=None,
        remove_accidental_hits=True,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = type(self).__name__
        if not isinstance(backbone, SequenceEncoder):
            raise ValueError(f"{owner}: `backbone` must be a SequenceEncoder, got {backbone!r}")
        if head is not None and not (isinstance(head, keras.layers.Layer)
                                     and all(hasattr(head, name) for name in HEAD_METHODS)):
            raise ValueError(f"{owner}: `head` must be None or a layer with {', '.join(HEAD_METHODS)}, got {head!r}")
        self.num_items = backbone.num_items
        self.max_len = backbone.max_len
        self.item_dropout = v.check_float(owner, "item_dropout", item_dropout, minimum=0.0, maximum=1.0,
                                          max_inclusive=False)
        try:
            self.next_item_loss = next_item_losses.NextItemLoss(
                self.num_items, kind=loss, num_negatives=num_negatives, proposal=proposal,
                item_frequencies=item_frequencies, remove_accidental_hits=remove_accidental_hits, seed=seed,
            )
        except ValueError as error:
            raise ValueError(f"{owner}: {error}") from error
        self.num_negatives = self.next_item_loss.num_negatives
        self.proposal = self.next_item_loss.proposal
        self.remove_accidental_hits = self.next_item_loss.remove_accidental_hits
        self.seed = self.next_item_loss.seed
        self.encoder = backbone.item_encoder
        self.transformer_blocks = list(backbone.transformer_blocks)
        self.final_norm = backbone.final_norm
        self.sequence_encoder = backbone
        self.scoring_head = head
        # only with item_dropout: a seed generator is a variable, models without it keep their weight layout
        self.item_dropout_seed = keras.random.SeedGenerator(seed) if self.item_dropout else None
        self._build_layers()

    def _build_layers(self):
        """Creates every weight now, so that loading weights needs no data."""
        if not self.sequence_encoder.built:  # a deserialized backbone or head comes built
            self.sequence_encoder.build((None, self.max_len))
        if self.scoring_head is not None and not self.scoring_head.built:
            self.scoring_head.build((None, self.max_len, self.sequence_encoder.hidden_dim))
        if self.proposal == "frequency":  # saved with the weights
            self.proposal_log_q = self.add_weight(
                name="proposal_log_q", shape=(self.num_items + 1,), trainable=False, autocast=False,
                initializer=keras.initializers.Constant(self.next_item_loss.log_q.numpy()),
            )
            self.next_item_loss.log_q = self.proposal_log_q
        self.built = True

    def compile(self, *args, jit_compile="auto", **kwargs):
        """``keras.Model.compile``; with length groups (dynamic shapes) ``"auto"`` means no XLA and True is an error."""
        jit_compile = resolve_jit_compile(type(self).__name__, self.sequence_encoder.length_groups, jit_compile)
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    @property
    def loss_kind(self) -> str:
        """The ``loss`` argument (``Model.loss`` is Keras' compiled loss)."""
        return self.next_item_loss.kind

    @property
    def item_embeddings(self):
        """The tied ``[V, d]`` item table (row 0 = padding)."""
        return self.sequence_encoder.item_embeddings

    def scoring_table(self, training=False):
        """The item table that scores items: ``item_embeddings``, in training with ``item_dropout`` applied."""
        if not (training and self.item_dropout):
            return self.item_embeddings
        return keras.random.dropout(self.item_embeddings, self.item_dropout, seed=self.item_dropout_seed)

    def call(self, features, training=None):
        x, mask = self.sequence_encoder(item_ids(features), training=training)
        if self.scoring_head is None:
            return x
        return self.scoring_head(x, mask=mask, training=training)

    def last_output(self, features):
        """The model output at the last position (``[B, d]`` without a head); only that position is computed
        after the last layer's keys and values."""
        items = item_ids(features)
        if self.scoring_head is None:
            x, _ = self.sequence_encoder(items, training=False, last_only=True)
            return last_position(x)
        x, mask = self.sequence_encoder(items, training=False)
        return last_position(self.scoring_head(x, mask=mask, training=False, last_only=True))

    def query(self, output):
        """The query vectors ``q [..., d]`` of a model output, ``scores = q . E^T``."""
        if self.scoring_head is None:
            return output
        if not self.scoring_head.dot_product:
            raise ValueError(f"{type(self).__name__}: sequence_representation needs a head whose scores are dot "
                             f"products with the item table (FAME: mix='logits'), got {self.scoring_head.name}")
        return self.scoring_head.query(output)

    def sequence_representation(self, features, training=False):
        """``[B, L, d]`` query vectors: ``scores = representation . E^T``."""
        return self.query(self(features, training=training))

    def output_scores(self, output, table=None):
        """Scores ``[..., V]`` float32 of (a slice of) the model output; ``table`` replaces the item table."""
        table = self.item_embeddings if table is None else table
        if self.scoring_head is not None:
            return self.scoring_head.scores(output, table)
        return tf.matmul(tf.cast(output, tf.float32), tf.cast(table, tf.float32), transpose_b=True)

    def sequence_scores(self, features, training=False):
        """``[B, L, V]`` float32 logits at every position (column 0 = padding, not masked)."""
        return self.output_scores(self(features, training=training))

    def last_scores(self, features):
        """``[B, V]`` float32 scores of the most recent position; the padding column is ``-inf``."""
        return mask_padding_column(self.output_scores(self.last_output(features)))

    def next_item_objective(self, output, labels, training=False):
        """The next-item loss of a model output ``[B, L, ...]`` and ``labels [B, L]`` (0 = ignored)."""
        table = self.scoring_table(training)
        if self.scoring_head is None or self.scoring_head.dot_product:
            return self.next_item_loss(tf.cast(self.query(output), tf.float32), table, labels)
        return next_item_losses.softmax_cross_entropy_from_logits(self.output_scores(output, table), labels)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Next-item loss on ``labels [B, L]`` (0 = ignored) plus the layers' auxiliary losses.

        ``y`` may also be evaluation targets ``[B]``: the loss is then the last position's.
        """
        if y_pred is None:
            y_pred = self(x, training=training)
        main = self.next_item_objective(y_pred, labels_at_last_position(y, x), training)
        return next_item_losses.training_objective(main, self.losses)

    def predictions(self, features):
        """What ``predict`` returns: :meth:`last_scores` ``[B, V]``."""
        return self.last_scores(features)

    def metric_inputs(self, y, y_pred):
        """``(targets [B], scores [B, V])`` of the last position, for ``compile(metrics=...)``."""
        targets = tf.reshape(y, [tf.shape(y)[0], -1])[:, -1]  # labels [B, L] or targets [B] (or a rank unknown)
        return targets, mask_padding_column(self.output_scores(last_position(y_pred)))

    def loss_config(self) -> dict:
        """The loss arguments as ``get_config`` writes them (``item_frequencies`` is saved as a weight)."""
        return {
            "item_dropout": self.item_dropout,
            "loss": self.loss_kind,
            "num_negatives": self.num_negatives,
            "proposal": self.proposal,
            "remove_accidental_hits": self.remove_accidental_hits,
            "seed": self.seed,
        }

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable, "dtype": keras.saving.serialize_keras_object(
            self.dtype_policy)}
        config.update(
            backbone=keras.saving.serialize_keras_object(self.sequence_encoder),
            head=None if self.scoring_head is None else keras.saving.serialize_keras_object(self.scoring_head),
            **self.loss_config(),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = with_placeholder_frequencies(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("head") is not None:
            config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)


def with_placeholder_frequencies(config: dict) -> dict:
    """A copy of a model config; with ``proposal="frequency"``, placeholder counts (the real ones load as the
    weight ``proposal_log_q``)."""
    config = dict(config)
    if config.get("proposal") == "frequency":
        num_items = config["num_items"] if "num_items" in config else config["backbone"]["config"]["num_items"]
        config["item_frequencies"] = np.ones(num_items + 1)
    return config
