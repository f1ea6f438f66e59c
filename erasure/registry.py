"""Named plug-ins registered by decorator or lazily as "module:Class": the one registry shape shared
by erasure methods (``erasure.methods``) and attacks (``erasure.attacks``).

Like lm-evaluation-harness's ``lm_eval/api/registry.py``: a module registers its class with
``@registry.register("name")`` when it is imported, and ``registry.register_lazy("name",
"package.module:Class")`` names a class without importing it, so heavy or optional dependencies
load only when that name is chosen. (Evaluation suites find their modules by name instead: see
``erasure.evaluation.suites``.)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from erasure.errors import ErasureInputError


def import_target(target: str) -> type:
    """The class named by "package.module:Class", imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class Registry:
    """name -> class (or "module:Class" until first asked for).

    ``kind`` names the entries in messages ("method", "attack"); ``base`` is the "module:Class" every
    registered class must subclass (imported on the first registration, so a registry can be built
    before its base class's module is). A registered class takes its first name as ``cls.name`` and
    its config class's ``method`` (a further name, an alias, renames nothing).
    """

    def __init__(self, kind: str, base: str) -> None:
        self.kind = kind
        self.base = base
        self.entries: dict[str, type | str] = {}

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: register a subclass of the registry's base under ``name``."""

        def decorate(cls: type) -> type:
            base = import_target(self.base)
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"{cls!r} is not a {base.__name__} subclass")
            current = self.entries.get(name)
            # A module imported twice (e.g. as a script and as a module) registers an equal class again.
            if isinstance(current, type) and current is not cls and current.__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.kind} {name!r} is already registered to {current.__module__}.{current.__qualname__}")
            if not cls.__dict__.get("name"):
                cls.name = name
            if not cls.config_class.__dict__.get("method"):
                cls.config_class.method = cls.name
            self.entries[name] = cls
            return cls

        return decorate

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``name`` as "module:Class", imported on first use."""
        if ":" not in target:
            raise ValueError(f"lazy target must be 'module:Class', got {target!r}")
        if not isinstance(self.entries.get(name), type):
            self.entries[name] = target

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> type:
        """The class registered as ``name`` (imported now if lazy); an unknown name is refused in one line."""
        if name not in self.entries:
            raise ErasureInputError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names()) or 'none'}")
        entry = self.entries[name]
        if isinstance(entry, str):
            cls = import_target(entry)
            # Importing the module normally runs the decorator; make sure the name maps to the class
            # either way (without renaming a class that registered itself under another name).
            if not isinstance(self.entries.get(name), type):
                self.register(name)(cls)
            entry = self.entries[name]
        return entry
