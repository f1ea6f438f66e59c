"""Registry of erasure methods: decorator registration plus lazy "module:Class" entries.

Like lm-evaluation-harness's registry: a method module registers itself with ``@register("name")``
when imported, and ``register_lazy("name", "package.module:Class")`` names a method without
importing it, so heavy or optional dependencies load only when the method is chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from erasure.errors import ErasureInputError

_METHODS: dict[str, type | str] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: register an ``ErasureMethod`` subclass under ``name``."""

    def deco(cls: type) -> type:
        from .base import ErasureMethod

        if not (isinstance(cls, type) and issubclass(cls, ErasureMethod)):
            raise TypeError(f"{cls!r} is not an ErasureMethod subclass")
        current = _METHODS.get(name)
        if isinstance(current, type) and current is not cls and current.__qualname__ != cls.__qualname__:
            raise ValueError(f"method {name!r} is already registered to {current.__module__}.{current.__qualname__}")
        # The first registration names the class; a further name (an alias) leaves it as it is.
        if not cls.__dict__.get("name"):
            cls.name = name
        if not cls.config_class.__dict__.get("method"):
            cls.config_class.method = cls.name
        _METHODS[name] = cls
        return cls

    return deco


def register_lazy(name: str, target: str) -> None:
    """Register ``name`` as "module:Class", imported on first use."""
    if ":" not in target:
        raise ValueError(f"lazy target must be 'module:Class', got {target!r}")
    if not isinstance(_METHODS.get(name), type):
        _METHODS[name] = target


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type:
    """The method class registered as ``name`` (imported now if lazy)."""
    if name not in _METHODS:
        raise ErasureInputError(f"unknown method {name!r}; available: {', '.join(available_methods()) or 'none'}")
    entry = _METHODS[name]
    if isinstance(entry, str):
        module, cls_name = entry.split(":")
        cls = getattr(importlib.import_module(module), cls_name)
        # Importing the module normally runs @register; make sure the name maps to the class either way
        # (without renaming a class that registered itself under another name).
        if not isinstance(_METHODS.get(name), type):
            register(name)(cls)
        entry = _METHODS[name]
    return entry
