"""One interface for every attack on an erased model: ``Attack``, its ``AttackConfig`` and ``AttackResult``.

An attack answers a safety engineer's question: can someone still get the concept out of the
erased model? Every attack is called the same way,

    result = attack(erased_pipe, original_pipe, concept, seed=0, budget=None, progress=None)

where ``concept`` is the concept's prompt (e.g. "dotted style", "nudity"), ``original_pipe`` the
model before erasure (attacks that need images of the concept draw them with it, or read a user's
folder), ``budget`` the optimisation steps (``None``: the config's), and the result carries the
adversarial prompt (text, for attacks whose result can be pasted anywhere) or prompt embeddings,
the erased model's images from it, what the attack spent and its loss curve. Judging the images
is the caller's (e.g. ``family.judge(kind, concept)``): an attack knows nothing of who judges it.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from erasure.config import MethodConfig
from erasure.errors import ErasureInputError

#: progress(done, total) for an attack's optimisation steps.
AttackProgress = Callable[[int, int], None]


@dataclass
class AttackConfig(MethodConfig):
    """Settings every attack has: its budget and how the adversarial prompt's images are drawn.

    ``steps``: optimisation steps (the budget; ``budget=`` overrides it per call). ``images``: how many
    images the erased model draws from the adversarial prompt (noise seeds ``seed``, ``seed + 1``, ...),
    with ``sample_steps`` DDIM steps (``scheduler``) at ``guidance``."""

    method: ClassVar[str] = "attack"

    steps: int = 30
    images: int = 1
    sample_steps: int = 25
    guidance: float = 7.5
    scheduler: str = "ddim"

    def validate(self) -> None:
        self.check_bounds(at_least_one=("steps", "images", "sample_steps"), non_negative=("guidance",))


@dataclass
class AttackResult:
    """What one attack found: the adversarial ``prompt`` (text) or ``prompt_embeds`` (1, T, D), the
    erased model's ``images`` from it, the ``budget`` spent (steps, and what else the attack counts),
    wall ``seconds`` and the loss per step. ``details``: the attack's own record (JSON-able)."""

    attack: str
    concept: str
    seed: int
    prompt: str | None
    prompt_embeds: torch.Tensor | None
    images: list
    budget: dict
    seconds: float
    losses: list[float] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    #: learned tensors worth keeping, saved as ``NAME-learned.safetensors`` (e.g. concept inversion's
    #: token embedding, in the file format diffusers' ``load_textual_inversion`` reads)
    learned: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON-able record (no tensors, no images)."""
        return {"attack": self.attack, "concept": self.concept, "seed": self.seed, "prompt": self.prompt,
                "embeddings": self.prompt_embeds is not None, "images": len(self.images), "budget": self.budget,
                "seconds": self.seconds, "loss_first": self.losses[0] if self.losses else None,
                "loss_last": self.losses[-1] if self.losses else None, "config": self.config, "details": self.details}

    def save(self, folder: str | Path, name: str | None = None) -> dict:
        """Write ``NAME.json`` (the record), ``NAME.txt`` (the prompt, when text), ``NAME.safetensors``
        (the embeddings, when any), ``NAME-learned.safetensors`` (``learned``, when any) and
        ``NAME-I.png`` per image into ``folder``; returns the record
        with the file names. ``name`` defaults to "ATTACK-seedSEED"."""
        from safetensors.torch import save_file

        from erasure.atomic import atomic_path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = name or f"{self.attack}-seed{self.seed}"
        record = self.to_dict()
        files: dict[str, Any] = {"images": []}
        if self.prompt is not None:
            with atomic_path(folder / f"{name}.txt") as tmp:
                Path(tmp).write_text(self.prompt + "\n", encoding="utf-8")
            files["prompt"] = f"{name}.txt"
        if self.prompt_embeds is not None:
            with atomic_path(folder / f"{name}.safetensors") as tmp:
                save_file({"prompt_embeds": self.prompt_embeds.detach().float().cpu().contiguous()}, str(tmp))
            files["prompt_embeds"] = f"{name}.safetensors"
        if self.learned:
            with atomic_path(folder / f"{name}-learned.safetensors") as tmp:
                save_file({k: v.detach().float().cpu().contiguous() for k, v in self.learned.items()}, str(tmp))
            files["learned"] = f"{name}-learned.safetensors"
        for i, image in enumerate(self.images):
            with atomic_path(folder / f"{name}-{i}.png") as tmp:
                image.save(tmp, format="PNG")
            files["images"].append(f"{name}-{i}.png")
        record["files"] = files
        with atomic_path(folder / f"{name}.json") as tmp:
            Path(tmp).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return record


def check_noise_predictor(pipe, who: str) -> None:
    """Refuse an SFD run's one-step generator: attacks whose loss is a denoising (noise-prediction) loss
    have nothing to optimise against in a generator (Ring-A-Bell, which never queries the model, and concept
    inversion, which learns through the generator's own map, can attack it)."""
    from erasure.one_step import OneStepPipeline

    if isinstance(pipe, OneStepPipeline):
        raise ErasureInputError(f"{who}: an SFD run's one-step generator is not a noise predictor, which this attack's "
                                "loss needs; attack it with ring-a-bell or concept-inversion")


class Attack(ABC):
    """Base of every attack: a config (``config_class``), and one call signature (module docstring).

    Subclasses register with ``@register_attack("name")`` (or lazily in ``erasure/attacks/__init__.py``),
    implement ``attack`` and list their deviations from the paper and reference code in their docstring."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[AttackConfig]] = AttackConfig
    #: whether the attack's loss is a denoising loss of the erased model (then an SFD generator is refused)
    needs_noise_predictor: ClassVar[bool] = True

    def __init__(self, config: AttackConfig | dict | None = None, **overrides) -> None:
        self.config = self.config_class.of(config, self.name, **overrides)

    def __call__(self, erased, original, concept: str, *, seed: int = 0, budget: int | None = None,
                 progress: AttackProgress | None = None) -> AttackResult:
        """Attack ``erased`` for ``concept``; ``budget`` replaces the config's ``steps`` for this call."""
        if not isinstance(concept, str) or not concept.strip():
            raise ErasureInputError(f"{self.name}: the concept prompt is empty")
        config = self.config if budget is None else self.config.with_overrides(steps=int(budget))
        if self.needs_noise_predictor:
            check_noise_predictor(erased, self.name)
        start = time.perf_counter()
        result = self.attack(erased, original, concept.strip(), config=config, seed=int(seed), progress=progress)
        result.seconds = time.perf_counter() - start
        result.config = config.to_dict()
        return result

    @abstractmethod
    def attack(self, erased, original, concept: str, *, config: AttackConfig, seed: int,
               progress: AttackProgress | None) -> AttackResult:
        """The attack itself, with the call's config; ``seconds`` and ``config`` are filled in by ``__call__``."""
