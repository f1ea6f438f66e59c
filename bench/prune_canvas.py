"""Memorization-subspace pruning on canvas-mini (issue 8's bar) and its concept variant beside ESD.

    python bench/prune_canvas.py [--seeds 0-7] [--style dotted] [--out bench/runs/prune]

1. Memorization: prunes the memorization subspace for canvas-mini's 8 memorized captions with
   configs/prune/canvas-mini-memorized.yaml, then for each caption and seed measures the Pearson
   correlation (mean-centred pixels) of the generation with the caption's training image, before
   and after. The memorization threshold is canvas-mini's: the 99th percentile of ordinary
   generations' similarity to their nearest training render (the 64 object x style captions, same
   seeds, against every render of their pair). Bar: after pruning, >= 90% of (caption, seed)
   generations fall below it.
2. Utility: evaluator accuracy (styles, objects, both) on the 64 ordinary captions before and
   after. Bar: drops of at most 3 points.
3. Robustness, before and after: re-trigger attempts with paraphrased captions and with small
   Gaussian perturbations of the captions' text embeddings (relative std 0.05 and 0.1).
4. Concept variant: prunes a style with configs/prune/canvas-mini-style.yaml and scores it with the
   canvas suite (UA / IRA / CRA), beside ESD's numbers from bench/results/esd_canvas.json.

Writes bench/results/prune_canvas.json and .md, and docs/prune-memorization.png (training image,
then generations before | after, per caption).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _runs import erase_once
from erasure import ErasureRequest
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.evaluation import SamplingSettings, accuracy_canvas, canvas_cases, evaluate_runs
from erasure.erased import load_erased
from erasure.pipelines import load_pipeline
from erasure.pipelines.canvas.render import MEMORIZATION_TARGETS, OBJECTS, STYLES, caption, grid_dataset, to_array
from erasure.pipelines.generation import generate, parse_seeds

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
STEPS, GUIDANCE = 25, 3.0
PARAPHRASES = ("an image of {c}", "{c}, a picture", "the {c}")
NOISE_LEVELS = (0.05, 0.1)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of image arrays (N, H, W, C) against (N or M, H, W, C)."""
    x = a.reshape(len(a), -1).astype(np.float64)
    y = b.reshape(len(b), -1).astype(np.float64)
    x = (x - x.mean(1, keepdims=True)) / np.linalg.norm(x - x.mean(1, keepdims=True), axis=1, keepdims=True)
    y = (y - y.mean(1, keepdims=True)) / np.linalg.norm(y - y.mean(1, keepdims=True), axis=1, keepdims=True)
    return x @ y.T


def memorization_threshold(pipe, seeds: list[int], per_pair: int) -> dict:
    """p99 of ordinary generations' Pearson similarity to the nearest training render of their pair."""
    images, objects, styles = grid_dataset(per_pair=per_pair, seed=0)  # the first renders of training's
    sims = []
    for o in range(len(OBJECTS)):
        for s in range(len(STYLES)):
            gens = to_array(generate(pipe, [caption(OBJECTS[o], STYLES[s])], seeds=seeds, steps=STEPS,
                                     guidance=GUIDANCE, batch_size=len(seeds)))
            renders = images[(objects == o) & (styles == s)]
            sims.append(pearson(gens, renders).max(1))
    sims = np.concatenate(sims)
    return {"threshold": float(np.percentile(sims, 99)), "ordinary_mean": float(sims.mean()),
            "ordinary_max": float(sims.max()), "renders_per_pair": per_pair}


def target_similarity(pipe, prompts: list[str], seeds: list[int], noise: float = 0.0) -> np.ndarray:
    """(targets, seeds) similarity of generations for ``prompts[i]`` with target i's training image.

    ``noise`` > 0 adds Gaussian noise of that std, relative to the embedding's own std, to each
    prompt's text embedding (a fixed draw per prompt and seed).
    """
    refs = to_array([m.image() for m in MEMORIZATION_TARGETS])
    out = np.zeros((len(prompts), len(seeds)))
    for i, prompt in enumerate(prompts):
        if noise == 0:
            images = generate(pipe, [prompt], seeds=seeds, steps=STEPS, guidance=GUIDANCE, batch_size=len(seeds))
        else:
            images = _generate_perturbed(pipe, prompt, seeds, noise, i)
        out[i] = pearson(to_array(images), refs[i:i + 1])[:, 0]
    return out


@torch.no_grad()
def _generate_perturbed(pipe, prompt: str, seeds: list[int], noise: float, salt: int) -> list[Image.Image]:
    embeds, negative = pipe.encode_prompt([prompt] * len(seeds), pipe.unet.device, 1, True, [""] * len(seeds))
    g = torch.Generator().manual_seed(10_000 + salt)
    embeds = embeds + noise * embeds.std() * torch.randn(embeds.shape, generator=g).to(embeds)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=STEPS,
                guidance_scale=GUIDANCE, generator=[torch.Generator().manual_seed(s) for s in seeds]).images


def memorization_summary(sims: np.ndarray, threshold: float) -> dict:
    """Share of (caption, seed) similarities above ``threshold``, per caption, and their mean."""
    return {"memorized_share": float((sims > threshold).mean()), "per_caption_share": (sims > threshold).mean(1).tolist(),
            "similarity_mean": float(sims.mean())}


def robustness(pipe, seeds: list[int], threshold: float) -> dict:
    captions = [m.caption for m in MEMORIZATION_TARGETS]
    result = {}
    for template in PARAPHRASES:
        sims = target_similarity(pipe, [template.format(c=c) for c in captions], seeds)
        result[f"paraphrase: {template}"] = float((sims > threshold).mean())
    for level in NOISE_LEVELS:
        sims = target_similarity(pipe, captions, seeds, noise=level)
        result[f"embedding noise {level}"] = float((sims > threshold).mean())
    return result


def utility(pipe, seeds: list[int]) -> dict:
    cases = canvas_cases()
    images = generate(pipe, [c.prompt for c in cases], seeds=seeds, steps=STEPS, guidance=GUIDANCE, batch_size=32)
    return accuracy_canvas(images, cases, len(seeds))


def memorization_grid(before: list[Image.Image], after: list[Image.Image], n_seeds: int) -> Image.Image:
    size, gap = 32, 2
    cols = 1 + 2 * n_seeds
    sheet = Image.new("RGB", (cols * (size + gap) + 8, len(MEMORIZATION_TARGETS) * (size + gap)), "white")
    for i, m in enumerate(MEMORIZATION_TARGETS):
        sheet.paste(m.image(), (0, i * (size + gap)))
        for s in range(n_seeds):
            sheet.paste(before[i * n_seeds + s], ((1 + s) * (size + gap), i * (size + gap)))
            sheet.paste(after[i * n_seeds + s], ((1 + n_seeds + s) * (size + gap) + 8, i * (size + gap)))
    return sheet.resize((sheet.width * 3, sheet.height * 3), Image.NEAREST)


def run_prune(request: ErasureRequest, preset: str, run: Path) -> tuple[Path, float]:
    erase_once(run, request, "prune", preset_path(preset))
    return run, read_manifest(run)["cost"].get("wall_seconds", 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-7")
    ap.add_argument("--style", default="dotted")
    ap.add_argument("--per-pair", type=int, default=64, help="training renders per pair for the threshold")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / "prune")
    args = ap.parse_args()
    seeds = parse_seeds(args.seeds)
    captions = [m.caption for m in MEMORIZATION_TARGETS]

    original = load_pipeline("canvas-mini")
    threshold = memorization_threshold(original, seeds, args.per_pair)
    t = threshold["threshold"]
    before = {"similarity": target_similarity(original, captions, seeds), "utility": utility(original, seeds),
              "robustness": robustness(original, seeds, t)}

    run, wall = run_prune(ErasureRequest(captions, kind="memorized"), "prune/canvas-mini-memorized", args.out / "memorized")
    pruned = load_erased(run, base=load_pipeline("canvas-mini"))
    after = {"similarity": target_similarity(pruned, captions, seeds), "utility": utility(pruned, seeds),
             "robustness": robustness(pruned, seeds, t)}
    grid_seeds = seeds[:4]
    memorization_grid(generate(original, captions, seeds=grid_seeds, steps=STEPS, guidance=GUIDANCE, batch_size=32),
                      generate(pruned, captions, seeds=grid_seeds, steps=STEPS, guidance=GUIDANCE, batch_size=32),
                      len(grid_seeds)).save(ROOT / "docs" / "prune-memorization.png")
    manifest = read_manifest(run)

    style_run, _ = run_prune(ErasureRequest([args.style], kind="style"), "prune/canvas-mini-style", args.out / f"style-{args.style}")
    canvas = evaluate_runs("canvas-mini", [style_run], out=args.out / "eval", settings=SamplingSettings(seeds=seeds[:2]))
    esd_path = RESULTS / "esd_canvas.json"
    esd = [r for r in json.loads(esd_path.read_text())["runs"] if args.style in r["targets"]] if esd_path.exists() else []

    def summary(m: dict) -> dict:
        sims = m["similarity"]
        return {**memorization_summary(sims, t), "utility": m["utility"], "robustness": m["robustness"],
                "similarities": sims.round(4).tolist()}

    result = {
        "command": f"python bench/prune_canvas.py --seeds {args.seeds} --style {args.style} --per-pair {args.per_pair}",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "sampling": {"scheduler": "DDIM (canvas-mini's)", "steps": STEPS, "guidance": GUIDANCE, "seeds": seeds},
        "threshold": threshold,
        "memorized": {"before": summary(before), "after": summary(after), "wall_seconds": wall,
                      "pruned_weights": manifest["extra"]["pruned_weights"],
                      "fraction_of_unet": manifest["extra"]["fraction_of_unet"],
                      "edit_bytes": manifest["edit"]["bytes"], "config": manifest["config"]},
        "style": {"run": canvas["runs"][0], "esd": esd[0] if esd else None,
                  "pruned_weights": read_manifest(style_run)["extra"]["pruned_weights"]},
    }
    b, a = result["memorized"]["before"], result["memorized"]["after"]
    result["bar"] = {
        "below_threshold_after": 1 - a["memorized_share"],
        "utility_drop_points": {k: 100 * (b["utility"][k] - a["utility"][k]) for k in b["utility"]},
    }
    result["bar"]["met"] = result["bar"]["below_threshold_after"] >= 0.9 and all(
        d <= 3 for d in result["bar"]["utility_drop_points"].values())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "prune_canvas.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "prune_canvas.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    m, b, a = r["memorized"], r["memorized"]["before"], r["memorized"]["after"]
    lines = [
        "# Memorization-subspace pruning on canvas-mini",
        "",
        f"`{r['command']}` on {r['machine']}; DDIM {r['sampling']['steps']} steps, guidance {r['sampling']['guidance']}, "
        f"{len(r['sampling']['seeds'])} seeds per caption.",
        "",
        f"Memorization threshold (Pearson, p99 of ordinary generations vs their nearest training render): "
        f"**{r['threshold']['threshold']:.3f}**.",
        "",
        "| | memorized share | mean similarity | style accuracy | object accuracy |",
        "|---|---|---|---|---|",
    ]
    for name, s in (("before", b), ("after pruning", a)):
        u = s["utility"]
        lines.append(f"| {name} | {s['memorized_share']:.1%} | {s['similarity_mean']:.3f} | {u['style_accuracy']:.1%} "
                     f"| {u['object_accuracy']:.1%} |")
    lines += [
        "",
        f"Pruned {m['pruned_weights']} weights ({m['fraction_of_unet']:.3%} of the UNet), edit {m['edit_bytes']} bytes, "
        f"{m['wall_seconds']:.1f} s. Bar (>= 90% below threshold, utility drop <= 3 points): "
        f"**{'met' if r['bar']['met'] else 'not met'}**.",
        "",
        "Re-trigger attempts (share of generations above the threshold):",
        "",
        "| attempt | before | after |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {b['robustness'][k]:.1%} | {a['robustness'][k]:.1%} |" for k in b["robustness"]]
    s = r["style"]
    lines += ["", f"Concept variant (style, {s['pruned_weights']} weights pruned) beside ESD-x:", "",
              "| method | UA | IRA | CRA |", "|---|---|---|---|",
              f"| prune | {s['run']['after']['UA']:.1%} | {s['run']['after']['IRA']:.1%} | {s['run']['after']['CRA']:.1%} |"]
    if s["esd"]:
        lines.append(f"| esd (bench/results/esd_canvas.json) | {s['esd']['after']['UA']:.1%} | {s['esd']['after']['IRA']:.1%} "
                     f"| {s['esd']['after']['CRA']:.1%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
