"""Method presets shipped with the toolkit (YAML, one folder per method).

The folder is installed as ``erasure.configs`` so presets are found from an installed wheel as
from a checkout: ``preset_path("esd/canvas-mini-style")``.
"""

from __future__ import annotations

from pathlib import Path

from erasure.errors import ErasureInputError

PRESETS_DIR = Path(__file__).resolve().parent  # resolved: the traversal check compares resolved paths


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name`` ("method/preset", with or without ".yaml")."""
    path = PRESETS_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file() or PRESETS_DIR not in path.resolve().parents:
        available = sorted(str(p.relative_to(PRESETS_DIR).with_suffix("")) for p in PRESETS_DIR.glob("*/*.yaml"))
        raise ErasureInputError(f"no preset {name!r}; available: {', '.join(available)}")
    return path


def shipped_preset(method: str, prefix: str | None, kind: str) -> Path | None:
    """The preset shipped for ``method`` on models whose presets are named ``prefix`` ("canvas-mini",
    "sd15", ...) and requests of ``kind``, e.g. ``esd/canvas-mini-style.yaml``; None if there is none."""
    if prefix is None:
        return None
    path = PRESETS_DIR / method / f"{prefix}-{kind}.yaml"
    return path if path.is_file() else None
