"""Sample builders: parsed, batched user records -> padded model inputs and labels (pure TF, tf.data-ready).

Inputs are the batched features of :mod:`tfmoe.data.schema` records as
``tf.io.parse_example`` returns them (see :func:`tfmoe.data.dataset.parse_spec`): sequence
features (``items``, ``timestamps``, ``categories``, ``session_ids``, ``behaviors``) are
``tf.RaggedTensor [B, None]`` int64, scalars (``user_id``, ``target``, ``target_timestamp``,
``target_category``) are ``[B]`` int64. A side feature's row is either empty (unknown) or as long
as ``items``.

Outputs (``R`` rows, ``L = max_len``): every history is the **most recent** ``L`` positions,
**left-padded** so the most recent item sits at position ``L - 1``:

=========================  =========  ======  ==========================================
feature                    shape      dtype   padding / meaning
=========================  =========  ======  ==========================================
``history``                [R, L]     int32   0
``history_timestamps``     [R, L]     int64   0 (also 0 everywhere if the data has none)
``history_categories``     [R, L]     int32   0
``history_session_ids``    [R, L]     int32   -1; renumbered so the oldest kept session is 0
``history_behaviors``      [R, L]     int32   0 (only if requested)
``history_length``         [R]        int32   number of real (non-padding) positions
``seen`` (next-item eval)  [R, N]     int32   0; the record's whole history (``N >= L``: the longest
                                              in the batch), for filtering seen items in ranking
``user_id``                [R]        int32
``target_item`` (CTR)      [R]        int32   candidate item (positive or negative)
``target_category`` (CTR)  [R]        int32   ``item_categories[target_item]``, or 0 for all
                                              rows without a map (never a label leak)
``target_timestamp`` (CTR) [R]        int64   time of the impression (the positive's time)
=========================  =========  ======  ==========================================

Labels: next-item train ``[R, L]`` int32 (the item after each input position; 0 at padding),
next-item eval ``[R]`` int32 (``target``), CTR ``[R]`` float32 (1 = positive, 0 = negative).

CTR rows come in groups ``[positive, negative_1, ..., negative_n]`` per sampled position.
Negatives are exact uniform draws from the items the user never touched
(:mod:`tfmoe.data.negatives`). The touched set of a row is ``touched`` (``[B, None]``: each
user's complete touched set, sorted and unique per row, e.g. the ``test`` record's
``items + [target]``, which under leave-one-out is the whole sequence;
:class:`tfmoe.data.dataset.UserItems` provides it) or, where that row is empty or ``touched`` is
``None``, the record's own ``items + [target]``. So a ``test`` record alone is exact;
``train``/``valid`` records need ``touched`` to exclude the held-out items.

Example:
    >>> import tensorflow as tf
    >>> from tfmoe.data import samples
    >>> feats = {"user_id": tf.constant([7], tf.int64),
    ...          "items": tf.ragged.constant([[4, 5, 6]], dtype=tf.int64)}
    >>> x, y = samples.next_item_train(feats, max_len=4, sequence_features=())
    >>> x["history"].numpy().tolist(), y.numpy().tolist()
    ([[0, 0, 4, 5]], [[0, 0, 5, 6]])
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from tfmoe.data import negatives, schema, weighted_negatives
from tfmoe.utils import validation as v

HISTORY = "history"
SEEN = "seen"
HISTORY_LENGTH = "history_length"
USER_ID = "user_id"
TARGET_ITEM = "target_item"
TARGET_CATEGORY = "target_category"
TARGET_TIMESTAMP = "target_timestamp"

# schema sequence feature -> (output name, padding value, output dtype)
HISTORY_OUTPUTS = {
    schema.ITEMS: (HISTORY, schema.PADDING_ID, tf.int32),
    schema.TIMESTAMPS: ("history_timestamps", 0, tf.int64),
    schema.CATEGORIES: ("history_categories", 0, tf.int32),
    schema.SESSION_IDS: ("history_session_ids", -1, tf.int32),
    schema.BEHAVIORS: ("history_behaviors", 0, tf.int32),
}
SIDE_FEATURES = (schema.TIMESTAMPS, schema.CATEGORIES, schema.SESSION_IDS, schema.BEHAVIORS)
DEFAULT_SEQUENCE_FEATURES = (schema.TIMESTAMPS, schema.CATEGORIES, schema.SESSION_IDS)
POSITION_MODES = ("random", "stride")
NEGATIVE_SAMPLERS = ("uniform", "popularity")
HOLDOUTS = ("last", "fraction")
IMPRESSIONS = ("sampled", "labelled")

# Purposes mixed into the seed triples, so positions and negatives use unrelated permutations.
_POSITIONS, _NEGATIVES, _SHUFFLE = 0, 1, 2


@dataclass(frozen=True)
class CTRSampling:
    """How CTR examples are drawn from user records.

    * ``num_negatives``: negatives per positive (each its own row, label 0).
    * ``positions`` (train only): ``"random"`` draws ``samples_per_user`` distinct positions per
      user and epoch (fewer if the user has fewer), ``"stride"`` takes every ``stride``-th
      position counted back from the most recent one.
    * ``min_history``: a train position ``t`` needs ``t >= min_history`` earlier items.
    * ``eval_seed``: seeds valid/test negatives by ``(eval_seed, user_id)``: identical across
      runs and models, part of the evaluation protocol.
    * ``negatives``: ``"uniform"`` over the items the user never touched, or ``"popularity"``: among those, in
      proportion to each item's occurrence count (``item_counts``), so that popularity alone does not separate
      positives from negatives (:mod:`tfmoe.data.weighted_negatives`).
    * ``holdout``: ``"last"`` (leave-one-out: each split's records as prepared, one valid and one test impression
      per user) or ``"fraction"``: every split reads the user's full sequence (the ``test`` record's ``items +
      [target]``, ``n`` positions) and splits its positions in time, ``k = max(1, floor(holdout_fraction * n))``:
      test = the last ``k``, valid = the ``k`` before those, train = the rest. Every valid and test position
      ``t >= min_history`` is an impression (history ``items[:t]``). See :func:`holdout_bounds`.
    * ``impressions``: ``"sampled"`` (each position is a positive, followed by ``num_negatives`` drawn negatives)
      or ``"labelled"``: each position ``t`` is one impression of its own item ``items[t]`` with the recorded
      label ``1[behaviors[t] in positive_behaviors]`` and no drawn negatives (logs where every shown item is
      recorded, e.g. ratings with label ``rating >= 4``). It reads the ``behaviors`` feature (and the ``test``
      records' ``target_behavior``), needs ``holdout="fraction"`` and ignores ``num_negatives`` and
      ``negatives``; the history of ``t`` is every earlier item, whatever its label.
    * ``positive_behaviors``: the behavior codes labelled 1 under ``impressions="labelled"``.
    """

    num_negatives: int = 1
    positions: str = "random"
    samples_per_user: int = 1
    stride: int = 1
    min_history: int = 1
    eval_seed: int = 0
    negatives: str = "uniform"
    holdout: str = "last"
    holdout_fraction: float = 0.1
    impressions: str = "sampled"
    positive_behaviors: tuple = ()

    def __post_init__(self):
        v.check_int("CTRSampling", "num_negatives", self.num_negatives, minimum=1)
        v.check_choice("CTRSampling", "positions", self.positions, POSITION_MODES)
        v.check_int("CTRSampling", "samples_per_user", self.samples_per_user, minimum=1)
        v.check_int("CTRSampling", "stride", self.stride, minimum=1)
        v.check_int("CTRSampling", "min_history", self.min_history, minimum=1)
        v.check_int("CTRSampling", "eval_seed", self.eval_seed, minimum=0)
        v.check_choice("CTRSampling", "negatives", self.negatives, NEGATIVE_SAMPLERS)
        v.check_choice("CTRSampling", "holdout", self.holdout, HOLDOUTS)
        v.check_float("CTRSampling", "holdout_fraction", self.holdout_fraction, minimum=0.0, maximum=0.5,
                      min_inclusive=False, max_inclusive=False)
        v.check_choice("CTRSampling", "impressions", self.impressions, IMPRESSIONS)
        codes = tuple(v.check_int_sequence("CTRSampling", "positive_behaviors", self.positive_behaviors, minimum=1,
                                           allow_empty=True))
        object.__setattr__(self, "positive_behaviors", codes)
        if self.impressions == "labelled" and not codes:
            raise ValueError("CTRSampling: impressions='labelled' needs `positive_behaviors`, the behavior codes "
                             "labelled 1 (e.g. [8, 9, 10] for MovieLens ratings >= 4 in half stars)")
        if self.impressions == "labelled" and self.holdout != "fraction":
            raise ValueError(f"CTRSampling: impressions='labelled' needs holdout='fraction', got "
                             f"holdout={self.holdout!r}")
        if self.impressions == "sampled" and codes:
            raise ValueError(f"CTRSampling: `positive_behaviors` {list(codes)} is read only under "
                             "impressions='labelled'")


def holdout_bounds(lengths, fraction: float):
    """``(valid_start, test_start)`` ``[B]`` int64 of full sequences of ``lengths`` under the time split of
    ``CTRSampling(holdout="fraction")``: train ``[0, valid_start)``, valid ``[valid_start, test_start)``, test
    ``[test_start, n)``, with ``k = max(1, floor(fraction * n))`` positions in each of valid and test.

    Example:
        >>> [b.numpy().tolist() for b in holdout_bounds([5, 20, 45], 0.1)]
        [[3, 16, 37], [4, 18, 41]]
    """
    lengths = tf.cast(lengths, tf.int64)
    k = tf.maximum(tf.cast(tf.floor(fraction * tf.cast(lengths, tf.float64)), tf.int64), 1)
    return tf.maximum(lengths - 2 * k, 0), tf.maximum(lengths - k, 0)


def with_target_appended(features: dict) -> dict:
    """``valid``/``test`` record features as one full sequence: ``target`` appended to ``items``, its timestamp,
    category and behavior to theirs (side features of unknown rows stay empty; other side features get a 0 that no
    history reads, since a history ends before its position). The ``target*`` scalars are dropped."""
    out = {key: value for key, value in features.items() if not key.startswith(schema.TARGET)}
    targets = {schema.ITEMS: features[schema.TARGET], schema.TIMESTAMPS: features.get(schema.TARGET_TIMESTAMP),
               schema.CATEGORIES: features.get(schema.TARGET_CATEGORY),
               schema.BEHAVIORS: features.get(schema.TARGET_BEHAVIOR)}
    for name in (schema.ITEMS, *SIDE_FEATURES):
        if name not in features:
            continue
        values = features[name]
        keep = values.row_lengths() > 0 if name != schema.ITEMS else tf.ones_like(values.row_lengths(), tf.bool)
        extra = targets.get(name)
        extra = tf.zeros_like(values.row_lengths()) if extra is None else tf.cast(extra, values.dtype)
        tail = tf.RaggedTensor.from_row_lengths(tf.boolean_mask(extra, keep), tf.cast(keep, tf.int64),
                                                validate=False)
        out[name] = tf.concat([values, tail], axis=1)
    return out


def check_sequence_features(owner: str, sequence_features) -> tuple[str, ...]:
    """Validates the side features to emit (a subset of :data:`SIDE_FEATURES`)."""
    if isinstance(sequence_features, str) or not isinstance(sequence_features, (tuple, list)):
        raise ValueError(f"{owner}: `sequence_features` must be a tuple of names, got {sequence_features!r}")
    for name in sequence_features:
        v.check_choice(owner, "sequence_features", name, SIDE_FEATURES)
    return tuple(sequence_features)


def _static_or_tensor(length):
    return length if isinstance(length, int) else tf.cast(length, tf.int64)


def last_windows(values: tf.RaggedTensor, length, pad, dtype=tf.int64, skip_last: int = 0) -> tf.Tensor:
    """Each row's most recent ``length`` values, ignoring its last ``skip_last``, left-padded: ``[B, length]``.

    Fast path for one window per record: rows are reversed (most recent first) by reversing the
    flat values and the row order, so a single C++ ``to_tensor`` keeps and pads the right values.
    ``length`` may be a Python int (static output shape) or a scalar tensor.

    Example:
        >>> import tensorflow as tf
        >>> rt = tf.ragged.constant([[1, 2, 3], [4]], dtype=tf.int64)
        >>> last_windows(rt, length=2, pad=0, skip_last=1).numpy().tolist()
        [[1, 2], [0, 0]]
    """
    flat = tf.reverse(tf.cast(values.values, dtype), [0])
    reversed_rows = tf.RaggedTensor.from_row_lengths(flat, tf.reverse(values.row_lengths(), [0]), validate=False)
    width = _static_or_tensor(length) + skip_last
    shape = [None, width] if isinstance(width, int) else tf.stack([reversed_rows.nrows(), width])
    dense = reversed_rows.to_tensor(default_value=tf.constant(pad, dtype), shape=shape)
    return tf.reverse(dense[:, skip_last:], [0, 1])


def window_index(values: tf.RaggedTensor, rows, ends, length) -> tf.Tensor:
    """Flat int32 indices into ``values.values`` of the windows of :func:`gather_windows` (padding = its size).

    int32 halves the memory traffic of the ``[S, length]`` index (a batch holds < 2**31 values).
    """
    length32 = tf.cast(length, tf.int32) if not isinstance(length, int) else length
    ends = tf.cast(ends, tf.int32)
    rows = tf.cast(rows, tf.int64)
    kept = tf.where(tf.gather(values.row_lengths(), rows) > 0, tf.minimum(ends, length32), 0)
    first = tf.cast(tf.gather(values.row_starts(), rows), tf.int32) + ends - length32  # flat index of slot 0
    slots = tf.range(length32, dtype=tf.int32)
    padding = tf.size(values.values, tf.int32)
    return tf.where(slots[None, :] >= (length32 - kept)[:, None], first[:, None] + slots[None, :], padding)


def take_windows(values: tf.RaggedTensor, index, pad, dtype=tf.int64) -> tf.Tensor:
    """Gathers ``values.values`` at ``index`` (from :func:`window_index`), ``pad`` at padding."""
    flat = tf.cast(values.values, dtype)
    return tf.gather(tf.concat([flat, tf.constant([pad], dtype)], axis=0), index)


def gather_windows(values: tf.RaggedTensor, rows, ends, length, pad, dtype=tf.int64) -> tf.Tensor:
    """Left-padded windows ``values[rows[s], ends[s] - length : ends[s]]`` as ``[S, length]``.

    ``ends`` must not exceed the row lengths of ``items``; a side feature's empty row gives ``pad``
    everywhere. ``length`` may be a Python int (static output shape) or a scalar tensor.

    Example:
        >>> import tensorflow as tf
        >>> rt = tf.ragged.constant([[1, 2, 3], [4]], dtype=tf.int64)
        >>> gather_windows(rt, rows=[0, 0, 1], ends=[3, 2, 1], length=2, pad=0).numpy().tolist()
        [[2, 3], [1, 2], [0, 4]]
    """
    return take_windows(values, window_index(values, rows, ends, length), pad, dtype)


def _check_aligned(features: dict, names) -> list:
    """Assertions that each side feature row is empty or as long as ``items``."""
    n = features[schema.ITEMS].row_lengths()
    checks = []
    for name in names:
        m = features[name].row_lengths()
        checks.append(
            tf.debugging.Assert(
                tf.reduce_all(tf.logical_or(tf.equal(m, 0), tf.equal(m, n))),
                [f"samples: feature `{name}` has a row whose length is neither 0 nor len(items); lengths:", m, n],
            )
        )
    return checks


def _history(features: dict, windows, rows, ends, max_len, sequence_features) -> dict:
    """History features (see the module table); ``windows(values, pad, dtype)`` cuts ``[S, L]`` windows."""
    out = {}
    with tf.control_dependencies(_check_aligned(features, sequence_features)):
        for name in (schema.ITEMS, *sequence_features):
            key, pad, dtype = HISTORY_OUTPUTS[name]
            out[key] = windows(features[name], pad, dtype)
    kept = tf.minimum(tf.maximum(tf.cast(ends, tf.int64), 0), _static_or_tensor(max_len))
    if schema.SESSION_IDS in sequence_features:
        key = HISTORY_OUTPUTS[schema.SESSION_IDS][0]
        sid = out[key]
        first_slot = tf.minimum(tf.shape(sid, out_type=tf.int64)[1] - kept, tf.shape(sid, out_type=tf.int64)[1] - 1)
        first = tf.gather(sid, first_slot, batch_dims=1)[:, None]
        out[key] = tf.where(sid >= 0, sid - first, -1)
    out[HISTORY_LENGTH] = tf.cast(kept, tf.int32)
    out[USER_ID] = tf.cast(tf.gather(features[schema.USER_ID], rows), tf.int32)
    return out


def _record_history(features: dict, max_len, sequence_features, skip_last: int):
    """History of every record: its items except the last ``skip_last``, most recent ``max_len``."""
    items = features[schema.ITEMS]
    rows = tf.range(items.nrows(out_type=tf.int64))
    ends = tf.maximum(items.row_lengths() - skip_last, 0)

    def windows(values, pad, dtype):
        return last_windows(values, max_len, pad, dtype, skip_last)

    return _history(features, windows, rows, ends, max_len, sequence_features)


def next_item_train(features: dict, max_len, sequence_features=DEFAULT_SEQUENCE_FEATURES):
    """Next-item training rows from ``train`` records: inputs ``items[:-1]``, labels ``items[1:]``.

    Both keep the most recent ``max_len`` positions and share the same left padding; labels are 0
    wherever the input is padding. Returns ``(features, labels [B, max_len] int32)``.
    """
    out = _record_history(features, max_len, sequence_features, skip_last=1)
    labels = last_windows(features[schema.ITEMS], max_len, schema.PADDING_ID, tf.int32)
    labels = tf.where(out[HISTORY] != schema.PADDING_ID, labels, schema.PADDING_ID)
    return out, labels


def next_item_eval(features: dict, max_len, sequence_features=DEFAULT_SEQUENCE_FEATURES):
    """Next-item evaluation rows from ``valid``/``test`` records: history ``items``, label ``target``.

    Besides the model inputs (the most recent ``max_len`` items) the rows carry ``seen``, every item of the
    record's history, so ranking can filter what the user saw before the window too.
    Returns ``(features, labels [B] int32)``.
    """
    out = _record_history(features, max_len, sequence_features, skip_last=0)
    out[SEEN] = tf.cast(features[schema.ITEMS].to_tensor(default_value=schema.PADDING_ID), tf.int32)
    return out, tf.cast(features[schema.TARGET], tf.int32)


def _touched_rows(features: dict, touched, num_items) -> tuple[tf.RaggedTensor, bool]:
    """``(rows, presorted)``: ``touched`` rows, with ``items + [target]`` where a row is empty (or ``touched`` is
    None); ``presorted`` when every row is already sorted and unique."""
    record = features[schema.ITEMS]
    if schema.TARGET in features:
        record = tf.concat([record, tf.RaggedTensor.from_tensor(features[schema.TARGET][:, None])], axis=1)
    if touched is None:
        return record, False
    touched = tf.cast(touched, tf.int64)
    fallback = record.with_values(tf.repeat(touched.row_lengths() == 0, record.row_lengths()))
    record_rows = negatives.sorted_unique_rows(tf.ragged.boolean_mask(record, fallback), num_items)
    # Each row now comes from exactly one source and is sorted: no sort over the whole batch.
    return tf.concat([touched, record_rows], axis=1), True


def _seeds(first, second, purpose) -> tf.Tensor:
    """Seed triples ``[D, 3]`` int64 from broadcastable ``first``/``second`` and a purpose constant."""
    first, second = tf.cast(first, tf.int64), tf.cast(second, tf.int64)
    first, second = first + tf.zeros_like(second), second + tf.zeros_like(first)
    return tf.stack([first, second, tf.fill(tf.shape(first), tf.constant(purpose, tf.int64))], axis=1)


def _ctr_rows(history: dict, positives, positive_times, negative_ids, sequence_features, item_categories):
    """Expands ``S`` samples (``history`` [S, ...]) into ``S * (1 + n)`` rows ``[positive, negatives...]``."""
    group = 1 + negative_ids.shape[1]
    candidates = tf.reshape(tf.concat([tf.cast(positives, tf.int64)[:, None], negative_ids], axis=1), [-1])
    out = {key: tf.repeat(value, group, axis=0) for key, value in history.items()}
    out[TARGET_ITEM] = tf.cast(candidates, tf.int32)
    if item_categories is not None:
        out[TARGET_CATEGORY] = tf.cast(tf.gather(tf.cast(item_categories, tf.int64), candidates), tf.int32)
    else:
        out[TARGET_CATEGORY] = tf.zeros_like(out[TARGET_ITEM])
    if schema.TIMESTAMPS in sequence_features:
        out[TARGET_TIMESTAMP] = tf.repeat(tf.cast(positive_times, tf.int64), group)
    labels = tf.tile(tf.one_hot(0, group, dtype=tf.float32), tf.shape(positives)[:1])
    return out, labels


def _negatives(features: dict, touched, num_items, draw_rows, draw_index, first_seed, n: int, item_counts=None):
    """``[S, n]`` negatives: draws ``(draw_rows, draw_index)`` seeded by ``(first_seed, user_id)``; uniform over the
    untouched items, or in proportion to ``item_counts`` when given."""
    rows, presorted = _touched_rows(features, touched, num_items)
    seeds = _seeds(first_seed, tf.gather(features[schema.USER_ID], draw_rows), _NEGATIVES)
    if item_counts is None:
        table = negatives.untouched_table(rows, num_items, presorted=presorted)
        drawn = negatives.sample_untouched(table, draw_rows, draw_index, seeds)
    else:
        table = weighted_negatives.weighted_untouched_table(rows, item_counts, presorted=presorted,
                                                            num_items=num_items)
        drawn = weighted_negatives.sample_untouched_weighted(table, draw_rows, draw_index, seeds)
    return tf.reshape(drawn, [-1, n])


def _item_counts(sampling: CTRSampling, item_counts):
    """The counts the negatives follow: ``item_counts`` for popularity negatives (checked where the table is built,
    :func:`~tfmoe.data.weighted_negatives.weighted_untouched_table`), None for uniform ones."""
    if sampling.negatives == "uniform":
        return None
    if item_counts is None:
        raise ValueError("CTR samples: CTRSampling(negatives='popularity') needs `item_counts` ([num_items + 1] "
                         "occurrence counts, e.g. UserItems.item_counts)")
    return item_counts


def ctr_eval(features: dict, max_len, num_items, sampling: CTRSampling = CTRSampling(), touched=None,
             item_categories=None, sequence_features=DEFAULT_SEQUENCE_FEATURES, item_counts=None):
    """CTR evaluation rows from ``valid``/``test`` records: positive ``target`` plus seeded negatives.

    Negatives of a user are draws ``0..n-1`` keyed by ``(sampling.eval_seed, user_id)``, so every
    run and model sees the same ones. ``touched`` ([B, None], optional): complete sorted touched
    sets (see the module docstring; needed for exactness on ``valid``). ``item_categories``
    (``[num_items + 1]`` int) fills ``target_category``. ``item_counts`` (``[num_items + 1]`` int): the
    popularity that ``sampling.negatives="popularity"`` follows. Returns ``(features, labels [B*(1+n)])``.
    """
    if sampling.holdout != "last":
        raise ValueError(f"ctr_eval: one impression per record is the holdout='last' protocol; for holdout="
                         f"{sampling.holdout!r} use ctr_eval_positions on test records")
    items = features[schema.ITEMS]
    batch = items.nrows(out_type=tf.int64)
    n = sampling.num_negatives
    draw_rows = tf.repeat(tf.range(batch), n)
    draw_index = tf.tile(tf.range(n, dtype=tf.int64), [batch])
    neg = _negatives(features, touched, num_items, draw_rows, draw_index, sampling.eval_seed, n,
                     _item_counts(sampling, item_counts))
    history = _record_history(features, max_len, sequence_features, skip_last=0)
    times = features.get(schema.TARGET_TIMESTAMP, tf.zeros([batch], tf.int64))
    return _ctr_rows(history, features[schema.TARGET], times, neg, sequence_features, item_categories)


def _train_positions(ends, keys, user_ids, sampling: CTRSampling):
    """Sampled positions per user below ``ends`` as ``(sample_rows [S], sample_rank [S], positions [S])``."""
    candidates = tf.maximum(ends - sampling.min_history, 0)  # positions min_history..ends-1
    if sampling.positions == "stride":
        counts = tf.where(candidates > 0, (candidates - 1) // sampling.stride + 1, 0)
    else:
        counts = tf.minimum(candidates, sampling.samples_per_user)
    ranks = tf.ragged.range(counts)
    sample_rows, rank = ranks.value_rowids(), ranks.values
    if sampling.positions == "stride":
        return sample_rows, rank, tf.gather(ends, sample_rows) - 1 - sampling.stride * rank
    seeds = _seeds(tf.gather(keys, sample_rows), tf.gather(user_ids, sample_rows), _POSITIONS)
    offsets = negatives.seeded_ranks(rank, seeds, tf.gather(candidates, sample_rows))
    return sample_rows, rank, sampling.min_history + offsets


def _keyed_permutation(size, key) -> tf.Tensor:
    """A pseudorandom permutation of ``[0, size)`` keyed by the scalar ``key``."""
    seeds = tf.tile(tf.stack([tf.cast(key, tf.int64), tf.constant(0, tf.int64), tf.constant(_SHUFFLE, tf.int64)])[None],
                    [size, 1])
    return negatives.seeded_ranks(tf.range(size), seeds, tf.fill([size], tf.maximum(size, 1)))


def ctr_train(features: dict, max_len, num_items, keys, sampling: CTRSampling = CTRSampling(), touched=None,
              item_categories=None, sequence_features=DEFAULT_SEQUENCE_FEATURES, shuffle_samples: bool = False,
              item_counts=None):
    """CTR training rows from ``train`` records: sampled positions ``t``, each with positive ``items[t]``.

    The history of position ``t`` is ``items[:t]`` (most recent ``max_len``). ``keys [B]`` int64
    key the randomness of each record (positions and negatives are a pure function of
    ``(key, user_id)``); the reader draws them from a seeded stream that changes every epoch.
    Pass ``touched`` (complete sorted touched sets, see the module docstring) for exact negatives:
    a ``train`` record lacks the held-out valid/test items. ``shuffle_samples`` mixes the samples
    of the batch's users (keyed by ``keys[0]``; each positive stays followed by its negatives).
    ``item_counts``: as in :func:`ctr_eval`. Under ``sampling.holdout="fraction"`` the records are ``test``
    records (full sequences) and positions stop before the valid range (:func:`holdout_bounds`).
    Returns ``(features, labels [S*(1+n)])``.
    """
    if sampling.holdout == "fraction":
        features = with_target_appended(features)
    lengths = features[schema.ITEMS].row_lengths()
    ends = lengths if sampling.holdout == "last" else holdout_bounds(lengths, sampling.holdout_fraction)[0]
    keys = tf.cast(keys, tf.int64)
    sample_rows, rank, positions = _train_positions(ends, keys, features[schema.USER_ID], sampling)
    if shuffle_samples:
        perm = _keyed_permutation(tf.size(sample_rows, out_type=tf.int64), keys[0])
        sample_rows, rank, positions = (tf.gather(t, perm) for t in (sample_rows, rank, positions))
    if sampling.impressions == "labelled":
        return _labelled_rows(features, max_len, sample_rows, positions, sampling, item_categories,
                              sequence_features)
    n = sampling.num_negatives
    draw_index = tf.reshape(rank[:, None] * n + tf.range(n, dtype=tf.int64)[None, :], [-1])
    return _position_rows(features, max_len, num_items, sample_rows, positions, draw_index,
                          tf.gather(keys, tf.repeat(sample_rows, n)), sampling, touched, item_categories,
                          sequence_features, item_counts)


def ctr_eval_positions(features: dict, max_len, num_items, split: str, sampling: CTRSampling, touched=None,
                       item_categories=None, sequence_features=DEFAULT_SEQUENCE_FEATURES, item_counts=None):
    """CTR evaluation rows of the time split ``sampling.holdout="fraction"`` from ``test`` records (full sequences):
    every position ``t >= min_history`` of ``split``'s range (:func:`holdout_bounds`) with its seeded negatives
    (under ``sampling.impressions="labelled"``: alone, with its recorded label).

    Negatives of position ``t`` are draws ``t n .. t n + n - 1`` keyed by ``(sampling.eval_seed, user_id)``: the
    same for every run and model. Returns ``(features, labels [S*(1+n)])``, ``S`` = the impressions.
    """
    v.check_choice("ctr_eval_positions", "split", split, ("valid", "test"))
    features = with_target_appended(features)
    lengths = features[schema.ITEMS].row_lengths()
    valid_start, test_start = holdout_bounds(lengths, sampling.holdout_fraction)
    start, end = (valid_start, test_start) if split == "valid" else (test_start, lengths)
    start = tf.maximum(start, sampling.min_history)
    ranges = tf.ragged.range(start, tf.maximum(end, start))
    sample_rows, positions = ranges.value_rowids(), ranges.values
    if sampling.impressions == "labelled":
        return _labelled_rows(features, max_len, sample_rows, positions, sampling, item_categories,
                              sequence_features)
    n = sampling.num_negatives
    draw_index = tf.reshape(positions[:, None] * n + tf.range(n, dtype=tf.int64)[None, :], [-1])
    seeds = tf.fill(tf.shape(draw_index), tf.constant(sampling.eval_seed, tf.int64))
    return _position_rows(features, max_len, num_items, sample_rows, positions, draw_index, seeds, sampling,
                          touched, item_categories, sequence_features, item_counts)


def _position_rows(features, max_len, num_items, sample_rows, positions, draw_index, first_seeds, sampling, touched,
                   item_categories, sequence_features, item_counts):
    """Rows ``[positive, negatives...]`` of positions ``(sample_rows, positions)``: positive ``items[t]``, history
    ``items[:t]``, negatives drawn at ``draw_index`` with seeds ``(first_seeds, user_id)``."""
    history, positives, positive_times = _position_history(features, max_len, sample_rows, positions,
                                                           sequence_features)
    n = sampling.num_negatives
    neg = _negatives(features, touched, num_items, tf.repeat(sample_rows, n), draw_index, first_seeds, n,
                     _item_counts(sampling, item_counts))
    return _ctr_rows(history, positives, positive_times, neg, sequence_features, item_categories)


def _labelled_rows(features, max_len, sample_rows, positions, sampling, item_categories, sequence_features):
    """One row per position ``(sample_rows, positions)``: candidate ``items[t]``, history ``items[:t]``, label
    ``1[behaviors[t] in sampling.positive_behaviors]`` (``impressions="labelled"``)."""
    behaviors = features.get(schema.BEHAVIORS)
    if behaviors is None:
        raise ValueError("CTR samples: CTRSampling(impressions='labelled') reads each impression's label from the "
                         "`behaviors` feature; parse it (make_dataset does)")
    lengths = features[schema.ITEMS].row_lengths()
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(behaviors.row_lengths(), lengths)),
        ["CTRSampling(impressions='labelled'): every record needs a behavior per item (its label); users with "
         "fewer behaviors than items:", tf.boolean_mask(features[schema.USER_ID],
                                                        tf.not_equal(behaviors.row_lengths(), lengths))])
    with tf.control_dependencies([check]):
        codes = tf.gather(behaviors.values, tf.gather(behaviors.row_starts(), sample_rows) + positions)
    history, candidates, times = _position_history(features, max_len, sample_rows, positions, sequence_features)
    out, _ = _ctr_rows(history, candidates, times, tf.zeros([tf.size(candidates), 0], tf.int64), sequence_features,
                       item_categories)
    positive = tf.constant(sampling.positive_behaviors, tf.int64)
    labels = tf.reduce_any(tf.equal(codes[:, None], positive[None, :]), axis=1)
    return out, tf.cast(labels, tf.float32)


def _position_history(features, max_len, sample_rows, positions, sequence_features):
    """``(history, items[t], timestamps[t])`` of positions ``(sample_rows, positions)`` (history ``items[:t]``)."""
    items = features[schema.ITEMS]
    positives = tf.gather(items.values, tf.gather(items.row_starts(), sample_rows) + positions)
    if schema.TIMESTAMPS in sequence_features:
        times = features[schema.TIMESTAMPS]
        has_time = tf.gather(times.row_lengths(), sample_rows) > 0
        index = tf.where(has_time, tf.gather(times.row_starts(), sample_rows) + positions, 0)
        padded = tf.concat([times.values, tf.zeros([1], tf.int64)], axis=0)
        positive_times = tf.where(has_time, tf.gather(padded, index), 0)
    else:
        positive_times = tf.zeros_like(positives)
    items_index = window_index(items, sample_rows, positions, max_len)

    def windows(values, pad, dtype):  # side features aligned with items reuse the items' index
        aligned = tf.reduce_all(tf.equal(values.row_splits, items.row_splits))
        index = tf.cond(aligned, lambda: items_index, lambda: window_index(values, sample_rows, positions, max_len))
        return take_windows(values, index, pad, dtype)

    return _history(features, windows, sample_rows, positions, max_len, sequence_features), positives, positive_times
