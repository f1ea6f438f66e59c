"""UnlearnDiffAtk: a readable adversarial prompt found with the erased model's own denoising loss.

Zhang et al., ECCV 2024, "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still
Easy to Generate Unsafe Images ... For Now"; reference OPTML-Group/Diffusion-MU-Attack (commit
5a3e5d3: ``src/attackers/text_grad_.py`` ``TextGrad``, ``src/tasks/classifier_.py`` ``get_loss``,
configs ``configs/{nudity,style,object}/text_grad_esd_*_classifier.json``).

The attack needs no gradient through sampling and no second model at attack time: ``k`` prefix
tokens (``[SOT, adv_1..k, concept prompt, EOT, pad]``) are chosen so that the ERASED model, conditioned
on the attacked prompt, denoises an image of the concept well. Per token slot a probability vector
over the vocabulary ``p`` (uniform at start) is optimised:

- forward: one token per slot drawn from ``p`` (``multinomial``), its one-hot times the text
  encoder's token-embedding table is the slot's embedding; backward: straight through, the gradient
  with respect to the one-hot clipped to [-1, 1] (``hardtanh``) is ``p``'s gradient;
- loss: ``|| eps - eps_theta(sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t, TE(attacked prompt)) ||^2`` with
  one fresh noise per step, no guidance (the reference's), for the erased UNet; ``x0`` is one image
  of the concept: drawn by the ORIGINAL model from the concept prompt with the attack seed's noise
  (the reference generates its targets with SD 1.4 the same way), or one of a user's images
  (``target_images``; VAE latent means, as the reference encodes them);
- Adam (lr 0.01, coupled weight decay 0.1), then each slot projected back onto the probability
  simplex (bisection for mu with sum(clip(p - mu, 0, 1)) = 1, the reference's ``projection``);
- timesteps in sequence: ``iterations`` (40) steps at each of ``steps / iterations`` evenly spaced
  timesteps, ascending (the reference: 50 timesteps 10, 30, ..., 990, so 2,000 steps in all); after
  each timestep's block the most likely token per slot (argmax) is decoded into a text prompt.

The result is text, the decoded tokens in front of the concept prompt, e.g. "wolves tapestry ... dotted
style", and the images are generated from that text (re-tokenised), as the reference evaluates it.

Deviations from the reference, each for a reason:

- Its loop stops at the first block whose prompt a classifier judges successful; an attack here
  knows nothing of any judge (the caller judges its images). Instead, the block prompts are compared
  by the attack's own objective: each distinct decoded prompt's denoising loss on the target image at
  ``selection_points`` fixed (t, noise) pairs, and the lowest wins.
- The special tokens (start, end, padding) are never drawn: the result must be text that can be
  pasted anywhere (the reference's vocabulary is unfiltered; the end token is stripped from its text).
- Timesteps are spaced over the model's own training schedule (``num_train_timesteps``), the
  reference's 10..990 for SD's 1,000; a budget below ``iterations`` runs one block.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from erasure.diffusion import (
    Conditions,
    TextConditioner,
    add_noise,
    alphas_cumprod,
    eps_from_output,
    native_resolution,
    prediction_type,
    unet_output,
)

from .base import Attack, AttackConfig, AttackResult
from .images import drawn_x0, encoded_x0, image_files
from .registry import register_attack
from .soft_prompt import SoftPrompt, check_single_text_encoder, encode_soft_prompt


@dataclass
class UnlearnDiffAtkConfig(AttackConfig):
    """Defaults: the reference's configs (k = 5 for nudity, 3 for styles and objects: pass ``tokens``)."""

    method: ClassVar[str] = "unlearndiffatk"

    steps: int = 2000  # gradient steps in all: ``iterations`` per timestep (the reference's 50 x 40)
    iterations: int = 40
    tokens: int = 5
    lr: float = 0.01
    weight_decay: float = 0.1
    target_images: str | None = None  # a folder of the concept's images; None: drawn by the original
    target_steps: int = 25  # DDIM steps of the original's target image
    selection_points: int = 8  # (t, noise) pairs the block prompts are compared on

    def validate(self) -> None:
        super().validate()
        self.check_bounds(at_least_one=("iterations", "tokens", "target_steps", "selection_points"), positive=("lr",),
                          non_negative=("weight_decay",))
        if self.target_images is not None:
            image_files(self.target_images)


class _DrawOneHot(torch.autograd.Function):
    """Forward: a one-hot row per slot drawn from ``probs``; backward: the gradient clipped to [-1, 1]
    (the reference's ``STERandSelect``)."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        idx = torch.multinomial(probs, 1, generator=generator)
        return torch.zeros_like(probs).scatter_(1, idx, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return F.hardtanh(grad), None


def project_to_simplex(probs: torch.Tensor, allowed: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """Each row onto {p in [0, 1]^V : sum p = 1, p = 0 where not ``allowed``}: clip(p - mu, 0, 1) with
    mu found by bisection (the reference's ``projection``/``bisection``; rows already summing to 1
    within 1e-5 after clipping are only clipped)."""
    a = probs.masked_fill(~allowed, float("-inf"))
    clipped = a.clamp(0, 1)
    done = (clipped.sum(-1) - 1).abs() < 1e-5
    finite = a.masked_fill(~allowed, float("inf"))
    lo = finite.min(-1).values - 1
    hi = a.max(-1).values
    for _ in range(iterations):
        mu = (lo + hi) / 2
        over = (a - mu[:, None]).clamp(0, 1).sum(-1) > 1
        lo, hi = torch.where(over, mu, lo), torch.where(over, hi, mu)
    projected = (a - ((lo + hi) / 2)[:, None]).clamp(0, 1)
    return torch.where(done[:, None], clipped, projected)


def block_timesteps(steps: int, iterations: int, train_timesteps: int) -> list[tuple[int, int]]:
    """(timestep, steps at it) per block, ascending: ``ceil(steps / iterations)`` timesteps at the
    centres of equal parts of the schedule (10, 30, ..., 990 for 50 blocks of SD's 1,000)."""
    blocks = math.ceil(steps / iterations)
    return [(min(train_timesteps - 1, int((j + 0.5) * train_timesteps / blocks)), min(iterations, steps - j * iterations))
            for j in range(blocks)]


@register_attack("unlearndiffatk")
class UnlearnDiffAtk(Attack):
    """UnlearnDiffAtk (Zhang et al., ECCV 2024): readable prefix tokens chosen by the erased model's own
    denoising loss on an image of the concept; the result is a text prompt (module docstring)."""

    config_class = UnlearnDiffAtkConfig
    config: UnlearnDiffAtkConfig

    def attack(self, erased, original, concept, *, config, seed, progress):
        check_single_text_encoder(erased, "unlearndiffatk")
        tokenizer, te, unet = erased.tokenizer, erased.text_encoder, erased.unet
        device = unet.device
        rng = torch.Generator().manual_seed(random.Random(f"unlearndiffatk/{seed}").getrandbits(63))
        x0, source = self.target(original, concept, config, seed)
        x0 = x0.to(device, unet.dtype)
        soft = SoftPrompt.build(tokenizer, concept, config.tokens, "prefix")
        table = te.get_input_embeddings().weight.detach()
        allowed = torch.ones(table.shape[0], dtype=torch.bool)
        allowed[[i for i in {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} if i is not None]] = False
        allowed = allowed.expand(config.tokens, -1)
        probs = (allowed.float() / allowed.sum(-1, keepdim=True)).requires_grad_(True)
        opt = torch.optim.Adam([probs], lr=config.lr, weight_decay=config.weight_decay)
        ac, kind = alphas_cumprod(erased.scheduler, device), prediction_type(erased.scheduler)
        losses: list[float] = []
        candidates: list[tuple[int, ...]] = []
        for t, count in block_timesteps(config.steps, config.iterations, erased.scheduler.config.num_train_timesteps):
            t_batch = torch.tensor([t], device=device)
            for _ in range(count):
                with torch.enable_grad():
                    one_hot = _DrawOneHot.apply(probs, rng)
                    delta = one_hot.to(device, table.dtype) @ table
                    noise = torch.randn(x0.shape, generator=rng).to(device, x0.dtype)
                    x_t = add_noise(ac, x0, noise, t_batch)
                    out = unet_output(unet, x_t, t_batch, Conditions(encode_soft_prompt(te, soft, delta)))
                    loss = F.mse_loss(eps_from_output(ac, out, x_t, t_batch, kind).float(), noise.float())
                    (grad,) = torch.autograd.grad(loss, [probs])
                probs.grad = grad
                opt.step()
                opt.zero_grad(set_to_none=True)
                with torch.no_grad():
                    probs.copy_(project_to_simplex(probs, allowed))
                losses.append(float(loss.detach()))
                if progress:
                    progress(len(losses), config.steps)
            candidates.append(tuple(probs.argmax(-1).tolist()))
        prompts = list(dict.fromkeys(self.text(tokenizer, ids, concept) for ids in candidates))
        scores = self.selection_losses(erased, prompts, x0, config, seed)
        best = min(range(len(prompts)), key=lambda i: scores[i])
        from erasure.pipelines.generation import generate

        images = generate(erased, prompts[best], seeds=[seed + i for i in range(config.images)], steps=config.sample_steps,
                          guidance=config.guidance, scheduler=config.scheduler, batch_size=config.images)
        return AttackResult(self.name, concept, seed, prompts[best], None, images,
                            {"steps": config.steps, "timesteps": len(candidates), "candidates": len(prompts)}, 0.0, losses,
                            details={"tokens": config.tokens, "target": source,
                                     "candidates": [{"prompt": p, "loss": s} for p, s in zip(prompts, scores)]})

    @staticmethod
    def text(tokenizer, ids, concept: str) -> str:
        """The adversarial tokens decoded, in front of the concept prompt (the reference's prefix text)."""
        return f"{tokenizer.decode(list(ids), skip_special_tokens=True).strip()} {concept}".strip()

    @torch.no_grad()
    def target(self, original, concept: str, config: UnlearnDiffAtkConfig, seed: int) -> tuple[torch.Tensor, str]:
        """``x0`` (1, C, H, W) of one concept image: a user's (image ``seed`` mod their count) or the original's."""
        if config.target_images is not None:
            files = image_files(config.target_images)
            chosen = files[seed % len(files)]
            return encoded_x0(original, [chosen]), str(chosen)
        x0 = drawn_x0(original, concept, [seed], steps=config.target_steps, guidance=config.guidance)
        return x0, f"the original's image of {concept!r}, seed {seed}"

    @torch.no_grad()
    def selection_losses(self, erased, prompts: list[str], x0: torch.Tensor, config: UnlearnDiffAtkConfig,
                         seed: int) -> list[float]:
        """Each prompt's denoising loss on ``x0`` at the same ``selection_points`` (t, noise) pairs."""
        n = config.selection_points
        g = torch.Generator().manual_seed(random.Random(f"unlearndiffatk-select/{seed}").getrandbits(63))
        total = erased.scheduler.config.num_train_timesteps
        t = torch.randint(0, total, (n,), generator=g).to(x0.device)
        noise = torch.randn((n, *x0.shape[1:]), generator=g).to(x0.device, x0.dtype)
        ac, kind = alphas_cumprod(erased.scheduler, x0.device), prediction_type(erased.scheduler)
        x_t = add_noise(ac, x0.expand(n, -1, -1, -1), noise, t)
        encode = TextConditioner(erased, native_resolution(erased))
        out = []
        for prompt in prompts:
            hidden = encode([prompt]).hidden.expand(n, -1, -1)
            eps = eps_from_output(ac, unet_output(erased.unet, x_t, t, Conditions(hidden)), x_t, t, kind)
            out.append(float(F.mse_loss(eps.float(), noise.float())))
        return out
