"""GPU bench: every method's training and sampling cost on SD 1.5's architecture, per attention backend.

    python bench/gpu.py [--device cuda|cpu] [--tiny] [--methods esd,advunlearn,doco,sfd,prune]
                        [--steps N] [--gen-images N] [--budget-seconds 420] [--out bench/results/gpu.json]

Builds Stable Diffusion 1.5's real architecture with random weights (``sd15_random_pipeline``; nothing
is downloaded) and moves it to the device in bfloat16. Then, for each attention backend ("sdpa"
always; "xformers" where it imports and the device is CUDA) and each method, it restores the
pristine weights, installs the backend, runs the method's SD preset (``PRESETS``) through
``erasure.erase`` with a few training steps and shrunken precomputation (``overrides``: the same
KEY=VALUE texts ``erasure erase --set`` takes, recorded in the JSON), checks with ``describe(pipe)``
(what ``erasure info`` prints) that the backend is the one in use, and times:

- setup, precomputation and training (from the method's ``progress(stage, done, total, metrics)``
  callback), and seconds per step: the median of the steps after the first;
- peak memory: ``torch.cuda.max_memory_allocated`` (reset before each method) on CUDA, the
  process's peak RSS (reset through /proc/self/clear_refs where Linux allows it) on the CPU;
- generation seconds per image after erasure at the preset's resolution (one warm-up image, then
  ``--gen-images`` timed ones): the pipeline's own sampler, or SFD's one-step generator.

Writes one JSON (``--out``, default bench/results/gpu.json) atomically after every (method,
backend) pair, so a killed run still leaves what it measured. ``--budget-seconds`` (default 420)
skips, with the reason recorded, any pair whose projected time would pass the budget, so the
command ends within about 8 minutes on one GPU. ``--device cpu --tiny`` runs the same code on a
32 px pipeline in under a minute; tests/test_gpu_bench.py runs it so the bench cannot rot.
Exit codes: 0 all measured or skipped for time, 1 a method failed (its traceback is in the JSON
and on stderr), 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "gpu.json"
METHODS = ("esd", "advunlearn", "doco", "sfd", "prune")
BACKENDS = ("sdpa", "xformers")

#: One SD preset per method: the heaviest setting each method has on SD 1.5.
PRESETS = {
    "esd": "esd/sd15-nudity",  # ESD-u: every weight outside attn2 trains
    "advunlearn": "advunlearn/sd15-nudity",
    "doco": "doco/sd15-object",
    "sfd": "sfd/sd15-nudity",
    "prune": "prune/sd15-memorized",
}
#: What each method erases (ErasureRequest fields), matching its preset's kind.
REQUESTS = {
    "esd": dict(targets=["nudity"], kind="nudity"),
    "advunlearn": dict(targets=["nudity"], kind="nudity"),
    "doco": dict(targets=["golf ball"], kind="object", anchor="ball"),
    "sfd": dict(targets=["nudity"], kind="nudity"),
    # A caption Stable Diffusion is known to reproduce (Carlini et al. 2023); the weights are random
    # here, so only the prompt's length and the cost matter.
    "prune": dict(targets=["Living in the Light with Ann Graham Lotz"], kind="memorized"),
}
#: The progress stage whose ticks are the method's steps, and what one step is.
STEP_STAGES = {
    "esd": ("training", "training step"),
    "advunlearn": ("training", "training step (attack round + outer step)"),
    "doco": ("training", "training step (generator + discriminator)"),
    "sfd": ("training", "training step (fake-score + generator update)"),
    "prune": ("recording activations", "one prompt sampled for tau steps while recording (training-free method)"),
}

# Full size (the device run): the presets' per-step work is kept where it sets the step's cost
# (batch sizes, DDIM depth of AdvUnlearn's online trajectories, gradient checkpointing); what only
# repeats is cut: the number of steps, DoCo's 1000 anchor images and AdvUnlearn's 30 attack steps
# per round (each needs its own online trajectory: 30 would make one step cost ~10 of ESD's runs).
# Warm-ups are cut to one step so the timed steps after the first are the main phase's steps
# (AdvUnlearn: attack every step; DoCo: gradient surgery).
FULL_OVERRIDES = {
    "esd": ["steps={steps}"],
    "advunlearn": ["steps={steps}", "warmup=0", "attack_steps=3"],
    "doco": ["steps={steps}", "warmup_steps=1", "anchor_images=8"],
    "sfd": ["steps={steps}"],
    "prune": [],
}
# --tiny: a 32 px pipeline, schedules a CPU runs in seconds (the methods' own tests use the same sizes).
TINY_OVERRIDES = {
    "esd": ["steps={steps}", "ddim_steps=4", "precompute_batch=8"],
    "advunlearn": ["steps={steps}", "warmup=0", "attack_steps=2", "ddim_steps=4", "retain_batch=2"],
    "doco": ["steps={steps}", "warmup_steps=1", "batch_size=2", "anchor_images=4", "anchor_steps=2",
             "anchor_batch=4", "disc_widths=[8, 16]"],
    "sfd": ["steps={steps}", "batch_size=1"],
    "prune": ["tau=2", "ddim_steps=4"],
}
#: Methods whose configs take mixed_precision (prune only samples, in the pipeline's dtype).
TRAINED = {"esd", "advunlearn", "doco", "sfd"}

GEN_PROMPT = "a photo of a cat sitting on a sofa"
GEN_GUIDANCE = 7.5
GEN_STEPS = {"full": 25, "tiny": 2}  # 25: the CLI's `erasure generate` default


class BadInput(Exception):
    """Refused command line: one line on stderr, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; the CLI rule is one line
        raise BadInput(message)


# ----------------------------------------------------------------------------- arguments
def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = OneLineParser(prog="bench/gpu.py", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="a 32 px pipeline and tiny schedules (CPU smoke run)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--steps", type=int, default=None, help="training steps per method (default 6; --tiny 3)")
    ap.add_argument("--gen-images", type=int, default=2, help="timed images per method after one warm-up (default 2)")
    ap.add_argument("--budget-seconds", type=float, default=420.0, help="skip pairs projected to end later (default 420)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON (default bench/results/gpu.json)")
    args = ap.parse_args(argv)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Every refusal that costs nothing, before any model is built."""
    import torch

    if args.device not in ("cuda", "cpu"):
        raise BadInput(f"--device {args.device!r}: expected cuda or cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: CUDA is not available on this machine; use --device cpu --tiny")
    if args.device == "cpu" and not args.tiny:
        raise BadInput("--device cpu: SD 1.5 at full size would take hours on a CPU; add --tiny")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise BadInput(f"--methods {args.methods!r}: expected a comma-separated subset of {','.join(METHODS)}")
    args.methods = list(dict.fromkeys(methods))
    args.steps = args.steps if args.steps is not None else (3 if args.tiny else 6)
    if args.steps < 2:
        raise BadInput(f"--steps {args.steps}: need at least 2 (the first step is excluded from the median)")
    if args.gen_images < 1:
        raise BadInput(f"--gen-images {args.gen_images}: need at least 1")
    if not args.budget_seconds > 0:
        raise BadInput(f"--budget-seconds {args.budget_seconds}: must be positive")
    parent = args.out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if args.out.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"--out {args.out}: cannot write a file there")


# ----------------------------------------------------------------------------- measuring
def sync(device) -> None:
    """Wait for queued GPU work, so wall-clock stamps measure it (no-op on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory since ``reset()``: CUDA max allocated, or the process's peak RSS on the CPU."""

    def __init__(self, device) -> None:
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else self._cpu_kind()

    @staticmethod
    def _cpu_kind() -> str:
        # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0); elsewhere the peak is the process's so far.
        return "process_peak_rss_reset_per_method" if PeakMemory._reset_rss() else "process_peak_rss_since_start"

    @staticmethod
    def _reset_rss() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "process_peak_rss_reset_per_method":
            self._reset_rss()

    def peak_bytes(self) -> int:
        import torch

        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        from erasure.training import peak_rss_bytes

        return peak_rss_bytes()


@dataclass
class Ticks:
    """The method's progress callback: a timestamp per (stage, done) tick."""

    device: object
    start: float = field(default_factory=time.perf_counter)
    ticks: list[tuple[str, int, float]] = field(default_factory=list)

    def __call__(self, stage: str, done: int, total: int, metrics: dict) -> None:
        sync(self.device)
        self.ticks.append((stage, done, time.perf_counter()))

    def step_seconds(self, stage: str) -> list[float]:
        """Seconds per step of ``stage``: between consecutive ticks (the first marks its start), divided
        by the steps they cover; a count that goes back (a new round) starts afresh."""
        out, last = [], None
        for s, done, t in self.ticks:
            if s != stage:
                continue
            if last is not None and done > last[0]:
                out += [(t - last[1]) / (done - last[0])] * (done - last[0])
            last = (done, t)
        return out

    def phases(self, stage: str, end: float) -> dict[str, float]:
        """setup (erase() call to the first tick: request, base fingerprint, text encoding), precompute
        (first tick to the step stage's first: x_t sampling, anchor images), training (the step
        stage's ticks; prune: its recording passes), finish (the edit built)."""
        first_any = self.ticks[0][2] if self.ticks else end
        mine = [t for s, _, t in self.ticks if s == stage] or [end]
        return {
            "setup": first_any - self.start,
            "precompute": mine[0] - first_any,
            "training": mine[-1] - mine[0],
            "finish": end - mine[-1],
            "total": end - self.start,
        }


def median_after_first(values: list[float]) -> float | None:
    """The median step time without the first step (CUDA kernels, allocator and autotuning warm up there)."""
    rest = values[1:] or values
    return statistics.median(rest) if rest else None


def rounded(value, digits: int = 4):
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


# ----------------------------------------------------------------------------- the model
@dataclass
class Model:
    """The pipeline on the device and its pristine weights (on the CPU), restored before every pair."""

    pipe: object
    device: object
    dtype: object
    pristine: dict[str, dict]

    def restore(self) -> None:
        import torch

        from erasure.edit import pipeline_modules

        with torch.no_grad():
            for name, module in pipeline_modules(self.pipe).items():
                module.load_state_dict(self.pristine[name])  # copies into the live tensors, keeping their dtype
                module.requires_grad_(False)
        # A method that failed mid-run can leave fp32 master weights in place; cast them back (only
        # then: diffusers warns on every dtype cast of a whole pipeline).
        if not placed(self.pipe, self.device, self.dtype):
            self.pipe.to(self.device, self.dtype)


def placed(pipe, device, dtype) -> bool:
    """Whether every floating-point tensor of the pipeline is on ``device`` in ``dtype``."""
    from erasure.edit import pipeline_modules

    return all(t.device.type == device.type and t.dtype == dtype
               for m in pipeline_modules(pipe).values() for t in [*m.parameters(), *m.buffers()]
               if t.is_floating_point())


def build_model(device, tiny: bool) -> tuple[Model, float]:
    """SD 1.5's architecture (or the tiny one) with random weights, on ``device`` in the bench dtype."""
    import torch

    from erasure.edit import pipeline_modules
    from erasure.pipelines.testing import sd15_random_pipeline, tiny_sd_pipeline

    # bf16 storage on CUDA (what `--dtype auto` gives on GPUs that support it), fp32 on the CPU,
    # where the methods train only in fp32.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    pipe = (tiny_sd_pipeline if tiny else sd15_random_pipeline)()
    # The pristine copy stays on the CPU, in the device's dtype (integer buffers as they are): the
    # methods change weights in place, and restoring from it is cheaper than rebuilding.
    pristine = {name: {k: v.detach().to(dtype=dtype if v.is_floating_point() else v.dtype, copy=True)
                       for k, v in m.state_dict().items()}
                for name, m in pipeline_modules(pipe).items()}
    if not placed(pipe, device, dtype):
        pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    sync(device)
    return Model(pipe, device, dtype, pristine), time.perf_counter() - start


# ----------------------------------------------------------------------------- backends
def backend_problem(backend: str, device) -> str | None:
    """Why ``backend`` cannot run here (None when it can)."""
    if backend == "sdpa":
        return None
    try:
        import xformers  # noqa: F401
        import xformers.ops  # noqa: F401
    except Exception as exc:  # a wheel built for another torch fails with many exception types
        return f"import xformers failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    from erasure.errors import ErasureInputError
    from erasure.pipelines.attention import resolve_attention

    try:
        resolve_attention(backend, device)
    except ErasureInputError as exc:
        return str(exc)
    return None


def install_backend(pipe, backend: str) -> str:
    """Install ``backend`` and return what ``erasure info`` would report for the pipeline."""
    from erasure.pipelines import describe
    from erasure.pipelines.attention import apply_attention

    apply_attention(pipe, backend)
    return describe(pipe).attention


# ----------------------------------------------------------------------------- one (method, backend) pair
def method_overrides(method: str, args: argparse.Namespace) -> list[str]:
    """The KEY=VALUE overrides of the preset (as `erasure erase --set` takes them)."""
    table = TINY_OVERRIDES if args.tiny else FULL_OVERRIDES
    items = [item.format(steps=args.steps) for item in table[method]]
    if method in TRAINED:
        # Quoted: YAML 1.1, which --set reads, takes a bare `no` for the boolean false.
        items.append("mixed_precision=bf16" if args.device == "cuda" else "mixed_precision='no'")
    return items


def measure_generation(pipe, edit, device, args: argparse.Namespace, peak: PeakMemory) -> dict:
    """Seconds per image of the erased pipeline's sampler: one warm-up image, then ``--gen-images`` timed ones."""
    from erasure.diffusion import native_resolution
    from erasure.pipelines import generate
    from erasure.one_step import OneStepPipeline, one_step_pipeline

    sampler = one_step_pipeline(pipe, edit.extra)  # SFD's runs sample with their one-step generator
    one_step = isinstance(sampler, OneStepPipeline)
    steps = GEN_STEPS["tiny" if args.tiny else "full"]
    peak.reset()
    times = []
    for seed in range(args.gen_images + 1):
        sync(device)
        start = time.perf_counter()
        generate(sampler, [GEN_PROMPT], seeds=[seed], steps=steps, guidance=GEN_GUIDANCE, batch_size=1)
        sync(device)
        times.append(time.perf_counter() - start)
    return {
        "sampler": (f"one-step generator (t* = {sampler.t_star})" if one_step
                    else f"{type(pipe.scheduler).__name__}, {steps} steps, guidance {GEN_GUIDANCE}"),
        "resolution": native_resolution(pipe),
        "images": args.gen_images,
        "warmup_seconds": times[0],
        "seconds_per_image": statistics.median(times[1:]),
        "image_seconds": times[1:],
        "peak_memory_bytes": peak.peak_bytes(),
    }


def run_pair(model: Model, method: str, backend: str, args: argparse.Namespace, peak: PeakMemory) -> dict:
    """Restore, install ``backend``, erase with ``method``'s preset, generate; returns the measurements."""
    import torch

    from erasure import ErasureRequest, erase
    from erasure.config import parse_assignments
    from erasure.configs import preset_path
    from erasure.pipelines.attention import active_attention

    model.restore()
    reported = install_backend(model.pipe, backend)
    overrides = method_overrides(method, args)
    stage, unit = STEP_STAGES[method]
    gc.collect()
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
    peak.reset()
    ticks = Ticks(model.device)
    edit = erase(model.pipe, ErasureRequest(**REQUESTS[method]), method, config=preset_path(PRESETS[method]),
                 progress=ticks, **parse_assignments(overrides))
    sync(model.device)
    end = time.perf_counter()
    train_peak = peak.peak_bytes()
    after = active_attention(model.pipe)  # a method must leave the backend as it found it
    steps = ticks.step_seconds(stage)
    result = {
        "attention_reported": reported,
        "attention_after_erase": after,
        "attention_ok": reported == backend == after,
        "overrides": overrides,
        "steps": len(steps),
        "step_unit": unit,
        "seconds_per_step": median_after_first(steps),
        "step_seconds": steps,
        "seconds": ticks.phases(stage, end),
        "peak_memory_bytes": train_peak,
        "peak_memory_gib": train_peak / 2**30,
        "method_cost": {k: v for k, v in edit.cost.items() if k in ("phases_seconds", "stages", "mixed_precision", "wall_seconds")},
        "edit": edit.size(),
    }
    result["generation"] = measure_generation(model.pipe, edit, model.device, args, peak)
    return result


# ----------------------------------------------------------------------------- the run
@dataclass
class Budget:
    seconds: float
    start: float = field(default_factory=time.perf_counter)
    durations: dict[tuple[str, str], float] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def projected(self, method: str) -> float:
        """The same method's time with another backend when known, else the median pair so far (0 at first)."""
        same = [d for (m, _), d in self.durations.items() if m == method]
        if same:
            return max(same)
        return statistics.median(self.durations.values()) if self.durations else 0.0

    def skip_reason(self, method: str) -> str | None:
        projected, elapsed = self.projected(method), self.elapsed()
        if elapsed + projected > self.seconds:
            return (f"time budget: projected {projected:.0f} s after {elapsed:.0f} s would pass "
                    f"--budget-seconds {self.seconds:.0f}")
        return None


def header(args: argparse.Namespace, argv: list[str], device, model: Model, build_seconds: float, peak: PeakMemory) -> dict:
    import torch

    from erasure.edit import library_versions
    from erasure.pipelines import describe

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine = {"type": "cuda", "name": torch.cuda.get_device_name(device), "memory_bytes": props.total_memory,
                   "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    else:
        machine = {"type": "cpu", "name": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    versions = library_versions()
    try:
        import xformers

        versions["xformers"] = xformers.__version__
    except Exception:
        versions["xformers"] = "not importable"
    info = describe(model.pipe)
    return {
        "command": "python bench/gpu.py " + shlex.join(argv),
        "mode": "tiny" if args.tiny else "full",
        "device": machine,
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
        "model": {"builder": "tiny_sd_pipeline" if args.tiny else "sd15_random_pipeline",
                  "weights": "random (seed 0)", "pipeline": info.pipeline, "scheduler": info.scheduler,
                  "parameters": info.total_parameters, "build_and_move_seconds": build_seconds},
        "dtype": str(model.dtype).removeprefix("torch."),
        "mixed_precision": "bf16" if device.type == "cuda" else "no",
        "memory_kind": peak.kind,
        "steps": args.steps,
        "budget_seconds": args.budget_seconds,
        "presets": {m: PRESETS[m] for m in args.methods},
        "requests": {m: REQUESTS[m] for m in args.methods},
        "notes": [
            "seconds_per_step: median of the steps after the first; step_seconds lists them all.",
            "seconds.setup includes erase()'s SHA-256 fingerprint of every base weight.",
            "overrides: the preset's values changed for the bench (erasure erase --set KEY=VALUE); "
            "per-step cost scales with what they cut (e.g. AdvUnlearn's attack_steps).",
            "generation runs after the erasure, on the erased pipeline (SFD: its one-step generator).",
        ],
        "backends": {},
        "results": {},
        "complete": False,  # true once every pair was measured or skipped
    }


def write_json(path: Path, data: dict) -> None:
    from erasure.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rounded(data), indent=2) + "\n", encoding="utf-8")


def log(message: str) -> None:
    print(message, flush=True)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    budget = Budget(args.budget_seconds)
    device = torch.device(args.device)
    peak = PeakMemory(device)
    log(f"building {'the tiny SD pipeline' if args.tiny else 'SD 1.5 (random weights)'} on {device} ...")
    model, build_seconds = build_model(device, args.tiny)
    out = header(args, argv, device, model, build_seconds, peak)
    log(f"built in {build_seconds:.1f} s ({out['model']['parameters']:,} parameters, {out['dtype']})")
    write_json(args.out, out)  # the machine and versions, even if the first pair never ends
    failed = False
    for backend in BACKENDS:
        problem = backend_problem(backend, device)
        out["backends"][backend] = {"skipped": problem} if problem else {"available": True}
        if problem:
            log(f"[{backend}] skipped: {problem}")
        for method in args.methods:
            entry = out["results"].setdefault(method, {"preset": PRESETS[method]})
            reason = problem or budget.skip_reason(method)
            if reason:
                entry[backend] = {"skipped": reason}
                if not problem:
                    log(f"[{backend}] {method}: skipped: {reason}")
                continue
            log(f"[{backend}] {method}: {PRESETS[method]} ...")
            start = time.perf_counter()
            try:
                entry[backend] = run_pair(model, method, backend, args, peak)
            except Exception as exc:  # a bug or an out-of-memory: record it, keep measuring the rest
                failed = True
                traceback.print_exc()
                entry[backend] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            budget.durations[(method, backend)] = time.perf_counter() - start
            entry[backend]["pair_seconds"] = budget.durations[(method, backend)]
            log(summary_line(method, backend, entry[backend]))
            out["elapsed_seconds"] = budget.elapsed()
            write_json(args.out, out)
    out["elapsed_seconds"] = budget.elapsed()
    out["complete"] = True
    write_json(args.out, out)
    log(f"wrote {args.out} after {out['elapsed_seconds']:.0f} s")
    return 1 if failed else 0


def summary_line(method: str, backend: str, r: dict) -> str:
    if "error" in r:
        return f"[{backend}] {method}: FAILED {r['error']}"
    unit = "passes" if method == "prune" else "steps"
    return (f"[{backend}] {method}: {r['seconds_per_step']:.3f} s/step ({r['steps']} {unit}), "
            f"setup+precompute {r['seconds']['setup'] + r['seconds']['precompute']:.1f} s, "
            f"peak {r['peak_memory_gib']:.2f} GiB, generation {r['generation']['seconds_per_image']:.3f} s/image, "
            f"attention {r['attention_after_erase']}, pair {r['pair_seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
    except BadInput as exc:
        print(f"bench/gpu.py: error: {exc}", file=sys.stderr)
        return 2
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
