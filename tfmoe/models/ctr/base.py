"""The CTR task: feature embedding + an interest layer + the prediction head, the BCE loss and the metrics.

A CTR model maps the features dict of :mod:`tfmoe.data.samples` to one logit per row::

    e_i = [E_item[x_i] ; E_cat[c_i]] * mask_i        (mask: see tfmoe.models.ctr.inputs.history_mask)
    q   = [E_item[target_item] ; E_cat[target_category]]
    u   = interest(e, mask, q)                        (an interest layer: tfmoe.models.ctr.interest)
    logit = MLP([u ; q ; P u * q])                    (P = identity when dim(u) == d, else a learned
                                                       d x dim(u) projection: an explicit interaction)

:class:`CTRModel` composes any interest layer with the embedding and the head (like a keras-hub
Task around its Backbone); :class:`BackboneFamily` is the CTR model of one interest layer class,
built from flat options (``backbone``, ``backbone_options`` and the layer's options). The routing
families: :class:`~tfmoe.models.ctr.single.SingleBackboneModel`, :class:`~tfmoe.models.ctr.mos.MoS`,
:class:`~tfmoe.models.ctr.baselines.GShardMoE`, :class:`~tfmoe.models.ctr.baselines.ExpertChoiceMoE`.

Contract used by the trainer:

* ``Model(num_items, max_len, num_categories=0, **options)``;
* ``call(features, training=None)`` -> logits ``[B]`` float32; ``probabilities(features)`` -> ``[B]``;
* ``compute_loss(x, y, y_pred, sample_weight, training)``: mean BCE from logits on labels ``[B]`` plus
  the auxiliary losses of the layers (``self.losses``), float32, scaled by ``1 / replicas`` under a
  ``tf.distribute`` strategy like every Keras loss (the trainer's reported loss is unscaled);
* ``analytic_flops()``: forward FLOPs per example at ``max_len`` (dict with ``"total"``).

Common options (every CTR model):
    embedding_dim: item embedding size (default 32).
    category_dim: category embedding size (default 16; unused when ``num_categories == 0``).
    mlp_units: hidden sizes of the prediction MLP (default [200, 80]).
    mlp_activation: their activation (default ``"relu"``).
    dropout: dropout in the prediction MLP (default 0).
    length_groups: score and train each batch in this many groups of rows of similar history length, each
        group's history features cut to its longest real history
        (:class:`tfmoe.models.length_groups.LengthGroups`); default 1, the padded batch. The
        single-backbone models (DIN, TWIN, TransAct) compute each row from its own real positions at any width,
        so the logits, the loss and the gradients are those of the padded batch, for less work on long padded
        histories (``interest.supports_length_groups``). MoS does the same with each group's session grid cut to
        the sessions its width holds, and routes the whole batch's sessions in one step (its batch-level
        load-balance and codebook losses and restarts), with the same results (``interest.call_grouped``). The
        token-routed baselines (GShard, expert choice) route each group at its width (per-example capacity) and
        take their load-balance loss over the whole batch's tokens, with the same results.
        ``compile(jit_compile=True)`` with groups is an error (``"auto"`` compiles without XLA); code that XLA
        compiles anyway (a serving signature exported with ``jit_compile``) scores the batch as it is: XLA would
        pad the groups back to ``L``.

Example:
    >>> import numpy as np
    >>> from tfmoe.models.ctr import CTRModel, SingleBackboneInterest
    >>> model = CTRModel(num_items=20, max_len=4, embedding_dim=8, mlp_units=[8],
    ...                  interest=SingleBackboneInterest(max_len=4, backbone="twin"))
    >>> model({"history": np.array([[0, 3, 4, 5]]), "target_item": np.array([6])}).shape
    TensorShape([1])

References:
    * DIN: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018,
      https://arxiv.org/abs/1706.06978 (the head's input ``[u ; q ; u * q]``).
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from tfmoe.layers import masking
from tfmoe.models.ctr import checkpoints
from tfmoe.models.ctr import inputs as ci
from tfmoe.models.ctr.backbones import LINEAR_WIDTH_COST
from tfmoe.models.ctr.heads import PredictionHead, binary_cross_entropy
from tfmoe.models.keras_conventions import KerasConventions
from tfmoe.models.length_groups import LengthGroups, resolve_jit_compile
from tfmoe.models.losses import training_objective
from tfmoe.utils import flops as fl
from tfmoe.utils import validation as v
from tfmoe.utils.xla import in_xla_context

COMMON_OPTIONS = ("embedding_dim", "category_dim", "mlp_units", "mlp_activation", "dropout", "length_groups")
MODEL_KWARGS = ("name", "dtype", "trainable", "autocast")


@keras.saving.register_keras_serializable(package="tfmoe")
class CTRModel(KerasConventions, keras.Model):
    """A CTR model around an interest layer (see the module docstring).

    Args:
        num_items, max_len, num_categories: the data's sizes.
        interest: an interest layer (:mod:`tfmoe.models.ctr.interest`), or a callable
            ``(dtype=, name=) -> layer`` that makes one with the model's dtype policy.
        embedding_dim, category_dim, mlp_units, mlp_activation, dropout, length_groups: the common options.
    """

    def __init__(self, num_items, max_len, num_categories=0, interest=None, embedding_dim=32, category_dim=16,
                 mlp_units=(200, 80), mlp_activation="relu", dropout=0.0, length_groups=1, **kwargs):
        super().__init__(**kwargs)
        owner = type(self).__name__
        self.num_items = v.check_int(owner, "num_items", num_items, minimum=1)
        self.max_len = v.check_int(owner, "max_len", max_len, minimum=1)
        self.num_categories = v.check_int(owner, "num_categories", num_categories, minimum=0)
        self.length_groups = v.check_int(owner, "length_groups", length_groups, minimum=1)
        self.embedding = self._checked(ci.FeatureEmbedding, self.num_items, self.num_categories, embedding_dim,
                                       category_dim, dtype=self.dtype_policy, name="embedding")
        self.head = self._checked(PredictionHead, mlp_units, mlp_activation, dropout, dtype=self.dtype_policy,
                                  name="head")
        self.embedding_dim = self.embedding.item_dim
        self.category_dim = self.embedding.category_dim
        self.mlp_units = list(self.head.hidden_units)
        self.mlp_activation = self.head.activation
        self.dropout = self.head.dropout
        if isinstance(interest, dict):
            interest = keras.saving.deserialize_keras_object(interest)
        if interest is None:
            raise ValueError(f"{owner}: `interest` must be an interest layer or a callable making one, got None")
        if not isinstance(interest, keras.layers.Layer):
            interest = self._checked(interest, dtype=self.dtype_policy, name="interest")
        self.interest = interest
        if self.length_groups > 1 and not interest.supports_length_groups:
            raise ValueError(f"{owner}: `length_groups` ({self.length_groups}) needs an interest layer that reads each "
                             f"row's history at any width; {type(interest).__name__} does not (supports_length_groups "
                             f"is False): use length_groups=1")
        self._finish()

    def _checked(self, factory, *args, **kwargs):
        """``factory(*args, **kwargs)`` with ValueErrors re-raised naming this model."""
        try:
            return factory(*args, **kwargs)
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: {error}") from None

    @property
    def input_dim(self) -> int:
        """``d`` of the behaviour and target embeddings."""
        return self.embedding.output_dim

    def _finish(self):
        """Creates every weight (so a saved model loads without data)."""
        self.embedding.build()
        d = self.input_dim
        if not self.interest.built:
            self._checked(self.interest.build, (None, self.max_len, d))
        self.interest_dim = self.interest.output_width(d)
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
        for key in self.interest.required_features():
            ci.require(owner, features, key)
        mask = ci.history_mask(features, owner)
        sequence = masking.apply_mask(self.embedding(items, categories), mask)
        return sequence, mask, self.embedding(target_item, target_category)

    def compile(self, *args, jit_compile="auto", **kwargs):
        """``keras.Model.compile``; with length groups (dynamic shapes) ``"auto"`` means no XLA and True is an error."""
        jit_compile = resolve_jit_compile(type(self).__name__, self.length_groups, jit_compile)
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    def call(self, features, training=None):
        if self.length_groups > 1 and not in_xla_context():
            return self._logits_in_length_groups(features, training)
        sequence, mask, target = self.encode(features)
        return self._head(self.interest(sequence, mask, target, features, training=training), target, training)

    def _logits_in_length_groups(self, features, training=None):
        """The logits ``[B]`` of the batch scored in length groups: each group's rows embedded at its width, the
        interest layer's :meth:`~tfmoe.models.ctr.interest.InterestLayer.call_grouped`, the head per group."""
        plan = LengthGroups(ci.history_mask(features, type(self).__name__), self.length_groups, LINEAR_WIDTH_COST)
        parts = plan.split_features(features)
        encoded = [self.encode(part) for part in parts]
        interests = self.interest.call_grouped(
            [(sequence, mask, target, part) for (sequence, mask, target), part in zip(encoded, parts)], plan,
            training=training,
        )
        logits = [self._head(interest, target, training) for interest, (_, _, target) in zip(interests, encoded)]
        return plan.merge(logits)

    def _head(self, interest, target, training=None):
        """The logits ``[B]`` of the interest ``u`` and the target ``q``."""
        interest = tf.cast(interest, target.dtype)
        projected = interest if self.interaction is None else self.interaction(interest)
        return self.head(tf.concat([interest, target, projected * target], axis=-1), training=training)

    def input_sequence_features(self) -> tuple:
        """The prepared-data side features (``tfmoe.data.schema`` names) this model reads; the trainer requests them."""
        own = ("categories",) if self.num_categories else ()
        return own + tuple(self.interest.input_sequence_features())

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

    def analytic_flops(self, width: int | None = None) -> dict:
        """Forward FLOPs per example: ``inputs``, the interest parts, ``head`` and ``total``; of a row scored at
        ``width`` history positions in a length group (default: ``max_len``, the padded batch)."""
        d = self.input_dim
        length = min(width or self.max_len, self.max_len)
        parts = {"inputs": 3 * length + length * d}  # padding mask, masking the embeddings
        parts.update(self.interest.flops(d, width))
        interaction = d if self.interaction is None else d + fl.matmul_flops(1, self.interest_dim, d)
        parts["head"] = self.head.flops(self.interest_dim + 2 * d) + interaction
        parts["total"] = sum(parts.values())
        return parts

    def load_own_variables(self, store):
        """Keras' loading of the model's own variables; a flat-layout checkpoint is read at its composed paths
        (:mod:`tfmoe.models.ctr.checkpoints`)."""
        super().load_own_variables(store)
        checkpoints.adopt_flat_layout(self, store)

    def _common_config(self) -> dict:
        return {"name": self.name, "trainable": self.trainable, "num_items": self.num_items,
                "max_len": self.max_len, "num_categories": self.num_categories,
                **{name: getattr(self, name) for name in COMMON_OPTIONS}}

    def get_config(self):
        return {**self._common_config(), "interest": keras.saving.serialize_keras_object(self.interest)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class BackboneFamily(CTRModel):
    """The CTR model of the interest layer class ``INTEREST``, built from flat options.

    ``Family(num_items, max_len, num_categories=0, backbone="din", backbone_options=None, **options)``:
    ``options`` are the common options (:class:`CTRModel`) and those of ``INTEREST``; ``get_config``
    returns them flat, with ``backbone``, and the model reads them as attributes (``model.num_themes``).
    """

    INTEREST: type | None = None

    def __init__(self, num_items, max_len, num_categories=0, backbone="din", backbone_options=None, **options):
        if self.INTEREST is None:
            raise TypeError(f"{type(self).__name__} is abstract: use a routing family (e.g. MoS, GShardMoE)")
        model = {key: options.pop(key) for key in (*COMMON_OPTIONS, *MODEL_KWARGS) if key in options}
        interest = functools.partial(self.INTEREST, max_len, backbone=backbone, backbone_options=backbone_options,
                                     **options)
        super().__init__(num_items, max_len, num_categories, interest=interest, **model)

    def __getattr__(self, name):
        # the interest layer's options read as the model's own: model.num_themes, model.session_mode, ...
        interest = self.__dict__.get("interest")
        if interest is not None and name in interest.options():
            return getattr(interest, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def backbone(self) -> str:
        """The backbone's name (``"din"``, ``"transact"``, ``"twin"``)."""
        return self.interest.backbone

    @property
    def backbone_options(self) -> dict:
        return dict(self.interest.backbone_options)

    def get_config(self):
        return {**self._common_config(), **self.interest.options()}
