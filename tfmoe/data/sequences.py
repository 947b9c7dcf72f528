"""One user's history: batching, time ordering, filtering, truncation and leave-one-out examples.

The preparation job groups interactions by user and then applies these pure functions to each
user; they hold no Beam or TensorFlow code, so they are tested (and reusable) on plain lists.

Between reading and grouping, interactions travel as *batches*: a run of consecutive rows of one
user from one input split, stored by column, ``(start, items, timestamps, categories, behaviors)``
with ``start = (file_index, line, index in line)`` of its first row (absent fields are ``None``).
Runs never interleave, so ordering batches by ``start`` restores the source order; a stable sort
by timestamp then gives the time order with ties in source order.

Example:
    >>> batches = [((0, 5, 0), ["c"], [10], None, None), ((0, 1, 0), ["a", "b"], [10, 5], None, None)]
    >>> history = history_from_batches(batches)
    >>> history.items, history.timestamps
    (['b', 'a', 'c'], [5, 10, 10])
    >>> [split for split, _ in leave_one_out(user_index=1, items=[5, 6, 7, 8])]
    ['train', 'valid', 'test']
"""

from __future__ import annotations

from collections import Counter
from itertools import chain
from typing import NamedTuple

from tfmoe.data.report import BadRecord

MIN_HISTORY = 3  # leave-one-out needs a training item, a validation target and a test target


class History(NamedTuple):
    """A user's time-ordered interactions; optional fields are ``None`` when the input lacks them."""

    items: list
    timestamps: list | None
    categories: list | None
    behaviors: list | None

    def keep(self, mask) -> History:
        """The history restricted to the positions where ``mask`` is true (order kept)."""
        return History(*(None if values is None else [x for x, m in zip(values, mask) if m] for values in self))

    def tail(self, n: int) -> History:
        """The ``n`` most recent interactions."""
        return History(*(None if values is None else values[len(values) - n:] for values in self))


def batch_rows(stream, file_index: int, fields: frozenset, counts: Counter, max_rows: int = 4096):
    """Turns a reader's ``iter_rows`` stream into ``(user, batch)`` pairs (see the module docstring).

    :class:`BadRecord` items pass through unchanged. ``counts`` receives ``lines`` (usable lines)
    and ``interactions``.
    """
    has_time, has_category, has_behavior = ("timestamp" in fields), ("category" in fields), ("behavior" in fields)
    user = batch = None
    lines = interactions = 0
    for out in stream:
        if type(out) is BadRecord:
            yield out
            continue
        line, rows = out
        lines += 1
        for k, (row_user, item, timestamp, category, behavior, _) in enumerate(rows):
            if row_user != user or len(batch[1]) >= max_rows:
                if batch is not None:
                    yield user, batch
                user = row_user
                batch = ((file_index, line, k), [], [] if has_time else None, [] if has_category else None,
                         [] if has_behavior else None)
            batch[1].append(item)
            if has_time:
                batch[2].append(timestamp)
            if has_category:
                batch[3].append(category)
            if has_behavior:
                batch[4].append(behavior)
            interactions += 1
    if batch is not None:
        yield user, batch
    counts["lines"] += lines
    counts["interactions"] += interactions


def _concat(batches, column: int):
    return None if batches[0][column] is None else list(chain.from_iterable(b[column] for b in batches))


def history_from_batches(batches) -> History:
    """Merges one user's batches into a :class:`History` sorted by timestamp, then source order."""
    batches = sorted(batches, key=lambda batch: batch[0])
    history = History(*(_concat(batches, column) for column in range(1, 5)))
    if history.timestamps is not None:
        order = sorted(range(len(history.items)), key=history.timestamps.__getitem__)
        if order != list(range(len(order))):
            history = History(*(None if values is None else [values[i] for i in order] for values in history))
    return history


def drop_items(history: History, dead_items) -> History:
    """The history without the interactions whose item is in ``dead_items``."""
    if not dead_items:
        return history
    return history.keep([item not in dead_items for item in history.items])


def truncate(history: History, max_length: int) -> History:
    """Keeps the ``max_length`` most recent interactions (``0`` = unlimited)."""
    if max_length and len(history.items) > max_length:
        return history.tail(max_length)
    return history


def _slice(values, stop):
    return [] if values is None else list(values[:stop])


def _at(values, index, default=0):
    return default if values is None else values[index]


def leave_one_out(user_index: int, items, timestamps=None, categories=None, behaviors=None, session_ids=None):
    """Yields ``(split, encode_example kwargs)`` for ``train``, ``valid`` and ``test``.

    Follows :mod:`tfmoe.data.schema`: test = ``seq[:-1]`` -> ``seq[-1]``, valid = ``seq[:-2]`` ->
    ``seq[-2]``, train = ``seq[:-2]`` without target; ``target_behavior`` only when ``behaviors`` is given.
    Inputs are already vocabulary indices.
    Raises ``ValueError`` for histories shorter than :data:`MIN_HISTORY`.
    """
    n = len(items)
    if n < MIN_HISTORY:
        raise ValueError(f"leave_one_out: user {user_index} has {n} interactions; at least {MIN_HISTORY} needed")
    for split, stop in (("train", n - 2), ("valid", n - 2), ("test", n - 1)):
        features = dict(
            user_id=user_index,
            items=list(items[:stop]),
            timestamps=_slice(timestamps, stop),
            categories=_slice(categories, stop),
            behaviors=_slice(behaviors, stop),
            session_ids=_slice(session_ids, stop),
        )
        if split != "train":
            features.update(target=items[stop], target_timestamp=_at(timestamps, stop),
                            target_category=_at(categories, stop))
            if behaviors is not None:
                features["target_behavior"] = behaviors[stop]
        yield split, features
