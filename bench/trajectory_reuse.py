"""Trajectory reuse on canvas-mini: the paper's per-step trajectories against ``trajectories: shared`` (issue 29).

    python bench/trajectory_reuse.py [--styles dotted striped] [--objects star] [--advunlearn-styles dotted]
                                     [--train-seeds 0] [--seeds 0-1] [--set METHOD.KEY=VALUE ...]
                                     [--out bench/runs/trajectory_reuse]
                                     [--results bench/results] [--report-only]

ESD (Gandikota et al. 2023) and AdvUnlearn (Zhang et al. 2024) train on x_t drawn from the frozen
model's own trajectories, one fresh trajectory per sample in the papers and their reference code
(rohitgandikota/erasing, OPTML-Group/AdvUnlearn). ``trajectories: shared`` keeps every sample's
prompt, depth and timestep but packs a prompt's samples onto few trajectories, each (trajectory,
depth) used once (``erasure.sampling.share_trajectories``). This bench runs each shipped canvas-mini
preset both ways from the same training seed (ESD-x on each style, ESD-u on each object, AdvUnlearn
on each ``--advunlearn-styles``), scores all runs with the canvas suite in one evaluation (all 64
object x style captions, the suite's seeds, DDIM 25 steps, the shipped evaluator), and writes
RESULTS/trajectory_reuse.json and .md: UA / IRA / CRA of both modes, their differences against the
evaluation's noise (twice the binomial standard error of the difference, at least one image), the
frozen model's sample-steps and the wall time. DoCo is not in it: it draws no partial trajectories
(its anchors are whole samples of the original, the same in both modes).

The decision it prints, per preset, is what the presets follow: shared where every row of the preset
holds and its shared runs meet the bar (UA >= 80%, IRA >= 80%, CRA >= 85%), per-step elsewhere. The
runs set ``trajectories`` themselves, so a preset that adopted shared is still measured both ways.
Runs are reused while their preset and the model are unchanged (``_runs.erase_once``), so an
interrupted bench resumes where it stopped.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from _runs import (canvas_argv, canvas_options, erase_once, machine, method_overrides, page, parse, sampling, table,
                   write_results)
from erasure import ErasureRequest
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.evaluation import evaluate_runs
from erasure.pipelines.generation import parse_seeds

NAME = "trajectory_reuse"
MODES = ("per-step", "shared")
METRICS = ("UA", "IRA", "CRA")
BAR = {"UA": 0.80, "IRA": 0.80, "CRA": 0.85}  # issue 4's bar for the canvas-mini presets


def erasures(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(method, kind, concept) of every preset the bench runs both ways."""
    return ([("esd", "style", s) for s in args.styles] + [("esd", "object", o) for o in args.objects]
            + [("advunlearn", "style", s) for s in args.advunlearn_styles])


def run_erasure(method: str, kind: str, concept: str, mode: str, seed: int, out: Path, overrides: dict) -> Path:
    run = out / mode / f"seed{seed}" / f"{method}-{kind}-{concept}"
    return erase_once(run, ErasureRequest([concept], kind=kind), method, preset_path(f"{method}/canvas-mini-{kind}"),
                      **{**overrides, "trajectories": mode, "seed": seed})


def noise(a: float, b: float, n: int) -> float:
    """Twice the standard error of the difference of two accuracies over ``n`` images each (at least one image)."""
    se = math.sqrt((a * (1 - a) + b * (1 - b)) / n)
    return max(2 * se, 1 / n)


def compare(per_step: dict, shared: dict) -> dict:
    """Per metric: shared - per-step, the noise bound, and whether the difference is within it (or an improvement)."""
    out = {}
    for k in METRICS:
        n = per_step["after"]["counts"][k]
        a, b = per_step["after"][k], shared["after"][k]
        bound = noise(a, b, n)
        out[k] = {"delta": b - a, "noise": bound, "holds": b - a >= -bound}
    return out


def markdown(result: dict) -> str:
    s = result["sampling"]
    rows = []
    for r in result["rows"]:
        for mode in MODES:
            m = r[mode]
            steps = m["sample_steps"]
            rows.append([f"{r['concept']} ({r['kind']})", r["method"], r["seed"], mode,
                         *(f"{m['after'][k]:.1%}" for k in METRICS),
                         steps.get("executed", ""), f"{m['precompute_seconds']:.0f}", f"{m['wall_seconds']:.0f}",
                         "yes" if m["bar_met"] else "no"])
        d = r["difference"]
        rows.append(["", "", "", "shared - per-step", *(f"{d[k]['delta']:+.1%} (±{d[k]['noise']:.1%})" for k in METRICS),
                     f"{r['sample_step_ratio']:.1f}x fewer", "", f"{r['time_ratio']:.1f}x faster",
                     "holds" if r["holds"] else "does not hold"])
    return page(
        "# Trajectory reuse on canvas-mini: per-step (the papers') vs shared",
        f"`{result['command']}` on {result['machine']}; quiet machine otherwise. UA / IRA / CRA: {result['prompts']} "
        f"prompts x {len(s['seeds'])} seeds, {s['scheduler']} {s['steps']} steps, guidance {s['guidance']}; judge: "
        f"{result['judge']}. Every run is its method's shipped canvas-mini preset with only `trajectories` (and the "
        "training seed) set.",
        "Sample-steps: the frozen model's trajectory steps that produced the run's x_t (`extra.sample_steps.executed`). "
        "The difference holds when shared is no worse than per-step by more than the evaluation's noise: twice the "
        "binomial standard error of the difference, at least one image. Time: the whole erasure (sampling x_t, "
        "training, attacks).",
        table(["erased", "method", "seed", "trajectories", *METRICS, "sample-steps", "sampling x_t (s)", "time (s)",
               "bar met / holds"], rows),
        decide(result["rows"]),
    )


def decide(rows: list[dict]) -> str:
    """Each preset's choice (the method's canvas-mini preset for the row's kind): shared where every
    row of that preset, every concept and training seed, holds and meets the bar; per-step elsewhere."""
    presets: dict[str, list[dict]] = {}
    for r in rows:
        presets.setdefault(f"{r['method']}/canvas-mini-{r['kind']}", []).append(r)
    lines = ["Decision, per preset (shared only where every row of it holds and its shared run meets the bar):"]
    for name, group in presets.items():
        reasons = [f"{r['concept']} seed {r['seed']}: " + ("below the bar" if r["holds"] else
                   "worse than per-step by more than the noise") for r in group if not (r["holds"] and r["shared"]["bar_met"])]
        lines.append(f"- `configs/{name}.yaml`: " + (f"per-step ({'; '.join(reasons)})" if reasons else "shared"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    canvas_options(ap, NAME, NAME)
    ap.add_argument("--advunlearn-styles", nargs="*", default=["dotted"])
    ap.add_argument("--train-seeds", default="0", help="training seeds (each erasure runs once per seed and mode)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="preset override METHOD.KEY=VALUE (repeat; both modes), e.g. esd.steps=100; recorded")
    args = parse(ap, NAME, markdown)
    if args is None:
        return

    overrides = method_overrides(NAME, args.sets, ["esd", "advunlearn"])
    if any({"trajectories", "seed"} & set(o) for o in overrides.values()):
        raise SystemExit(f"{NAME}: --set: trajectories and seed are the bench's own (both modes; --train-seeds)")
    plan = [(e, seed, mode) for seed in parse_seeds(args.train_seeds) for e in erasures(args) for mode in MODES]
    runs = [run_erasure(*e, mode, seed, args.out, overrides[e[0]]) for e, seed, mode in plan]
    metrics = evaluate_runs("canvas-mini", runs, out=args.out / "eval", settings=sampling(args))
    scored = {}
    for (e, seed, mode), run, r in zip(plan, runs, metrics["runs"]):
        manifest = read_manifest(run)
        cost = manifest["cost"]
        scored[(e, seed, mode)] = {
            "run": r["run"], "after": r["after"], "before": r["before"],
            "sample_steps": manifest.get("extra", {}).get("sample_steps", {}),
            "wall_seconds": cost["wall_seconds"], "precompute_seconds": cost["phases_seconds"].get("precompute", 0.0),
            "bar_met": all(r["after"][k] >= v for k, v in BAR.items()),
        }
    rows = []
    for e, seed in dict.fromkeys((e, seed) for e, seed, _ in plan):
        per_step, shared = scored[(e, seed, "per-step")], scored[(e, seed, "shared")]
        difference = compare(per_step, shared)
        rows.append({
            "method": e[0], "kind": e[1], "concept": e[2], "seed": seed, "per-step": per_step, "shared": shared,
            "difference": difference, "holds": all(d["holds"] for d in difference.values()),
            "sample_step_ratio": per_step["sample_steps"].get("executed", 0) / max(1, shared["sample_steps"].get("executed", 0)),
            "time_ratio": per_step["wall_seconds"] / shared["wall_seconds"],
        })
    result = {k: metrics[k] for k in ("suite", "judge", "sampling", "prompts")}
    result.update(overrides=overrides, rows=rows, machine=machine(),
                  command="python bench/trajectory_reuse.py " + " ".join(
                      canvas_argv(args) + [f"--advunlearn-styles {' '.join(args.advunlearn_styles)}".strip(),
                                           f"--train-seeds {args.train_seeds}"] + [f"--set {x}" for x in args.sets]))
    write_results(args.results, NAME, result, markdown)


if __name__ == "__main__":
    main()
