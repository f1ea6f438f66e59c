"""SFD on canvas-mini: the one-step generator against the original multi-step model (issue 7's bar).

    python bench/sfd_canvas.py [--styles dotted] [--objects star] [--seeds 0-1] [--out bench/runs/sfd]
                               [--anchor TEXT] [--set KEY=VALUE ...] [--sampling-steps 25] [--timing-prompts 64]
                               [--results bench/results] [--report-only]

Erases each style with configs/sfd/canvas-mini-style.yaml and each object with
configs/sfd/canvas-mini-object.yaml (``--set`` overrides preset keys; one run per concept, resumed
if a checkpoint is there), then scores every run with the canvas suite (``evaluate_runs``): all 64
object x style captions on the given seeds, drawn by the ORIGINAL model (DDIM 25 steps, guidance 3,
as the other canvas benches: "before") and by each run's ONE-STEP generator (one UNet call per
image; ``load_erased`` samples an SFD run through it: "after"), judged by the shipped evaluator.
What is SFD's own here:

- the bar, relative to the original multi-step model: UA >= 90% and IRA, CRA each >= 85% of the
  original's (``retained_ratio``);
- the FID/KID proxy of both samplers on the retained captions: the suite's (canvas evaluator
  features, not Inception; real renders of the same captions from held-out render seeds as reference);
- sampling time per image of both samplers on the same prompts and seed (fresh, uncached, one
  batch), and the speed-up; training time, t*, losses, peak memory and edit size from the manifest.

Changed with the move to the suite (numbers in bench/results/sfd_canvas.json older than this
change were measured the old way; regenerate them): the FID references were renders from
training's render seeds (0-3 per pair) and are now the suite's held-out ones (reference_seed 4242,
renders_per_caption per caption), with the suite's KID subsets; the plain object/style accuracy of
both samplers is no longer recorded per run (the suite records the original's as
``original_accuracy``).

Writes RESULTS/sfd_canvas.json and .md; the suite's report and before/after grids go to OUT/eval.
``--report-only`` rewrites the markdown from the JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _runs import (canvas_argv, canvas_cells, canvas_options, cost_cells, erase_once, machine, page, parse, sampling, shown,
                   table, write_results, yes_no)
from erasure import ErasureRequest
from erasure.config import parse_assignments
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.erased import load_erased
from erasure.evaluation import SamplingSettings, evaluate_runs
from erasure.evaluation.suites.canvas import canvas_cases
from erasure.one_step import OneStepPipeline
from erasure.pipelines import generate, load_pipeline

NAME = "sfd_canvas"
BAR = {"UA": 0.90, "retained_ratio": 0.85}


def run_erasure(concept: str, kind: str, out: Path, anchor: str | None, overrides: dict) -> Path:
    request = ErasureRequest([concept], kind=kind, anchor=anchor)
    return erase_once(out / f"{kind}-{concept}", request, "sfd", preset_path(f"sfd/canvas-mini-{kind}"), **overrides)


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def sampling_speed(original, generator: OneStepPipeline, prompts: list[str], settings: SamplingSettings) -> dict:
    """Wall time per image of the original sampler and of the generator on the same prompts and seed (batch = all)."""
    seeds = settings.seeds[:1]
    kwargs = dict(seeds=seeds, batch_size=len(prompts))
    generate(original, prompts[:2], seeds=seeds, steps=1, guidance=settings.guidance)  # warm-up
    _, t_orig = timed(lambda: generate(original, prompts, steps=settings.steps, guidance=settings.guidance,
                                       scheduler=settings.scheduler, **kwargs))
    _, t_one = timed(lambda: generate(generator, prompts, **kwargs))
    n = len(prompts) * len(seeds)
    calls = settings.steps * (2 if settings.guidance != 1 else 1)  # CFG doubles the rows of each call
    return {
        "images": n,
        "original_seconds_per_image": t_orig / n,
        "one_step_seconds_per_image": t_one / n,
        "speedup": t_orig / t_one,
        "original_unet_rows_per_image": calls,
        "one_step_unet_rows_per_image": 1,
    }


def sfd_record(r: dict, original, settings: SamplingSettings, timing_prompts: list[str]) -> dict:
    """What the bench adds to a run's canvas-suite entry: the manifest's SFD details, the bar, the sampling speed."""
    manifest = read_manifest(r["run"])
    generator = load_erased(r["run"], base=load_pipeline("canvas-mini"))  # the one-step generator
    ratio = {k: (r["after"][k] / r["before"][k] if r["before"][k] else None) for k in ("IRA", "CRA")}
    return {
        "anchor": manifest["request"].get("anchor"),
        "steps": manifest["config"]["steps"], "t_star": manifest["extra"]["t_star"],
        "retained_ratio": ratio,
        "sampling": sampling_speed(original, generator, timing_prompts, settings),
        "edit_bytes": manifest.get("edit", {}).get("bytes", 0),
        "losses": {k: v for k, v in manifest["extra"].items() if "loss" in k},
        "resumed_from_step": manifest["extra"].get("resumed_from_step"),  # None: a run made before it was recorded
        "bar_met": r["after"]["UA"] >= BAR["UA"] and all(v is not None and v >= BAR["retained_ratio"] for v in ratio.values()),
    }


def markdown(result: dict) -> str:
    s = result["sampling"]
    rows = []
    for r in result["runs"]:
        sp = r["sampling"]
        start = r.get("resumed_from_step") or 0
        ratio = " | ".join(f"{v:.2f}" if v is not None else "n/a" for v in r["retained_ratio"].values())
        rows.append([f"{', '.join(r['targets'])} ({r['kind']})", r["steps"], canvas_cells(r["after"]),
                     canvas_cells(r["before"]), ratio, f"{r['before']['fid']:.2f} / {r['after']['fid']:.2f}",
                     f"{sp['original_seconds_per_image']:.4f} / {sp['one_step_seconds_per_image']:.4f}",
                     f"{sp['speedup']:.1f}x", cost_cells(r, wall_note=f" (steps {start}-{r['steps']})" if start else ""),
                     yes_no(r["bar_met"])])
    return page(
        "# SFD on canvas-mini: one-step generator vs the original model",
        f"`{result['command']}` on {result['machine']}; {result['prompts']} prompts x {len(s['seeds'])} seeds. "
        f"Original: {s['scheduler']} {s['steps']} steps, guidance {s['guidance']}. SFD: one UNet call per image at t*. "
        f"Judge: {result['judge']}. Bar: UA >= {BAR['UA']:.0%}, IRA and CRA >= {BAR['retained_ratio']:.0%} of the original's.",
        table(["erased", "steps", "UA", "IRA", "CRA", "UA orig.", "IRA orig.", "CRA orig.", "IRA ratio", "CRA ratio",
               "FID proxy orig. / SFD", "s/image orig. / SFD", "speed-up", "train (s)", "peak mem (GiB)", "edit (MB)",
               "bar met"], rows),
        "FID proxy: the canvas suite's FID, canvas-evaluator features (not Inception), retained captions only, against "
        f"real renders of the same captions from held-out render seeds. Sampling time: {result['timing_prompts']} prompts "
        "x 1 seed in one batch, uncached, both samplers on the same device. Before/after grids: "
        + ", ".join(f"`{result['grids_dir']}/{r['grid']}`" for r in result["runs"]) + ".",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    canvas_options(ap, NAME, "sfd", styles=["dotted"])
    ap.add_argument("--anchor", default=None, help="override concept (default: the request's, per kind)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="preset override KEY=VALUE (repeat)")
    ap.add_argument("--cache", type=Path, default=None, help="generation cache (default OUT/eval/cache)")
    ap.add_argument("--timing-prompts", type=int, default=64, help="prompts timed with both samplers (1 seed, one batch)")
    args = parse(ap, NAME, markdown)
    if args is None:
        return
    overrides = parse_assignments(args.sets)

    runs = [run_erasure(s, "style", args.out, args.anchor, overrides) for s in args.styles]
    runs += [run_erasure(o, "object", args.out, args.anchor, overrides) for o in args.objects]
    settings = sampling(args)
    metrics = evaluate_runs("canvas-mini", runs, out=args.out / "eval", settings=settings, cache_dir=args.cache)
    timing_prompts = [c.prompt for c in canvas_cases()][:args.timing_prompts]
    original = load_pipeline("canvas-mini")
    for r in metrics["runs"]:
        r.update(sfd_record(r, original, settings, timing_prompts))
    metrics["timing_prompts"] = len(timing_prompts)
    metrics["grids_dir"] = shown(args.out / "eval")
    metrics["command"] = "python bench/sfd_canvas.py " + " ".join(
        canvas_argv(args) + ([f"--anchor {args.anchor!r}"] if args.anchor else []) + [f"--set {s}" for s in args.sets]
        + ([f"--timing-prompts {args.timing_prompts}"] if args.timing_prompts != 64 else []))
    metrics["machine"] = machine()
    write_results(args.results, NAME, metrics, markdown)


if __name__ == "__main__":
    main()
