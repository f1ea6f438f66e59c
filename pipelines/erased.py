"""Erased pipelines: a run folder (``erasure erase --out RUN``) back into an ordinary diffusers pipeline."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from erasure.errors import ErasureInputError

logger = logging.getLogger(__name__)


def load_erased(
    run_dir: str | os.PathLike,
    base=None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attention: str = "auto",
):
    """The base pipeline with the run's edit applied: an ordinary diffusers pipeline.

    Args:
        run_dir: a finished run folder (with ``manifest.json`` and ``edit.safetensors``).
        base: the base pipeline to apply the edit to (modified in place and returned). Its weights
            must have the fingerprint recorded in the manifest, else ``ErasureInputError``. ``None``:
            load the base from the source the manifest records (or, when the run has a full export
            and that source is gone, load the export).
        device, dtype, attention: as for ``load_pipeline`` when the base is loaded here.
    """
    from erasure.edit import FULL_EXPORT, Edit, fingerprint, read_manifest

    from .loading import load_pipeline

    run = Path(run_dir).expanduser()
    manifest = read_manifest(run)
    edit = Edit.load(run)
    expected = manifest["base"].get("fingerprint")
    if base is None:
        source = manifest["base"].get("source")
        full = run / FULL_EXPORT
        if source is None or (source != "canvas-mini" and not Path(source).exists()):
            if manifest.get("full_export") and full.is_dir():
                return load_pipeline(full, device=device, dtype=dtype, attention=attention)
            raise ErasureInputError(
                f"{run}: the base model {source or '(not recorded)'} is not available; pass base=<pipeline> "
                "(erasure.pipelines.load_pipeline) or re-run with a full export"
            )
        base = load_pipeline(source, config=manifest["base"].get("config"), device=device, dtype=dtype,
                             attention=attention)
    actual = fingerprint(base)
    if expected is not None and actual != expected:
        raise ErasureInputError(
            f"{run}: the base pipeline's weights differ from the model this edit was made for "
            f"(fingerprint {actual[:19]}... != {expected[:19]}...); load {manifest['base'].get('source') or 'that model'}"
            f" (in float32 or bfloat16)"
        )
    edit.apply(base)
    logger.info("applied %s edit (%d tensors) from %s", edit.method, len(edit.tensors), run)
    return base
