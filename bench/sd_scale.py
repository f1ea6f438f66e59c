"""Every method's Stable Diffusion presets at the real architectures' size, run as a user runs them.

    python bench/sd_scale.py [--only esd/sd15-nudity sfd/sd15-nudity ...] [--work out/sd-scale]
                             [--out bench/results/sd_scale]

For each family (SD 1.5 at 512 px; one SD 2.1 v-prediction case at 768 px; SDXL presets at 512 px
to bound CPU time) the real architecture with random weights is saved once as a diffusers folder
under WORK/models. Then every (method, preset) pair runs through the public CLI exactly as a user
would (``python -m erasure erase --method M --model FOLDER --config PRESET --concept ... --kind ...
--out RUN --device cpu``), with the schedule shortened on the command line only (``--steps`` and
the ``--set`` overrides in ``SHORTENED``, which shrink precomputation: DDIM steps, anchor images,
attack steps; SFD also batch 1, see ``SHORTENED``). Afterwards a second process loads the run with
``load_erased`` and generates one image with 2 sampling steps.

Recorded per run: wall time per phase (model load, precomputation, each training step, the edit's
write), seconds per training step, peak memory (each process's peak RSS, from ``os.wait4``), the
edit's size and its share of the checkpoint, and a projection of the full preset's wall time on
this machine (``projection``). Results are merged into OUT.json (so runs can be made one at a time,
in several sittings) and OUT.md is regenerated from it. Random weights make the images
meaningless; shapes, memory and time are real. Heavy: SD 1.5 needs about 20 GB of RAM for SFD.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sd_scale"


@dataclass(frozen=True)
class Family:
    builder: str        # function of erasure.pipelines.testing
    resolution: int     # pixels the runs use (native, except SDXL's 512 to bound CPU time)
    native: int


FAMILIES = {
    "sd15": Family("sd15_random_pipeline", 512, 512),
    "sd2": Family("sd2_random_pipeline", 768, 768),
    "sdxl": Family("sdxl_random_pipeline", 512, 1024),
    # The SD 1.5 presets on SD 1.x's layout at 32 px: checks this script in a minute.
    "tiny": Family("tiny_sd_pipeline", 32, 32),
}

#: What each kind of preset erases on the command line (the presets' own "Use with" lines).
CONCEPTS = {
    "nudity": ["--concept", "nudity", "--kind", "nudity"],
    "style": ["--concept", "Van Gogh", "--kind", "style"],
    "object": ["--concept", "golf ball", "--kind", "object", "--anchor", "ball"],
    "celebrity": ["--concept", "brad pitt", "--kind", "custom", "--anchor", "a middle aged man",
                  "--prompt", "a photo of brad pitt", "--prompt", "brad pitt on the red carpet"],
    "memorized": ["--concept", "The No Limits Business Woman Podcast", "--kind", "memorized"],
}

#: Per method: the command-line overrides that shorten a preset (steps, then --set pairs); the
#: projection scales each shortened value back up.
SHORTENED = {
    "esd": (2, {"ddim_steps": 2}),
    "advunlearn": (2, {"ddim_steps": 2, "attack_steps": 2}),
    # Batch 1 for DoCo and SFD: one step at their batch 8 (DoCo: 16 UNet rows with gradients; SFD: 32
    # rows through three UNets, twice) takes an hour or more on 2 CPU cores; projections scale by the batch.
    "doco": (2, {"anchor_images": 2, "anchor_steps": 2, "batch_size": 1}),
    "sfd": (2, {"batch_size": 1}),
    "prune": (None, {"ddim_steps": 1, "tau": 1}),
}
#: Pruning records activations for every base prompt (80 COCO captions by default): 4 of them here,
#: and the projection scales the recording time by the number of prompts.
PRUNE_RETAIN = ["a photo of a dog", "a photo of a car", "a photo of a chair", "a photo of a tree"]


def presets(family: str) -> list[tuple[str, Path]]:
    """(method, preset file) for every preset of a family, e.g. configs/esd/sd15-nudity.yaml."""
    prefix = {"sd15": "sd15-", "sd2": "sd2-", "sdxl": "sdxl-", "tiny": "sd15-"}[family]
    return sorted((p.parent.name, p) for p in (ROOT / "configs").glob(f"*/{prefix}*.yaml"))


def run_id(method: str, preset: Path, family: str) -> str:
    return f"{method}/{preset.stem}" if family != "tiny" else f"{method}/{preset.stem}@tiny"


def concept_args(preset: Path) -> list[str]:
    kind = preset.stem.split("-", 1)[1]
    return CONCEPTS[kind]


# ----------------------------------------------------------------------------- processes
def run_process(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` with its output in ``log``; its exit code, wall seconds and peak RSS (os.wait4)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"exit_code": proc.returncode, "wall_seconds": round(time.perf_counter() - start, 1),
            "peak_rss_bytes": usage.ru_maxrss * 1024}


def ensure_model(family: str, work: Path) -> Path:
    """The family's random-weight pipeline saved under WORK/models (built once)."""
    folder = work / "models" / family
    if (folder / "model_index.json").is_file():
        return folder
    code = (f"from erasure.pipelines.testing import {FAMILIES[family].builder} as build; "
            f"build().save_pretrained({str(folder)!r})")
    print(f"building the random {family} pipeline in {folder}", flush=True)
    done = run_process([sys.executable, "-c", code], work / f"build-{family}.log")
    if done["exit_code"] != 0:
        raise SystemExit(f"sd_scale: building {family} failed; see {work / f'build-{family}.log'}")
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


GENERATE = """
import json, sys, time
t0 = time.perf_counter()
from erasure.erased import load_erased
from erasure.pipelines.generation import generate
pipe = load_erased(sys.argv[1], device="cpu")
t1 = time.perf_counter()
# 2 sampling steps (an SFD run's one-step pipeline ignores the count: one generator call)
images = generate(pipe, ["a photo"], seeds=[0], steps=2, height=int(sys.argv[2]), width=int(sys.argv[2]))
t2 = time.perf_counter()
print(json.dumps({"load_erased_seconds": round(t1 - t0, 1), "generate_seconds": round(t2 - t1, 1),
                  "image_size": list(images[0].size)}))
"""


# ----------------------------------------------------------------------------- one run
def erase_command(method: str, preset: Path, model: Path, run: Path, resolution: int, native: int) -> list[str]:
    steps, sets = SHORTENED[method]
    cmd = [sys.executable, "-m", "erasure", "erase", "--method", method, "--model", str(model),
           "--config", str(preset.relative_to(ROOT)), *concept_args(preset), "--out", str(run), "--device", "cpu"]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    if method == "prune":
        for prompt in PRUNE_RETAIN:
            cmd += ["--retain", prompt]
    overrides = dict(sets)
    if resolution != native:
        overrides["resolution"] = resolution
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def run_one(method: str, preset: Path, family: str, work: Path) -> dict:
    fam = FAMILIES[family]
    model = ensure_model(family, work)
    run = work / "runs" / family / method / preset.stem
    if run.exists():
        import shutil

        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    cmd = erase_command(method, preset, model, run, fam.resolution, fam.native)
    print("$ " + shlex.join(cmd), flush=True)
    erase = run_process(cmd, run.parent / f"{preset.stem}.log")
    record = {"id": run_id(method, preset, family), "family": family, "method": method, "preset": str(preset.relative_to(ROOT)),
              "command": shlex.join(["python", *cmd[1:]]).replace(str(ROOT) + "/", ""), "erase": erase}
    if erase["exit_code"] != 0:
        record["error"] = (run.parent / f"{preset.stem}.log").read_text()[-2000:]
        return record
    manifest = json.loads((run / "manifest.json").read_text())
    record["manifest"] = {k: manifest[k] for k in ("config", "cost", "edit")}
    record["manifest"]["extra"] = {k: v for k, v in manifest.get("extra", {}).items()
                                   if isinstance(v, (int, float, str, bool)) or v is None}
    gen = run_process([sys.executable, "-c", GENERATE, str(run), str(fam.resolution)], run.parent / f"{preset.stem}-generate.log")
    record["generate"] = gen
    if gen["exit_code"] == 0:
        record["generate"] |= json.loads((run.parent / f"{preset.stem}-generate.log").read_text().strip().splitlines()[-1])
    record["checkpoint_bytes"] = folder_bytes(model)
    record["summary"] = summarise(record, preset)
    return record


# ----------------------------------------------------------------------------- numbers
def preset_values(preset: Path) -> dict:
    from erasure.methods import read_config_file

    return read_config_file(preset)


def summarise(record: dict, preset: Path) -> dict:
    """Phase times, seconds per step, memory, edit size and the full preset's projected time."""
    cost, edit = record["manifest"]["cost"], record["manifest"]["edit"]
    stages = cost.get("stages", {})
    phases = cost.get("phases_seconds", {})
    training = stages.get("training", {})
    step = training.get("median_per_unit") or training.get("first_per_unit")
    method_seconds = cost.get("wall_seconds", 0.0)
    out = {
        "process_seconds": record["erase"]["wall_seconds"],
        "method_seconds": method_seconds,
        "phases_seconds": phases,
        "stages": stages,
        "load_and_start_seconds": round(record["erase"]["wall_seconds"] - method_seconds - edit.get("write_seconds", 0), 1),
        "edit_write_seconds": edit.get("write_seconds"),
        "seconds_per_step": step,
        "first_step_seconds": training.get("first_per_unit"),
        "peak_rss_gib": round(record["erase"]["peak_rss_bytes"] / 2**30, 2),
        "edit_bytes": edit.get("file_bytes"),
        "edit_dtype": edit.get("dtype"),
        "edit_share_of_checkpoint": round(edit.get("file_bytes", 0) / record["checkpoint_bytes"], 4),
        "generate_seconds": record["generate"].get("generate_seconds"),
        "generate_peak_rss_gib": round(record["generate"]["peak_rss_bytes"] / 2**30, 2),
    }
    if record["method"] == "prune":
        extra = record["manifest"]["extra"]
        out["prompts"] = extra["target_prompts"] + extra["base_prompts"]
        out["full_prompts"] = prune_prompts_by_default(record)
    out["projection"] = project(record["method"], preset_values(preset), record["manifest"]["config"], out)
    return out


def prune_prompts_by_default(record: dict) -> int:
    """Target + base prompts of the pruning run without ``--retain`` (the request's default base set)."""
    from erasure.methods.prune import prompt_sets
    from erasure.pipelines.testing import tiny_sd_pipeline
    from erasure.request import ErasureRequest

    args = shlex.split(record["command"])
    value = lambda flag: args[args.index(flag) + 1]  # noqa: E731
    request = ErasureRequest(targets=[value("--concept")], kind=value("--kind"))
    pipe = tiny_sd_pipeline()  # an SD-1.x pipeline: the request resolves to Stable Diffusion's defaults
    targets, bases = prompt_sets(pipe, request.resolve(pipe), record["manifest"]["config"]["base"])
    return len(targets) + len(bases)


def project(method: str, full: dict, ran: dict, s: dict) -> dict:
    """The full preset's wall time on this machine, from the shortened run's measured parts.

    Training: seconds per step (median after the first) x the preset's steps, times the batch ratio
    where the run used a smaller batch (SFD). Precomputation and online sampling scale with the
    number of samples and with the DDIM steps per sample (each x_t needs up to ``ddim_steps``
    UNet calls). Approximations, named in ``how``.
    """
    stages = s["stages"]
    step = s["seconds_per_step"] or 0.0
    how = []
    train = step * full.get("steps", 0)
    if full.get("batch_size", 1) != ran.get("batch_size", 1):
        ratio = full["batch_size"] / ran["batch_size"]
        train *= ratio
        how.append(f"step time x {ratio:g} (batch {full['batch_size']} vs {ran['batch_size']})")
    if method in ("esd", "advunlearn") and ran.get("ddim_steps") and "ddim_steps" in full:
        ratio = full["ddim_steps"] / ran["ddim_steps"]
        sampling = stages.get("sampling x_t", {})
        if sampling:  # precomputed x_t: per sample, up to ddim_steps UNet calls each
            pre = sampling["seconds"] / max(sampling["units"], 1) * ratio * full["steps"] * full.get("batch_size", 1)
            how.append(f"x_t sampling per sample x {ratio:g} (DDIM steps)")
            return _projection(train, pre, how)
        if method == "advunlearn":
            how.append(f"a lower bound: each step samples x_t online and attacks, measured at {ran['ddim_steps']} of "
                       f"{full['ddim_steps']} DDIM steps and {ran['attack_steps']} of {full['attack_steps']} attack steps")
    if method == "doco":
        anchor = stages.get("anchor images", {})
        if anchor:
            per = anchor["seconds"] / max(anchor["units"], 1) * full["anchor_steps"] / ran["anchor_steps"]
            how.append(f"anchor images x {full['anchor_images']}, DDIM steps x {full['anchor_steps'] / ran['anchor_steps']:g}")
            return _projection(train, per * full["anchor_images"], how)
    if method == "prune":
        ran_prompts, full_prompts = s["prompts"], s["full_prompts"]
        rec = s["phases_seconds"].get("recording", 0.0) * full["tau"] / ran["tau"] * full_prompts / ran_prompts
        how.append(f"recording x {full['tau'] / ran['tau']:g} (tau) x {full_prompts}/{ran_prompts} prompts")
        return _projection(0.0, rec, how)
    return _projection(train, 0.0, how)


def _projection(train: float, pre: float, how: list[str]) -> dict:
    return {"training_seconds": round(train), "precompute_seconds": round(pre), "total_hours": round((train + pre) / 3600, 2),
            "how": "; ".join(how) or "step time x steps"}


# ----------------------------------------------------------------------------- report
def markdown(result: dict) -> str:
    lines = [
        "# Stable Diffusion presets at full size (random weights)",
        "",
        f"On {result['machine']}. Each row: the preset through `erasure erase` with the schedule shortened on the "
        "command line (the command column of OUT.json has each), then `load_erased` and one 2-step image "
        "in a second process. Peak RSS: the erase process's. Projected: the full preset on this machine.",
        "",
        "| family | preset | shortened | first step (s) | s/step | peak RSS (GiB) | edit | edit / checkpoint | load+start (s) | precompute (s) | write (s) | generate (s) | projected full preset (h) | meanwhile on the machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(result["runs"].values(), key=lambda r: (r["family"], r["id"])):
        if "error" in r:
            lines.append(f"| {r['family']} | {r['id']} | failed (exit {r['erase']['exit_code']}) | | | "
                         f"{r['erase']['peak_rss_bytes'] / 2**30:.1f} | | | | | | | | {r.get('load_meanwhile', '')} |")
            continue
        s = r["summary"]
        short = " ".join(a for a in r["command"].split(" --")[1:] if a.startswith(("steps", "set")))
        retained = r["command"].count(" --retain ")
        short += f" retain: {retained} prompts" if retained else ""
        pre = sum(v for k, v in s["phases_seconds"].items() if k != "training")
        lines.append(
            f"| {r['family']} | {r['id']} | `{short.replace('set ', '')}` | {_num(s['first_step_seconds'])} | {_num(s['seconds_per_step'])} "
            f"| {s['peak_rss_gib']} | {s['edit_bytes'] / 1e9:.2f} GB {s['edit_dtype']} | {s['edit_share_of_checkpoint']:.1%} "
            f"| {s['load_and_start_seconds']} | {pre:.0f} | {s['edit_write_seconds']} | {s['generate_seconds']} "
            f"| {_num(s['projection']['total_hours'])} | {r.get('load_meanwhile', '')} |"
        )
    lines += ["", "Projections: " + "; ".join(sorted({f"{r['method']}: {r['summary']['projection']['how']}"
                                                     for r in result["runs"].values() if 'summary' in r})), ""]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    """Three significant figures at most, thousands separated: 487.2883 -> 487, 0.01234 -> 0.0123."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def machine() -> str:
    cores = os.cpu_count()
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 2**20
    return f"{platform.machine()} CPU, {cores} cores, {mem:.0f} GiB RAM, float32"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="run ids such as esd/sd15-nudity (default: every preset)")
    ap.add_argument("--families", default="sd15,sd2,sdxl")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "sd-scale")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--load", default="", help="what else ran on the machine meanwhile, recorded with each run")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: recompute every run's summary and projection from OUT.json, rewrite OUT.md")
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        print(f"sd_scale: unknown family {unknown[0]!r}; expected {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    todo = [(f, m, p) for f in families for m, p in presets(f)]
    if args.only is not None:
        known = {run_id(m, p, f) for f, m, p in todo}
        missing = [i for i in args.only if i not in known]
        if missing:
            print(f"sd_scale: no preset {missing[0]!r}; known: {', '.join(sorted(known))}", file=sys.stderr)
            return 2
        todo = [t for t in todo if run_id(t[1], t[2], t[0]) in args.only]
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.out.with_suffix(".json")
    result = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    if args.report_only:
        for record in result["runs"].values():
            if "error" not in record:
                record["summary"] = summarise(record, ROOT / record["preset"])
        path.write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(result))
        return 0
    result["machine"] = machine()
    for family, method, preset in todo:
        record = run_one(method, preset, family, args.work)
        record["load_meanwhile"] = args.load or "nothing else"
        result["runs"][record["id"]] = record
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(result))
        status = "failed" if "error" in record else f"{record['summary']['seconds_per_step']} s/step"
        print(f"{record['id']}: {status}, peak RSS {record['erase']['peak_rss_bytes'] / 2**30:.1f} GiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
