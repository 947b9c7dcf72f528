"""The base class of every CTR model: inputs, embedding, head, loss, config and FLOPs bookkeeping.

A CTR model maps the features dict of :mod:`tfmoe.data.samples` to one logit per row::

    e_i = [E_item[x_i] ; E_cat[c_i]] * mask_i        (mask: see tfmoe.models.ctr.inputs.history_mask)
    q   = [E_item[target_item] ; E_cat[target_category]]
    u   = interest(e, mask, q)                        (subclass: a backbone, MoS, an MoE baseline)
    logit = MLP([u ; q ; P u * q])                    (P = identity when dim(u) == d, else a learned
                                                       d x dim(u) projection: an explicit interaction)

Contract used by the trainer:

* ``Model(num_items, max_len, num_categories=0, **options)``;
* ``call(features, training=None)`` -> logits ``[B]`` float32; ``probabilities(features)`` -> ``[B]``;
* ``compute_loss(x, y, y_pred, sample_weight, training)``: mean BCE from logits on labels ``[B]`` plus
  the auxiliary losses of the layers (``self.losses``), float32, scaled by ``1 / replicas`` under a
  ``tf.distribute`` strategy like every Keras loss (the trainer's reported loss is unscaled);
* ``analytic_flops()``: forward FLOPs per example at ``max_len`` (dict with ``"total"``).

Subclasses set their own options, create their layers, then call ``self._finish()``; they implement
``_build_interest(d) -> d_out``, ``_interest(sequence, mask, target, features, training)``,
``_interest_flops(d) -> dict`` and ``_extra_config() -> dict``.

Common options (every CTR model):
    embedding_dim: item embedding size (default 32).
    category_dim: category embedding size (default 16; unused when ``num_categories == 0``).
    mlp_units: hidden sizes of the prediction MLP (default [200, 80]).
    mlp_activation: their activation (default ``"relu"``).
    dropout: dropout in the prediction MLP (default 0).
    backbone_options: dict of options of the backbone layer (see :mod:`tfmoe.models.ctr.backbones`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfmoe.layers import masking
from tfmoe.models.ctr import inputs as ci
from tfmoe.models.ctr.backbones import make_backbone
from tfmoe.models.ctr.heads import PredictionHead, binary_cross_entropy
from tfmoe.models.keras_conventions import KerasConventions
from tfmoe.models.losses import training_objective
from tfmoe.utils import flops as fl
from tfmoe.utils import validation as v


class CTRModel(KerasConventions, keras.Model):
    """Base CTR model (see the module docstring); ``BACKBONE`` names the backbone of the subclass."""

    BACKBONE: str | None = None

    def __init__(self, num_items, max_len, num_categories=0, embedding_dim=32, category_dim=16, mlp_units=(200, 80),
                 mlp_activation="relu", dropout=0.0, backbone_options=None, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        if self.BACKBONE is None:
            raise TypeError(f"{owner} is abstract: use a registered CTR model (e.g. DIN, MoSDIN)")
        self.num_items = v.check_int(owner, "num_items", num_items, minimum=1)
        self.max_len = v.check_int(owner, "max_len", max_len, minimum=1)
        self.num_categories = v.check_int(owner, "num_categories", num_categories, minimum=0)
        if backbone_options is not None and not isinstance(backbone_options, dict):
            raise ValueError(f"{owner}: `backbone_options` must be a dict or None, got {backbone_options!r}")
        self.backbone_options = dict(backbone_options or {})
        self.embedding = self._checked(
            ci.FeatureEmbedding, self.num_items, self.num_categories, embedding_dim, category_dim,
            dtype=self.dtype_policy, name="embedding",
        )
        self.head = self._checked(PredictionHead, mlp_units, mlp_activation, dropout, dtype=self.dtype_policy,
                                  name="head")
        self.make_backbone("probe")  # validates backbone_options now (the layer is discarded)

    def _checked(self, factory, *args, **kwargs):
        """``factory(*args, **kwargs)`` with ValueErrors re-raised naming this model."""
        try:
            return factory(*args, **kwargs)
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: {error}") from None

    def make_backbone(self, name: str):
        """A fresh backbone layer of this model's kind, with ``backbone_options``."""
        return self._checked(make_backbone, self.BACKBONE, self.backbone_options, dtype=self.dtype_policy, name=name)

    # ----- subclass hooks ---------------------------------------------------------------------------
    def _build_interest(self, d: int) -> int:
        raise NotImplementedError

    def _interest(self, sequence, mask, target, features, training):
        raise NotImplementedError

    def _interest_flops(self, d: int) -> dict:
        raise NotImplementedError

    def _extra_config(self) -> dict:
        return {}

    # ----- model --------------------------------------------------------------------------------------
    @property
    def input_dim(self) -> int:
        """``d`` of the behaviour and target embeddings."""
        return self.embedding.output_dim

    def _finish(self):
        """Creates every weight (so a saved model loads without data)."""
        self.embedding.build()
        d = self.input_dim
        self.interest_dim = self._build_interest(d)
        self.interaction = None
        if self.interest_dim != d:
            self.interaction = keras.layers.Dense(d, use_bias=False, dtype=self.dtype_policy, name="interaction")
            self.interaction.build((None, self.interest_dim))
        self.head.build((None, self.interest_dim + 2 * d))
        self.built = True

    def encode(self, features):
        """``(sequence [B, L, d] zero at padding, mask [B, L] bool, target [B, d])``."""
        owner = type(self).__name__
        items = ci.require(owner, features, ci.HISTORY)
        target_item = ci.require(owner, features, ci.TARGET_ITEM)
        categories = target_category = None
        if self.num_categories:
            categories = ci.require(owner, features, ci.HISTORY_CATEGORIES)
            target_category = ci.require(owner, features, ci.TARGET_CATEGORY)
        mask = ci.history_mask(features, owner)
        sequence = masking.apply_mask(self.embedding(items, categories), mask)
        return sequence, mask, self.embedding(target_item, target_category)

    def call(self, features, training=None):
        sequence, mask, target = self.encode(features)
        interest = tf.cast(self._interest(sequence, mask, target, features, training), target.dtype)
        projected = interest if self.interaction is None else self.interaction(interest)
        return self.head(tf.concat([interest, target, projected * target], axis=-1), training=training)

    def input_sequence_features(self) -> tuple:
        """The prepared-data side features (``tfmoe.data.schema`` names) this model reads; the trainer requests them."""
        return ("categories",) if self.num_categories else ()

    def probabilities(self, features):
        """``sigmoid(logits)`` ``[B]`` float32 in inference mode."""
        return tf.sigmoid(tf.cast(self(features, training=False), tf.float32))

    def predictions(self, features):
        """What ``predict`` returns: :meth:`probabilities` ``[B]``."""
        return self.probabilities(features)

    def metric_inputs(self, y, y_pred):
        """``(labels [B], probabilities [B])`` for ``compile(metrics=...)`` (``call`` returns logits)."""
        return tf.reshape(y, [-1]), tf.sigmoid(tf.reshape(tf.cast(y_pred, tf.float32), [-1]))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Mean BCE from logits on ``y [B]`` (weighted by ``sample_weight``) + the auxiliary losses."""
        if y_pred is None:
            y_pred = self(x, training=training)
        if sample_weight is None:
            total = binary_cross_entropy(y, y_pred)
        else:
            per_row = tf.nn.sigmoid_cross_entropy_with_logits(
                labels=tf.reshape(tf.cast(y, tf.float32), [-1]), logits=tf.reshape(tf.cast(y_pred, tf.float32), [-1])
            )
            total = tf.reduce_mean(per_row * tf.reshape(tf.cast(sample_weight, tf.float32), [-1]))
        return training_objective(total, self.losses)

    def analytic_flops(self) -> dict:
        """Forward FLOPs per example at ``max_len``: ``inputs``, the interest parts, ``head`` and ``total``."""
        d, length = self.input_dim, self.max_len
        parts = {"inputs": 3 * length + length * d}  # padding mask, masking the embeddings
        parts.update(self._interest_flops(d))
        interaction = d if self.interaction is None else d + fl.matmul_flops(1, self.interest_dim, d)
        parts["head"] = self.head.flops(self.interest_dim + 2 * d) + interaction
        parts["total"] = sum(parts.values())
        return parts

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update(
            num_items=self.num_items,
            max_len=self.max_len,
            num_categories=self.num_categories,
            embedding_dim=self.embedding.item_dim,
            category_dim=self.embedding.category_dim,
            mlp_units=list(self.head.hidden_units),
            mlp_activation=self.head.activation,
            dropout=self.head.dropout_rate,
            backbone_options=dict(self.backbone_options),
        )
        config.update(self._extra_config())
        return config
