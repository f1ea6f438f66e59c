"""The registry of attacks, the same shape as the method registry (``erasure.registry.Registry``):
decorator registration plus lazy "module:Class" entries, so choosing an attack imports only its module."""

from __future__ import annotations

from erasure.registry import Registry

ATTACKS = Registry("attack", "erasure.attacks.base:Attack")

register_attack = ATTACKS.register
register_attack_lazy = ATTACKS.register_lazy
available_attacks = ATTACKS.names
get_attack = ATTACKS.get


def load_attack(name: str, config: dict | None = None, **overrides):
    """An attack instance: ``name``'s config from ``config`` (a dict, e.g. a YAML file's) and ``overrides``,
    checked in one line (unknown keys, wrong types, bad values) before any model is touched."""
    return get_attack(name)(dict(config or {}), **overrides)
