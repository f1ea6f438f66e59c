"""Erasures under phrasings canvas-mini never saw (issue 25): every method's style erasure scored on the canvas
suite's phrasing sets, several styles and training seeds.

    python bench/phrasings.py [--methods doco esd advunlearn] [--styles dotted striped] [--train-seeds 0 1]
                              [--split unseen|tuning] [--seeds 0-1] [--phrasing-seeds 0] [--sampling-steps 25]
                              [--set METHOD.KEY=VALUE ...] [--out bench/runs/phrasings]
                              [--results bench/results] [--report-only]

Each method erases each style with its canvas-mini preset (``configs/METHOD/canvas-mini-style.yaml``,
``--set`` overrides recorded) once per training seed (the config's ``seed``: sampling, initialisation,
data order). The canvas suite then scores every run with ``phrasings=true``: UA / IRA / CRA on all 64
object x style pairs in the trained template ("a {object} in {style} style", ``--seeds``), in
canvas-mini's 4 trained paraphrase templates, and in a split of phrasings the model never saw
(``configs/suites/canvas.yaml``; ``--phrasing-seeds``): ``--split tuning`` scores the tuning split (use
it to choose settings), ``--split unseen`` the held-out one (report it; never tune on it). Judge: the
shipped evaluator. Writes RESULTS/phrasings.json and .md (``phrasings_tuning`` for the tuning split);
runs and evaluations under OUT (runs reused while unchanged).

Issue 25's bar for DoCo, on the held-out split, every style and seed: UA >= 95, IRA >= 90, CRA >= 90.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean

from _runs import ROOT, erase_once, machine, method_overrides, page, report_only, results_options, sampling, shown, table, write_results
from erasure import ErasureRequest
from erasure.configs import preset_path
from erasure.edit import read_manifest
from erasure.evaluation import evaluate_runs
from erasure.progress import StageBars
from erasure.pipelines.generation import parse_seeds

METHODS = ("doco", "esd", "advunlearn", "sfd", "prune")
SPLITS = ("unseen", "tuning")
BAR = {"UA": 0.95, "IRA": 0.90, "CRA": 0.90}
SETS = ("trained", "paraphrased")  # then the split


def name_of(split: str) -> str:
    return "phrasings" if split == "unseen" else f"phrasings_{split}"


def style_run(method: str, style: str, seed: int, out: Path, overrides: dict) -> Path:
    return erase_once(out / f"style-{style}-seed{seed}", ErasureRequest([style], kind="style"), method,
                      preset_path(f"{method}/canvas-mini-style"), **{"seed": seed, **overrides})


def scores(side: dict, split: str) -> dict:
    """{set: {UA, IRA, CRA}} of one side of a run's metrics: the trained template, the paraphrases, the split."""
    keys = {"trained": "", "paraphrased": "_paraphrased", split: f"_{split}"}
    return {s: {m: side[f"{m}{suffix}"] for m in ("UA", "IRA", "CRA")} for s, suffix in keys.items()}


def cells(s: dict) -> list[str]:
    return [f"{s[m]:.1%}" for m in ("UA", "IRA", "CRA")]


def markdown(result: dict) -> str:
    split, s = result["split"], result["sampling"]
    sets = [*SETS, split]
    heads = ["method", "style", "train seed", *[f"{m} {name}" for name in sets for m in ("UA", "IRA", "CRA")], "bar met"]
    rows = [["original (nothing erased)", ", ".join(result["styles"]), "-", *[c for name in sets for c in cells(result["original"][name])], "-"]]
    rows += [[r["method"], r["style"], r["train_seed"], *[c for name in sets for c in cells(r["scores"][name])],
              "yes" if r["bar_met"] else "no"] for r in result["runs"]]
    summary = [[m["method"], m["runs"], *[f"{m['mean'][k]:.1%} (min {m['min'][k]:.1%})" for k in ("UA", "IRA", "CRA")],
                f"{m['bar_met']}/{m['runs']}"] for m in result["summary"]]
    return page(
        "# Erasure under unseen phrasings on canvas-mini",
        f"`{result['command']}` on {result['machine']}.",
        [f"Trained template: 64 captions x {len(s['seeds'])} seeds; trained paraphrases: canvas-mini's templates "
         f"{', '.join(map(str, result['templates']['paraphrased']))} (256 captions); {split} phrasings: "
         f"{len(result['templates'][split])} templates canvas-mini never saw ({len(result['templates'][split]) * 64} captions), "
         f"{len(result['phrasing_seeds'])} seed(s): " + "; ".join(f"\"{t}\"" for t in result["templates"][split]) + ". "
         f"{s['scheduler']} {s['steps']} steps, guidance {s['guidance']}; judge: {result['judge']}. "
         f"Bar (issue 25, on the {split} phrasings): UA >= 95%, IRA >= 90%, CRA >= 90%."],
        table(heads, rows),
        [f"Per method over its runs, on the {split} phrasings: mean (min)."],
        table(["method", "runs", f"UA {split}", f"IRA {split}", f"CRA {split}", "bar met"], summary),
    )


def summarise(runs: list[dict]) -> list[dict]:
    out = []
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r["scores"][r["split"]] for r in runs if r["method"] == method]
        out.append({"method": method, "runs": len(mine),
                    "mean": {k: mean(s[k] for s in mine) for k in ("UA", "IRA", "CRA")},
                    "min": {k: min(s[k] for s in mine) for k in ("UA", "IRA", "CRA")},
                    "bar_met": sum(all(s[k] >= v for k, v in BAR.items()) for s in mine)})
    return out


def options() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=["doco", "esd", "advunlearn"])
    ap.add_argument("--styles", nargs="+", default=["dotted", "striped"])
    ap.add_argument("--train-seeds", nargs="+", type=int, default=[0, 1], help="each method's config seed, one run each")
    ap.add_argument("--split", choices=SPLITS, default="unseen", help="the phrasing split scored (tuning: for choosing settings)")
    ap.add_argument("--seeds", default="0-1", help="seeds of the trained template's images")
    ap.add_argument("--phrasing-seeds", default="0", help="seeds of the phrasing sets' images")
    ap.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps of the evaluation's images")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="preset override METHOD.KEY=VALUE (repeat)")
    ap.add_argument("--tag", default=None,
                    help="keep these runs apart from the preset's (tuning tries): OUT/METHOD/TAG/..., the image cache shared")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / "phrasings")
    results_options(ap, "phrasings")
    return ap


def main() -> None:
    import torch

    args = options().parse_args()
    if args.report_only:  # the split names the results file, so not through _runs.parse
        report_only(args.results, name_of(args.split), markdown)
        return
    torch.manual_seed(0)
    overrides = method_overrides("phrasings", args.sets, args.methods)
    phrasing_seeds = parse_seeds(args.phrasing_seeds)
    folder = {m: args.out / m / (args.tag or "") for m in args.methods}
    runs = [style_run(m, s, n, folder[m], overrides[m]) for m in args.methods for s in args.styles for n in args.train_seeds]
    with StageBars() as bars:
        metrics = evaluate_runs("canvas-mini", runs, out=args.out / "-".join(["eval", args.split, *[args.tag] * bool(args.tag)]),
                                cache_dir=args.out / "cache", settings=sampling(args), progress=bars,
                                suite_args={"phrasings": True, "phrasing_split": args.split, "phrasing_seeds": phrasing_seeds})
    records = []
    for r, run in zip(metrics["runs"], runs):
        manifest = read_manifest(run)
        got = scores(r["after"], args.split)
        records.append({"method": r["method"], "style": manifest["request"]["targets"][0], "train_seed": manifest["config"]["seed"],
                        "run": shown(run), "split": args.split, "scores": got,
                        "bar_met": all(got[args.split][k] >= v for k, v in BAR.items()),
                        "seconds": manifest.get("cost", {}).get("wall_seconds")})
    first = metrics["runs"][0]["phrasings"]
    result = {"suite": metrics["suite"], "judge": metrics["judge"], "sampling": metrics["sampling"], "split": args.split,
              "styles": list(args.styles), "train_seeds": list(args.train_seeds), "phrasing_seeds": phrasing_seeds, "tag": args.tag,
              "templates": {name: first[name]["templates"] for name in ("paraphrased", args.split)},
              "original": scores(metrics["runs"][0]["before"], args.split), "overrides": overrides,
              "runs": records, "summary": summarise(records), "machine": machine()}
    result["command"] = " ".join(
        ["python bench/phrasings.py", f"--methods {' '.join(args.methods)}", f"--styles {' '.join(args.styles)}",
         f"--train-seeds {' '.join(map(str, args.train_seeds))}", f"--split {args.split}", f"--seeds {args.seeds}",
         f"--phrasing-seeds {args.phrasing_seeds}"] + ([f"--sampling-steps {args.sampling_steps}"] if args.sampling_steps != 25 else [])
        + [f"--set {s}" for s in args.sets] + ([f"--tag {args.tag}"] if args.tag else []) + ([f"--out {shown(args.out)}"] if args.out != options().get_default("out") else []))
    write_results(args.results, name_of(args.split), result, markdown)


if __name__ == "__main__":
    main()
