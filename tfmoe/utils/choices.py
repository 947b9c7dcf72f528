"""The choices shared across tfmoe's modules, defined once.

Example:
    >>> from tfmoe.utils import choices
    >>> choices.TASKS
    ('next_item', 'ctr')
    >>> "multi_worker" in choices.STRATEGIES
    True
"""

from __future__ import annotations

# What a model predicts: the next item of a sequence (full ranking), or a click on a target item (CTR).
TASKS = ("next_item", "ctr")

# tf.distribute strategies that tfmoe.training.get_strategy builds by name.
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
