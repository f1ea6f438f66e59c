"""ESD on canvas-mini, UnlearnCanvas-style (issue 4's bar: UA >= 80%, IRA >= 80%, CRA >= 85%).

    python bench/esd_canvas.py [--styles dotted striped] [--objects star] [--seeds 0-1] [--out bench/runs/esd]
                               [--sampling-steps 25] [--set KEY=VALUE ...] [--results bench/results] [--report-only]

Erases each style with the ESD-x preset (configs/esd/canvas-mini-style.yaml) and each object with
the ESD-u preset (configs/esd/canvas-mini-object.yaml), one run per concept (``--set`` overrides
preset keys), then scores every run against the original with the canvas suite (``evaluate_runs``:
all 64 object x style captions, seeds as given, DDIM 25 steps, guidance 3, the shipped evaluator).
Writes RESULTS/esd_canvas.json and .md (UA / IRA / CRA before and after, wall time, peak memory,
edit size) and the suite's report and before/after grids under OUT/eval. ``--report-only``
rewrites the markdown from the JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _runs import (canvas_argv, canvas_cells, canvas_options, cost_cells, erase_once, machine, page, parse, sampling, table,
                   write_results, yes_no)
from erasure import ErasureRequest
from erasure.config import parse_assignments
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.evaluation import evaluate_runs

NAME = "esd_canvas"
BAR = {"UA": 0.80, "IRA": 0.80, "CRA": 0.85}


def run_erasure(concept: str, kind: str, out: Path, overrides: dict) -> Path:
    request = ErasureRequest([concept], kind=kind)
    return erase_once(out / f"{kind}-{concept}", request, "esd", preset_path(f"esd/canvas-mini-{kind}"), **overrides)


def markdown(result: dict) -> str:
    s = result["sampling"]
    return page(
        "# ESD on canvas-mini",
        f"`{result['command']}` on {result['machine']}; {result['prompts']} prompts x {len(s['seeds'])} seeds, "
        f"{s['scheduler']} {s['steps']} steps, guidance {s['guidance']}; judge: {result['judge']}.",
        table(["erased", "variant", "steps", "UA", "IRA", "CRA", "UA before", "IRA before", "CRA before", "time (s)",
               "peak RSS (GiB)", "edit (MB)", "bar met"],
              [[f"{', '.join(r['targets'])} ({r['kind']})", r["variant"], r["steps"], canvas_cells(r["after"]),
                canvas_cells(r["before"]), cost_cells(r), yes_no(r["bar_met"])] for r in result["runs"]]),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    canvas_options(ap, NAME, "esd")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="preset override KEY=VALUE (repeat)")
    args = parse(ap, NAME, markdown)
    if args is None:
        return
    overrides = parse_assignments(args.sets)

    runs = [run_erasure(s, "style", args.out, overrides) for s in args.styles]
    runs += [run_erasure(o, "object", args.out, overrides) for o in args.objects]
    metrics = evaluate_runs("canvas-mini", runs, out=args.out / "eval", settings=sampling(args))
    for r, run in zip(metrics["runs"], runs):
        manifest = read_manifest(run)
        r["variant"], r["steps"] = manifest["config"]["variant"], manifest["config"]["steps"]
        r["edit_bytes"] = manifest.get("edit", {}).get("bytes", 0)
        r["bar_met"] = all(r["after"][k] >= v for k, v in BAR.items())
    metrics["command"] = "python bench/esd_canvas.py " + " ".join(canvas_argv(args) + [f"--set {s}" for s in args.sets])
    metrics["machine"] = machine()
    write_results(args.results, NAME, metrics, markdown)


if __name__ == "__main__":
    main()
