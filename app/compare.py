"""Original versus erased on the same prompt and seeds: the app's generation, independent of the UI.

One base pipeline per model is loaded (lazily, on first use) and kept; an erased run is compared by
swapping its edit's tensors into that pipeline for the duration of its generation and restoring
the original values afterwards. Only the changed tensors are held twice, instead of a whole
pipeline per run, which matters for Stable Diffusion sized models. Each model has a lock: one
generation at a time per model, and the swap can never be seen by another request. A run is
compared only on the base its manifest's weight fingerprint names (as ``load_erased`` demands).
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError

from erasure.edit import Edit, fingerprint, pipeline_modules
from erasure.erased import chain_edit, origin
from erasure.errors import ErasureInputError
from erasure.pipelines import generate, load_pipeline, parse_seeds
from erasure.pipelines.canvas.model import EMBEDDED_MODEL_NAME
from erasure.one_step import one_step_pipeline

from .runs import inspect_run, quoted, relative_message, resolve_run

logger = logging.getLogger(__name__)

ORIGINAL = "original"
#: ``progress(images_done, images_total, what)``.
Progress = Callable[[float, int, str], None]


@dataclass(frozen=True)
class Limits:
    """Bounds on one request, so a single browser tab cannot occupy the machine for hours."""

    max_prompt_chars: int = 500
    max_seeds: int = 8
    max_runs: int = 4
    max_images: int = 24  # seeds x (1 + runs); below max_seeds x (1 + max_runs), so it binds
    max_steps: int = 100
    max_guidance: float = 30.0
    max_queue: int = 16  # waiting requests, over all users
    max_erase_steps: int = 2000


@dataclass(frozen=True)
class CompareRequest:
    """A validated comparison: the same prompt, seeds, steps and guidance for every model."""

    prompt: str
    negative_prompt: str | None
    seeds: list[int]
    steps: int
    guidance: float
    runs: list[str]


def check_request(prompt, negative_prompt, seeds, steps, guidance, runs, limits: Limits) -> CompareRequest:
    """A ``CompareRequest`` from the form's values; ``ErasureInputError`` naming the first bad one.

    The values arrive as the client sent them (the app turns Gradio's preprocessing off), so their
    types are checked here too: text where text is expected, numbers where numbers are.
    """
    prompt = text(prompt, "prompt")
    if not prompt:
        raise ErasureInputError("enter a prompt")
    negative = text(negative_prompt, "negative prompt") or None
    for name, value in (("prompt", prompt), ("negative prompt", negative or "")):
        if len(value) > limits.max_prompt_chars:
            raise ErasureInputError(f"the {name} is {len(value)} characters long; at most {limits.max_prompt_chars}")
    seed_list = parse_seeds(text(seeds, "seeds") or "0")
    if len(seed_list) > limits.max_seeds:
        raise ErasureInputError(f"{len(seed_list)} seeds; at most {limits.max_seeds} per request")
    steps = whole_number(steps, "steps")
    if not 1 <= steps <= limits.max_steps:
        raise ErasureInputError(f"steps must be between 1 and {limits.max_steps}, got {steps}")
    guidance = number(guidance, "guidance")
    if not 0 <= guidance <= limits.max_guidance:
        raise ErasureInputError(f"guidance must be between 0 and {limits.max_guidance:g}, got {guidance:g}")
    runs = run_names(runs)
    if len(runs) > limits.max_runs:
        raise ErasureInputError(f"{len(runs)} runs chosen; compare at most {limits.max_runs} at once")
    if len(seed_list) * (1 + len(runs)) > limits.max_images:
        raise ErasureInputError(f"{len(seed_list)} seeds x {1 + len(runs)} models is more than {limits.max_images} images; "
                                "use fewer seeds or runs")
    return CompareRequest(prompt, negative, seed_list, steps, guidance, runs)


def text(value, name: str) -> str:
    """A text field's value, stripped (``None``: empty); ``ErasureInputError`` for a number, a list, ..."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ErasureInputError(f"{name}: expected text, got {type(value).__name__} {quoted(value)}")
    return value.strip()


def run_names(value) -> list[str]:
    """The chosen run names (a list of texts; ``None``: none), de-duplicated in order."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ErasureInputError(f"runs: expected a list of run names, got {quoted(value)}")
    return list(dict.fromkeys(value))


def number(value, name: str) -> float:
    """``value`` (a form's number) as a finite float; ``ErasureInputError`` otherwise.

    Text is refused even when it reads as a number: the form sends numbers, and a client that
    sends "5" for a slider has its fields mixed up.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ErasureInputError(f"{name}: expected a number, got {quoted(value)}")
    result = float(value)
    if not math.isfinite(result):
        raise ErasureInputError(f"{name}: expected a finite number, got {quoted(value)}")
    return result


def whole_number(value, name: str) -> int:
    """``value`` (a form's number) as an int; ``ErasureInputError`` for a fraction or text."""
    result = number(value, name)
    if result != int(result):
        raise ErasureInputError(f"{name}: expected a whole number, got {quoted(value)}")
    return int(result)


@dataclass
class LoadedModel:
    source: str
    pipe: object
    fingerprint: str


class ModelStore:
    """The base models the app offers, loaded on first use, each behind its own lock."""

    def __init__(self, sources: Sequence[str], *, device: str = "auto", dtype: str = "auto") -> None:
        self.sources = list(dict.fromkeys(str(s) for s in sources))
        if not self.sources:
            raise ErasureInputError("no base model to offer; give at least one")
        self._device, self._dtype = device, dtype
        self._locks = {s: threading.Lock() for s in self.sources}
        self._loaded: dict[str, LoadedModel] = {}

    def label(self, source: str) -> str:
        if source == EMBEDDED_MODEL_NAME:
            return f"{source} (embedded)"
        return f"{Path(source).name} ({source})"

    @contextmanager
    def use(self, source: str, on_wait: Callable[[], None] | None = None) -> Iterator[LoadedModel]:
        """The model, loaded if needed, held exclusively inside the block."""
        if not isinstance(source, str) or source not in self._locks:
            # The browser sends the choice back; only models named at start-up are ever loaded.
            raise ErasureInputError(f"unknown base model {quoted(source)}; choose one of the listed models")
        lock = self._locks[source]
        if not lock.acquire(blocking=False):
            if on_wait is not None:
                on_wait()
            lock.acquire()
        try:
            yield self._load(source)
        finally:
            lock.release()

    def _load(self, source: str) -> LoadedModel:
        if source not in self._loaded:
            pipe = load_pipeline(source, device=self._device, dtype=self._dtype)
            self._loaded[source] = LoadedModel(source, pipe, fingerprint(pipe))
            logger.info("app: loaded base model %s", source)
        return self._loaded[source]


def load_edits(runs_dir: Path, names: Sequence[str], model: LoadedModel) -> dict[str, Edit]:
    """The edits of the chosen runs, each checked to be finished and made for ``model``."""
    edits: dict[str, Edit] = {}
    for name in names:
        resolve_run(runs_dir, name)  # a name that is no run in the runs folder is refused as such
        entry = inspect_run(runs_dir, name)
        if not entry.ok:
            raise ErasureInputError(f"run {name!r} cannot be used ({entry.status}): {entry.problem}")
        expected = origin(entry.manifest).get("fingerprint")  # a chain's end: the model the chain started from
        if expected != model.fingerprint:
            made_for = Path(entry.base_source).name or "another model"
            raise ErasureInputError(f"run {name!r} was made for {made_for}, not for the chosen base model; "
                                    "choose its base model")
        edits[name] = _load_edit(runs_dir, name, entry.path)
    return edits


def _load_edit(runs_dir: Path, name: str, path: Path) -> Edit:
    # inspect_run checks the edit file's header and length only: a header safetensors cannot
    # parse (an unknown dtype, shapes that disagree with the offsets), or a folder changed since,
    # still fails here, and is the run's problem, not the app's.
    try:
        return chain_edit(path)  # a run that ends a chain: every run's edit, merged in order
    except ErasureInputError as exc:
        raise ErasureInputError(f"run {name!r} cannot be used: {relative_message(str(exc), runs_dir)}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        logger.info("app: run %s: edit unreadable: %s", name, exc)
        raise ErasureInputError(f"run {name!r} cannot be used: its edit file is unreadable "
                                f"({type(exc).__name__}); the run is damaged") from None


@contextmanager
def edit_applied(pipe, edit: Edit) -> Iterator[None]:
    """``edit`` written into ``pipe`` inside the block; the original tensors restored after."""
    modules = pipeline_modules(pipe)
    saved: dict[str, torch.Tensor] = {}
    for key in {**edit.tensors, **edit.zeroed}:  # replaced tensors and pruned ones
        comp, _, name = key.partition(".")
        try:
            saved[key] = modules[comp].get_parameter(name).detach().clone()
        except (KeyError, AttributeError):
            raise ErasureInputError(f"edit tensor {key}: the base model has no such parameter") from None
    try:
        edit.apply(pipe)
        yield
    finally:
        with torch.no_grad():
            for key, value in saved.items():
                comp, _, name = key.partition(".")
                modules[comp].get_parameter(name).copy_(value)


def compare(model: LoadedModel, request: CompareRequest, edits: dict[str, Edit],
            progress: Progress | None = None) -> list[tuple[str, list[Image.Image]]]:
    """(name, one image per seed) for "original", then each run in order; the same noise for all.

    A list, not a dict keyed by name: a run folder may itself be called "original".
    """
    per_model = len(request.seeds)
    total = per_model * (1 + len(edits))
    results = [(ORIGINAL, _generate(model.pipe, request, _offset(progress, 0, total, ORIGINAL)))]
    for i, (name, edit) in enumerate(edits.items(), start=1):
        with edit_applied(model.pipe, edit):
            # A run that made a one-step generator (SFD) samples through it, not the original sampler.
            pipe = one_step_pipeline(model.pipe, edit.extra)
            results.append((name, _generate(pipe, request, _offset(progress, i * per_model, total, name))))
    return results


def _generate(pipe, request: CompareRequest, progress) -> list[Image.Image]:
    return generate(pipe, request.prompt, seeds=request.seeds, steps=request.steps, guidance=request.guidance,
                    negative_prompt=request.negative_prompt, batch_size=min(len(request.seeds), 4),
                    progress=progress)


def _offset(progress: Progress | None, done_before: int, total: int, what: str):
    if progress is None:
        return None
    return lambda done, _: progress(done_before + done, total, what)


def for_display(image: Image.Image, min_size: int = 256) -> Image.Image:
    """Small images (canvas-mini's 32 px) enlarged by a whole factor, unblurred, to be seen."""
    factor = max(1, math.ceil(min_size / min(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
