"""Seeded generation and labelled image grids.

Every image gets its own ``torch.Generator`` seeded with its seed, and the pipeline receives the
list of generators, so an image depends on its prompt and seed only, not on the batch it was
generated in. Generators live on the CPU: the starting noise is then the same on every device.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import diffusers
import torch
from diffusers import DiffusionPipeline
from PIL import Image, ImageDraw, ImageFont

from erasure.errors import ErasureInputError

logger = logging.getLogger(__name__)

#: Sampler name -> (diffusers scheduler class, config overrides). Built ``from_config`` of the
#: pipeline's own scheduler so the model's noise schedule (betas, prediction type) is kept.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),  # DPM++ 2M
    "dpm++-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

#: Upper bound on seeds in one request (a typo like 0-99999999 should not exhaust memory).
MAX_SEEDS = 10_000
_SEED_PART = re.compile(r"(\d+)(?:-(\d+))?")

#: ``progress(images_done, images_total)``; images_done is fractional within a batch.
ProgressCallback = Callable[[float, int], None]


def parse_seeds(text: str) -> list[int]:
    """Seeds from "0-7", "0,3,5" or a mix such as "0-3,10,12-13", in the order written."""
    seeds: list[int] = []
    for part in text.split(","):
        match = _SEED_PART.fullmatch(part.strip())
        if not match:
            raise ErasureInputError(f"bad seeds {text!r}: {part.strip()!r} is not N or N-M (examples: 0-7, 0,3,5)")
        start = int(match[1])
        end = int(match[2]) if match[2] else start
        if end < start:
            raise ErasureInputError(f"bad seeds {text!r}: range {start}-{end} runs backwards")
        if end >= 2**63:
            raise ErasureInputError(f"bad seeds {text!r}: seeds must be below 2**63")
        if len(seeds) + end - start + 1 > MAX_SEEDS:
            raise ErasureInputError(f"bad seeds {text!r}: more than {MAX_SEEDS} seeds")
        seeds.extend(range(start, end + 1))
    duplicates = sorted({s for s in seeds if seeds.count(s) > 1})
    if duplicates:
        raise ErasureInputError(f"bad seeds {text!r}: repeated seed(s) {', '.join(map(str, duplicates))}")
    return seeds


def check_scheduler(name: str) -> str:
    """The ``SCHEDULERS`` key for ``name`` (case and spaces ignored); ErasureInputError if unknown."""
    key = name.strip().lower()
    if key not in SCHEDULERS:
        raise ErasureInputError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    return key


def make_scheduler(name: str, config: dict) -> diffusers.SchedulerMixin:
    """A scheduler called ``name`` (see ``SCHEDULERS``) built from a pipeline scheduler's config."""
    class_name, overrides = SCHEDULERS[check_scheduler(name)]
    return getattr(diffusers, class_name).from_config(config, **overrides)


@contextmanager
def scheduler_swapped(pipe: DiffusionPipeline, name: str | None) -> Iterator[None]:
    """Use scheduler ``name`` inside the block and restore the pipeline's own one after."""
    if name is None:
        yield
        return
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(name, original.config)
    try:
        yield
    finally:
        pipe.scheduler = original


def generate(
    pipe: DiffusionPipeline,
    prompts: str | Sequence[str],
    *,
    seeds: Sequence[int],
    steps: int = 25,
    guidance: float = 7.5,
    batch_size: int = 1,
    negative_prompt: str | None = None,
    scheduler: str | None = None,
    height: int | None = None,
    width: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[Image.Image]:
    """One PIL image per (prompt, seed), ordered prompt-major: all seeds of prompt 0, then prompt 1, ...

    The result for a given prompt and seed does not depend on ``batch_size`` (up to floating-point
    reduction order on some devices). ``scheduler`` names a sampler from ``SCHEDULERS`` used for this
    call only. diffusers' own progress bar is turned off on ``pipe``; pass ``progress`` to follow.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    _check_generate_args(prompts, seeds, steps, guidance, batch_size)
    jobs = [(prompt, seed) for prompt in prompts for seed in seeds]
    pipe.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    with scheduler_swapped(pipe, scheduler):
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            logger.info("generating images %d-%d of %d", start + 1, start + len(batch), len(jobs))
            out = pipe(
                prompt=[p for p, _ in batch],
                negative_prompt=[negative_prompt] * len(batch) if negative_prompt is not None else None,
                generator=[torch.Generator("cpu").manual_seed(s) for _, s in batch],
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=height,
                width=width,
                output_type="pil",
                callback_on_step_end=_step_reporter(progress, start, len(batch), len(jobs)),
            )
            images.extend(out.images)
    return images


def _check_generate_args(prompts: list[str], seeds: Sequence[int], steps: int, guidance: float, batch_size: int) -> None:
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ErasureInputError("prompts must be a non-empty list of strings")
    if not seeds:
        raise ErasureInputError("seeds must not be empty")
    if steps < 1:
        raise ErasureInputError(f"steps must be at least 1, got {steps}")
    if batch_size < 1:
        raise ErasureInputError(f"batch size must be at least 1, got {batch_size}")
    if not math.isfinite(guidance) or guidance < 0:
        raise ErasureInputError(f"guidance must be a finite number >= 0, got {guidance}")


def _step_reporter(progress: ProgressCallback | None, done: int, size: int, total: int):
    """A diffusers ``callback_on_step_end`` that reports fractional images done."""
    if progress is None:
        return None

    def report(pipe: DiffusionPipeline, step: int, timestep, callback_kwargs: dict) -> dict:
        progress(done + size * (step + 1) / max(pipe.num_timesteps, 1), total)
        return callback_kwargs

    return report


def image_grid(
    images: Sequence[Image.Image],
    rows: int,
    cols: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    *,
    min_cell: int = 0,
) -> Image.Image:
    """Images in a rows x cols grid (row-major), with optional labels left of rows and above columns.

    Cells smaller than ``min_cell`` pixels are enlarged by an integer factor (nearest neighbour),
    so tiny images such as canvas-mini's 32 px stay legible and unblurred.
    """
    _check_grid_args(images, rows, cols, row_labels, col_labels)
    scale = max(1, math.ceil(min_cell / min(images[0].size))) if min_cell else 1
    w, h = images[0].width * scale, images[0].height * scale
    size = min(max(h // 12, 11), 24)
    font = ImageFont.load_default(size=size)  # FreeType font when Pillow has FreeType, else bitmap
    line, pad = int(size * 1.25), max(4, size // 2)
    left = _label_width(row_labels, font, max_width=max(2 * w, 160)) + 2 * pad if row_labels else 0
    top = _label_lines(col_labels, font, w - 2 * pad) * line + 2 * pad if col_labels else 0
    grid = Image.new("RGB", (left + cols * w, top + rows * h), "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(image.convert("RGB").resize((w, h), Image.NEAREST), (left + c * w, top + r * h))
    for c, label in enumerate(col_labels or ()):
        _draw_wrapped(draw, label, (left + c * w + pad, pad), w - 2 * pad, font, line)
    for r, label in enumerate(row_labels or ()):
        _draw_wrapped(draw, label, (pad, top + r * h + pad), left - 2 * pad, font, line)
    return grid


def _check_grid_args(images, rows, cols, row_labels, col_labels) -> None:
    if rows < 1 or cols < 1 or len(images) != rows * cols:
        raise ErasureInputError(f"a {rows}x{cols} grid needs {rows * cols} images, got {len(images)}")
    if len({im.size for im in images}) != 1:
        raise ErasureInputError("grid images must all have the same size")
    if row_labels is not None and len(row_labels) != rows:
        raise ErasureInputError(f"{len(row_labels)} row labels for {rows} rows")
    if col_labels is not None and len(col_labels) != cols:
        raise ErasureInputError(f"{len(col_labels)} column labels for {cols} columns")


def _wrap(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels (a single over-long word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def _label_width(labels: Sequence[str], font: ImageFont.ImageFont, max_width: int) -> int:
    widest = max(font.getlength(line) for label in labels for line in _wrap(label, font, max_width))
    return int(min(widest, max_width)) + 1


def _label_lines(labels: Sequence[str], font: ImageFont.ImageFont, width: int) -> int:
    return max(len(_wrap(label, font, width)) for label in labels)


def _draw_wrapped(draw: ImageDraw.ImageDraw, text: str, xy: tuple[int, int], width: int, font, line: int) -> None:
    x, y = xy
    for i, words in enumerate(_wrap(text, font, width)):
        draw.text((x, y + i * line), words, fill="black", font=font)
