"""Argument validation with errors that name the owner, the argument and the bad value.

Every public constructor in tfmoe validates its arguments with these helpers, so a bad value
fails at construction time with a message like::

    ValueError: TopKRouter: `k` must be an integer in [1, 8], got 9

Example:
    >>> from tfmoe.utils import validation as v
    >>> v.check_int("MyLayer", "units", 4, minimum=1)
    4
    >>> v.check_choice("MyLayer", "mode", "soft", ("soft", "hard"))
    'soft'
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence


def _range_text(minimum, maximum, min_inclusive=True, max_inclusive=True) -> str:
    if minimum is not None and maximum is not None:
        left = "[" if min_inclusive else "("
        right = "]" if max_inclusive else ")"
        return f" in {left}{minimum}, {maximum}{right}"
    if minimum is not None:
        return f" {'>=' if min_inclusive else '>'} {minimum}"
    if maximum is not None:
        return f" {'<=' if max_inclusive else '<'} {maximum}"
    return ""


def check_int(owner: str, name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """Returns ``value`` as ``int`` or raises ``ValueError`` naming owner, argument and value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{owner}: `{name}` must be an integer{_range_text(minimum, maximum)}, "
            f"got {value!r} of type {type(value).__name__}"
        )
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{owner}: `{name}` must be an integer{_range_text(minimum, maximum)}, got {value!r}")
    return value


def check_optional_int(owner: str, name: str, value, minimum: int | None = None, maximum: int | None = None):
    """Like :func:`check_int` but accepts ``None``."""
    return None if value is None else check_int(owner, name, value, minimum, maximum)


def check_float(
    owner: str,
    name: str,
    value,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """Returns ``value`` as ``float`` (finite) or raises ``ValueError`` naming owner, argument and value."""
    rng = _range_text(minimum, maximum, min_inclusive, max_inclusive)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: `{name}` must be a number{rng}, got {value!r} of type {type(value).__name__}")
    value = float(value)
    bad = not math.isfinite(value)
    if minimum is not None:
        bad |= value < minimum if min_inclusive else value <= minimum
    if maximum is not None:
        bad |= value > maximum if max_inclusive else value >= maximum
    if bad:
        raise ValueError(f"{owner}: `{name}` must be a finite number{rng}, got {value!r}")
    return value


def check_optional_float(owner: str, name: str, value, **limits):
    """Like :func:`check_float` but accepts ``None``."""
    return None if value is None else check_float(owner, name, value, **limits)


def check_bool(owner: str, name: str, value) -> bool:
    """Returns ``value`` if it is a ``bool``, else raises ``ValueError``."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: `{name}` must be True or False, got {value!r} of type {type(value).__name__}")
    return value


def check_choice(owner: str, name: str, value, choices: Iterable):
    """Returns ``value`` if it is one of ``choices``, else raises ``ValueError`` listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{owner}: `{name}` must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_activation(owner: str, name: str, value) -> str:
    """Returns ``value`` if it names a Keras activation (e.g. ``"relu"``), else raises ``ValueError``."""
    import keras

    message = f"{owner}: `{name}` must be a Keras activation name, got {value!r}"
    if not isinstance(value, str):
        raise ValueError(message)
    try:
        keras.activations.get(value)
    except (ValueError, TypeError):
        raise ValueError(message) from None
    return value


def check_int_sequence(owner: str, name: str, value, minimum: int | None = 1, allow_empty: bool = False) -> list:
    """Returns a list of ints (each ``>= minimum``) from a list or tuple, else raises ``ValueError``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{owner}: `{name}` must be a list of integers, got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{owner}: `{name}` must not be empty")
    return [check_int(owner, f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(value)]
