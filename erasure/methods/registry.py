"""The registry of erasure methods (``erasure.registry.Registry``): a method module registers itself
with ``@register("name")`` when imported; ``register_lazy("name", "package.module:Class")`` names a
method without importing it, so heavy or optional dependencies load only when the method is chosen."""

from __future__ import annotations

from erasure.registry import Registry

METHODS = Registry("method", "erasure.methods.base:ErasureMethod")

register = METHODS.register
register_lazy = METHODS.register_lazy
available_methods = METHODS.names
get_method = METHODS.get
