"""Weights keyed by variable paths without the backbone and head scopes, assigned to a next-item model.

The layers of a next-item model live in its backbone (``sequence_encoder/...``) and its scoring head
(``facet_head/...``). Weights exported by variable path with the layers at the model's top level
(``item_encoder/...``, ``block_<i>/...``, ``final_norm/...``, ``facet_block/...``, ``proposal_log_q``) map to those
paths one to one (:data:`TOP_LEVEL_PREFIXES`); :func:`assign_top_level_weights` assigns such a dict.
(``.keras`` files and ``save_weights`` checkpoints need none of this: they address layers by attribute, and the
models keep those attributes.)

Example:
    >>> from tfmoe.models.variable_paths import scoped_path
    >>> scoped_path("block_1/ffn/kernel_in"), scoped_path("facet_block/head_gate/kernel")
    ('sequence_encoder/block_1/ffn/kernel_in', 'facet_head/facet_block/head_gate/kernel')
"""

from __future__ import annotations

import numpy as np

# top-level prefix -> its place in the composed model (first match wins)
TOP_LEVEL_PREFIXES = (
    ("item_encoder/", "sequence_encoder/item_encoder/"),
    ("block_", "sequence_encoder/block_"),
    ("final_norm/", "sequence_encoder/final_norm/"),
    ("facet_block/", "facet_head/facet_block/"),
)


def scoped_path(path: str) -> str:
    """The path in the composed model of a top-level variable path (others, e.g. ``proposal_log_q``, unchanged)."""
    for prefix, scoped in TOP_LEVEL_PREFIXES:
        if path.startswith(prefix):
            return scoped + path[len(prefix):]
    return path


def assign_top_level_weights(model, weights: dict) -> None:
    """Assigns ``{top-level variable path: array}`` to ``model``'s weights; every weight must be given once.

    Raises ValueError naming the paths that match no weight, the weights left without a value, or a shape that
    differs.
    """
    by_path = {w.path: w for w in model.weights}
    values = {scoped_path(path): value for path, value in weights.items()}
    unknown = sorted(set(values) - set(by_path))
    missing = sorted(set(by_path) - set(values))
    if unknown or missing:
        raise ValueError(f"{type(model).__name__}: weights match no variable: {unknown}; variables without a "
                         f"value: {missing}")
    for path, value in values.items():
        value = np.asarray(value)
        if tuple(by_path[path].shape) != value.shape:
            raise ValueError(f"{type(model).__name__}: `{path}` has shape {tuple(by_path[path].shape)}, "
                             f"got {value.shape}")
        by_path[path].assign(value)
