"""How far memorization pruning must go on canvas-mini: a rho x tau sweep of the memorized preset.

    python bench/prune_sweep.py [--grid 0.01,5 0.03,5 0.01,10 0.05,10 0.1,25 0.3,25] [--seeds 0-3]
                                [--sampling-steps 25] [--set KEY=VALUE ...] [--out bench/runs/prune-sweep]
                                [--results bench/results] [--report-only]

For each (rho, tau) the 8 memorized captions are pruned with configs/prune/canvas-mini-memorized.yaml
and those two values overridden (``--set`` overrides other keys), then scored as
bench/prune_canvas.py scores its preset (its ``score``): the share of (caption, seed) generations
above the memorization threshold (read from RESULTS/prune_canvas.json, so run that bench first),
their mean similarity to the training image, and evaluator accuracy on the 64 ordinary captions
(seeds 0-1) against the original's. Writes RESULTS/prune_sweep.json and .md; runs and the image
cache go under ``--out``. ``--report-only`` rewrites the markdown from the JSON.

``sweep_options``, ``measure`` and ``sweep_page`` are the sweep's and bench/prune_ceiling.py's shared
command line, loop and results page.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from _runs import ROOT, erase_once, machine, page, parse, results_options, table, write_results
from erasure import ErasureRequest
from erasure.config import parse_assignments
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.evaluation import Evaluation
from erasure.pipelines.generation import parse_seeds
from prune_canvas import score, score_cells, scoring

NAME = "prune_sweep"
UTILITY_SEEDS = [0, 1]
SCORE_HEADS = ["memorized share", "mean similarity", "style acc.", "object acc."]

#: A bench's models to score: given the evaluation, (label, record, pipeline) for each.
Models = Callable[[Evaluation], Iterable[tuple[str, dict, object]]]


def saved_threshold(results: Path) -> float:
    """The memorization threshold bench/prune_canvas.py measured (that bench must have run)."""
    bench = results / "prune_canvas.json"
    if not bench.exists():
        raise SystemExit(f"{bench} is missing: run python bench/prune_canvas.py first")
    return json.loads(bench.read_text())["threshold"]["threshold"]


def sweep_options(ap: argparse.ArgumentParser, name: str, out: str) -> None:
    """The command line the sweep and the ceiling share."""
    ap.add_argument("--seeds", default="0-3")
    ap.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps of every scored image")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / out, help="runs and the image cache")
    results_options(ap, name)


def measure(args, command: str, key: str, models: Models) -> dict:
    """Score the original and each of ``models`` as bench/prune_canvas.py scores (similarity on ``--seeds``,
    accuracy on ``UTILITY_SEEDS``), printing each row as it comes: the results' content, rows under ``key``."""
    ev, _ = scoring(parse_seeds(args.seeds), args.out / "eval", args.sampling_steps, threshold=saved_threshold(args.results))
    rows = []
    for label, record, pipe in models(ev):
        rows.append({**record, **score(ev, pipe, label, UTILITY_SEEDS)})
        print(json.dumps(rows[-1]), flush=True)
    if args.sampling_steps != 25:
        command += f" --sampling-steps {args.sampling_steps}"
    return {"command": command, "machine": machine(), "threshold": ev.suite.threshold, "seeds": ev.settings.seeds,
            "original": score(ev, ev.base(), "original", UTILITY_SEEDS), key: rows}


def protocol_line(r: dict) -> str:
    """The results' how-measured line: command, machine, threshold, seeds."""
    return (f"`{r['command']}` on {r['machine']}; threshold {r['threshold']:.3f} (bench/results/prune_canvas.json); "
            f"similarity on {len(r['seeds'])} seeds per caption, accuracy on the 64 ordinary captions x {len(UTILITY_SEEDS)} seeds.")


def sweep_page(title: str, r: dict, heads: list[str], rows: list) -> str:
    """The sweep's and the ceiling's results page: the title, how it was measured, a row per scored model."""
    return page(title, protocol_line(r), table(heads, rows))


def markdown(r: dict) -> str:
    return sweep_page("# Memorization pruning on canvas-mini: rho x tau sweep", r,
                      ["rho", "tau", "pruned (% of UNet)", *SCORE_HEADS, "time (s)"],
                      [f"| original | | 0 | {score_cells(r['original'])} | |",  # as the committed page writes it
                       *([p["rho"], p["tau"], f"{p['fraction_of_unet']:.3%}", score_cells(p), f"{p['wall_seconds']:.0f}"]
                         for p in r["points"])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", nargs="+", default=["0.01,5", "0.03,5", "0.01,10", "0.05,10", "0.1,25", "0.3,25"],
                    help="rho,tau pairs")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="preset override KEY=VALUE (repeat)")
    sweep_options(ap, NAME, "prune-sweep")
    args = parse(ap, NAME, markdown)
    if args is None:
        return
    overrides = parse_assignments(args.sets)

    def points(ev: Evaluation):
        request = ErasureRequest(ev.suite.captions, kind="memorized")
        for spec in args.grid:
            rho_text, tau_text = spec.split(",")
            rho, tau = float(rho_text), int(tau_text)
            run = erase_once(args.out / f"rho{rho}-tau{tau}", request, "prune", preset_path("prune/canvas-mini-memorized"),
                             **{**overrides, "rho": rho, "tau": tau})
            manifest = read_manifest(run)
            yield run.name, {"rho": rho, "tau": tau, "fraction_of_unet": manifest["extra"]["fraction_of_unet"],
                             "wall_seconds": manifest["cost"].get("wall_seconds", 0.0)}, ev.erased(run)

    command = f"python bench/prune_sweep.py --grid {' '.join(args.grid)} --seeds {args.seeds}"
    result = measure(args, command + "".join(f" --set {s}" for s in args.sets), "points", points)
    write_results(args.results, NAME, result, markdown)


if __name__ == "__main__":
    main()
