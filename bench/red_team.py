"""Red team on canvas-mini: every attack of the registry against every method's erasures (issue 27, item 7).

    python bench/red_team.py [--methods esd advunlearn doco sfd] [--styles dotted] [--objects star]
                             [--attacks soft-prompt unlearndiffatk concept-inversion ring-a-bell]
                             [--attack-seeds 1000-1003] [--seeds 0-1] [--sampling-steps 25]
                             [--memorization-methods prune esd advunlearn] [--set METHOD.KEY=VALUE ...]
                             [--attack-set ATTACK.KEY=VALUE ...] [--memorization-set KEY=VALUE ...]
                             [--out bench/runs/red_team]
                             [--results bench/results] [--report-only] [--update]

1. Concept erasures: each method erases each style and object with its canvas-mini preset
   (``configs/METHOD/canvas-mini-{style,object}.yaml``; ``--set`` overrides recorded), then the canvas
   suite scores every run (UA / IRA / CRA, 64 captions x ``--seeds``) and runs every attack in
   ``--attacks`` per run on fresh ``--attack-seeds``, before (the original) and after, each at the
   canvas suite's budget (``configs/suites/canvas.yaml``: ``attack_configs`` and the soft-prompt's
   ``attack_*`` keys; ``--attack-set`` overrides, recorded), judged by the shipped evaluator. An attack
   that cannot attack a model (concept inversion on an SFD generator) is recorded as refused.
2. Memorized images: each of ``--memorization-methods`` erases canvas-mini's 8 memorized captions
   (pruning with its memorized preset; ESD and AdvUnlearn with their style presets, the 8 captions as
   one request), then the memorization suite measures the memorized share and the membership
   inference (PrivLeak's AUC, ``membership=true``; ``--memorization-set`` sets the suite's keys) before
   and after, on the same seeds and sampling as the canvas suite.

Writes RESULTS/red_team.json and .md; runs and evaluations under OUT (reused while unchanged).
``--update`` re-measures part of a committed table: the runs and attacks measured now replace theirs in
RESULTS/red_team.json, everything else is kept, and the command is recorded beside the first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _runs import (ROOT, canvas_cells, erase_once, machine, method_overrides, page, parse, results_options, sampling, shown, table,
                   write_results)
from erasure import ErasureRequest
from erasure.config import parse_assignments
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.evaluation import evaluate_runs, load_suite
from erasure.progress import StageBars
from erasure.pipelines.generation import parse_seeds

NAME = "red_team"
METHODS = ("esd", "advunlearn", "doco", "sfd")
ATTACKS = ("soft-prompt", "unlearndiffatk", "concept-inversion", "ring-a-bell")
MEMORIZATION_METHODS = ("prune", "esd", "advunlearn")


def concept_run(method: str, concept: str, kind: str, out: Path, overrides: dict) -> Path:
    return erase_once(out / method / f"{kind}-{concept}", ErasureRequest([concept], kind=kind), method,
                      preset_path(f"{method}/canvas-mini-{kind}"), **overrides)


def memorized_run(method: str, out: Path, overrides: dict) -> Path:
    from erasure.pipelines.canvas.render import MEMORIZATION_CAPTIONS

    preset = preset_path("prune/canvas-mini-memorized" if method == "prune" else f"{method}/canvas-mini-style")
    return erase_once(out / method / "memorized", ErasureRequest(list(MEMORIZATION_CAPTIONS), kind="memorized"), method,
                      preset, **overrides)


def attack_args(attacks: list[str], seeds: list[int], sets: list[str]) -> dict:
    """The canvas suite's attack settings: its YAML's budgets with ``--attack-set ATTACK.KEY=VALUE`` over them
    (soft-prompt's keys are the suite's ``attack_KEY``)."""
    configs = {k: dict(v) for k, v in load_suite("canvas").config.attack_configs.items()}
    args: dict = {"attacks": list(attacks), "attack_seeds": list(seeds)}
    for item in sets:
        attack, _, assignment = item.partition(".")
        if attack not in attacks or not assignment:
            raise SystemExit(f"{NAME}: --attack-set {item!r}: expected ATTACK.KEY=VALUE with ATTACK one of {', '.join(attacks)}")
        for key, value in parse_assignments([assignment], f"--attack-set {attack}.").items():
            if attack == "soft-prompt":
                args[f"attack_{key}"] = value
            else:
                configs.setdefault(attack, {})[key] = value
    args["attack_configs"] = {k: v for k, v in configs.items() if k in attacks}
    return args


def attack_cell(record: dict | None) -> str:
    if record is None:
        return "-"
    if record.get("refused"):
        return "refused"
    return f"{record['asr']:.0%} ({record['clean_rate']:.0%})"


def attack_records(run: dict, attack: str) -> dict:
    robust = run.get("robustness", {})
    return robust.get("attack") if attack == "soft-prompt" else robust.get("attacks", {}).get(attack)


def row_name(run: dict) -> str:
    return f"{run['method']} {', '.join(run['targets'])} ({run['kind']})"


def updated(old: dict, new: dict) -> dict:
    """``old`` with ``new``'s runs and attacks in place of theirs (``--update``); the rest, and the
    original's rates of attacks not re-measured, kept. The original's rates re-measured now replace theirs."""
    merged = dict(old)
    merged["runs"] = [dict(r) for r in old["runs"]]
    by_name = {row_name(r): r for r in merged["runs"]}
    for r in new["runs"]:
        mine = by_name.get(row_name(r))
        if mine is None:
            merged["runs"].append(r)
            continue
        for side in ("before", "after"):
            mine[side] = {**mine[side], **r[side]}
        for key in ("run", "cost", "grid", "steps", "erased"):
            mine[key] = r.get(key)
        robust = mine.setdefault("robustness", {})
        robust["attacks"] = {**robust.get("attacks", {}), **r.get("robustness", {}).get("attacks", {})}
        if "soft-prompt" in new["attacks"]:
            robust["attack"] = r.get("robustness", {}).get("attack")
    merged["original_asr"] = {**old["original_asr"], **{a: v for a, v in new["original_asr"].items() if v is not None}}
    merged["budgets"] = {**old["budgets"], **new["budgets"]}
    if new.get("memorization"):
        merged["memorization"] = new["memorization"]
    merged["updates"] = [*old.get("updates", []), {"command": new["command"], "machine": new["machine"],
                                                   "rows": [row_name(r) for r in new["runs"]], "attacks": new["attacks"]}]
    return merged


def markdown(result: dict) -> str:
    s, attacks = result["sampling"], result["attacks"]
    budgets = "; ".join(f"{a}: {result['budgets'][a]}" for a in attacks)
    heads = ["erased", "method", "UA", "IRA", "CRA", *[f"{a} ASR (clean)" for a in attacks]]
    rows = [["original (nothing erased)", "-", "-", "-", "-",
             *[attack_cell(result["original_asr"].get(a)) for a in attacks]]]
    for r in result["runs"]:
        rows.append([f"{', '.join(r['targets'])} ({r['kind']})", r["method"], canvas_cells(r["after"]),
                     *[attack_cell((attack_records(r, a) or {}).get("after")) for a in attacks]])
    updates = [f"Re-measured ({', '.join(u['rows'])}; {', '.join(u['attacks'])}): `{u['command']}` on {u['machine']}."
               for u in result.get("updates", [])]
    blocks = [
        " ".join([f"`{result['command']}` on {result['machine']}.", *updates]),
        [f"UA / IRA / CRA: {result['prompts']} prompts x {len(s['seeds'])} seeds, {s['scheduler']} {s['steps']} steps, "
         f"guidance {s['guidance']}; judge: {result['judge']}. ASR: share of {len(result['attack_seeds'])} fresh attack seeds "
         "whose attacked image the evaluator recognises as the erased concept; in brackets the unattacked concept "
         f"prompt on the same seeds. Budgets: {budgets}."],
        table(heads, rows),
    ]
    if result.get("memorization"):
        m = result["memorization"]
        blocks.append([f"Memorized captions ({m['prompts']} captions x {len(m['sampling']['seeds'])} seeds): memorized share "
                       f"(similarity above canvas-mini's threshold) and the membership inference. {m['membership_note']}"])
        blocks.append(table(["method", "memorized share", "membership AUC", "privleak", "object / style accuracy"],
                            [[r["method"], f"{r['before']['memorized_share']:.0%} -> {r['after']['memorized_share']:.0%}",
                              f"{r['before']['membership_auc']:.3f} -> {r['after']['membership_auc']:.3f}",
                              f"{r['after']['privleak']:.2f}",
                              f"{r['after']['object_accuracy']:.0%} / {r['after']['style_accuracy']:.0%}"]
                             for r in m["runs"]]))
    return page("# Red team on canvas-mini", *blocks)


def options() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--styles", nargs="*", default=["dotted"])
    ap.add_argument("--objects", nargs="*", default=["star"])
    ap.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    ap.add_argument("--attack-seeds", default="1000-1003", help="fresh seeds: one attack and one image each")
    ap.add_argument("--seeds", default="0-1", help="seeds of the canvas suite (UA/IRA/CRA)")
    ap.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps of the evaluation's images")
    ap.add_argument("--memorization-methods", nargs="*", choices=MEMORIZATION_METHODS, default=list(MEMORIZATION_METHODS))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="preset override METHOD.KEY=VALUE (repeat)")
    ap.add_argument("--attack-set", dest="attack_sets", action="append", default=[],
                    help="attack setting ATTACK.KEY=VALUE (repeat), e.g. unlearndiffatk.steps=200")
    ap.add_argument("--memorization-set", dest="memorization_sets", action="append", default=[],
                    help="memorization-suite setting KEY=VALUE (repeat), e.g. membership_nonmembers=16")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / NAME)
    ap.add_argument("--update", action="store_true",
                    help="replace in RESULTS/red_team.json the runs and attacks measured now, keep the rest")
    results_options(ap, NAME)
    return ap


def main() -> None:
    args = parse(options(), NAME, markdown)
    if args is None:
        return
    committed = args.results / f"{NAME}.json"
    if args.update and not committed.is_file():
        raise SystemExit(f"{NAME}: --update: {committed} does not exist; run the bench without --update first")
    seeds = parse_seeds(args.attack_seeds)
    suite_args = attack_args(args.attacks, seeds, args.attack_sets)
    load_suite("canvas", **suite_args)  # a bad attack setting ends the bench now, not after the erasures
    every = sorted(set(args.methods) | set(args.memorization_methods))
    overrides = method_overrides(NAME, args.sets, every)

    runs = [concept_run(m, c, k, args.out, overrides[m]) for m in args.methods
            for c, k in [(s, "style") for s in args.styles] + [(o, "object") for o in args.objects]]
    with StageBars() as bars:  # attacks on eight runs take an hour or more: show them alive, also in a log
        metrics = evaluate_runs("canvas-mini", runs, out=args.out / "eval", settings=sampling(args), suite_args=suite_args,
                                progress=bars)
    original_asr = {}
    for r in metrics["runs"]:
        for a in args.attacks:
            original_asr.setdefault(a, (attack_records(r, a) or {}).get("before"))
        r["steps"] = read_manifest(r["run"])["config"].get("steps")
        r["run"] = shown(r["run"])  # no machine's folders in the results
        for link in r.get("erased", []):
            link["run"] = shown(link["run"])
    suite = load_suite("canvas", **suite_args).config
    budgets = {a: (f"{suite.attack_steps} steps, lr {suite.attack_lr}, {suite.attack_tokens} token(s), "
                   f"{suite.attack_teacher_samples} samples of the original" if a == "soft-prompt"
                   else ", ".join(f"{k} {v}" for k, v in suite.attack_configs.get(a, {}).items()) or "the attack's defaults")
               for a in args.attacks}
    result = {**{k: metrics[k] for k in ("suite", "judge", "sampling", "prompts")}, "runs": metrics["runs"],
              "attacks": list(args.attacks), "attack_seeds": seeds, "budgets": budgets, "original_asr": original_asr,
              "overrides": overrides}

    if args.memorization_methods:
        mem_runs = [memorized_run(m, args.out, overrides[m]) for m in args.memorization_methods]
        with StageBars() as bars:
            mem = evaluate_runs("canvas-mini", mem_runs, suite="memorization", out=args.out / "eval-memorization",
                                settings=sampling(args), progress=bars,
                                suite_args={"membership": True, **parse_assignments(args.memorization_sets, "--memorization-set")})
        result["memorization"] = {"prompts": mem["prompts"], "sampling": mem["sampling"],
                                  "membership_note": mem["notes"][-1],
                                  "runs": [{"method": r["method"], "run": shown(r["run"]), "before": r["before"], "after": r["after"],
                                            "membership": r.get("membership")} for r in mem["runs"]]}
    result["machine"] = machine()
    result["command"] = " ".join(
        ["python bench/red_team.py", f"--methods {' '.join(args.methods)}", f"--styles {' '.join(args.styles)}",
         f"--objects {' '.join(args.objects)}", f"--attacks {' '.join(args.attacks)}", f"--attack-seeds {args.attack_seeds}",
         f"--seeds {args.seeds}"] + ([f"--sampling-steps {args.sampling_steps}"] if args.sampling_steps != 25 else [])
        + [" ".join(["--memorization-methods", *args.memorization_methods])]
        + [f"--set {s}" for s in args.sets] + [f"--attack-set {s}" for s in args.attack_sets]
        + [f"--memorization-set {s}" for s in args.memorization_sets] + (["--update"] if args.update else []))
    if args.update:
        result = updated(json.loads(committed.read_text()), result)
    write_results(args.results, NAME, result, markdown)


if __name__ == "__main__":
    main()
