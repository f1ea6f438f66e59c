"""How far memorization pruning must go on canvas-mini: a rho x tau sweep of the memorized preset.

    python bench/prune_sweep.py [--grid 0.01,5 0.03,5 0.01,10 0.05,10 0.1,25 0.3,25] [--seeds 0-3]

For each (rho, tau) the 8 memorized captions are pruned with configs/prune/canvas-mini-memorized.yaml
and those two values overridden, then scored as bench/prune_canvas.py scores its preset: the share
of (caption, seed) generations above the memorization threshold (read from
bench/results/prune_canvas.json, so run that bench first), their mean similarity to the training
image, and evaluator accuracy on the 64 ordinary captions (seeds 0-1) against the original's.
Writes bench/results/prune_sweep.json and .md; runs go under bench/runs/prune-sweep.
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
from erasure.erased import load_erased
from erasure.pipelines import load_pipeline
from erasure.pipelines.canvas.render import MEMORIZATION_TARGETS
from erasure.pipelines.generation import parse_seeds
from prune_canvas import RESULTS, ROOT, memorization_summary, target_similarity, utility

UTILITY_SEEDS = [0, 1]


def score(pipe, captions: list[str], seeds: list[int], threshold: float) -> dict:
    sims = target_similarity(pipe, captions, seeds)
    return {**memorization_summary(sims, threshold), "utility": utility(pipe, UTILITY_SEEDS)}


def saved_threshold() -> float:
    """The memorization threshold bench/prune_canvas.py measured (that bench must have run)."""
    bench = RESULTS / "prune_canvas.json"
    if not bench.exists():
        raise SystemExit("bench/results/prune_canvas.json is missing: run python bench/prune_canvas.py first")
    return json.loads(bench.read_text())["threshold"]["threshold"]


def protocol_line(r: dict) -> str:
    """The results' how-measured line: command, machine, threshold, seeds."""
    return (f"`{r['command']}` on {r['machine']}; threshold {r['threshold']:.3f} (bench/results/prune_canvas.json); "
            f"similarity on {len(r['seeds'])} seeds per caption, accuracy on the 64 ordinary captions x {len(UTILITY_SEEDS)} seeds.")


def score_cells(s: dict) -> str:
    """A scored model's table cells: memorized share | mean similarity | style acc. | object acc."""
    u = s["utility"]
    return (f"{s['memorized_share']:.1%} | {s['similarity_mean']:.3f} | {u['style_accuracy']:.1%} "
            f"| {u['object_accuracy']:.1%}")


def markdown(r: dict) -> str:
    o = r["original"]
    lines = [
        "# Memorization pruning on canvas-mini: rho x tau sweep",
        "",
        protocol_line(r),
        "",
        "| rho | tau | pruned (% of UNet) | memorized share | mean similarity | style acc. | object acc. | time (s) |",
        "|---|---|---|---|---|---|---|---|",
        f"| original | | 0 | {score_cells(o)} | |",
    ]
    for p in r["points"]:
        lines.append(f"| {p['rho']} | {p['tau']} | {p['fraction_of_unet']:.3%} | {score_cells(p)} | {p['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", nargs="+", default=["0.01,5", "0.03,5", "0.01,10", "0.05,10", "0.1,25", "0.3,25"],
                    help="rho,tau pairs")
    ap.add_argument("--seeds", default="0-3")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / "prune-sweep")
    args = ap.parse_args()
    threshold = saved_threshold()
    seeds = parse_seeds(args.seeds)
    captions = [m.caption for m in MEMORIZATION_TARGETS]
    request = ErasureRequest(captions, kind="memorized")
    points = []
    for spec in args.grid:
        rho_text, tau_text = spec.split(",")
        rho, tau = float(rho_text), int(tau_text)
        run = erase_once(args.out / f"rho{rho}-tau{tau}", request, "prune", preset_path("prune/canvas-mini-memorized"),
                         rho=rho, tau=tau)
        manifest = read_manifest(run)
        pruned = load_erased(run, base=load_pipeline("canvas-mini"))
        points.append({"rho": rho, "tau": tau, "fraction_of_unet": manifest["extra"]["fraction_of_unet"],
                       "wall_seconds": manifest["cost"].get("wall_seconds", 0.0),
                       **score(pruned, captions, seeds, threshold)})
        print(json.dumps(points[-1]), flush=True)
    result = {
        "command": f"python bench/prune_sweep.py --grid {' '.join(args.grid)} --seeds {args.seeds}",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "threshold": threshold, "seeds": seeds,
        "original": score(load_pipeline("canvas-mini"), captions, seeds, threshold),
        "points": points,
    }
    (RESULTS / "prune_sweep.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "prune_sweep.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
