"""Next-item training losses computed from hidden states and the (tied) item embedding table.

Every loss takes ``hidden [B, L, d]`` (the model's per-position query vectors), the item table
``item_embeddings [V, d]`` (row 0 = padding) and ``labels [B, L]`` (next items, 0 = ignore). Scores
are ``s(v) = hidden . E[v]`` in float32, and the loss is the **mean over real positions**
(``labels != 0``; 0 if there are none). The sampled losses never build ``[B, L, V]``.

* ``"softmax"`` (default): full-catalogue cross-entropy ``-log softmax(s)[y]`` over items ``1..V-1``
  (the padding column is excluded), scored at real positions only.
* ``"sampled_softmax"``: ``num_negatives`` items drawn **with replacement, shared by the whole batch**
  from a proposal ``Q`` (``"uniform"`` over ``1..V-1`` or ``"frequency"``: ``Q(v) ∝ count(v)``).
  Logits are corrected by ``log Q``: ``o_pos = s(y) - log Q(y)``, ``o_n = s(n) - log Q(n)``, and the
  loss is ``-log softmax([o_pos, o_1..o_N])[0]``. A negative equal to the row's positive (an
  accidental hit) gets logit ``-inf`` when ``remove_accidental_hits`` (default).
  With every item as a negative once, uniform ``Q`` and hits removed, this equals the full softmax.
* ``"bce"`` (original SASRec): ``-log sigmoid(s(y)) - log sigmoid(-s(n))`` with one negative per
  position drawn uniformly from the items ``!= y`` (exactly uniform: ``r ~ U{1..V-2}``,
  ``n = r + [r >= y]``).

Randomness: :class:`NextItemLoss` draws from a ``keras.random.SeedGenerator(seed)`` (reproducible
given the seed, new draws each step); the functional forms take the negatives explicitly.

Example:
    >>> import numpy as np
    >>> from tfmoe.models import losses
    >>> h, e = np.ones((1, 2, 4), "float32"), np.ones((6, 4), "float32")
    >>> labels = np.array([[0, 3]])
    >>> round(float(losses.softmax_cross_entropy(h, e, labels)), 4)  # 5 tied items: log 5
    1.6094
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmoe.layers import masking
from tfmoe.utils import validation as v

KINDS = ("softmax", "sampled_softmax", "bce")
PROPOSALS = ("uniform", "frequency")


def _prepare(hidden, item_embeddings, labels):
    hidden = tf.cast(hidden, tf.float32)
    table = tf.cast(item_embeddings, tf.float32)
    labels = tf.cast(labels, tf.int32)
    weights = tf.cast(tf.not_equal(labels, 0), tf.float32)
    return hidden, table, labels, weights


def _masked_mean(values, weights):
    return tf.reduce_sum(values * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def softmax_cross_entropy_from_logits(logits, labels):
    """Full CE from ``logits [..., V]`` and ``labels [...]`` (column 0 excluded), mean over ``labels != 0``."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    weights = tf.cast(tf.not_equal(labels, 0), tf.float32)
    padding_column = tf.one_hot(0, tf.shape(logits)[-1], on_value=True, off_value=False)
    logits = tf.where(padding_column, tf.constant(masking.MASKED_LOGIT, tf.float32), logits)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return _masked_mean(losses, weights)


def softmax_cross_entropy(hidden, item_embeddings, labels):
    """Full-catalogue softmax cross-entropy, scored at the real positions only (``[N, V]`` float32 logits for the
    ``N`` labels ``!= 0``), so padding costs no softmax: batches padded to ``max_len`` cost what their items do.
    Under XLA ``N`` is a bounded dynamic size (padded to ``B L`` by the compiler)."""
    hidden, table, labels, _ = _prepare(hidden, item_embeddings, labels)
    real = tf.where(tf.not_equal(labels, 0))  # [N, 2]
    logits = tf.matmul(tf.gather_nd(hidden, real), table, transpose_b=True)
    return softmax_cross_entropy_from_logits(logits, tf.gather_nd(labels, real))


def sampled_softmax_cross_entropy(
    hidden, item_embeddings, labels, negatives, log_q, remove_accidental_hits: bool = True
):
    """Sampled softmax with logQ correction; ``negatives [N]`` shared by the batch, ``log_q [V]`` = log proposal."""
    hidden, table, labels, weights = _prepare(hidden, item_embeddings, labels)
    negatives = tf.cast(negatives, tf.int32)
    log_q = tf.cast(log_q, tf.float32)
    positive = tf.reduce_sum(hidden * tf.gather(table, labels), axis=-1) - tf.gather(log_q, labels)  # [B, L]
    negative = tf.einsum("bld,nd->bln", hidden, tf.gather(table, negatives)) - tf.gather(log_q, negatives)
    if remove_accidental_hits:
        hit = tf.equal(labels[..., None], negatives[None, None, :])
        negative = tf.where(hit, tf.constant(-np.inf, tf.float32), negative)
    logits = tf.concat([positive[..., None], negative], axis=-1)
    losses = tf.reduce_logsumexp(logits, axis=-1) - positive
    return _masked_mean(losses, weights)


def bce_one_negative(hidden, item_embeddings, labels, negatives):
    """Original SASRec BCE: ``-log σ(s(y)) - log σ(-s(n))``, ``negatives [B, L]`` (one per position)."""
    hidden, table, labels, weights = _prepare(hidden, item_embeddings, labels)
    positive = tf.reduce_sum(hidden * tf.gather(table, labels), axis=-1)
    negative = tf.reduce_sum(hidden * tf.gather(table, tf.cast(negatives, tf.int32)), axis=-1)
    losses = tf.nn.softplus(-positive) + tf.nn.softplus(negative)
    return _masked_mean(losses, weights)


def training_objective(main, auxiliary=()):
    """``main + sum(auxiliary)`` in float32, divided by the replica count under ``tf.distribute``.

    What a model's ``compute_loss`` override returns: Keras sums the replicas' gradients (and multiplies
    the logged loss back), so each replica's loss must be its share, as Keras' built-in losses do.
    """
    total = tf.cast(main, tf.float32)
    if auxiliary:
        total = total + tf.add_n([tf.cast(term, tf.float32) for term in auxiliary])
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return total / replicas if replicas > 1 else total


def uniform_negatives_excluding(labels, num_items: int, seed):
    """One negative per position, uniform over ``1..num_items`` minus the label (``labels`` in ``1..num_items``)."""
    labels = tf.cast(labels, tf.int32)
    draws = keras.random.randint(tf.shape(labels), 1, num_items, seed=seed, dtype="int32")  # 1..num_items-1
    return draws + tf.cast(draws >= labels, tf.int32)


class NextItemLoss:
    """The loss switch used by every tfmoe next-item model (``kind`` one of ``softmax``, ``sampled_softmax``, ``bce``).

    Args:
        num_items: catalogue size without padding (``V = num_items + 1``).
        kind: see the module docstring.
        num_negatives: negatives per batch for ``"sampled_softmax"``.
        proposal: ``"uniform"`` or ``"frequency"`` (sampled softmax).
        item_frequencies: ``[V]`` non-negative counts for ``"frequency"`` (index 0 ignored).
        remove_accidental_hits: mask negatives equal to the positive (sampled softmax).
        seed: int seed of the negative sampler.

    Call: ``loss(hidden [B, L, d], item_embeddings [V, d], labels [B, L])`` -> float32 scalar.

    Example:
        >>> import numpy as np
        >>> from tfmoe.models.losses import NextItemLoss
        >>> loss = NextItemLoss(num_items=5, kind="bce", seed=1)
        >>> float(loss(np.zeros((1, 2, 3), "float32"), np.zeros((6, 3), "float32"), np.array([[0, 2]]))) > 0
        True
    """

    def __init__(
        self,
        num_items,
        kind="softmax",
        num_negatives=256,
        proposal="uniform",
        item_frequencies=None,
        remove_accidental_hits=True,
        seed=None,
    ):
        owner = type(self).__name__
        self.num_items = v.check_int(owner, "num_items", num_items, minimum=2)
        self.kind = v.check_choice(owner, "kind", kind, KINDS)
        self.num_negatives = v.check_int(owner, "num_negatives", num_negatives, minimum=1)
        self.proposal = v.check_choice(owner, "proposal", proposal, PROPOSALS)
        self.remove_accidental_hits = v.check_bool(owner, "remove_accidental_hits", remove_accidental_hits)
        self.seed = v.check_optional_int(owner, "seed", seed, minimum=0)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.log_q = self._log_q(item_frequencies)

    def _log_q(self, item_frequencies):
        owner = type(self).__name__
        size = self.num_items + 1
        if self.proposal == "uniform":
            if item_frequencies is not None:
                raise ValueError(f"{owner}: `item_frequencies` needs proposal='frequency'")
            q = np.full(size, 1.0 / self.num_items)
        else:
            if item_frequencies is None:
                raise ValueError(f"{owner}: proposal='frequency' needs `item_frequencies` of length {size}")
            counts = np.asarray(item_frequencies, dtype=np.float64)
            if counts.shape != (size,) or not np.all(np.isfinite(counts)) or np.any(counts < 0):
                raise ValueError(
                    f"{owner}: `item_frequencies` must be {size} finite non-negative counts, got shape {counts.shape}"
                )
            counts = counts.copy()
            counts[0] = 0.0
            if counts.sum() <= 0:
                raise ValueError(f"{owner}: `item_frequencies` must have a positive count for some item")
            q = counts / counts.sum()
        q[0] = 0.0
        with np.errstate(divide="ignore"):
            log_q = np.log(np.maximum(q, 1e-30))  # never sampled items: large finite correction
        return tf.constant(log_q, tf.float32)

    def sample_negatives(self):
        """``[num_negatives]`` int32 ids drawn with replacement from the proposal."""
        if self.proposal == "uniform":
            return keras.random.randint(
                (self.num_negatives,), 1, self.num_items + 1, seed=self.seed_generator, dtype="int32"
            )
        logits = self.log_q[None, :]
        draws = keras.random.categorical(logits, self.num_negatives, seed=self.seed_generator, dtype="int32")
        return draws[0]

    def __call__(self, hidden, item_embeddings, labels):
        if self.kind == "softmax":
            return softmax_cross_entropy(hidden, item_embeddings, labels)
        if self.kind == "sampled_softmax":
            return sampled_softmax_cross_entropy(
                hidden, item_embeddings, labels, self.sample_negatives(), self.log_q, self.remove_accidental_hits
            )
        safe = tf.maximum(tf.cast(labels, tf.int32), 1)  # padding rows are ignored; keep draws valid
        negatives = uniform_negatives_excluding(safe, self.num_items, self.seed_generator)
        return bce_one_negative(hidden, item_embeddings, labels, negatives)
