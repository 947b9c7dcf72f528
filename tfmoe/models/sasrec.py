"""SASRec (Kang & McAuley, ICDM 2018): a causal transformer over the item sequence with tied item embeddings.

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
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmoe.models import blocks, registry
from tfmoe.models import losses as next_item_losses
from tfmoe.models.keras_conventions import KerasConventions
from tfmoe.utils import validation as v
from tfmoe.utils.initializers import fresh_initializer, optional_initializer, serialize_optional

ITEM_KEYS = ("history", "items")


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


@registry.register_model("sasrec", task="next_item")
@keras.saving.register_keras_serializable(package="tfmoe")
class SASRec(KerasConventions, keras.Model):
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
        loss: ``"softmax"`` (full CE, default), ``"sampled_softmax"`` or ``"bce"``; see
            :mod:`tfmoe.models.losses`.
        num_negatives, proposal, item_frequencies, remove_accidental_hits: sampled-softmax options.
            ``item_frequencies`` ([V] counts) become the non-trainable weight ``proposal_log_q`` (saved
            with the weights, not in the config).
        seed: seed of the negative sampler.
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
        self.num_items = v.check_int(owner, "num_items", num_items, minimum=2)
        self.max_len = v.check_int(owner, "max_len", max_len, minimum=1)
        self.hidden_dim = v.check_int(owner, "hidden_dim", hidden_dim, minimum=1)
        self.num_blocks = v.check_int(owner, "num_blocks", num_blocks, minimum=self._min_blocks())
        self.num_heads = v.check_int(owner, "num_heads", num_heads, minimum=1)
        if self.hidden_dim % self.num_heads:
            raise ValueError(f"{owner}: `hidden_dim` ({hidden_dim}) must be divisible by `num_heads` ({num_heads})")
        self.inner_dim = v.check_optional_int(owner, "inner_dim", inner_dim, minimum=1)
        self.dropout_rate = v.check_float(owner, "dropout", dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        self.item_dropout = v.check_float(owner, "item_dropout", item_dropout, minimum=0.0, maximum=1.0,
                                          max_inclusive=False)
        self.attention_dropout = v.check_optional_float(
            owner, "attention_dropout", attention_dropout, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self.attention_output_dropout = v.check_optional_float(
            owner, "attention_output_dropout", attention_output_dropout, minimum=0.0, maximum=1.0, max_inclusive=False
        )
        self.norm = v.check_choice(owner, "norm", norm, blocks.NORMS)
        self.activation = activation
        self.scale_embeddings = v.check_bool(owner, "scale_embeddings", scale_embeddings)
        self.positions = v.check_choice(owner, "positions", positions, blocks.POSITIONS)
        self.initializer_range = None
        if initializer_range is not None:
            self.initializer_range = v.check_float(
                owner, "initializer_range", initializer_range, minimum=0.0, min_inclusive=False
            )
        self.attention_initializer = optional_initializer(owner, "attention_initializer", attention_initializer)
        self.layer_norm_epsilon = v.check_float(
            owner, "layer_norm_epsilon", layer_norm_epsilon, minimum=0.0, min_inclusive=False
        )
        self.loss_options = {
            "kind": loss,
            "num_negatives": num_negatives,
            "proposal": proposal,
            "remove_accidental_hits": remove_accidental_hits,
            "seed": seed,
        }
        try:
            self.next_item_loss = next_item_losses.NextItemLoss(
                self.num_items, item_frequencies=item_frequencies, **self.loss_options
            )
            self.encoder = blocks.ItemEncoder(
                self.num_items, self.max_len, self.hidden_dim, dropout=self.dropout_rate,
                scale_embeddings=self.scale_embeddings, positions=self.positions,
                embeddings_initializer=self._initializer(None), name="item_encoder",
            )
            self.transformer_blocks = [
                blocks.TransformerBlock(name=f"block_{i}", **self._block_options(i)) for i in range(self._num_plain())
            ]
        except ValueError as error:
            raise ValueError(f"{owner}: {error}") from error
        self.final_norm = None
        if norm != "post":
            self.final_norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="final_norm")
        # only with item_dropout: a seed generator is a variable, models without it keep their weight layout
        self.item_dropout_seed = keras.random.SeedGenerator(seed) if self.item_dropout else None
        self._build_layers()

    # ----- hooks for subclasses -------------------------------------------------------------------
    def _min_blocks(self) -> int:
        return 1

    def _num_plain(self) -> int:
        """Number of :class:`TransformerBlock` s (FAME replaces the last one)."""
        return self.num_blocks

    def _initializer(self, default):
        """``N(0, initializer_range^2)`` if ``initializer_range`` is set, else ``default`` (a layer's own)."""
        if self.initializer_range is None:
            return default
        return keras.initializers.RandomNormal(stddev=self.initializer_range)

    def _block_options(self, index: int) -> dict:
        return {
            "num_heads": self.num_heads,
            "inner_dim": self.inner_dim or 4 * self.hidden_dim,
            "dropout": self.dropout_rate,
            "attention_dropout": self.attention_dropout,
            "attention_output_dropout": self.attention_output_dropout,
            "norm": self.norm,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "kernel_initializer": self._initializer("glorot_uniform"),
            "attention_initializer": fresh_initializer(self.attention_initializer, f"block_{index}_attention"),
        }

    def _build_head(self):
        """Builds the layers after the blocks (weights are created eagerly so loading needs no data)."""

    def _head(self, x, mask, training):
        """Blocks' output ``[B, L, d]`` -> the model output (SASRec: the final LayerNorm)."""
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x * tf.cast(mask, x.dtype)[..., None]

    # ----- model -------------------------------------------------------------------------------------
    def _build_layers(self):
        shape = (None, self.max_len, self.hidden_dim)
        self.encoder.build((None, self.max_len))
        for block in self.transformer_blocks:
            block.build(shape)
        if self.final_norm is not None:
            self.final_norm.build(shape)
        self._build_head()
        if self.next_item_loss.proposal == "frequency":  # saved with the weights
            self.proposal_log_q = self.add_weight(
                name="proposal_log_q", shape=(self.num_items + 1,), trainable=False, autocast=False,
                initializer=keras.initializers.Constant(self.next_item_loss.log_q.numpy()),
            )
            self.next_item_loss.log_q = self.proposal_log_q
        self.built = True

    @property
    def item_embeddings(self):
        """The tied ``[V, d]`` item table (row 0 = padding)."""
        return self.encoder.item_embeddings

    def scoring_table(self, training=False):
        """The item table that scores items: ``item_embeddings``, in training with ``item_dropout`` applied."""
        if not (training and self.item_dropout):
            return self.item_embeddings
        return keras.random.dropout(self.item_embeddings, self.item_dropout, seed=self.item_dropout_seed)

    def call(self, features, training=None):
        x, mask = self.encoder(item_ids(features), training=training)
        for block in self.transformer_blocks:
            x = block(x, mask=mask, training=training)
        return self._head(x, mask, training)

    def _last_output(self, features):
        """The model output at the last position ``[B, d]``: the final block computes that position only."""
        x, mask = self.encoder(item_ids(features), training=False)
        for block in self.transformer_blocks[:-1]:
            x = block(x, mask=mask, training=False)
        x = self.transformer_blocks[-1](x, mask=mask, training=False, last_only=True)
        return self._last(self._head(x, mask[:, -1:], False))

    def sequence_representation(self, features, training=False):
        """``[B, L, d]`` query vectors: ``scores = representation . E^T``."""
        return self(features, training=training)

    def _last(self, output):
        return output[:, -1]

    def output_scores(self, output):
        """Scores ``[..., V]`` float32 from (a slice of) the model output."""
        hidden = tf.cast(output, tf.float32)
        return tf.matmul(hidden, tf.cast(self.item_embeddings, tf.float32), transpose_b=True)

    def sequence_scores(self, features, training=False):
        """``[B, L, V]`` float32 logits at every position (column 0 = padding, not masked)."""
        return self.output_scores(self(features, training=training))

    def last_scores(self, features):
        """``[B, V]`` float32 scores of the most recent position; the padding column is ``-inf``."""
        return mask_padding_column(self.output_scores(self._last_output(features)))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Next-item loss on ``labels [B, L]`` (0 = ignored) plus the layers' auxiliary losses.

        ``y`` may also be evaluation targets ``[B]``: the loss is then the last position's.
        """
        if y_pred is None:
            y_pred = self(x, training=training)
        return next_item_losses.training_objective(self._main_loss(y_pred, labels_at_last_position(y, x), training),
                                                   self.losses)

    def predictions(self, features):
        """What ``predict`` returns: :meth:`last_scores` ``[B, V]``."""
        return self.last_scores(features)

    def metric_inputs(self, y, y_pred):
        """``(targets [B], scores [B, V])`` of the last position, for ``compile(metrics=...)``."""
        targets = tf.reshape(y, [tf.shape(y)[0], -1])[:, -1]  # labels [B, L] or targets [B] (or a rank unknown)
        return targets, mask_padding_column(self.output_scores(self._last(y_pred)))

    def _main_loss(self, output, labels, training):
        """The next-item loss of the model output ``[B, L, d]`` (FAME overrides it)."""
        return self.next_item_loss(tf.cast(output, tf.float32), self.scoring_table(training), labels)

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update(
            num_items=self.num_items,
            max_len=self.max_len,
            hidden_dim=self.hidden_dim,
            num_blocks=self.num_blocks,
            num_heads=self.num_heads,
            inner_dim=self.inner_dim,
            dropout=self.dropout_rate,
            item_dropout=self.item_dropout,
            attention_dropout=self.attention_dropout,
            attention_output_dropout=self.attention_output_dropout,
            norm=self.norm,
            activation=self.activation,
            scale_embeddings=self.scale_embeddings,
            positions=self.positions,
            initializer_range=self.initializer_range,
            attention_initializer=serialize_optional(self.attention_initializer),
            layer_norm_epsilon=self.layer_norm_epsilon,
            loss=self.loss_options["kind"],
            num_negatives=self.loss_options["num_negatives"],
            proposal=self.loss_options["proposal"],
            remove_accidental_hits=self.loss_options["remove_accidental_hits"],
            seed=self.loss_options["seed"],
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("proposal") == "frequency":  # the counts are not saved: any valid placeholder
            config["item_frequencies"] = np.ones(config["num_items"] + 1)
        return cls(**config)
