"""Evaluation of erased models against their original: cached generation, the canvas suite's pieces, reports.

``evaluate_runs(original, runs, suite=NAME, out=DIR)`` (CLI: ``erasure evaluate``) generates the
suite's prompts with the original model and with every erased run on the same seeds, scores them,
and writes ``metrics.json``, ``report.md``, ``report.html`` and a before/after grid per run into ``DIR``.
The suites themselves (canvas, memorization, sd-nudity, sd-style, sd-object: YAML in configs/suites/
plus a runner each) are in ``erasure.suites``.

The canvas suite is UnlearnCanvas' protocol on canvas-mini: every object x style caption, a few
seeds each, judged by the shipped evaluator (``erasure.metrics.UnlearnCanvasAccuracy``). Each run's
erased concept comes from its manifest, so the original model is scored against the same targets
("before") as the erased one ("after").

Generation is cached on disk by (model fingerprint, prompt, seed, sampler settings): evaluating a
second run against the same original, or re-running an evaluation, does not regenerate. Under
``accelerate launch`` it is sharded: each process draws its share of the missing images, all
processes receive all images, and only the main process writes files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from PIL import Image

from erasure.atomic import atomic_path
from erasure.errors import ErasureInputError
from erasure.reports import html_report, run_label

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SUITES: tuple[str, ...] = ("canvas", "memorization", "sd-nudity", "sd-style", "sd-object")  # see erasure.suites
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
HTML_REPORT_FILE = "report.html"

#: progress(stage, done, total, metrics), as for training.
ProgressFn = Callable[[str, int, int, dict], None]


@dataclass
class SamplingSettings:
    """How evaluation images are drawn; recorded in every report."""

    steps: int = 25
    guidance: float = 3.0  # canvas-mini's best: 3 / 5 give objects 34% / 30%, styles 99% / 78% (2 seeds x 64 pairs)
    scheduler: str = "ddim"
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    batch_size: int = 32

    def key(self) -> dict:
        # batch_size does not change images, so it is not part of the cache key
        return {"steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler}


class GenerationCache:
    """PNG files keyed by (model fingerprint, prompt, seed, sampler settings)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def _path(self, model: str, prompt: str, seed: int, settings: SamplingSettings) -> Path:
        key = json.dumps([model, prompt, seed, settings.key()], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.png"

    def get(self, model: str, prompt: str, seed: int, settings: SamplingSettings) -> Image.Image | None:
        path = self._path(model, prompt, seed, settings)
        if not path.is_file():
            return None
        with Image.open(path) as im:
            return im.convert("RGB")

    def put(self, model: str, prompt: str, seed: int, settings: SamplingSettings, image: Image.Image) -> None:
        path = self._path(model, prompt, seed, settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")


def generate_cached(
    pipe,
    prompts: Sequence[str],
    settings: SamplingSettings,
    cache: GenerationCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Image.Image]:
    """``generate`` for every (prompt, seed), prompt-major, reading and filling ``cache``."""
    from erasure.edit import fingerprint
    from erasure.pipelines.generation import generate

    model = fingerprint(pipe) if cache is not None else ""
    jobs = [(p, s) for p in prompts for s in settings.seeds]
    images: list[Image.Image | None] = [cache.get(model, p, s, settings) if cache else None for p, s in jobs]
    missing = [i for i, im in enumerate(images) if im is None]
    rank, world = shard(pipe.device)
    # Under a launcher each process draws every world-th missing image; an image depends only on its
    # (prompt, seed), so the gathered set equals one process's.
    mine = missing[rank::world]
    logger.info("%d of %d images cached; generating %d (process %d of %d)", len(jobs) - len(missing), len(jobs),
                len(mine), rank, world)
    made_here: dict[int, Image.Image] = {}
    for start in range(0, len(mine), settings.batch_size):
        chunk = mine[start : start + settings.batch_size]
        # one prompt per job: generate() pairs every prompt with every seed, so call per seed group
        made_here.update(zip(chunk, _generate_jobs(generate, pipe, [jobs[i] for i in chunk], settings)))
        if progress and rank == 0:
            progress(start + len(chunk), len(mine))
    made = _gather(made_here) if world > 1 else made_here
    for i, image in made.items():
        images[i] = image
        if cache is not None and rank == 0:  # only the main process writes files
            cache.put(model, *jobs[i], settings, image)
    return images  # type: ignore[return-value]


def shard(device: torch.device | str | None = None) -> tuple[int, int]:
    """(process index, number of processes) under ``accelerate launch`` / ``torchrun``; (0, 1) otherwise.

    Without a launcher no process group is created, so single-process evaluation is unchanged. Under
    one, the first call joins the process group with a backend for ``device``, where the pipeline runs
    (a ``torch.device`` or a ``--device`` name): gloo for the CPU, NCCL for CUDA, as ``erasure.erase``
    does. Later calls reuse that group whatever they pass, so callers with no pipeline at hand
    (writing files, printing scores) may leave ``device`` out.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from erasure.training import process_state

    state = process_state(cpu=_on_cpu(device))
    return state.process_index, state.num_processes


def _on_cpu(device: torch.device | str | None) -> bool:
    import torch

    if device is None:
        # A guess, which matters only if no caller named a device before the group was joined (accelerate
        # ignores it afterwards): evaluate_runs joins first with its --device, so `--device cpu` gets gloo.
        return not torch.cuda.is_available()
    if isinstance(device, str):
        from erasure.pipelines.loading import resolve_device

        device = resolve_device(device)  # "auto" and "cuda" as the models will load
    return torch.device(device).type == "cpu"


def _gather(made: dict[int, Image.Image]) -> dict[int, Image.Image]:
    """Every process's images (index -> image), on every process; PNG bytes keep them exact."""
    import io

    import torch.distributed as dist

    def encode(im: Image.Image) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, {i: encode(im) for i, im in made.items()})
    out: dict[int, Image.Image] = {}
    for part in parts:
        for i, data in part.items():
            with Image.open(io.BytesIO(data)) as im:
                out[i] = im.convert("RGB")
    return out


def _generate_jobs(generate, pipe, jobs: list[tuple[str, int]], settings: SamplingSettings) -> list[Image.Image]:
    # generate() takes prompts x seeds; jobs are arbitrary (prompt, seed) pairs, so group by seed
    # and restore the order afterwards. Images do not depend on the batch they were drawn in.
    by_seed: dict[int, list[int]] = {}
    for i, (_, seed) in enumerate(jobs):
        by_seed.setdefault(seed, []).append(i)
    out: list[Image.Image | None] = [None] * len(jobs)
    for seed, idx in by_seed.items():
        made = generate(pipe, [jobs[i][0] for i in idx], seeds=[seed], steps=settings.steps,
                        guidance=settings.guidance, scheduler=settings.scheduler, batch_size=len(idx))
        for i, image in zip(idx, made):
            out[i] = image
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- the canvas suite
@dataclass
class CanvasCase:
    """One prompt of the canvas suite with the object and style it asks for."""

    prompt: str
    object: int
    style: int


def canvas_cases() -> list[CanvasCase]:
    """Every object x style caption in UnlearnCanvas' template, style-major."""
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, caption

    return [CanvasCase(caption(o, s), oi, si) for si, s in enumerate(STYLES) for oi, o in enumerate(OBJECTS)]


def canvas_targets(request: dict) -> tuple[str, list[int]]:
    """(kind, indices) of the erased canvas-mini concepts named in a run's request."""
    from erasure.pipelines.canvas.render import OBJECTS, STYLES
    from erasure.request import ErasureRequest, canvas_concept

    req = ErasureRequest.from_dict(request)
    if req.kind == "style":
        return "style", [STYLES.index(canvas_concept(t, "style")) for t in req.targets]
    if req.kind == "object":
        return "object", [OBJECTS.index(canvas_concept(t, "object")) for t in req.targets]
    raise ErasureInputError(f"the canvas suite scores style and object erasures; this run erased a {req.kind!r} concept")


def score_canvas(images: Sequence[Image.Image], cases: Sequence[CanvasCase], seeds: int, kind: str,
                 targets: Sequence[int], evaluator=None) -> dict:
    """UA / IRA / CRA of images drawn for ``cases`` (prompt-major, ``seeds`` images per case)."""
    import torch

    from erasure.metrics import UnlearnCanvasAccuracy
    from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator

    metric = UnlearnCanvasAccuracy(kind, targets, evaluator if evaluator is not None else load_evaluator())
    objects = torch.tensor([c.object for c in cases for _ in range(seeds)])
    styles = torch.tensor([c.style for c in cases for _ in range(seeds)])
    for start in range(0, len(images), 256):
        sl = slice(start, start + 256)
        metric.update(images_to_tensor(images[sl]), objects[sl], styles[sl])
    result = metric.compute()
    return {k: result[k] for k in ("UA", "IRA", "CRA", "counts", "per_target_UA")}


def accuracy_canvas(images: Sequence[Image.Image], cases: Sequence[CanvasCase], seeds: int, evaluator=None) -> dict[str, float]:
    """Plain object / style accuracy of the evaluator on images drawn for ``cases``."""
    import torch

    from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator

    evaluator = evaluator if evaluator is not None else load_evaluator()
    po, ps = evaluator.classify(images_to_tensor(images))
    objects = torch.tensor([c.object for c in cases for _ in range(seeds)])
    styles = torch.tensor([c.style for c in cases for _ in range(seeds)])
    return {"object_accuracy": float((po == objects).float().mean()), "style_accuracy": float((ps == styles).float().mean())}


def before_after_grid(before: Sequence[Image.Image], after: Sequence[Image.Image], cases: Sequence[CanvasCase],
                      seeds: int, title_after: str) -> Image.Image:
    """Objects x styles grids of the first seed, original left and erased right."""
    from erasure.pipelines.canvas.render import OBJECTS, STYLES
    from erasure.pipelines.generation import image_grid

    first = list(range(0, len(cases) * seeds, seeds))
    grids = [
        image_grid([images[i] for i in first], rows=len(STYLES), cols=len(OBJECTS),
                   row_labels=[f"{s}" for s in STYLES], col_labels=list(OBJECTS), min_cell=64)
        for images in (before, after)
    ]
    return side_by_side(grids, ["original", title_after])


def side_by_side(images: Sequence[Image.Image], titles: Sequence[str], gap: int = 24) -> Image.Image:
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=22)
    head = 40
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, head + max(im.height for im in images)), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for im, title in zip(images, titles):
        canvas.paste(im, (x, head))
        draw.text((x + 8, 8), title, fill="black", font=font)
        x += im.width + gap
    return canvas


# ----------------------------------------------------------------------------- runner
def check_runs(runs: Sequence[str | os.PathLike], suite: str = "canvas", original: str = "canvas-mini",
               options=None) -> list[dict]:
    """The runs' manifests, refusing (before any work) an unknown suite, no runs, a run the suite cannot
    score, or a local file it needs that is missing (``options``: ``erasure.suites.EvalOptions``)."""
    from erasure.suites import check_inputs

    return check_inputs(original, runs, suite, options)[1]


def evaluate_runs(
    original: str,
    runs: Sequence[str | os.PathLike],
    *,
    suite: str = "canvas",
    out: str | os.PathLike,
    settings: SamplingSettings | None = None,
    options=None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> dict:
    """Score every erased run against ``original`` on ``suite``; write metrics.json, report.md, report.html
    and a before/after grid per run to ``out``.

    ``settings``: sampling (default: the suite's); ``options``: ``erasure.suites.EvalOptions`` (local
    CLIP/Inception/reference/training files, nudity classes, the canvas suite's attack). Returns the
    content of ``metrics.json``.
    """
    from erasure.suites import Context, EvalOptions, check_inputs, run_suite, suite_settings

    options = options or EvalOptions()
    spec, manifests = check_inputs(original, runs, suite, options)
    out = Path(out)
    ctx = Context(original=original, runs=[str(r) for r in runs], manifests=manifests, spec=spec,
                  settings=settings or suite_settings(spec), options=options, out=out,
                  cache=GenerationCache(cache_dir if cache_dir is not None else out / "cache"),
                  device=device, progress=progress)
    # Join the process group before any model loads, with the backend for the device they load on
    # (``ctx.device``), so no later call (a suite's own, the CLI's) can pick it from a guess.
    shard(device)
    metrics = run_suite(ctx)
    rank, world = shard()
    if rank == 0:  # every process holds the same images and scores; one writes them
        _write_text(out / METRICS_FILE, json.dumps(metrics, indent=2))
        _write_text(out / REPORT_FILE, markdown_report(metrics))
        _write_text(out / HTML_REPORT_FILE, html_report(metrics))
    if world > 1:
        from erasure.training import process_state

        process_state().wait_for_everyone()
    return metrics


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def format_score(value, fmt: str) -> str:
    """A score as reports print it: a share as a percentage, anything else with 3 significant digits."""
    if value is None:
        return "n/a"
    return f"{value:.1%}" if fmt == "pct" else f"{value:.4g}"


def markdown_report(metrics: dict) -> str:
    """The report: what was measured, how, and the before/after table with each run's grid."""
    s = metrics["sampling"]
    cols = metrics["columns"]
    lines = [
        f"# Evaluation: {metrics['suite']} suite",
        "",
        f"Original model: `{metrics['original']}`. Judge: {metrics['judge']}. "
        f"{metrics['prompts']} prompts x {len(s['seeds'])} seeds, {s['scheduler']} {s['steps']} steps, guidance {s['guidance']}.",
        *metrics.get("summary", []),
        "",
        *[line for note in metrics.get("notes", []) for line in (note, "")],
        "| run | method | erased | " + " | ".join(f"{c['label']} before | {c['label']} after" for c in cols)
        + " | time (s) | peak memory (GiB) |",
        "|---|---|---|" + "---|---|" * len(cols) + "---|---|",
    ]
    for r in metrics["runs"]:
        b, a, c = r["before"], r["after"], r["cost"]
        scores = " | ".join(f"{format_score(b.get(k['key']), k['format'])} | {format_score(a.get(k['key']), k['format'])}" for k in cols)
        lines.append(
            f"| {run_label(r)} | {r['method']} | {', '.join(r['targets'])} ({r['kind']}) | {scores} "
            f"| {c.get('wall_seconds', float('nan')):.0f} | {c.get('peak_memory_bytes', float('nan')) / 2**30:.2f} |"
        )
    for r in metrics["runs"]:
        lines += ["", f"## {run_label(r)}", "", f"![original vs erased]({r['grid']})"]
    return "\n".join(lines) + "\n"
