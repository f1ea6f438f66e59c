"""AdvUnlearn vs ESD on canvas-mini: UnlearnCanvas accuracies and robustness to a soft-prompt attack.

    python bench/advunlearn_canvas.py [--styles dotted striped] [--objects star] [--seeds 0-1]
        [--asr-seeds 1000-1007] [--asr-steps N] [--sampling-steps 25] [--set KEY=VALUE ...] [--esd-set KEY=VALUE ...]
        [--out bench/runs/advunlearn] [--results bench/results]

Per concept (two styles and one object by default) it erases with AdvUnlearn (preset
configs/advunlearn/canvas-mini-{style,object}.yaml) and with ESD (configs/esd/canvas-mini-*.yaml,
ESD-x for styles, ESD-u for objects), then:

- scores every run against the original on all 64 object x style captions with the canvas suite
  (``erasure.evaluation``: UA / IRA / CRA before and after, DDIM 25 steps, guidance 3, ``--seeds``);
- measures the attack success rate (ASR, ``erasure.attacks.attack_success_rate``) of the original,
  the ESD run and the AdvUnlearn run on the concept prompt: per seed of ``--asr-seeds`` (fresh: not
  the training seeds) a soft-prompt attack from random tokens against the original's predictions
  (``--teacher-samples`` samples, drawn with a seed of their own), with at least as many steps as
  AdvUnlearn's training attack used (default: max(30, the preset's attack_steps)) and the same
  token count, placement and learning rate, then one image from the adversarial embeddings with
  that seed, judged by the shipped evaluator (the concept's head). The unattacked prompt on the
  same seeds is judged too (``clean``).

Writes ``RESULTS/advunlearn_canvas.json`` and ``.md`` (UA / IRA / CRA, ASR, clean rate, wall time,
peak memory, edit size per run); runs go to ``--out`` (a finished run is reused, so an interrupted
bench resumes). ``--set``/``--esd-set`` override preset values (e.g. a smoke test:
``--set steps=4 --set warmup=2 --set attack_steps=2 --esd-set steps=4 --asr-seeds 0-1 --asr-steps 2
--teacher-samples 4 --seeds 0 --sampling-steps 5 --out /tmp/advunlearn-smoke/runs --results /tmp/advunlearn-smoke``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import torch

import erasure.methods.advunlearn  # noqa: F401  (registers "advunlearn")
from _runs import erase_once
from erasure import ErasureRequest
from erasure.api import method_config, parse_assignments
from erasure.atomic import atomic_path
from erasure.attacks import SoftPromptAttackConfig, attack_success_rate, canvas_judge, teacher_samples
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.evaluation import SamplingSettings, evaluate_runs
from erasure.erased import load_erased
from erasure.pipelines import load_pipeline
from erasure.pipelines.generation import parse_seeds

ROOT = Path(__file__).resolve().parents[1]
BAR = {"UA": 0.90, "IRA": 0.85, "CRA": 0.90}  # issue 5


def run_erasure(method: str, concept: str, kind: str, out: Path, overrides: dict) -> Path:
    config = method_config(method, preset_path(f"{method}/canvas-mini-{kind}"), **overrides)
    return erase_once(out / method / f"{kind}-{concept}", ErasureRequest([concept], kind=kind), method, config)


def robustness(concept: str, kind: str, runs: dict[str, Path | None], args, attack: SoftPromptAttackConfig,
               ddim_steps: int, sampling: SamplingSettings) -> dict:
    """ASR of each model (None: the original) on the concept prompt, against the original's samples.

    Each result is kept under ``--out``/asr, keyed by everything it depends on (the run's manifest,
    attack, seeds, teacher samples, sampling), so a re-run with more concepts only attacks what is new.
    """
    original = load_pipeline("canvas-mini")
    prompt = ErasureRequest([concept], kind=kind).resolve(original).prompts[0]
    teacher = None
    judge = canvas_judge(kind, concept)
    out = {}
    for name, run in runs.items():
        key = {"concept": concept, "model": read_manifest(run) if run is not None else "canvas-mini",
               "attack": attack.to_dict(), "seeds": args.asr_seeds, "teacher_samples": args.teacher_samples,
               "ddim_steps": ddim_steps, "sampling": [sampling.steps, sampling.guidance, sampling.scheduler]}
        cached = args.out / "asr" / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + ".json")
        if cached.is_file():
            out[name] = json.loads(cached.read_text())
        else:
            if teacher is None:
                teacher = teacher_samples(original, prompt, args.teacher_samples, seed=f"asr-teacher/{concept}",
                                          ddim_steps=ddim_steps, guidance=sampling.guidance)
            pipe = original if run is None else load_erased(run, base=load_pipeline("canvas-mini"))
            start = time.time()
            out[name] = attack_success_rate(pipe, teacher, judge, seeds=args.asr_seeds, config=attack,
                                            steps=sampling.steps, guidance=sampling.guidance, scheduler=sampling.scheduler)
            out[name]["seconds"] = round(time.time() - start, 1)
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp:
                tmp.write_text(json.dumps(out[name]))
        print(f"ASR {concept} ({name}): {out[name]['asr']:.0%} (clean {out[name]['clean_rate']:.0%})", flush=True)
    return out


def markdown(result: dict) -> str:
    s, a = result["sampling"], result["attack"]
    lines = [
        "# AdvUnlearn vs ESD on canvas-mini",
        "",
        f"`{result['command']}` on {result['machine']}.",
        "",
        f"UA / IRA / CRA: {result['prompts']} prompts x {len(s['seeds'])} seeds, {s['scheduler']} {s['steps']} steps, "
        f"guidance {s['guidance']}; judge: {result['judge']}. Bar (issue 5): UA >= 90%, IRA >= 85%, CRA >= 90%, and AdvUnlearn's ASR below ESD's on the same concept.",
        f"ASR: a soft-prompt attack ({a['tokens']} {a['placement']} token, {a['steps']} steps, lr {a['lr']}, "
        f"{a['algorithm']}) from random tokens per seed ({len(result['asr_seeds'])} fresh seeds), against "
        f"{result['teacher_samples']} samples of the original; one image per seed from the adversarial "
        "embeddings, judged by the evaluator. Clean: the unattacked concept prompt on the same seeds.",
        "",
        "| erased | method | steps | UA | IRA | CRA | ASR | clean | UA before | IRA before | CRA before | time (s) | peak mem (GiB) | edit (MB) | accuracies >= bar | ASR < ESD's | bar met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    yes = lambda flag: "" if flag is None else ("yes" if flag else "no")  # noqa: E731  (blank: not asked of ESD)
    for r in result["runs"]:
        a_, b, c = r["after"], r["before"], r["cost"]
        lines.append(
            f"| {', '.join(r['targets'])} ({r['kind']}) | {r['method']} | {r['steps']} | {a_['UA']:.1%} | {a_['IRA']:.1%} "
            f"| {a_['CRA']:.1%} | {r['asr']['asr']:.0%} | {r['asr']['clean_rate']:.0%} | {b['UA']:.1%} | {b['IRA']:.1%} "
            f"| {b['CRA']:.1%} | {c.get('wall_seconds', 0):.0f} | {c.get('peak_memory_bytes', 0) / 2**30:.2f} "
            f"| {r['edit_bytes'] / 1e6:.2f} | {yes(r['accuracy_bar_met'])} | {yes(r.get('asr_below_esd'))} "
            f"| {yes(r.get('bar_met'))} |"
        )
    lines += ["", "ASR of the original model (no erasure) on the same attack: "
              + ", ".join(f"{k}: {v['asr']:.0%} (clean {v['clean_rate']:.0%})" for k, v in result["original_asr"].items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--styles", nargs="*", default=["dotted", "striped"])
    ap.add_argument("--objects", nargs="*", default=["star"])
    ap.add_argument("--seeds", default="0-1", help="seeds of the canvas suite (UA/IRA/CRA)")
    ap.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps of every generated image (suite and ASR)")
    ap.add_argument("--asr-seeds", default="1000-1007", help="fresh seeds of the attack and its images")
    ap.add_argument("--asr-steps", type=int, default=None, help="attack steps (default: max(30, training's attack_steps))")
    ap.add_argument("--teacher-samples", type=int, default=64)
    ap.add_argument("--asr-lr", type=float, default=None, help="attack learning rate (default: the preset's attack_lr)")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="AdvUnlearn preset override KEY=VALUE")
    ap.add_argument("--esd-set", action="append", default=[], help="ESD preset override KEY=VALUE")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / "advunlearn")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    args.asr_seeds = parse_seeds(args.asr_seeds)
    adv_over, esd_over = parse_assignments(args.set_, "--set"), parse_assignments(args.esd_set, "--esd-set")
    torch.manual_seed(0)

    concepts = [(s, "style") for s in args.styles] + [(o, "object") for o in args.objects]
    pairs = {(c, k): {m: run_erasure(m, c, k, args.out, adv_over if m == "advunlearn" else esd_over)
                      for m in ("esd", "advunlearn")} for c, k in concepts}
    settings = SamplingSettings(steps=args.sampling_steps, seeds=parse_seeds(args.seeds))
    runs = [run for pair in pairs.values() for run in pair.values()]
    metrics = evaluate_runs("canvas-mini", runs, out=args.out / "eval", settings=settings)

    adv_cfg = read_manifest(pairs[concepts[0]]["advunlearn"])["config"]
    trained_steps = max(read_manifest(p["advunlearn"])["config"]["attack_steps"] for p in pairs.values())
    attack = SoftPromptAttackConfig(tokens=adv_cfg["attack_tokens"], placement=adv_cfg["attack_placement"],
                                    lr=args.asr_lr or adv_cfg["attack_lr"], algorithm=adv_cfg["attack_algorithm"],
                                    steps=args.asr_steps or max(30, trained_steps))
    if attack.steps < trained_steps:
        raise SystemExit(f"--asr-steps {attack.steps} is below the {trained_steps} attack steps training used")
    original_asr = {}
    by_run = {}
    for (concept, kind), pair in pairs.items():
        asr = robustness(concept, kind, {"original": None, **pair}, args, attack, adv_cfg["ddim_steps"], settings)
        original_asr[concept] = asr.pop("original")
        by_run.update({str(pair[m]): asr[m] for m in pair})

    for r in metrics["runs"]:
        manifest = read_manifest(r["run"])
        r["steps"] = manifest["config"]["steps"]
        r["variant"] = manifest["config"].get("variant", "text encoder")
        r["edit_bytes"] = manifest.get("edit", {}).get("bytes", 0)
        r["asr"] = by_run[r["run"]]
        r["accuracy_bar_met"] = all(r["after"][k] >= v for k, v in BAR.items())
    esd_asr = {pair["advunlearn"]: by_run[str(pair["esd"])]["asr"] for pair in pairs.values()}
    for r in metrics["runs"]:  # issue 5's bar for AdvUnlearn: the accuracies and an ASR below ESD's on the concept
        if r["method"] == "advunlearn":
            r["asr_below_esd"] = r["asr"]["asr"] < esd_asr[Path(r["run"])]
            r["bar_met"] = r["accuracy_bar_met"] and r["asr_below_esd"]
    metrics.update({
        "command": "python bench/advunlearn_canvas.py " + " ".join(
            [f"--styles {' '.join(args.styles)}", f"--objects {' '.join(args.objects)}", f"--seeds {args.seeds}",
             f"--sampling-steps {args.sampling_steps}",
             f"--asr-seeds {','.join(map(str, args.asr_seeds))}", f"--asr-steps {attack.steps}", f"--asr-lr {attack.lr:g}",
             f"--teacher-samples {args.teacher_samples}", *[f"--set {s}" for s in args.set_],
             *[f"--esd-set {s}" for s in args.esd_set]]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "attack": attack.to_dict(),
        "asr_seeds": args.asr_seeds,
        "teacher_samples": args.teacher_samples,
        "original_asr": original_asr,
    })
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "advunlearn_canvas.json").write_text(json.dumps(metrics, indent=2))
    (args.results / "advunlearn_canvas.md").write_text(markdown(metrics))
    print(markdown(metrics))


if __name__ == "__main__":
    main()
