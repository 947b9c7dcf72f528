"""Checkpoint layouts of the CTR models: the flat layout (every layer an attribute of the model) -> the composed one.

A CTR model composes ``embedding``, ``interest`` (the routing family's layer), ``head`` and
``interaction``, so its ``.weights.h5`` / ``.keras`` weights sit under those names. A flat-layout
checkpoint holds the interest's layers at the model's top level. :func:`composed_paths` maps each
flat path to its composed path, by the prefix rules of :func:`flat_layout_rules` (written down for
each interest layer); :meth:`tfmoe.models.ctr.CTRModel.load_own_variables` applies it when a model
loads a flat-layout checkpoint, so ``model.load_weights`` and ``tfmoe.models.load_model`` read both
layouts. The optimizer's variables keep their order: the composed model creates its layers in the
flat layout's order.

=============================================  ===========================================
flat path prefix                               composed path prefix
=============================================  ===========================================
``embedding/``, ``head/``, ``interaction/``    unchanged
``backbone/`` (one backbone)                   ``interest/encoder/``
``experts/`` (token routing)                   ``interest/experts/``
``layers/top_k_router/``,                      ``interest/router/``
``layers/expert_choice_router/``
``grouper/`` (MoS)                             ``interest/grouper/``
``layers/session_theme_router/``               ``interest/theme_router/``
``layers/expert_set/``                         ``interest/theme_experts/``
``layers/<backbone class>/``                   ``interest/short_backbone/``
``global_expert/``                             ``interest/global_backbone/``
``fusion/``                                    ``interest/fusion/``
=============================================  ===========================================

Example:
    >>> from tfmoe.models import registry
    >>> from tfmoe.models.ctr import checkpoints
    >>> model = registry.build_model("gshard_din", num_items=20, max_len=6, embedding_dim=8, num_experts=2)
    >>> checkpoints.composed_paths(model, ["layers/top_k_router/vars/0", "head/logit_layer/vars/0"])
    {'layers/top_k_router/vars/0': 'interest/router/vars/0', 'head/logit_layer/vars/0': 'head/logit_layer/vars/0'}
"""

from __future__ import annotations

import io

import h5py
import numpy as np

from tfmoe.models.ctr.backbones import BACKBONES
from tfmoe.models.ctr.interest import SingleBackboneInterest
from tfmoe.models.ctr.mixture_of_sequences import MixtureOfSequences
from tfmoe.models.ctr.token_routing import ExpertChoiceExperts, GShardExperts

UNCHANGED = ("embedding/", "head/", "interaction/", "optimizer/", "vars/")


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def flat_layout_rules(interest) -> tuple:
    """``((flat prefix, composed prefix), ...)`` for a model whose interest layer is ``interest``."""
    if isinstance(interest, SingleBackboneInterest):
        return (("backbone/", "interest/encoder/"),)
    if isinstance(interest, GShardExperts):
        return (("experts/", "interest/experts/"), ("layers/top_k_router/", "interest/router/"))
    if isinstance(interest, ExpertChoiceExperts):
        return (("experts/", "interest/experts/"), ("layers/expert_choice_router/", "interest/router/"))
    if isinstance(interest, MixtureOfSequences):
        short = f"layers/{_snake(BACKBONES[interest.backbone].__name__)}/"
        return (("grouper/", "interest/grouper/"), ("layers/session_theme_router/", "interest/theme_router/"),
                ("layers/expert_set/", "interest/theme_experts/"), (short, "interest/short_backbone/"),
                ("global_expert/", "interest/global_backbone/"), ("fusion/", "interest/fusion/"))
    raise ValueError(f"flat_layout_rules: no flat checkpoint layout for {type(interest).__name__}")


def composed_paths(model, paths) -> dict:
    """``{flat path: composed path}`` for the weight paths of a flat-layout checkpoint of ``model``'s kind.

    Raises ``ValueError`` naming a path that no rule covers.
    """
    rules = tuple((p, p) for p in UNCHANGED) + flat_layout_rules(model.interest)
    mapping = {}
    for path in paths:
        rule = next(((old, new) for old, new in rules if path.startswith(old)), None)
        if rule is None:
            raise ValueError(f"{type(model).__name__}: no composed path for the flat checkpoint path {path!r}")
        mapping[path] = rule[1] + path[len(rule[0]):]
    return mapping


def is_flat_layout(h5_file) -> bool:
    """True for the weights file of a flat-layout CTR checkpoint (``head`` but no ``interest`` group)."""
    return "head" in h5_file and "interest" not in h5_file


def read_datasets(h5_file) -> dict:
    """``{path: array}`` of every dataset of an open h5 file or group."""
    found = {}

    def keep(path, item):
        if isinstance(item, h5py.Dataset):
            found[path] = np.asarray(item[()])

    h5_file.visititems(keep)
    return found


def composed_file(model, h5_file) -> h5py.File:
    """An in-memory h5 file holding the datasets of the flat-layout ``h5_file`` at their composed paths."""
    flat = read_datasets(h5_file)
    out = h5py.File(io.BytesIO(), "w")
    for old, new in composed_paths(model, flat).items():
        out.create_dataset(new, data=flat[old])
    return out


def adopt_flat_layout(model, store) -> None:
    """Makes a Keras weights ``store`` (being read into ``model``) serve a flat-layout file at the composed paths.

    Keras reads every layer's variables from ``store.h5_file`` by path; the file is swapped for its
    composed copy. Stores without an h5 file, or already composed, are left as they are.
    """
    h5_file = getattr(store, "h5_file", None)
    if h5_file is None or not is_flat_layout(h5_file):
        return
    store.h5_file = composed_file(model, h5_file)
    h5_file.close()
