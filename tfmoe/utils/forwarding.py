"""``Forwarded``: a constructor argument that a layer hands to one of its sub-layers, readable under its own name.

A Keras layer stores every constructor argument under its own name. When the value lives in a sub-layer (an
argument the layer only passes on), ``Forwarded`` reads it from there instead of keeping a second copy.

Example:
    >>> from tfmoe.utils.forwarding import Forwarded
    >>> class Inner:
    ...     k = 2
    >>> class Outer:
    ...     k = Forwarded("inner")
    ...     def __init__(self):
    ...         self.inner = Inner()
    >>> Outer().k
    2
"""

from __future__ import annotations


class Forwarded:
    """Read-only attribute ``self.<name>`` that reads ``self.<sublayer>.<attribute>`` (``attribute`` defaults to
    the attribute's own name)."""

    def __init__(self, sublayer: str, attribute: str | None = None):
        self.sublayer = sublayer
        self.attribute = attribute

    def __set_name__(self, owner, name):
        self.name = name
        self.attribute = self.attribute or name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return getattr(getattr(instance, self.sublayer), self.attribute)
