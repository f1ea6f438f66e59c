"""ESD side by side: the reference implementation (rohitgandikota/erasing's ``esd_sd.py``) against
``erasure erase --method esd``, whole processes timed (issue 29, item 4).

    python bench/esd_reference.py --reference DIR [--pipelines tiny small] [--iterations-tiny 100]
        [--iterations-small 50] [--runs 3] [--ours-set KEY=VALUE ...] [--out bench/runs/esd_reference]
        [--results bench/results] [--report-only]

DIR is a local checkout of https://github.com/rohitgandikota/erasing (e.g. ``git clone`` it; a
``git archive`` export works too, its commit is then recorded as "unknown"). Nothing of it is
vendored: each run copies the checkout to a temporary folder and changes only what it needs to run
offline on a CPU (``SUBSTITUTIONS``: the model path, bfloat16 -> float32, 1024 px -> the pipeline's
native size, a seed for python's ``random`` and torch after the imports), each of which must match
exactly once or the bench stops naming it; the device is the script's own ``--device cpu``. Its
diffusers code (``utils/sd_utils.py``, a replacement ``StableDiffusionPipeline.__call__``) imports
and runs under the installed diffusers as it is, so no shim is applied (``SHIMS``).

Both sides erase "a cat" with ESD-x, 50 DDIM steps, sampling guidance 3, negative guidance 1,
lr 1e-5, batch 1, at 32 px, on one thread (OMP_NUM_THREADS=1 and MKL_NUM_THREADS=1 in both
processes; torch's thread count under that environment is checked and recorded), on random-weight
SD-1.x-layout pipelines saved once under OUT/ with a DDIM scheduler (x0 clipping off, as ours
samples): "tiny" (``tiny_sd_pipeline``) and "small" (UNet block_out_channels 64/128/256, two layers
per block). Ours runs once per ``--ours-set`` variant (default: ``trajectories=per-step``, the
paper's, and ``trajectories=shared``). Each run times the whole process (interpreter start,
imports, set-up, training, saving) and its CPU time and page faults (``os.wait4``); the sides
alternate, the order reversed every other run; medians and ratios reference / ours.

It also counts sample-steps (one trajectory advanced one DDIM step: one guided UNet evaluation):
ours from its manifest (``extra["sample_steps"]``: executed and needed), the reference's from its
own draws (its seeded ``random.randint`` depths replayed here, and checked against the depths its
progress line prints in every run), and states the ceiling: the sample-steps the algorithm needs at the cost per
sample-step of the best batch size, measured here on the same UNet at batch 1, 8 and 32.

Writes RESULTS/esd_reference.json and .md; ``--report-only`` rewrites the markdown from the JSON.
Needs a quiet machine: the defaults take about 30 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _runs import ROOT, machine, page, parse, results_options, shown, table, write_results

NAME = "esd_reference"
URL = "https://github.com/rohitgandikota/erasing"
SCRIPT = "esd_sd.py"
CONCEPT = "a cat"
SEED = 0
DDIM_STEPS = 50
GUIDANCE = 3.0
ETA = 1.0  # the reference's --negative_guidance
LR = 1e-5
#: Both processes run on one thread: the issue's measurement, and a fair one on a shared machine.
THREADS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: Ours' settings that match the reference's; ``--ours-set`` may not change them.
OURS_FIXED = {"variant": "esd-x", "lr": LR, "ddim_steps": DDIM_STEPS, "guidance": GUIDANCE, "eta": ETA,
              "batch_size": 1, "checkpoint_every": 0, "seed": SEED}
DEFAULT_VARIANTS = [["trajectories=per-step"], ["trajectories=shared"]]
#: Batch sizes (trajectories per UNet call) at which one sample-step's cost is measured.
COST_BATCHES = (1, 8, 32)


@dataclass(frozen=True)
class Substitution:
    """One change to the reference's script: ``old`` must occur exactly once; ``new`` may hold {model}, {size}, {seed}."""

    name: str
    what: str
    old: str
    new: str

    def apply(self, text: str, **values: object) -> str:
        found = text.count(self.old)
        if found != 1:
            raise SystemExit(f"{NAME}: substitution {self.name!r}: {self.old!r} occurs {found} times in {SCRIPT} "
                             "(expected once): the reference changed; update SUBSTITUTIONS in bench/esd_reference.py")
        return text.replace(self.old, self.new.format(**values))


#: The only changes made to the reference's script. The hub id also appears as load_sd_models'
#: default, which the script's own call overrides: only the call (which passes torch_dtype=torch_dtype) is changed.
SUBSTITUTIONS = [
    Substitution("model path", "the hub id -> the pipeline's folder",
                 'basemodel_id="CompVis/stable-diffusion-v1-4", torch_dtype=torch_dtype',
                 "basemodel_id={model!r}, torch_dtype=torch_dtype"),
    Substitution("dtype", "bfloat16 -> float32", "torch_dtype = torch.bfloat16", "torch_dtype = torch.float32"),
    Substitution("resolution", "1024 px -> the pipeline's native size", "height=width=1024", "height=width={size}"),
    # After the imports, before any of its code runs: the depths and noise seeds it draws per
    # iteration (python's random) and anything torch draws are then the same in every run.
    Substitution("seed", "random.seed and torch.manual_seed after the imports",
                 "StableDiffusionPipeline.__call__ = esd_sd_call\n",
                 "StableDiffusionPipeline.__call__ = esd_sd_call\nrandom.seed({seed}); torch.manual_seed({seed})\n"),
]
#: Compatibility shims applied to the reference (none needed under diffusers 0.42: its
#: utils/sd_utils.py imports and its __call__ replacement runs as published).
SHIMS: list[dict] = []


# ----------------------------------------------------------------------------- pipelines
def pipeline_configs() -> dict[str, dict]:
    """The two pipelines' UNet configs (VAE and text encoder: the tiny ones, 32 px images)."""
    from erasure.pipelines.testing import TINY_SD_UNET

    small = {**TINY_SD_UNET, "block_out_channels": (64, 128, 256),
             "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")}
    return {"tiny": dict(TINY_SD_UNET), "small": small}


def ensure_pipeline(name: str, out: Path) -> Path:
    """The pipeline saved as a diffusers folder under OUT (built once; rebuilt when its config changed)."""
    from diffusers import DDIMScheduler

    from erasure.pipelines.testing import SD15_SCHEDULER, TINY_TEXT, TINY_VAE, random_sd_pipeline

    unet = pipeline_configs()[name]
    folder, marker = out / name, out / name / "bench-pipeline.json"
    spec = json.dumps({"unet": unet, "seed": SEED, "scheduler": "DDIM, clip_sample false"}, sort_keys=True)
    if marker.is_file() and marker.read_text() == spec:
        return folder
    pipe = random_sd_pipeline(unet, TINY_VAE, TINY_TEXT, SD15_SCHEDULER, seed=SEED)
    # Both sides sample with DDIM: ours always does (from the pipeline's noise schedule); the
    # reference samples with the pipeline's own scheduler. x0 clipping off, as ours samples.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    shutil.rmtree(folder, ignore_errors=True)
    pipe.save_pretrained(folder)
    marker.write_text(spec)
    return folder


def pipeline_facts(folder: Path) -> dict:
    """The UNet's parameter count and the native image size (what the reference's 1024 becomes)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = json.loads((folder / "vae" / "config.json").read_text())
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    return {"unet_parameters": sum(p.numel() for p in unet.parameters()), "resolution": unet.config.sample_size * scale}


# ----------------------------------------------------------------------------- the reference
def reference_commit(reference: Path) -> str:
    """The checkout's commit (``git rev-parse HEAD``), or "unknown" when DIR is not a git work tree."""
    done = subprocess.run(["git", "-C", str(reference), "rev-parse", "--show-toplevel", "HEAD"],
                          capture_output=True, text=True, check=False)
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != reference.resolve():
        return "unknown"  # not a work tree, or a folder inside some other repository
    return lines[1]


def prepare_reference(reference: Path, model: Path, size: int, into: Path) -> Path:
    """A copy of the checkout whose script runs offline on the CPU on ``model`` (``SUBSTITUTIONS`` applied)."""
    copy = into / "erasing"
    shutil.copytree(reference, copy, ignore=shutil.ignore_patterns(".git"))
    script = copy / SCRIPT
    text = script.read_text()
    for sub in SUBSTITUTIONS:
        text = sub.apply(text, model=str(model), size=size, seed=SEED)
    script.write_text(text)
    return copy


def reference_args(iterations: object, save: object) -> list[str]:
    """The reference script's own options for the matched settings (the device among them: no edit needed)."""
    return ["--erase_concept", CONCEPT, "--train_method", "esd-x", "--iterations", str(iterations), "--lr", str(LR),
            "--negative_guidance", str(ETA), "--guidance_scale", str(GUIDANCE), "--num_inference_steps", str(DDIM_STEPS),
            "--device", "cpu", "--save_path", str(save)]


def reference_depths(iterations: int) -> list[int]:
    """The depths the seeded reference draws: per iteration ``randint(0, steps - 1)``, then a noise seed."""
    rng = random.Random(SEED)
    depths = []
    for _ in range(iterations):
        depths.append(rng.randint(0, DDIM_STEPS - 1))
        rng.randint(0, 2**15)
    return depths


def logged_depths(log: Path, iterations: int) -> list[int] | None:
    """The depths the reference printed (its tqdm postfix ``timestep=``), or None where the log does not show all.

    tqdm redraws its line (``\\r``) on every ``set_postfix``, once per iteration and in order, without
    changing the count it shows; its throttled progress redraws change the count and repeat the last
    postfix. So a redraw showing the same count as the line before is an iteration's own; the closing
    redraw may add one more, after all of them.
    """
    depths, last = [], None
    for line in log.read_text(errors="replace").splitlines():  # splits on \r too
        found = re.search(rf"Training ESD:.*?\b(\d+)/{iterations}\b(.*)", line)
        if not found:
            continue
        depth = re.search(r"timestep=(\d+)", found[2])
        if depth and found[1] == last:
            depths.append(int(depth[1]))
        last = found[1]
    return depths[:iterations] if len(depths) >= iterations else None


# ----------------------------------------------------------------------------- ours
def ours_argv(model: Path, iterations: int, variant: list[str], run: Path) -> list[str]:
    sets = [f"{k}={v}" for k, v in {**OURS_FIXED, "steps": iterations}.items()] + variant
    return [sys.executable, "-m", "erasure", "erase", "--method", "esd", "--model", str(model), "--concept", CONCEPT,
            "--config", "defaults", *[part for s in sets for part in ("--set", s)], "--device", "cpu", "--out", str(run)]


def check_variants(variants: list[list[str]]) -> None:
    """Each ``--ours-set`` variant is valid ESD config and leaves the matched settings alone (one line, exit 2)."""
    from erasure.config import parse_assignments
    from erasure.errors import ErasureInputError
    from erasure.methods.esd import ESDConfig

    labels = [" ".join(v) for v in variants]
    if len(set(labels)) != len(labels):
        refuse(f"--ours-set: a variant given twice ({', '.join(labels)})")
    for variant in variants:
        try:
            values = parse_assignments(variant, "--ours-set")
            fixed = sorted(set(values) & {*OURS_FIXED, "steps"})
            if fixed:
                raise ErasureInputError(f"--ours-set {', '.join(fixed)}: set by the bench to match the reference")
            ESDConfig().with_overrides(**{**OURS_FIXED, **values})
        except ErasureInputError as e:
            print(f"{NAME}: {e}", file=sys.stderr)
            raise SystemExit(2) from None


# ----------------------------------------------------------------------------- measuring
def timed(argv: list[str], cwd: Path, log: Path) -> dict:
    """Run one whole process; its wall seconds, CPU seconds, minor page faults and peak RSS."""
    env = {**os.environ, **THREADS_ENV, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time and faults
        seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{NAME}: {' '.join(argv[:4])} ... exited {code}; see {log}\n"
                         + log.read_text()[-2000:])
    return {"seconds": round(seconds, 2), "user_seconds": round(usage.ru_utime, 2), "system_seconds": round(usage.ru_stime, 2),
            "minor_faults": usage.ru_minflt, "peak_rss_bytes": usage.ru_maxrss * 1024}


def child_torch_threads() -> int:
    """torch's intra-op threads in a process started with the bench's environment (both sides' setting)."""
    env = {**os.environ, **THREADS_ENV}
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True,
                          text=True, env=env, check=True)
    return int(done.stdout.strip())


def cost_per_sample_step(model: Path, seconds: float = 1.0) -> dict[str, float]:
    """Seconds per sample-step (a guided UNet evaluation: unconditional and conditional rows) at each
    batch size of ``COST_BATCHES``, on one thread; the DDIM update's arithmetic is left out (negligible)."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").eval()
    c = unet.config
    out = {}
    with torch.no_grad():
        for batch in COST_BATCHES:
            x = torch.randn(2 * batch, c.in_channels, c.sample_size, c.sample_size)
            text = torch.randn(2 * batch, 77, c.cross_attention_dim)
            t = torch.tensor(981)
            unet(x, t, encoder_hidden_states=text)  # warm-up: first-call allocations
            calls, start = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - start < seconds:
                unet(x, t, encoder_hidden_states=text)
                calls += 1
            out[str(batch)] = (time.perf_counter() - start) / calls / batch
    return out


def slug(label: str) -> str:
    """A side's label as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def alternated(runs: int, sides: list[str]) -> list[tuple[int, str]]:
    """(run, side) in the order they execute: all sides per run, the order reversed every other run."""
    return [(r, side) for r in range(runs) for side in (sides if r % 2 == 0 else sides[::-1])]


def measure_pipeline(name: str, args: argparse.Namespace, variants: list[list[str]], work: Path) -> dict:
    """Every run of one pipeline: the reference and each variant of ours, alternated."""
    model = ensure_pipeline(name, args.out)
    facts = pipeline_facts(model)
    iterations = getattr(args, f"iterations_{name}")
    copy = prepare_reference(args.reference, model, facts["resolution"], work / name)
    record = {"name": name, **facts, "folder": shown(model), "iterations": iterations,
              "cost_per_sample_step": cost_per_sample_step(model)}
    labels = ["reference"] + [" ".join(v) for v in variants]
    timings: dict[str, list[dict]] = {label: [] for label in labels}
    manifests: dict[str, list[dict]] = {label: [] for label in labels[1:]}
    logged: list[list[int] | None] = []  # the depths each reference run printed
    for run, label in alternated(args.runs, labels):
        print(f"{name}: run {run + 1}/{args.runs}: {label}", flush=True)
        log = args.out / "logs" / f"{name}-{slug(label)}-{run}.log"
        target = work / name / f"{slug(label)}-{run}"  # the run's output, removed once read
        if label == "reference":
            timings[label].append(timed([sys.executable, SCRIPT, *reference_args(iterations, target)], copy, log))
            if not list(target.glob("*.safetensors")):
                raise SystemExit(f"{NAME}: the reference wrote no .safetensors into {target}; see {log}")
            logged.append(logged_depths(log, iterations))
        else:
            timings[label].append(timed(ours_argv(model, iterations, variants[labels.index(label) - 1], target), ROOT, log))
            manifests[label].append(json.loads((target / "manifest.json").read_text()))
        shutil.rmtree(target, ignore_errors=True)
    depths = reference_depths(iterations)
    # The replayed draws count only where every run printed exactly them; else the expected count stands.
    record["draws_reproducible"] = all(run == depths for run in logged)
    record["reference"] = {**summary(timings["reference"]), "sample_steps": sum(depths),
                           "sample_steps_expected": iterations * (DDIM_STEPS - 1) / 2}
    record["ours"] = [{"label": label, "sets": variants[i], **summary(timings[label]),
                       # seeded: every run samples the same steps
                       "sample_steps": manifests[label][0]["extra"]["sample_steps"],
                       "median_xt_seconds": xt_seconds(manifests[label])}
                      for i, label in enumerate(labels[1:])]
    return record


def xt_seconds(manifests: list[dict]) -> float | None:
    """Ours' median precompute phase (x_t and the frozen estimates at them); None without one (precompute off)."""
    phases = [m["cost"].get("phases_seconds", {}).get("precompute") for m in manifests]
    return None if None in phases else round(statistics.median(phases), 2)


def summary(runs: list[dict]) -> dict:
    """A side's runs (in execution order) and their medians."""
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return {"runs": runs, "median_seconds": round(med("seconds"), 2), "median_user_seconds": round(med("user_seconds"), 2),
            "median_system_seconds": round(med("system_seconds"), 2), "median_minor_faults": int(med("minor_faults"))}


# ----------------------------------------------------------------------------- the page
def markdown(result: dict) -> str:
    ref = result["reference"]
    start, end = (" / ".join(f"{x:.2f}" for x in result["load_average"][k]) for k in ("start", "end"))
    batches = " / ".join(sorted(result["pipelines"][0]["cost_per_sample_step"], key=int)) if result["pipelines"] else ""
    subs = "; ".join(f"{s['name']} ({s['what']})" for s in ref["substitutions"])
    return page(
        "# ESD: the reference implementation against ours, whole processes",
        f"`{result['command']}` on {result['machine']}, torch {result['versions']['torch']}, diffusers "
        f"{result['versions']['diffusers']}; load average (1/5/15 min) {start} at the start, {end} at the end.",
        f"Reference: [{ref['url']}]({ref['url']}) `{ref['script']}` at commit {ref['commit']}, copied and changed only "
        f"to run offline on the CPU (each an exact text substitution, listed in the JSON): {subs}; arguments "
        f"`{ref['arguments']}`; "
        + (f"shims: {'; '.join(s['name'] for s in ref['shims'])}." if ref["shims"] else "no compatibility shims."),
        f"Both: erase {result['settings']['concept']!r}, ESD-x, {result['settings']['ddim_steps']} DDIM steps, guidance "
        f"{result['settings']['guidance']:g}, negative guidance {result['settings']['eta']:g}, lr {result['settings']['lr']:g}, "
        f"batch 1, at each pipeline's native size, {result['threads']['torch_threads']} torch thread "
        f"({', '.join(f'{k}={v}' for k, v in result['threads']['env'].items())}). Each time is a whole process "
        "(start, imports, set-up, training, saving); the sides alternate, the order reversed every other run.",
        table(["pipeline", "iterations", "ours", "reference median (s)", "ours median (s)", "reference / ours", "runs"],
              [[pipeline_cell(p), p["iterations"], o["label"], f"{p['reference']['median_seconds']:.1f}",
                f"{o['median_seconds']:.1f}", f"{p['reference']['median_seconds'] / o['median_seconds']:.2f}x",
                len(o["runs"])] for p in result["pipelines"] for o in p["ours"]]),
        "## Sample-steps and the ceiling",
        "A sample-step is one trajectory advanced one DDIM step (one guided UNet evaluation: two rows). The "
        "reference's are the sum of the depths it draws (replayed from its seed and checked against those it "
        f"prints; \"expected\", iterations x {(result['settings']['ddim_steps'] - 1) / 2:g}, where they did not "
        "match), ours from the run's manifest. The ceiling is the sample-steps a side needs at the "
        f"cost per sample-step of the best measured batch size (batch {batches}, one thread, same UNet): the "
        "least time x_t production can take on this machine. \"x_t phase\": ours' precompute phase (its "
        "manifest; x_t and the frozen noise estimates at them), median. \"x_t speed-up ceiling\": the reference's "
        "sample-steps at batch 1's cost over that ceiling.",
        table(["pipeline", "side", "executed", "needed", "executed / needed", f"ms per sample-step (batch {batches})",
               "x_t phase (s)", "ceiling (s)", "x_t speed-up ceiling"], [r for p in result["pipelines"] for r in step_rows(p)]),
        "## CPU time and page faults (medians)",
        table(["pipeline", "side", "wall (s)", "user (s)", "system (s)", "minor faults (M)"],
              [[p["name"], side["label"], f"{side['median_seconds']:.1f}", f"{side['median_user_seconds']:.1f}",
                f"{side['median_system_seconds']:.1f}", f"{side['median_minor_faults'] / 1e6:.2f}"]
               for p in result["pipelines"] for side in [{"label": "reference", **p["reference"]}, *p["ours"]]]),
    )


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def pipeline_cell(p: dict) -> str:
    return f"{p['name']} (UNet {p['unet_parameters'] / 1e6:.2f} M params, {p['resolution']} px)"


def step_rows(p: dict) -> list[list]:
    """The sample-steps table's rows of one pipeline: the reference, then each variant of ours."""
    cost = p["cost_per_sample_step"]
    best = min(cost.values())
    ms = " / ".join(f"{cost[b] * 1e3:.2f}" for b in sorted(cost, key=int))
    ref = p["reference"]
    ref_steps = ref["sample_steps"] if p["draws_reproducible"] else ref["sample_steps_expected"]
    ref_xt = ref_steps * cost["1"]
    steps = f"{ref_steps:g}" + ("" if p["draws_reproducible"] else " (expected)")
    rows = [[p["name"], "reference", steps, steps, "1.00", ms, "", f"{ref_steps * best:.1f}",
             f"{ref_xt / (ref_steps * best):.2f}x"]]
    for o in p["ours"]:
        s = o["sample_steps"]
        rows.append([p["name"], o["label"], s["executed"], s["needed"], f"{s['executed'] / s['needed']:.2f}", ms,
                     _num(o["median_xt_seconds"]), f"{s['needed'] * best:.1f}", f"{ref_xt / (s['needed'] * best):.2f}x"])
    return rows


# ----------------------------------------------------------------------------- command line
def command(args: argparse.Namespace, variants: list[list[str]]) -> str:
    """The command that reruns this measurement (the checkout as DIR: its commit is recorded)."""
    parts = ["python bench/esd_reference.py --reference DIR", f"--pipelines {' '.join(args.pipelines)}"]
    parts += [f"--iterations-{p} {getattr(args, f'iterations_{p}')}" for p in args.pipelines] + [f"--runs {args.runs}"]
    parts += [f"--ours-set {' '.join(v)}" for v in variants]
    if args.out.resolve() != (ROOT / "bench" / "runs" / NAME).resolve():
        parts.append(f"--out {shown(args.out)}")
    return " ".join(parts)


def options() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, help=f"a local checkout of {URL}")
    ap.add_argument("--pipelines", nargs="+", choices=["tiny", "small"], default=["tiny", "small"])
    ap.add_argument("--iterations-tiny", type=int, default=100)
    ap.add_argument("--iterations-small", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3, help="runs of each side per pipeline (medians)")
    ap.add_argument("--ours-set", action="append", nargs="+", metavar="KEY=VALUE",
                    help="one variant of ours: ESD config values beside the matched settings (repeat for more; "
                         "default: trajectories=per-step, then trajectories=shared)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / NAME, help="the pipelines and the runs' logs")
    results_options(ap, NAME)
    return ap


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how quiet the machine was."""
    return [round(x, 2) for x in os.getloadavg()]


def refuse(message: str) -> None:
    print(f"{NAME}: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    args = parse(options(), NAME, markdown)
    if args is None:
        return
    if args.reference is None:
        print(f"bench/esd_reference.py: pass --reference DIR, a checkout of {URL}", file=sys.stderr)
        raise SystemExit(2)
    if not (args.reference / SCRIPT).is_file():
        refuse(f"--reference {args.reference}: no {SCRIPT} there; pass a checkout of {URL}")
    if args.runs < 1 or any(getattr(args, f"iterations_{p}") < 1 for p in args.pipelines):
        refuse("--runs and the pipelines' --iterations-* must be at least 1")
    variants = args.ours_set or DEFAULT_VARIANTS
    check_variants(variants)
    import diffusers
    import torch
    import transformers

    torch.set_num_threads(1)  # the in-process cost measurement runs as both sides do
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    result = {
        "command": command(args, variants), "machine": machine(),
        "load_average": {"start": load_average()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__},
        "reference": {"url": URL, "script": SCRIPT, "commit": reference_commit(args.reference),
                      "substitutions": [vars(s) for s in SUBSTITUTIONS], "shims": SHIMS,
                      "arguments": shlex.join(reference_args("N", "SAVE"))},
        "settings": {"concept": CONCEPT, "ddim_steps": DDIM_STEPS, "guidance": GUIDANCE, "eta": ETA, "lr": LR,
                     "batch_size": 1, "seed": SEED, "ours_fixed": OURS_FIXED},
        "threads": {"env": THREADS_ENV, "torch_threads": child_torch_threads()},
        "pipelines": [],
    }
    with tempfile.TemporaryDirectory(prefix="esd-reference-") as work:
        for name in args.pipelines:
            result["pipelines"].append(measure_pipeline(name, args, variants, Path(work)))
            result["load_average"]["end"] = load_average()
            write_results(args.results, NAME, result, markdown)  # after each pipeline: a long run keeps what it measured


if __name__ == "__main__":
    main()
