"""DoCo on canvas-mini: generalisation to unseen caption templates, the surgery ablation, ESD on the same prompts.

    python bench/doco_canvas.py [--styles dotted striped] [--objects star] [--ablation dotted]
                                [--seeds 0-1] [--steps N] [--anchor-images N] [--sampling-steps 25] [--set KEY=VALUE ...]
                                [--out bench/runs/doco] [--results bench/results] [--report-only]

Issue 6's protocol. DoCo trains on captions of ONE template (the presets' ``templates: [0]``,
UnlearnCanvas' "a {object} in {style} style"); every run is then scored on
- the canvas suite (all 64 object x style captions in template 0, the trained template), and
- the paraphrases: the same 64 pairs in every other caption template (never seen in training;
  scored by the bench, see below),
UA / IRA / CRA before and after with the shipped evaluator, on the same seeds (DDIM 25 steps,
guidance 3). Issue 6's bar, on the paraphrases: UA >= 85%, IRA >= 85%, CRA >= 90%.

Runs: DoCo with the canvas-mini presets (configs/doco/canvas-mini-style.yaml, -object.yaml) for each
style and object; for each ``--ablation`` style, DoCo again with ``surgery`` "reference" and "off"
(same seeds, same data); and for each style, ESD-x (configs/esd/canvas-mini-style.yaml) trained on
the same template-0 prompts (``--no-esd`` skips it). ``--steps`` (every run) and ``--anchor-images``
(DoCo) shrink the runs for smoke tests. Writes ``RESULTS/doco_canvas.json`` and ``.md`` (scores, wall time, peak
memory, edit size); runs, image cache and grids go under ``--out``. Finished runs are reused while
their configs and canvas-mini's weights are the ones they were made from. ``--report-only``
rewrites the markdown from the JSON.

Why not the canvas suite's paraphrase check (``suite_args={"paraphrases": True}``): it measures
only whether the erased concept is still recognised in the paraphrase templates, on the erased
concept's captions alone (its "paraphrases recognised" is 1 - this bench's "UA para." on the same
images). Issue 6's bar also asks whether erasure keeps everything else in the unseen templates, so
the bench scores UA / IRA / CRA on all 64 pairs of every paraphrase template, from the suite's
pieces: ``canvas_cases(template)``, ``score_canvas`` and ``canvas_targets``, on images through the
same generation cache as the suite.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from _runs import (canvas_argv, canvas_cells, canvas_options, cost_cells, erase_once, machine, page, parse, sampling, table,
                   write_results, yes_no)
from erasure import ErasureRequest
from erasure.config import parse_assignments
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.erased import load_erased
from erasure.evaluation import GenerationCache, SamplingSettings, evaluate_runs, generate_cached
from erasure.evaluation.suites.canvas import canvas_cases, canvas_targets, score_canvas
from erasure.methods.doco import DoCoConfig  # registers "doco"
from erasure.methods.esd import ESDConfig
from erasure.pipelines import load_pipeline
from erasure.pipelines.canvas.render import OBJECTS, TEMPLATES, caption

NAME = "doco_canvas"
BAR = {"UA": 0.85, "IRA": 0.85, "CRA": 0.90}


def doco_run(name: str, concept: str, kind: str, out: Path, doco_settings: dict, anchor: str | None = None, **overrides) -> Path:
    config = DoCoConfig.load(preset_path(f"doco/canvas-mini-{kind}")).with_overrides(**{**doco_settings, **overrides})
    return erase_once(out / name, ErasureRequest([concept], kind=kind, anchor=anchor), "doco", config)


def esd_run(style: str, templates: list[int], out: Path, steps: int | None) -> Path:
    # ESD's c_e: the same captions DoCo trains on (its default would be the partial caption "{style} style").
    prompts = [caption(o, style, k) for k in templates for o in OBJECTS]
    request = ErasureRequest([style], kind="style", prompts=prompts)
    config = ESDConfig.load(preset_path("esd/canvas-mini-style")).with_overrides(steps=steps)
    return erase_once(out / f"esd-style-{style}", request, "esd", config)


def score_paraphrases(runs: list[Path], templates: list[int], settings: SamplingSettings, cache: GenerationCache) -> list[dict]:
    """UA / IRA / CRA before and after on all 64 pairs of every paraphrase template (the canvas suite's
    scoring on its cases of those templates; see the module docstring for why not its paraphrase check)."""
    cases = [case for k in templates for case in canvas_cases(k)]
    prompts = [c.prompt for c in cases]
    n = len(settings.seeds)
    before = generate_cached(load_pipeline("canvas-mini"), prompts, settings, cache)
    out = []
    for run in runs:
        kind, idx = canvas_targets(read_manifest(run)["request"])
        after = generate_cached(load_erased(run, base=load_pipeline("canvas-mini")), prompts, settings, cache)
        out.append({"before": score_canvas(before, cases, n, kind, idx), "after": score_canvas(after, cases, n, kind, idx)})
    return out


def describe(run: Path) -> dict:
    manifest = read_manifest(run)
    config = manifest["config"]
    label = manifest["method"] if manifest["method"] != "doco" else f"doco ({config['surgery']})"
    return {"label": label, "steps": config["steps"], "edit_bytes": manifest.get("edit", {}).get("bytes", 0),
            "trained_prompts": (manifest["extra"].get("prompt_pairs") if manifest["method"] == "doco"
                                else len(manifest["request"]["prompts"]))}


def markdown(result: dict) -> str:
    s = result["sampling"]
    return page(
        "# DoCo on canvas-mini",
        f"`{result['command']}` on {result['machine']}. Training prompts: caption template {result['train_templates']} "
        f"only (\"{TEMPLATES[result['train_templates'][0]]}\"); paraphrase templates {result['paraphrase_templates']} never seen "
        f"in training. {len(s['seeds'])} seeds per prompt, {s['scheduler']} {s['steps']} steps, guidance {s['guidance']}; "
        f"judge: {result['judge']}. Bar (issue 6, on the paraphrases): UA >= 85%, IRA >= 85%, CRA >= 90%.",
        table(["erased", "method", "steps", "UA para.", "IRA para.", "CRA para.", "UA trained tmpl.", "IRA", "CRA",
               "UA para. before", "IRA para. before", "CRA para. before", "time (s)", "peak memory (GiB)", "edit (MB)",
               "bar met"],
              [[f"{', '.join(r['targets'])} ({r['kind']})", r["label"], r["steps"], canvas_cells(r["paraphrase"]["after"]),
                canvas_cells(r["after"]), canvas_cells(r["paraphrase"]["before"]), cost_cells(r, edit_digits=3),
                yes_no(r["bar_met"])] for r in result["runs"]]),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    canvas_options(ap, NAME, "doco")
    ap.add_argument("--ablation", nargs="*", default=["dotted"], help="styles also run with surgery 'reference' and 'off'")
    ap.add_argument("--no-esd", action="store_true", help="skip ESD-x on the same prompts")
    ap.add_argument("--paraphrases", nargs="*", type=int, default=list(range(1, len(TEMPLATES))))
    ap.add_argument("--steps", type=int, default=None, help="override every run's steps (smoke tests)")
    ap.add_argument("--anchor-images", type=int, default=None, help="override every DoCo run's anchor_images")
    ap.add_argument("--style-anchor", default=None,
                    help="anchor style of the DoCo style runs (default: the style-free captions \"a {object}\")")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="DoCo preset override KEY=VALUE (every DoCo run)")
    args = parse(ap, NAME, markdown)
    if args is None:
        return
    # DoCo preset overrides: the smoke-test shrinking and --set
    doco_settings = {k: v for k, v in {"steps": args.steps, "anchor_images": args.anchor_images}.items() if v is not None}
    doco_settings.update(parse_assignments(args.set_, "--set"))
    if args.steps is not None:
        doco_settings["warmup_steps"] = min(doco_settings["steps"] // 2, DoCoConfig.load(preset_path("doco/canvas-mini-style")).warmup_steps)
        doco_settings["checkpoint_every"] = 0
    templates = DoCoConfig.load(preset_path("doco/canvas-mini-style")).templates

    runs = [doco_run(f"doco-style-{s}", s, "style", args.out, doco_settings, args.style_anchor) for s in args.styles]
    runs += [doco_run(f"doco-object-{o}", o, "object", args.out, doco_settings) for o in args.objects]
    for style in args.ablation:
        runs += [doco_run(f"doco-{mode}-style-{style}", style, "style", args.out, doco_settings, args.style_anchor, surgery=mode)
                 for mode in ("reference", "off")]
    if not args.no_esd:
        runs += [esd_run(s, templates, args.out, args.steps) for s in args.styles]

    settings = sampling(args)
    cache = GenerationCache(args.out / "eval" / "cache")
    metrics = evaluate_runs("canvas-mini", runs, out=args.out / "eval", settings=settings, cache_dir=cache.directory)
    for r, run, para in zip(metrics["runs"], runs, score_paraphrases(runs, args.paraphrases, settings, cache)):
        r.update(describe(run))
        r["paraphrase"] = para
        r["bar_met"] = all(para["after"][k] >= v for k, v in BAR.items())
    metrics["train_templates"] = templates
    metrics["paraphrase_templates"] = args.paraphrases
    metrics["sampling"] = asdict(settings)
    argv = [*canvas_argv(args), f"--ablation {' '.join(args.ablation)}".strip()]
    argv += ["--no-esd"] if args.no_esd else []
    argv += [f"--paraphrases {' '.join(map(str, args.paraphrases))}"] if args.paraphrases != list(range(1, len(TEMPLATES))) else []
    argv += [f"--steps {args.steps}"] if args.steps else []
    argv += [f"--anchor-images {args.anchor_images}"] if args.anchor_images else []
    argv += [f"--style-anchor {args.style_anchor}"] if args.style_anchor else []
    argv += [f"--set {s}" for s in args.set_]
    metrics["command"] = "python bench/doco_canvas.py " + " ".join(argv)
    metrics["machine"] = machine()
    write_results(args.results, NAME, metrics, markdown)


if __name__ == "__main__":
    main()
