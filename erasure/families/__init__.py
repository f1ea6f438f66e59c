"""Model families: canvas-mini and Stable Diffusion, one module each, looked up by pipeline or name.

The core asks ``family_of(pipe)`` (or ``family_of_source(source)`` before any weight loads) instead
of testing for canvas-mini; a family (``base.ModelFamily``) supplies a request's defaults, the anchor
and concept prompt pairs in its own captions, its memorized captions and its judge. Adding a family
(a future SD3, a user's fine-tune with its own captions and judge) is one module here with a
``ModelFamily`` subclass decorated ``@register_family``; a family outside the package registers
itself by being imported.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING

from erasure.errors import ErasureInputError

if TYPE_CHECKING:
    from .base import ModelFamily

_FAMILIES: dict[str, ModelFamily] = {}


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: make a ``ModelFamily`` known (one instance per family)."""
    existing = _FAMILIES.get(cls.name)
    if existing is not None and (type(existing).__module__, type(existing).__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"model family {cls.name!r} is already registered by {type(existing).__qualname__}")
    _FAMILIES[cls.name] = cls()
    return cls


_discovered = False


def _families() -> list[ModelFamily]:
    """Every registered family, lowest priority first (the package's own modules imported once)."""
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base" and not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True
    return sorted(_FAMILIES.values(), key=lambda f: f.priority)


def available_families() -> list[str]:
    return [f.name for f in _families()]


def family_named(name: str) -> ModelFamily:
    """The family called ``name``, refusing an unknown one in one line."""
    families = {f.name: f for f in _families()}
    if name not in families:
        raise ErasureInputError(f"unknown model family {name!r}; expected one of {', '.join(families)}")
    return families[name]


def family_of(pipe_or_name) -> ModelFamily:
    """The family of a loaded pipeline (the first that claims it), or of a family name or ``ModelFamily``."""
    from erasure.one_step import OneStepPipeline

    from .base import ModelFamily

    if isinstance(pipe_or_name, OneStepPipeline):  # an SFD run's wrapper: the family is the wrapped pipeline's
        pipe_or_name = pipe_or_name.pipe
    if isinstance(pipe_or_name, ModelFamily):
        return pipe_or_name
    if isinstance(pipe_or_name, str):
        return family_named(pipe_or_name)
    return next(f for f in _families() if f.matches(pipe_or_name))


def family_of_source(source: str | Path) -> ModelFamily:
    """The family of a model source (``--model``), from its name or its folder's ``model_index.json``,
    before any weight loads (a single-file checkpoint or an unreadable folder: the catch-all)."""
    pipeline_class = None
    index = Path(source).expanduser() / "model_index.json"
    if index.is_file():
        try:
            pipeline_class = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (OSError, ValueError, AttributeError):
            pipeline_class = None
    return next(f for f in _families() if f.matches_source(str(source), pipeline_class))
