"""Model registry: every tfmoe model under one name, so configs, the trainer and the TFX pipeline pick models by name.

A model class registers itself with :func:`register_model` (its task, ``"next_item"`` or ``"ctr"``, and
a config name). :func:`build_model` creates one from a name and keyword arguments; the trainer adds the
data-dependent arguments (``num_items``, ``max_len``). CTR models live in :mod:`tfmoe.models.ctr`, which
is imported on first lookup of a name that is not yet registered.

Example:
    >>> from tfmoe.models import registry
    >>> registry.build_model("sasrec", num_items=20, max_len=5, hidden_dim=8).name.startswith("sas_rec")
    True
    >>> registry.model_task("fame")
    'next_item'
"""

from __future__ import annotations

import importlib

from tfmoe.utils.choices import TASKS

_REGISTRY: dict[str, tuple[type, str]] = {}
# Modules that register more models when imported (looked up lazily, so `import tfmoe.models` stays light).
_PROVIDERS = ("tfmoe.models.ctr",)


def register_model(name: str, task: str):
    """Class decorator: registers ``cls`` as model ``name`` of ``task``."""
    if task not in TASKS:
        raise ValueError(f"register_model: `task` must be one of {TASKS}, got {task!r}")
    if not isinstance(name, str) or not name or name != name.lower():
        raise ValueError(f"register_model: `name` must be a non-empty lower-case string, got {name!r}")

    def decorate(cls):
        existing = _REGISTRY.get(name)
        if existing is not None and existing[0] is not cls:
            raise ValueError(f"register_model: model name {name!r} is already taken by {existing[0].__name__}")
        _REGISTRY[name] = (cls, task)
        return cls

    return decorate


def _load_providers() -> None:
    for module in _PROVIDERS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def _entry(name: str) -> tuple[type, str]:
    if name not in _REGISTRY:
        _load_providers()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available_models())}")
    return _REGISTRY[name]


def available_models(task: str | None = None) -> list[str]:
    """Sorted registered names (of one task when given)."""
    _load_providers()
    return sorted(name for name, (_, t) in _REGISTRY.items() if task is None or t == task)


def model_class(name: str) -> type:
    """The class registered as ``name``."""
    return _entry(name)[0]


def model_task(name: str) -> str:
    """``"next_item"`` or ``"ctr"``."""
    return _entry(name)[1]


def build_model(name: str, **kwargs):
    """``model_class(name)(**kwargs)``."""
    return model_class(name)(**kwargs)
