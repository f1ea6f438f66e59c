"""ESD on canvas-mini, UnlearnCanvas-style (issue 4's bar: UA >= 80%, IRA >= 80%, CRA >= 85%).

    python bench/esd_canvas.py [--styles dotted striped] [--objects star] [--seeds 0-1] [--out bench/runs/esd]

Erases each style with the ESD-x preset (configs/esd/canvas-mini-style.yaml) and each object with
the ESD-u preset (configs/esd/canvas-mini-object.yaml), one run per concept, then scores every run
against the original on all 64 object x style captions (seeds as given, DDIM 25 steps, guidance 3)
with the shipped evaluator. Writes bench/results/esd_canvas.json and .md (UA / IRA / CRA before and
after, wall time, peak memory, edit size) and the before/after grids next to the runs.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from _runs import erase_once
from erasure import ErasureRequest
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.evaluation import SamplingSettings, evaluate_runs
from erasure.pipelines.generation import parse_seeds

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BAR = {"UA": 0.80, "IRA": 0.80, "CRA": 0.85}


def run_erasure(concept: str, kind: str, out: Path) -> Path:
    request = ErasureRequest([concept], kind=kind)
    return erase_once(out / f"{kind}-{concept}", request, "esd", preset_path(f"esd/canvas-mini-{kind}"))


def markdown(result: dict) -> str:
    s = result["sampling"]
    lines = [
        "# ESD on canvas-mini",
        "",
        f"`{result['command']}` on {result['machine']}; {result['prompts']} prompts x {len(s['seeds'])} seeds, "
        f"{s['scheduler']} {s['steps']} steps, guidance {s['guidance']}; judge: {result['judge']}.",
        "",
        "| erased | variant | steps | UA | IRA | CRA | UA before | IRA before | CRA before | time (s) | peak RSS (GiB) | edit (MB) | bar met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        a, b, c = r["after"], r["before"], r["cost"]
        lines.append(
            f"| {', '.join(r['targets'])} ({r['kind']}) | {r['variant']} | {r['steps']} | {a['UA']:.1%} | {a['IRA']:.1%} | {a['CRA']:.1%} "
            f"| {b['UA']:.1%} | {b['IRA']:.1%} | {b['CRA']:.1%} | {c.get('wall_seconds', 0):.0f} "
            f"| {c.get('peak_memory_bytes', 0) / 2**30:.2f} | {r['edit_bytes'] / 1e6:.2f} | {'yes' if r['bar_met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--styles", nargs="*", default=["dotted", "striped"])
    ap.add_argument("--objects", nargs="*", default=["star"])
    ap.add_argument("--seeds", default="0-1")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / "esd")
    args = ap.parse_args()
    torch.manual_seed(0)

    runs = [run_erasure(s, "style", args.out) for s in args.styles]
    runs += [run_erasure(o, "object", args.out) for o in args.objects]
    settings = SamplingSettings(seeds=parse_seeds(args.seeds))
    metrics = evaluate_runs("canvas-mini", runs, out=args.out / "eval", settings=settings)
    for r, run in zip(metrics["runs"], runs):
        manifest = read_manifest(run)
        r["variant"], r["steps"] = manifest["config"]["variant"], manifest["config"]["steps"]
        r["edit_bytes"] = manifest.get("edit", {}).get("bytes", 0)
        r["bar_met"] = all(r["after"][k] >= v for k, v in BAR.items())
    metrics["command"] = "python bench/esd_canvas.py " + " ".join(
        [f"--styles {' '.join(args.styles)}", f"--objects {' '.join(args.objects)}", f"--seeds {args.seeds}"])
    metrics["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "esd_canvas.json").write_text(json.dumps(metrics, indent=2))
    (RESULTS / "esd_canvas.md").write_text(markdown(metrics))
    print(markdown(metrics))


if __name__ == "__main__":
    main()
