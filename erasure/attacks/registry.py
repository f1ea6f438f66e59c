"""Registry of attacks, shaped like the method registry (``erasure.methods.registry``): decorator
registration plus lazy "module:Class" entries, so choosing an attack imports only its module."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from erasure.errors import ErasureInputError

_ATTACKS: dict[str, type | str] = {}


def register_attack(name: str) -> Callable[[type], type]:
    """Class decorator: register an ``Attack`` subclass under ``name``."""

    def deco(cls: type) -> type:
        from .base import Attack

        if not (isinstance(cls, type) and issubclass(cls, Attack)):
            raise TypeError(f"{cls!r} is not an Attack subclass")
        current = _ATTACKS.get(name)
        if isinstance(current, type) and current is not cls and current.__qualname__ != cls.__qualname__:
            raise ValueError(f"attack {name!r} is already registered to {current.__module__}.{current.__qualname__}")
        if not cls.__dict__.get("name"):
            cls.name = name
        if not cls.config_class.__dict__.get("method"):
            cls.config_class.method = cls.name
        _ATTACKS[name] = cls
        return cls

    return deco


def register_attack_lazy(name: str, target: str) -> None:
    """Register ``name`` as "module:Class", imported on first use."""
    if ":" not in target:
        raise ValueError(f"lazy target must be 'module:Class', got {target!r}")
    if not isinstance(_ATTACKS.get(name), type):
        _ATTACKS[name] = target


def available_attacks() -> list[str]:
    return sorted(_ATTACKS)


def get_attack(name: str) -> type:
    """The attack class registered as ``name`` (imported now if lazy); an unknown name is refused in one line."""
    if name not in _ATTACKS:
        raise ErasureInputError(f"unknown attack {name!r}; available: {', '.join(available_attacks()) or 'none'}")
    entry = _ATTACKS[name]
    if isinstance(entry, str):
        module, cls_name = entry.split(":")
        cls = getattr(importlib.import_module(module), cls_name)
        if not isinstance(_ATTACKS.get(name), type):
            register_attack(name)(cls)
        entry = _ATTACKS[name]
    return entry


def load_attack(name: str, config: dict | None = None, **overrides):
    """An attack instance: ``name``'s config from ``config`` (a dict, e.g. a YAML file's) and ``overrides``,
    checked in one line (unknown keys, wrong types, bad values) before any model is touched."""
    cls = get_attack(name)
    return cls(dict(config or {}), **overrides)
