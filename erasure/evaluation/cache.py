"""Generation for evaluation: the sampler settings every report records and the on-disk image cache.

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

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


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
    if progress and rank == 0 and mine:
        progress(0, len(mine))  # the stage shows at once, not after its first batch (seconds on a CPU)
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
