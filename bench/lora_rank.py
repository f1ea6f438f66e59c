"""What rank keeps an erasure: canvas-mini runs exported as LoRAs at several ranks, scored like the full edit.

    python bench/lora_rank.py [--styles dotted] [--objects star] [--ranks 1 2 4 8 16] [--energies 0.9 0.99 0.999]
                              [--seeds 0-1] [--out bench/runs/esd] [--set KEY=VALUE ...] [--results bench/results]
                              [--report-only]

Erases each style with ESD-x and each object with ESD-u (the canvas-mini presets, as
bench/esd_canvas.py does, reusing its runs), exports every run with ``erasure export --to lora`` at
each rank and energy threshold (``export_run``: written, reloaded with ``load_lora_weights``, its
image compared with ``load_erased``'s), turns each LoRA into the weights it gives the base
(``Lora.applied``) and scores them with the canvas suite beside the full edit (all 64 object x style
captions, seeds as given, DDIM 25 steps, guidance 3, the shipped evaluator). Writes
RESULTS/lora_rank.json and .md: per LoRA its rank, size, relative weight error, the check's pixel
difference, and UA / IRA / CRA.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from _runs import canvas_argv, canvas_options, erase_once, machine, page, parse, sampling, shown, table, write_results
from erasure import ErasureRequest
from erasure.config import parse_assignments
from erasure.configs import preset_path
from erasure.edit import Edit, read_manifest
from erasure.evaluation import evaluate_runs
from erasure.export import export_run
from erasure.lora import lora_from_edit
from erasure.pipelines import load_pipeline

NAME = "lora_rank"


def lora_run(run: Path, spec: dict, out: Path) -> tuple[Path, dict]:
    """Export ``run`` as a LoRA (``spec``: rank or energy) and write the weights it gives the base as a run."""
    label = f"r{spec['rank']}" if "rank" in spec else f"e{spec['energy']}"
    folder = out / "lora" / f"{run.name}-{label}"
    shutil.rmtree(folder, ignore_errors=True)
    exported = export_run(run, "lora", folder / "export", **spec)
    edit, base = Edit.load(run), load_pipeline("canvas-mini", device="cpu")
    lora = lora_from_edit(edit, base, **spec)
    applied = dataclasses.replace(edit, tensors=lora.applied(base), zeroed={}, extra={**edit.extra, "lora": spec})
    applied.save(folder / "run")
    record = {"run": shown(run), "lora": label, **spec, "bytes": exported.details["bytes"],
              "edit_bytes": read_manifest(run)["edit"]["file_bytes"], "max_rank": exported.details["lora"]["max_rank"],
              "relative_error": exported.details["lora"]["relative_error"],
              "left_out": len(exported.details["lora"]["left_out"]), "check": exported.check}
    return folder / "run", record


def markdown(result: dict) -> str:
    s = result["sampling"]
    rows = []
    for entry in result["rows"]:
        after = entry["after"]
        if entry["lora"] == "full edit":
            size = f"{entry['edit_bytes'] / 1e6:.2f}"
            lora_cells = ["full edit", "", size, "", ""]
        else:
            lora_cells = [entry["lora"], entry["max_rank"], f"{entry['bytes'] / 1e6:.2f}",
                          f"{100 * entry['relative_error']:.1f}%", entry["check"]["max_abs_diff"]]
        rows.append([entry["concept"], *lora_cells, f"{after['UA']:.1%}", f"{after['IRA']:.1%}", f"{after['CRA']:.1%}"])
    return page(
        "# Erasures as LoRAs: what rank keeps the erasure",
        f"`{result['command']}` on {result['machine']}; canvas suite, {result['prompts']} prompts x {len(s['seeds'])} "
        f"seeds, {s['scheduler']} {s['steps']} steps, guidance {s['guidance']}; judge: {result['judge']}. "
        "LoRA `rN`: every changed weight at rank N (capped at its delta's rank); `eX`: per weight, the smallest rank "
        "whose singular values hold X of the delta's squared norm. Weight error: ||dW - BA|| / ||dW|| over the "
        "edit; pixel diff: max |LoRA - full edit| (of 255) on one image, 4 DDIM steps, through diffusers' "
        "load_lora_weights.",
        table(["erased", "LoRA", "max rank", "size (MB)", "weight error", "pixel diff", "UA", "IRA", "CRA"], rows),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    canvas_options(ap, NAME, "esd", styles=("dotted",), objects=("star",))
    ap.add_argument("--ranks", nargs="*", type=int, default=[1, 2, 4, 8, 16])
    ap.add_argument("--energies", nargs="*", type=float, default=[0.9, 0.99, 0.999])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="preset override KEY=VALUE (repeat)")
    args = parse(ap, NAME, markdown)
    if args is None:
        return
    overrides = parse_assignments(args.sets)
    concepts = [(s, "style") for s in args.styles] + [(o, "object") for o in args.objects]
    runs = [erase_once(args.out / f"{kind}-{c}", ErasureRequest([c], kind=kind), "esd", preset_path(f"esd/canvas-mini-{kind}"),
                       **overrides) for c, kind in concepts]
    specs = [{"rank": r} for r in args.ranks] + [{"energy": e} for e in args.energies]
    scored, records = [], []
    for (concept, kind), run in zip(concepts, runs):
        scored.append(run)
        records.append({"concept": f"{concept} ({kind})", "lora": "full edit",
                        "edit_bytes": read_manifest(run)["edit"]["file_bytes"]})
        for spec in specs:
            path, record = lora_run(run, spec, args.out)
            print(f"{concept}: LoRA {record['lora']} max rank {record['max_rank']}, weight error "
                  f"{record['relative_error']:.3f}, pixel diff {record['check']['max_abs_diff']}", flush=True)
            scored.append(path)
            records.append({"concept": f"{concept} ({kind})", **record})
    metrics = evaluate_runs("canvas-mini", scored, out=args.out / "lora-eval", settings=sampling(args))
    for record, entry in zip(records, metrics["runs"]):
        record["after"] = {k: entry["after"][k] for k in ("UA", "IRA", "CRA")}
    result = {**{k: metrics[k] for k in ("suite", "judge", "sampling", "prompts")}, "rows": records,
              "before": {k: metrics["runs"][0]["before"][k] for k in ("UA", "IRA", "CRA")},
              "command": "python bench/lora_rank.py " + " ".join(
                  canvas_argv(args) + [f"--ranks {' '.join(map(str, args.ranks))}",
                                       f"--energies {' '.join(map(str, args.energies))}"]
                  + [f"--set {s}" for s in args.sets]),
              "machine": machine()}
    write_results(args.results, NAME, result, markdown)


if __name__ == "__main__":
    main()
