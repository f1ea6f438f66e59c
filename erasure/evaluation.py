"""Evaluation of erased models against their original: suites, cached generation, reports.

``evaluate_runs(original, runs, suite="canvas", out=DIR)`` (CLI: ``erasure evaluate``) generates the
suite's prompts with the original model and with every erased run on the same seeds, scores them,
and writes ``metrics.json``, ``report.md``, ``report.html`` and a before/after grid per run into ``DIR``.

The canvas suite is UnlearnCanvas' protocol on canvas-mini: every object x style caption, a few
seeds each, judged by the shipped evaluator (``erasure.metrics.UnlearnCanvasAccuracy``). Each run's
erased concept comes from its manifest, so the original model is scored against the same targets
("before") as the erased one ("after").

Generation is cached on disk by (model fingerprint, prompt, seed, sampler settings): evaluating a
second run against the same original, or re-running an evaluation, does not regenerate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from erasure.atomic import atomic_path
from erasure.errors import ErasureInputError
from erasure.reports import html_report

logger = logging.getLogger(__name__)

SUITES: tuple[str, ...] = ("canvas",)
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
    logger.info("%d of %d images cached; generating %d", len(jobs) - len(missing), len(jobs), len(missing))
    for start in range(0, len(missing), settings.batch_size):
        chunk = missing[start : start + settings.batch_size]
        # one prompt per job: generate() pairs every prompt with every seed, so call per seed group
        made = _generate_jobs(generate, pipe, [jobs[i] for i in chunk], settings)
        for i, image in zip(chunk, made):
            images[i] = image
            if cache is not None:
                cache.put(model, *jobs[i], settings, image)
        if progress:
            progress(start + len(chunk), len(missing))
    return images  # type: ignore[return-value]


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
    from erasure.request import ErasureRequest, _canvas_name

    req = ErasureRequest.from_dict(request)
    if req.kind == "style":
        return "style", [STYLES.index(_canvas_name(t, STYLES, "style", " style")) for t in req.targets]
    if req.kind == "object":
        return "object", [OBJECTS.index(_canvas_name(t, OBJECTS, "object")) for t in req.targets]
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
    return _side_by_side(grids, ["original", title_after])


def _side_by_side(images: Sequence[Image.Image], titles: Sequence[str], gap: int = 24) -> Image.Image:
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
def check_runs(runs: Sequence[str | os.PathLike], suite: str = "canvas") -> list[dict]:
    """The runs' manifests, refusing (before any work) an unknown suite, no runs, or a run it cannot score."""
    from erasure.edit import read_manifest

    if suite not in SUITES:
        raise ErasureInputError(f"unknown suite {suite!r}; available: {', '.join(SUITES)}")
    if not runs:
        raise ErasureInputError("no erased run to evaluate; give at least one --erased RUN")
    manifests = [read_manifest(r) for r in runs]
    for m in manifests:
        canvas_targets(m["request"])
    return manifests


@dataclass
class RunResult:
    """The scores of one erased run and of the original on the same targets."""

    run: str
    method: str
    kind: str
    targets: list[str]
    before: dict[str, float]
    after: dict[str, float]
    cost: dict
    grid: str


def evaluate_runs(
    original: str,
    runs: Sequence[str | os.PathLike],
    *,
    suite: str = "canvas",
    out: str | os.PathLike,
    settings: SamplingSettings | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> dict:
    """Score every erased run against ``original``; write metrics.json, report.md, report.html and grids to ``out``.

    Returns the content of ``metrics.json``.
    """
    from erasure.pipelines import load_erased, load_pipeline

    manifests = check_runs(runs, suite)
    targets = [canvas_targets(m["request"]) for m in manifests]
    settings = settings or SamplingSettings()
    out = Path(out)
    cache = GenerationCache(cache_dir if cache_dir is not None else out / "cache")
    cases = canvas_cases()
    prompts = [c.prompt for c in cases]
    n = len(settings.seeds)

    base = load_pipeline(original, device=device)
    before = generate_cached(base, prompts, settings, cache, _stage(progress, "original"))
    results: list[RunResult] = []
    for run, manifest, (kind, idx) in zip(runs, manifests, targets):
        erased = load_erased(run, base=load_pipeline(original, device=device))
        after = generate_cached(erased, prompts, settings, cache, _stage(progress, Path(run).name))
        grid_name = f"grid-{Path(run).name}.png"
        out.mkdir(parents=True, exist_ok=True)
        grid = before_after_grid(before, after, cases, n, f"erased: {', '.join(manifest['request']['targets'])} ({manifest['method']})")
        with atomic_path(out / grid_name) as tmp:
            grid.save(tmp, format="PNG")
        results.append(RunResult(
            run=str(run), method=manifest["method"], kind=kind, targets=manifest["request"]["targets"],
            before=score_canvas(before, cases, n, kind, idx), after=score_canvas(after, cases, n, kind, idx),
            cost=manifest.get("cost", {}), grid=grid_name,
        ))
    metrics = {
        "suite": suite,
        "original": original,
        "judge": "canvas-mini evaluator (shipped beside the model)",
        "sampling": asdict(settings),
        "prompts": len(prompts),
        "original_accuracy": accuracy_canvas(before, cases, n),
        "runs": [asdict(r) for r in results],
    }
    _write_text(out / METRICS_FILE, json.dumps(metrics, indent=2))
    _write_text(out / REPORT_FILE, markdown_report(metrics))
    _write_text(out / HTML_REPORT_FILE, html_report(metrics))
    return metrics


def _stage(progress: ProgressFn | None, name: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(f"generate {name}", done, total, {})


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def markdown_report(metrics: dict) -> str:
    """The report: what was measured, how, and the before/after table with each run's grid."""
    s = metrics["sampling"]
    acc = metrics["original_accuracy"]
    lines = [
        f"# Evaluation: {metrics['suite']} suite",
        "",
        f"Original model: `{metrics['original']}`. Judge: {metrics['judge']}. "
        f"{metrics['prompts']} prompts x {len(s['seeds'])} seeds, {s['scheduler']} {s['steps']} steps, guidance {s['guidance']}.",
        f"Original model's accuracy on its own generations: objects {acc['object_accuracy']:.1%}, styles {acc['style_accuracy']:.1%}.",
        "",
        "UA: share of generations for the erased concept not recognised as it (higher: better erased). "
        "IRA: accuracy on the other concepts of the same kind. CRA: accuracy on the other kind, on prompts "
        "without the erased concept (both higher: better kept).",
        "",
        "| run | method | erased | UA before | UA after | IRA before | IRA after | CRA before | CRA after | time (s) | peak memory (GiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in metrics["runs"]:
        b, a, c = r["before"], r["after"], r["cost"]
        lines.append(
            f"| {Path(r['run']).name} | {r['method']} | {', '.join(r['targets'])} ({r['kind']}) | {b['UA']:.1%} | {a['UA']:.1%} "
            f"| {b['IRA']:.1%} | {a['IRA']:.1%} | {b['CRA']:.1%} | {a['CRA']:.1%} | {c.get('wall_seconds', float('nan')):.0f} "
            f"| {c.get('peak_memory_bytes', float('nan')) / 2**30:.2f} |"
        )
    for r in metrics["runs"]:
        lines += ["", f"## {Path(r['run']).name}", "", f"![original vs erased]({r['grid']})"]
    return "\n".join(lines) + "\n"
