"""AdvUnlearn vs ESD on canvas-mini: UnlearnCanvas accuracies and robustness to a soft-prompt attack.

    python bench/advunlearn_canvas.py [--styles dotted striped] [--objects star] [--seeds 0-1]
        [--asr-seeds 1000-1007] [--asr-steps N] [--asr-lr LR] [--teacher-samples 64] [--sampling-steps 25]
        [--set KEY=VALUE ...] [--esd-set KEY=VALUE ...] [--out bench/runs/advunlearn] [--results bench/results]
        [--report-only]

Per concept (two styles and one object by default) it erases with AdvUnlearn (preset
configs/advunlearn/canvas-mini-{style,object}.yaml) and with ESD (configs/esd/canvas-mini-*.yaml,
ESD-x for styles, ESD-u for objects), then scores every run with the canvas suite and its attack
(``evaluate_runs(..., suite_args={"attack": True, ...})``):

- UA / IRA / CRA before and after on all 64 object x style captions (DDIM 25 steps, guidance 3,
  ``--seeds``);
- the attack success rate (ASR, ``CanvasSuite.attack_success``) of the original ("before", in
  ``original_asr``) and of the run on the concept prompt: per seed of ``--asr-seeds`` (fresh: not
  the training seeds) a soft-prompt attack from random tokens against the original's predictions
  (``--teacher-samples`` samples, drawn with a seed of their own and AdvUnlearn's ``ddim_steps``),
  with at least as many steps as AdvUnlearn's training attack used (default: max(30, the preset's
  attack_steps)) and the same token count, placement and learning rate (``--asr-lr`` overrides),
  then one image from the adversarial embeddings with that seed, judged by the shipped evaluator
  (the concept's head). The unattacked prompt on the same seeds is judged too (``clean``). The
  suite also records the paraphrase recognition of each run (the attack implies it).

What is the bench's own: the ESD/AdvUnlearn pairs and issue 5's bar (the accuracies, and
AdvUnlearn's ASR below ESD's on the same concept).

Writes ``RESULTS/advunlearn_canvas.json`` and ``.md`` (UA / IRA / CRA, ASR, clean rate, wall time,
peak memory, edit size per run); runs, the suite's report and grids go to ``--out`` (a finished run
is reused, and generated images are cached, so an interrupted bench resumes; the attacks run again).
``--report-only`` rewrites the markdown from the JSON. ``--set``/``--esd-set`` override preset
values (e.g. a smoke test: ``--set steps=2 --set warmup=0 --set attack_steps=1 --esd-set steps=2
--asr-seeds 0 --asr-steps 1 --teacher-samples 2 --seeds 0 --sampling-steps 1 --out /tmp/au/runs
--results /tmp/au``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _runs import (canvas_argv, canvas_cells, canvas_options, cost_cells, erase_once, machine, page, parse, sampling, table,
                   write_results, yes_no)
from erasure import ErasureRequest
from erasure.api import method_config
from erasure.config import parse_assignments
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.evaluation import evaluate_runs, load_suite
from erasure.pipelines.generation import parse_seeds

NAME = "advunlearn_canvas"
BAR = {"UA": 0.90, "IRA": 0.85, "CRA": 0.90}  # issue 5


def run_erasure(method: str, concept: str, kind: str, out: Path, overrides: dict) -> Path:
    config = method_config(method, preset_path(f"{method}/canvas-mini-{kind}"), **overrides)
    return erase_once(out / method / f"{kind}-{concept}", ErasureRequest([concept], kind=kind), method, config)


def attack_suite(advunlearn_runs: list[Path], args) -> dict:
    """The canvas suite's attack settings: AdvUnlearn's training attack (token count, placement, algorithm,
    learning rate, teacher DDIM steps), at least as many steps as training used."""
    cfg = read_manifest(advunlearn_runs[0])["config"]
    trained_steps = max(read_manifest(run)["config"]["attack_steps"] for run in advunlearn_runs)
    steps = args.asr_steps or max(30, trained_steps)
    if steps < trained_steps:
        raise SystemExit(f"--asr-steps {steps} is below the {trained_steps} attack steps training used")
    return {"attack": True, "attack_seeds": args.asr_seeds, "attack_steps": steps,
            "attack_lr": args.asr_lr or cfg["attack_lr"], "attack_tokens": cfg["attack_tokens"],
            "attack_placement": cfg["attack_placement"], "attack_algorithm": cfg["attack_algorithm"],
            "attack_teacher_samples": args.teacher_samples, "attack_ddim_steps": cfg["ddim_steps"]}


def markdown(result: dict) -> str:
    s, a = result["sampling"], result["attack"]
    return page(
        "# AdvUnlearn vs ESD on canvas-mini",
        f"`{result['command']}` on {result['machine']}.",
        [f"UA / IRA / CRA: {result['prompts']} prompts x {len(s['seeds'])} seeds, {s['scheduler']} {s['steps']} steps, "
         f"guidance {s['guidance']}; judge: {result['judge']}. Bar (issue 5): UA >= 90%, IRA >= 85%, CRA >= 90%, and AdvUnlearn's ASR below ESD's on the same concept.",
         f"ASR: a soft-prompt attack ({a['tokens']} {a['placement']} token, {a['steps']} steps, lr {a['lr']}, "
         f"{a['algorithm']}) from random tokens per seed ({len(result['asr_seeds'])} fresh seeds), against "
         f"{result['teacher_samples']} samples of the original; one image per seed from the adversarial "
         "embeddings, judged by the evaluator. Clean: the unattacked concept prompt on the same seeds."],
        table(["erased", "method", "steps", "UA", "IRA", "CRA", "ASR", "clean", "UA before", "IRA before", "CRA before",
               "time (s)", "peak mem (GiB)", "edit (MB)", "accuracies >= bar", "ASR < ESD's", "bar met"],
              [[f"{', '.join(r['targets'])} ({r['kind']})", r["method"], r["steps"], canvas_cells(r["after"]),
                f"{r['asr']['asr']:.0%}", f"{r['asr']['clean_rate']:.0%}", canvas_cells(r["before"]), cost_cells(r),
                yes_no(r["accuracy_bar_met"]), yes_no(r.get("asr_below_esd")), yes_no(r.get("bar_met"))]
               for r in result["runs"]]),
        "ASR of the original model (no erasure) on the same attack: "
        + ", ".join(f"{k}: {v['asr']:.0%} (clean {v['clean_rate']:.0%})" for k, v in result["original_asr"].items()),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    canvas_options(ap, NAME, "advunlearn")  # --sampling-steps: every generated image's, the attack's too
    ap.add_argument("--asr-seeds", default="1000-1007", help="fresh seeds of the attack and its images")
    ap.add_argument("--asr-steps", type=int, default=None, help="attack steps (default: max(30, training's attack_steps))")
    ap.add_argument("--teacher-samples", type=int, default=64)
    ap.add_argument("--asr-lr", type=float, default=None, help="attack learning rate (default: the preset's attack_lr)")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="AdvUnlearn preset override KEY=VALUE")
    ap.add_argument("--esd-set", action="append", default=[], help="ESD preset override KEY=VALUE")
    args = parse(ap, NAME, markdown)
    if args is None:
        return
    args.asr_seeds = parse_seeds(args.asr_seeds)
    adv_over, esd_over = parse_assignments(args.set_, "--set"), parse_assignments(args.esd_set, "--esd-set")

    concepts = [(s, "style") for s in args.styles] + [(o, "object") for o in args.objects]
    pairs = [{m: run_erasure(m, c, k, args.out, adv_over if m == "advunlearn" else esd_over)
              for m in ("esd", "advunlearn")} for c, k in concepts]
    suite = load_suite("canvas", **attack_suite([p["advunlearn"] for p in pairs], args))
    metrics = evaluate_runs("canvas-mini", [run for pair in pairs for run in pair.values()], suite=suite,
                            out=args.out / "eval", settings=sampling(args))

    original_asr = {}
    for r in metrics["runs"]:
        manifest = read_manifest(r["run"])
        attack = r["robustness"]["attack"]
        original_asr.setdefault(attack["concept"], attack["before"])
        r["steps"] = manifest["config"]["steps"]
        r["variant"] = manifest["config"].get("variant", "text encoder")
        r["edit_bytes"] = manifest.get("edit", {}).get("bytes", 0)
        r["asr"] = attack["after"]
        r["accuracy_bar_met"] = all(r["after"][k] >= v for k, v in BAR.items())
    by_run = {r["run"]: r for r in metrics["runs"]}
    for pair in pairs:  # issue 5's bar for AdvUnlearn: the accuracies and an ASR below ESD's on the concept
        adv, esd = by_run[str(pair["advunlearn"])], by_run[str(pair["esd"])]
        adv["asr_below_esd"] = adv["asr"]["asr"] < esd["asr"]["asr"]
        adv["bar_met"] = adv["accuracy_bar_met"] and adv["asr_below_esd"]
    a = suite.config.attack_settings()
    metrics.update({
        "command": "python bench/advunlearn_canvas.py " + " ".join(
            [*canvas_argv(args), f"--asr-seeds {','.join(map(str, args.asr_seeds))}", f"--asr-steps {a['config']['steps']}",
             f"--asr-lr {a['config']['lr']:g}", f"--teacher-samples {args.teacher_samples}",
             *[f"--set {s}" for s in args.set_], *[f"--esd-set {s}" for s in args.esd_set]]),
        "machine": machine(),
        "attack": a["config"],
        "asr_seeds": args.asr_seeds,
        "teacher_samples": args.teacher_samples,
        "original_asr": original_asr,
    })
    write_results(args.results, NAME, metrics, markdown)


if __name__ == "__main__":
    main()
