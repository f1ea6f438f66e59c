"""Memorization-subspace pruning on canvas-mini (issue 8's bar) and its concept variant beside ESD.

    python bench/prune_canvas.py [--seeds 0-7] [--style dotted] [--per-pair 64] [--sampling-steps 25]
                                 [--set KEY=VALUE ...] [--out bench/runs/prune] [--picture docs/prune-memorization.png]
                                 [--results bench/results] [--report-only]

1. Memorization: prunes the memorization subspace for canvas-mini's 8 memorized captions with
   configs/prune/canvas-mini-memorized.yaml, then scores each caption's generations (seeds as
   given) before and after with the memorization suite in pixel space (``MemorizationSimilarity``
   with ``PixelEmbedding``: the Pearson correlation, mean-centred pixels, with the caption's
   training image). The threshold is canvas-mini's (``canvas_ordinary_threshold``): the 99th
   percentile of ordinary generations' similarity to their nearest training render (the 64 object x
   style captions, same seeds, against ``--per-pair`` training renders of their pair). Bar: after
   pruning, >= 90% of (caption, seed) generations fall below it.
2. Utility: evaluator accuracy (styles, objects) on the 64 ordinary captions before and after.
   Bar: drops of at most 3 points.
3. Robustness, before and after: re-trigger attempts with paraphrased captions and with small
   Gaussian perturbations of the captions' text embeddings (relative std 0.05 and 0.1).
4. Concept variant: prunes a style with configs/prune/canvas-mini-style.yaml and scores it with the
   canvas suite (UA / IRA / CRA, the first two seeds), beside ESD's numbers from RESULTS/esd_canvas.json.

``scoring`` and ``score`` are how every prune bench scores a model (bench/prune_sweep.py and
bench/prune_ceiling.py import them). ``--set`` overrides keys of both prune presets.

Writes RESULTS/prune_canvas.json and .md, and the picture (``memorization_grid``: per caption its
training image, then generations before | after). ``--report-only`` rewrites the markdown from the
JSON. Changed with the move to the memorization suite (regenerate the committed numbers): the
similarity is computed in float32 instead of float64, and the per-(caption, seed) similarities are
no longer recorded (the per-caption shares are).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from _runs import ROOT, canvas_cells, erase_once, machine, page, parse, results_options, row, table, write_results
from erasure import ErasureRequest
from erasure.config import parse_assignments
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.evaluation import Evaluation, GenerationCache, SamplingSettings, evaluate_runs, generate_cached, load_suite
from erasure.evaluation.suites.canvas import accuracy_canvas, canvas_cases
from erasure.evaluation.suites.memorization import canvas_ordinary_threshold, memorization_grid
from erasure.metrics import PixelEmbedding
from erasure.pipelines.generation import parse_seeds

NAME = "prune_canvas"
GUIDANCE = 3.0
PARAPHRASES = ("an image of {c}", "{c}, a picture", "the {c}")
NOISE_LEVELS = (0.05, 0.1)


def scoring(seeds: list[int], out: Path, steps: int = 25, threshold: float | None = None,
            per_pair: int = 64) -> tuple[Evaluation, dict]:
    """The evaluation every prune bench scores in, and its threshold's record.

    canvas-mini is the original; DDIM ``steps`` steps, guidance 3, ``seeds``; images cached under
    ``out``/cache. Its suite is the memorization suite in pixel space with ``threshold``, or, when
    None, canvas-mini's (``canvas_ordinary_threshold`` over ``per_pair`` training renders per pair).
    """
    settings = SamplingSettings(steps=steps, guidance=GUIDANCE, seeds=list(seeds))
    ev = Evaluation("canvas-mini", [], [], load_suite("memorization", embedding="pixels"), settings, out,
                    GenerationCache(out / "cache"))
    record = {"threshold": threshold} if threshold is not None else canvas_ordinary_threshold(ev, per_pair, PixelEmbedding())
    ev.suite = load_suite("memorization", embedding="pixels", threshold=record["threshold"])
    ev.suite.prepare(ev)
    return ev, record


def score(ev: Evaluation, pipe, name: str, utility_seeds: list[int] | None = None) -> dict:
    """How the prune benches score a model: the memorization suite's scores of its generations for the
    memorized captions (``memorized_share`` above the threshold, ``per_caption_share``, ``similarity_mean``
    to the training image) and, as ``utility``, the evaluator's object / style accuracy on the 64 ordinary
    captions (on ``utility_seeds``; default: the evaluation's seeds)."""
    images = ev.generate(pipe, ev.suite.captions, name)
    cases = canvas_cases()
    settings = replace(ev.settings, seeds=utility_seeds or ev.settings.seeds)
    ordinary = generate_cached(pipe, [c.prompt for c in cases], settings, ev.cache)
    return {**ev.suite.score(images, None), "utility": accuracy_canvas(ordinary, cases, len(settings.seeds))}


def robustness(ev: Evaluation, pipe, name: str) -> dict:
    """Share of generations above the threshold for re-trigger attempts: paraphrased captions, and the
    captions' text embeddings perturbed."""
    suite = ev.suite
    result = {}
    for template in PARAPHRASES:
        images = ev.generate(pipe, [template.format(c=c) for c in suite.captions], f"{name} paraphrases")
        result[f"paraphrase: {template}"] = suite.score(images, None)["memorized_share"]
    for level in NOISE_LEVELS:
        images = [im for i, c in enumerate(suite.captions) for im in _generate_perturbed(pipe, c, ev.settings, level, i)]
        result[f"embedding noise {level}"] = suite.score(images, None)["memorized_share"]
    return result


@torch.no_grad()
def _generate_perturbed(pipe, prompt: str, settings: SamplingSettings, noise: float, salt: int) -> list[Image.Image]:
    """One image per seed for ``prompt`` with Gaussian noise of std ``noise`` (relative to the embedding's
    own std) added to its text embedding (a fixed draw per prompt)."""
    seeds = settings.seeds
    embeds, negative = pipe.encode_prompt([prompt] * len(seeds), pipe.unet.device, 1, True, [""] * len(seeds))
    g = torch.Generator().manual_seed(10_000 + salt)
    embeds = embeds + noise * embeds.std() * torch.randn(embeds.shape, generator=g).to(embeds)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=settings.steps,
                guidance_scale=settings.guidance, generator=[torch.Generator().manual_seed(s) for s in seeds]).images


def score_cells(s: dict) -> str:
    """A scored model's table cells: memorized share | mean similarity | style acc. | object acc."""
    u = s["utility"]
    return (f"{s['memorized_share']:.1%} | {s['similarity_mean']:.3f} | {u['style_accuracy']:.1%} "
            f"| {u['object_accuracy']:.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-7")
    ap.add_argument("--style", default="dotted")
    ap.add_argument("--per-pair", type=int, default=64, help="training renders per pair for the threshold")
    ap.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps of every scored image")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override of both prune presets KEY=VALUE")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / "prune")
    ap.add_argument("--picture", type=Path, default=ROOT / "docs" / "prune-memorization.png")
    results_options(ap, NAME)
    args = parse(ap, NAME, markdown)
    if args is None:
        return
    seeds = parse_seeds(args.seeds)
    overrides = parse_assignments(args.sets)

    ev, threshold = scoring(seeds, args.out / "eval", args.sampling_steps, per_pair=args.per_pair)
    captions = ev.suite.captions
    original = ev.base()
    before = {**score(ev, original, "original"), "robustness": robustness(ev, original, "original")}
    run = erase_once(args.out / "memorized", ErasureRequest(captions, kind="memorized"), "prune",
                     preset_path("prune/canvas-mini-memorized"), **overrides)
    pruned = ev.erased(run)
    after = {**score(ev, pruned, "pruned"), "robustness": robustness(ev, pruned, "pruned")}
    args.picture.parent.mkdir(parents=True, exist_ok=True)
    memorization_grid(ev.suite.training, ev.generate(original, captions, "original"), ev.generate(pruned, captions, "pruned"),
                      captions, ev.seeds).save(args.picture)
    manifest = read_manifest(run)

    style_run = erase_once(args.out / f"style-{args.style}", ErasureRequest([args.style], kind="style"), "prune",
                           preset_path("prune/canvas-mini-style"), **overrides)
    canvas = evaluate_runs("canvas-mini", [style_run], out=args.out / "eval",
                           settings=SamplingSettings(steps=args.sampling_steps, seeds=seeds[:2]))
    esd_path = args.results / "esd_canvas.json"
    esd = [r for r in json.loads(esd_path.read_text())["runs"] if args.style in r["targets"]] if esd_path.exists() else []

    command = f"python bench/prune_canvas.py --seeds {args.seeds} --style {args.style} --per-pair {args.per_pair}"
    command += f" --sampling-steps {args.sampling_steps}" if args.sampling_steps != 25 else ""
    result = {
        "command": command + "".join(f" --set {s}" for s in args.sets),
        "machine": machine(),
        "sampling": {"scheduler": "DDIM (canvas-mini's)", "steps": args.sampling_steps, "guidance": GUIDANCE, "seeds": seeds},
        "threshold": threshold,
        "memorized": {"before": before, "after": after, "wall_seconds": manifest["cost"].get("wall_seconds", 0.0),
                      "pruned_weights": manifest["extra"]["pruned_weights"],
                      "fraction_of_unet": manifest["extra"]["fraction_of_unet"],
                      "edit_bytes": manifest["edit"]["bytes"], "config": manifest["config"]},
        "style": {"run": canvas["runs"][0], "esd": esd[0] if esd else None,
                  "pruned_weights": read_manifest(style_run)["extra"]["pruned_weights"]},
    }
    result["bar"] = {
        "below_threshold_after": 1 - after["memorized_share"],
        "utility_drop_points": {k: 100 * (before["utility"][k] - after["utility"][k]) for k in before["utility"]},
    }
    result["bar"]["met"] = result["bar"]["below_threshold_after"] >= 0.9 and all(
        d <= 3 for d in result["bar"]["utility_drop_points"].values())
    write_results(args.results, NAME, result, markdown)


def markdown(r: dict) -> str:
    m, b, a = r["memorized"], r["memorized"]["before"], r["memorized"]["after"]
    s = r["style"]
    return page(
        "# Memorization-subspace pruning on canvas-mini",
        f"`{r['command']}` on {r['machine']}; DDIM {r['sampling']['steps']} steps, guidance {r['sampling']['guidance']}, "
        f"{len(r['sampling']['seeds'])} seeds per caption.",
        f"Memorization threshold (Pearson, p99 of ordinary generations vs their nearest training render): "
        f"**{r['threshold']['threshold']:.3f}**.",
        ["| | memorized share | mean similarity | style accuracy | object accuracy |",  # as the committed page writes it
         "|---|---|---|---|---|", row(["before", score_cells(b)]), row(["after pruning", score_cells(a)])],
        f"Pruned {m['pruned_weights']} weights ({m['fraction_of_unet']:.3%} of the UNet), edit {m['edit_bytes']} bytes, "
        f"{m['wall_seconds']:.1f} s. Bar (>= 90% below threshold, utility drop <= 3 points): "
        f"**{'met' if r['bar']['met'] else 'not met'}**.",
        "Re-trigger attempts (share of generations above the threshold):",
        table(["attempt", "before", "after"], [[k, f"{b['robustness'][k]:.1%}", f"{a['robustness'][k]:.1%}"] for k in b["robustness"]]),
        f"Concept variant (style, {s['pruned_weights']} weights pruned) beside ESD-x:",
        table(["method", "UA", "IRA", "CRA"],
              [["prune", canvas_cells(s["run"]["after"])]]
              + ([["esd (bench/results/esd_canvas.json)", canvas_cells(s["esd"]["after"])]] if s["esd"] else [])),
    )

if __name__ == "__main__":
    main()
