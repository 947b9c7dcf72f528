"""Registered CTR model names: a routing family around one backbone (``mos_din`` = :class:`MoS` around DIN).

:func:`backbone_preset` makes the class of one name: the family class with its ``backbone`` fixed,
registered with Keras (``tfmoe>MoSDIN``) and in :mod:`tfmoe.models.registry` (``mos_din``), so
``registry.build_model("mos_din", **options)`` builds ``MoS(backbone="din", **options)`` and saved
models of that class load by its name.

Example:
    >>> from tfmoe.models.ctr import MoS, MoSDIN
    >>> model = MoSDIN(num_items=30, max_len=12, embedding_dim=8, mlp_units=[8], session_length=3)
    >>> isinstance(model, MoS), model.backbone, model.get_config()["backbone"]
    (True, 'din', 'din')
"""

from __future__ import annotations

import keras

from tfmoe.models import registry


def backbone_preset(family: type, backbone: str, class_name: str, registered_name: str, summary: str) -> type:
    """``family`` with ``backbone`` fixed, as class ``class_name`` registered as ``registered_name`` (task ``ctr``)."""

    def __init__(self, num_items, max_len, num_categories=0, **options):
        chosen = options.pop("backbone", backbone)
        if chosen != backbone:
            raise ValueError(f"{class_name}: `backbone` is {backbone!r} (use {family.__name__} for another "
                             f"backbone), got {chosen!r}")
        family.__init__(self, num_items, max_len, num_categories, backbone=backbone, **options)

    doc = (f"{summary}\n\n    ``{class_name}(num_items, max_len, num_categories=0, **options)`` is "
           f"``{family.__name__}(..., backbone={backbone!r}, **options)``; registered as ``{registered_name!r}``.\n")
    cls = type(class_name, (family,), {"__init__": __init__, "__doc__": doc, "__module__": family.__module__,
                                       "__qualname__": class_name})
    cls = keras.saving.register_keras_serializable(package="tfmoe")(cls)
    return registry.register_model(registered_name, task="ctr")(cls)


def backbone_presets(family: type, prefix: str, class_prefix: str, summary: str) -> tuple:
    """The classes of ``family`` around DIN, TransAct and TWIN (``<prefix>din``, ...), in that order."""
    return tuple(
        backbone_preset(family, backbone, f"{class_prefix}{suffix}", f"{prefix}{backbone}",
                        summary.format(backbone=suffix))
        for backbone, suffix in (("din", "DIN"), ("transact", "TransAct"), ("twin", "TWIN"))
    )
