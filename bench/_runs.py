"""What the canvas-mini benches share: run an erasure once and reuse it while it is still valid.

The benches run as scripts (``python bench/NAME.py``), so this module is imported as ``_runs``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from erasure import ErasureRequest, erase
from erasure.api import method_config
from erasure.edit import CHECKPOINT_DIR, fingerprint, read_manifest
from erasure.errors import ErasureInputError
from erasure.pipelines import load_pipeline


def erase_once(run: Path, request: ErasureRequest, method: str, config, **overrides) -> Path:
    """Erase ``request`` from the shipped canvas-mini into ``run`` unless a finished run is there.

    A finished run is reused only while it was made for the same request by the same method and
    config from canvas-mini's current weights (a retrained model, a changed preset or another
    anchor invalidates it); an unfinished one resumes from its checkpoint.
    """
    pipe = load_pipeline("canvas-mini")
    manifest = run / "manifest.json"
    if manifest.exists() and _made_by(read_manifest(run), request, method, config, pipe, overrides):
        return run
    start = time.time()
    resume = not manifest.exists() and (run / CHECKPOINT_DIR).is_dir()
    if resume:
        try:
            erase(pipe, request, method, config=config, out=run, resume=True, **overrides)
        except ErasureInputError:  # made from other weights or settings: start again
            resume = False
    if not resume:
        shutil.rmtree(run, ignore_errors=True)
        erase(pipe, request, method, config=config, out=run, **overrides)
    print(f"{method}: erased {request.kind} {request.targets[0]!r} in {time.time() - start:.0f} s -> {run}", flush=True)
    return run


def _made_by(manifest: dict, request: ErasureRequest, method: str, config, pipe, overrides: dict) -> bool:
    wanted = method_config(method, config, **overrides).to_dict()
    return (manifest["method"] == method and manifest["config"] == wanted
            and manifest["request"] == request.resolve(pipe).to_dict()
            and manifest["base"]["fingerprint"] == fingerprint(pipe))
