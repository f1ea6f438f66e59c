"""erasure: remove concepts from text-to-image diffusion models.

Top-level names load lazily (torch and diffusers are imported on first use, so ``erasure --help``
stays quick): ``erase``, ``ErasureRequest``, ``Edit``, ``load_erased``.
"""

from __future__ import annotations

_LAZY = {
    "erase": ("erasure.api", "erase"),
    "ErasureRequest": ("erasure.request", "ErasureRequest"),
    "Edit": ("erasure.edit", "Edit"),
    "load_erased": ("erasure.erased", "load_erased"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'erasure' has no attribute {name!r}")
