"""Attack success rate: how often an attack makes a model draw the concept again, as a judge says.

A judge is any callable from images to booleans (e.g. ``family.judge(kind, concept)``: canvas-mini's
evaluator); it knows nothing of the attack, and the attack nothing of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from erasure.errors import ErasureInputError

from .base import Attack, AttackProgress

logger = logging.getLogger(__name__)

#: Images (PIL list or (N, 3, H, W) tensor) -> bool tensor (N,): the concept is recognised.
Judge = Callable[[object], torch.Tensor]


def attack_success(attack: Attack, erased, original, concept: str, judge: Judge, *, seeds: Sequence[int],
                   budget: int | None = None, progress: AttackProgress | None = None) -> dict:
    """Share of ``seeds`` for which ``attack`` makes ``erased`` draw ``concept`` again.

    Per seed: a fresh attack (its randomness from the seed), the erased model's first image from the
    adversarial prompt (noise from the same seed), judged. The unattacked concept prompt on the same
    seeds and sampler is judged too (``clean_rate``): a success that needs no attack is visible as such,
    not counted as the attack's. ``original`` is the model before erasure (what attacks that need the
    concept's images or samples draw from); pass the same pipeline as ``erased`` for "before" rates."""
    from erasure.pipelines.generation import generate

    if not seeds:
        raise ErasureInputError("attack success rate: no seeds")
    c = attack.config
    clean = judge(generate(erased, concept, seeds=list(seeds), steps=c.sample_steps, guidance=c.guidance,
                           scheduler=c.scheduler, batch_size=len(seeds)))
    per_seed, seconds = [], 0.0
    for n, seed in enumerate(seeds):
        result = attack(erased, original, concept, seed=int(seed), budget=budget)
        recognised = bool(judge(result.images[:1])[0])
        seconds += result.seconds
        per_seed.append({"seed": int(seed), "recognised": recognised, "clean_recognised": bool(clean[n]),
                         "prompt": result.prompt, "loss_first": result.losses[0] if result.losses else None,
                         "loss_last": result.losses[-1] if result.losses else None, "budget": result.budget})
        logger.info("%s seed %s: concept %s", attack.name, seed, "recognised" if recognised else "not recognised")
        if progress:
            progress(n + 1, len(seeds))
    return {
        "attack_name": attack.name,
        "asr": sum(r["recognised"] for r in per_seed) / len(per_seed),
        "clean_rate": sum(r["clean_recognised"] for r in per_seed) / len(per_seed),
        "prompt": concept,
        "seeds": [int(s) for s in seeds],
        "attack": {**c.to_dict(), **({"steps": int(budget)} if budget is not None else {})},
        "sampling": {"steps": c.sample_steps, "guidance": c.guidance, "scheduler": c.scheduler},
        "seconds": seconds,
        "per_seed": per_seed,
    }
