"""SFD on canvas-mini: the one-step generator against the original multi-step model (issue 7's bar).

    python bench/sfd_canvas.py [--styles dotted] [--objects star] [--seeds 0-1] [--out bench/runs/sfd]
                               [--anchor TEXT] [--set KEY=VALUE ...] [--results bench/results]

Erases each style with configs/sfd/canvas-mini-style.yaml and each object with
configs/sfd/canvas-mini-object.yaml (``--set`` overrides preset keys; one run per concept, resumed
if a checkpoint is there), then draws all 64 object x style captions on the given seeds with the
ORIGINAL model (DDIM 25 steps, guidance 3, as the other canvas benches) and with each run's
ONE-STEP generator (one UNet call per image), and scores both with the shipped evaluator:

- UA / IRA / CRA (UnlearnCanvas) of the one-step samples, and of the original's for reference;
  the bar: UA >= 90% and IRA, CRA each >= 85% of the original multi-step model's;
- FID / KID proxy on the retained prompts (canvas evaluator features, not Inception; renders of
  the same object x style pairs as reference), for the original and for each generator;
- sampling time per image of both samplers on the same prompts and seeds (fresh, uncached), and
  the speed-up; training time, peak memory and edit size from the run's manifest.

Writes bench/results/sfd_canvas.json and .md and the before/after grids next to the runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import erasure.methods.sfd  # noqa: F401  (registers "sfd"; harmless once the registry names it lazily)
from _runs import erase_once
from erasure import ErasureRequest
from erasure.api import parse_assignments
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.evaluation import (
    GenerationCache,
    SamplingSettings,
    accuracy_canvas,
    before_after_grid,
    canvas_cases,
    canvas_targets,
    generate_cached,
    score_canvas,
)
from erasure.erased import load_erased
from erasure.pipelines import generate, load_pipeline
from erasure.pipelines.generation import parse_seeds
from erasure.one_step import OneStepPipeline, one_step_pipeline

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BAR = {"UA": 0.90, "retained_ratio": 0.85}
RENDER_SEEDS = range(4)  # reference renders per object x style pair for the FID/KID proxy


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


def fid_kid(images: list, cases: list, keep: list[bool], seeds: int) -> dict:
    """FID/KID proxy (canvas evaluator features) of the images of kept cases against renders of the same pairs."""
    from erasure.metrics import FIDKID
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, render

    metric = FIDKID("canvas-evaluator")
    real = [render(OBJECTS[c.object], STYLES[c.style], s) for c, k in zip(cases, keep) if k for s in RENDER_SEEDS]
    fake = [im for i, im in enumerate(images) if keep[i // seeds]]
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric.compute()


def evaluate(runs: list[Path], settings: SamplingSettings, out: Path, cache_dir: Path, timing_prompts: int) -> dict:
    cases = canvas_cases()
    prompts = [c.prompt for c in cases]
    n = len(settings.seeds)
    cache = GenerationCache(cache_dir)
    original = load_pipeline("canvas-mini")
    before = generate_cached(original, prompts, settings, cache)
    results = []
    for run in runs:
        manifest = read_manifest(run)
        kind, idx = canvas_targets(manifest["request"])
        generator = one_step_pipeline(load_erased(run, base=load_pipeline("canvas-mini")), manifest["extra"])
        after = generate_cached(generator, prompts, settings, cache)
        grid = before_after_grid(before, after, cases, n, f"one-step SFD: {', '.join(manifest['request']['targets'])}")
        grid_name = f"grid-{run.name}.png"
        out.mkdir(parents=True, exist_ok=True)
        grid.save(out / grid_name)
        b, a = score_canvas(before, cases, n, kind, idx), score_canvas(after, cases, n, kind, idx)
        keep = [(c.style if kind == "style" else c.object) not in idx for c in cases]
        ratio = {k: (a[k] / b[k] if b[k] else None) for k in ("IRA", "CRA")}
        results.append({
            "run": str(run), "kind": kind, "targets": manifest["request"]["targets"],
            "anchor": manifest["request"].get("anchor"),
            "steps": manifest["config"]["steps"], "t_star": manifest["extra"]["t_star"],
            "before": b, "after": a, "retained_ratio": ratio,
            "accuracy_before": accuracy_canvas(before, cases, n), "accuracy_after": accuracy_canvas(after, cases, n),
            "fid_kid_retained_before": fid_kid(before, cases, keep, n),
            "fid_kid_retained_after": fid_kid(after, cases, keep, n),
            "sampling": sampling_speed(original, generator, prompts[:timing_prompts], settings),
            "cost": manifest.get("cost", {}), "edit_bytes": manifest.get("edit", {}).get("bytes", 0),
            "losses": {k: v for k, v in manifest["extra"].items() if "loss" in k},
            "resumed_from_step": manifest["extra"].get("resumed_from_step"),  # None: a run made before it was recorded
            "bar_met": a["UA"] >= BAR["UA"] and all(r is not None and r >= BAR["retained_ratio"] for r in ratio.values()),
            "grid": grid_name,
        })
    return {"sampling": vars(settings), "prompts": len(prompts), "judge": "canvas-mini evaluator", "runs": results,
            "timing_prompts": min(timing_prompts, len(prompts)), "grids_dir": str(out)}


def markdown(result: dict) -> str:
    s = result["sampling"]
    lines = [
        "# SFD on canvas-mini: one-step generator vs the original model",
        "",
        f"`{result['command']}` on {result['machine']}; {result['prompts']} prompts x {len(s['seeds'])} seeds. "
        f"Original: {s['scheduler']} {s['steps']} steps, guidance {s['guidance']}. SFD: one UNet call per image at t*. "
        f"Judge: {result['judge']}. Bar: UA >= {BAR['UA']:.0%}, IRA and CRA >= {BAR['retained_ratio']:.0%} of the original's.",
        "",
        "| erased | steps | UA | IRA | CRA | UA orig. | IRA orig. | CRA orig. | IRA ratio | CRA ratio "
        "| FID proxy orig. / SFD | s/image orig. / SFD | speed-up | train (s) | peak mem (GiB) | edit (MB) | bar met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        a, b, c, sp = r["after"], r["before"], r["cost"], r["sampling"]
        start = r.get("resumed_from_step") or 0
        resumed = f" (steps {start}-{r['steps']})" if start else ""
        ratio = " | ".join(f"{v:.2f}" if v is not None else "n/a" for v in r["retained_ratio"].values())
        lines.append(
            f"| {', '.join(r['targets'])} ({r['kind']}) | {r['steps']} | {a['UA']:.1%} | {a['IRA']:.1%} | {a['CRA']:.1%} "
            f"| {b['UA']:.1%} | {b['IRA']:.1%} | {b['CRA']:.1%} | {ratio} "
            f"| {r['fid_kid_retained_before']['fid']:.2f} / {r['fid_kid_retained_after']['fid']:.2f} "
            f"| {sp['original_seconds_per_image']:.4f} / {sp['one_step_seconds_per_image']:.4f} | {sp['speedup']:.1f}x "
            f"| {c.get('wall_seconds', 0):.0f}{resumed} | {c.get('peak_memory_bytes', 0) / 2**30:.2f} | {r['edit_bytes'] / 1e6:.2f} "
            f"| {'yes' if r['bar_met'] else 'no'} |"
        )
    lines += ["", "FID proxy: canvas-evaluator features (not Inception), retained prompts only, against renders "
              f"({len(RENDER_SEEDS)} per pair). Sampling time: {result['timing_prompts']} prompts x 1 seed in one batch, "
              "uncached, both samplers on the same device. Before/after grids: "
              + ", ".join(f"`{result['grids_dir']}/{r['grid']}`" for r in result["runs"]) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--styles", nargs="*", default=["dotted"])
    ap.add_argument("--objects", nargs="*", default=["star"])
    ap.add_argument("--seeds", default="0-1")
    ap.add_argument("--anchor", default=None, help="override concept (default: the request's, per kind)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="preset override KEY=VALUE (repeat)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / "sfd")
    ap.add_argument("--cache", type=Path, default=None, help="generation cache (default OUT/eval/cache)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--timing-prompts", type=int, default=64, help="prompts timed with both samplers (1 seed, one batch)")
    args = ap.parse_args()
    torch.manual_seed(0)
    overrides = parse_assignments(args.sets)

    runs = [run_erasure(s, "style", args.out, args.anchor, overrides) for s in args.styles]
    runs += [run_erasure(o, "object", args.out, args.anchor, overrides) for o in args.objects]
    settings = SamplingSettings(seeds=parse_seeds(args.seeds))
    result = evaluate(runs, settings, args.out / "eval", args.cache or args.out / "eval" / "cache", args.timing_prompts)
    result["command"] = "python bench/sfd_canvas.py " + " ".join(
        [f"--styles {' '.join(args.styles)}".strip(), f"--objects {' '.join(args.objects)}".strip(), f"--seeds {args.seeds}"]
        + ([f"--anchor {args.anchor!r}"] if args.anchor else []) + [f"--set {s}" for s in args.sets]
        + ([f"--timing-prompts {args.timing_prompts}"] if args.timing_prompts != 64 else []))
    result["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads" + (
        f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "sfd_canvas.json").write_text(json.dumps(result, indent=2))
    (args.results / "sfd_canvas.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
