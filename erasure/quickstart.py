"""``erasure quickstart``: the whole loop on the embedded model, in minutes on a CPU.

Erase one canvas-mini style with the default method and its preset, generate every object x style
caption before and after on the same seeds, score UA / IRA / CRA with the shipped evaluator, and
write a before/after grid and a markdown report:

    OUT/run/            the erasure's run folder (manifest.json, edit.safetensors)
    OUT/metrics.json    scores, sampling settings, cost
    OUT/report.md       the same as a table, with the grid
    OUT/grid-run.png    original (left) and erased (right), objects x styles
"""

from __future__ import annotations

import os
from pathlib import Path

from erasure.evaluation import ProgressFn, SamplingSettings, evaluate_runs

DEFAULT_CONCEPT = "dotted"
DEFAULT_METHOD = "esd"


def check_quickstart(out: str | os.PathLike, concept: str, method: str, steps: int | None = None):
    """(request, config) for a quickstart, refusing bad input before any work (nothing is written)."""
    from erasure.api import check_output, method_config
    from erasure.configs import preset_path
    from erasure.evaluation.driver import check_evaluation_output
    from erasure.request import ErasureRequest

    check_evaluation_output(out, [])  # OUT gets the evaluation's files: writable, not inside a run
    request = ErasureRequest(targets=[concept], kind="style")
    request.resolve("canvas-mini")  # an unknown style fails here
    overrides = {"steps": steps} if steps is not None else {}
    config = method_config(method, preset_path(f"{method}/canvas-mini-style"), **overrides)
    check_output(Path(out) / "run")
    return request, config


def quickstart(
    out: str | os.PathLike,
    *,
    concept: str = DEFAULT_CONCEPT,
    method: str = DEFAULT_METHOD,
    steps: int | None = None,
    seeds: list[int] | None = None,
    progress: ProgressFn | None = None,
) -> dict:
    """Erase ``concept`` (a canvas-mini style) and evaluate it; returns the metrics written to OUT."""
    from erasure.api import erase
    from erasure.pipelines import load_pipeline

    request, config = check_quickstart(out, concept, method, steps)
    run = Path(out) / "run"
    pipe = load_pipeline("canvas-mini")
    erase(pipe, request, method, config=config, out=run, progress=progress)
    settings = SamplingSettings(seeds=seeds if seeds is not None else SamplingSettings().seeds)
    return evaluate_runs("canvas-mini", [run], out=out, settings=settings, progress=progress)
