"""The comparison app (Gradio): original and erased models side by side, run metrics, new erasures.

    from erasure.app import launch
    launch("runs", ["canvas-mini"]).block()      # what `erasure app --runs runs` does

Names load lazily, so importing ``erasure.app.runs`` does not start Gradio:
``launch``, ``build_app``, ``Limits``, ``RunningApp``.
"""

from __future__ import annotations

_LAZY = {
    "launch": ("erasure.app.server", "launch"),
    "RunningApp": ("erasure.app.server", "RunningApp"),
    "build_app": ("erasure.app.ui", "build_app"),
    "Limits": ("erasure.app.compare", "Limits"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'erasure.app' has no attribute {name!r}")
