"""Soft-prompt attacks: find text-encoder input embeddings that make a (possibly erased) pipeline
regenerate a concept. AdvUnlearn's inner maximisation and the robustness test after any erasure.

The attack (Zhang et al. 2024, AdvUnlearn; reference OPTML-Group/AdvUnlearn) learns ``k`` token
embeddings ``delta`` in the text encoder's word-embedding space (the rows of its token-embedding
table, before position embeddings) and places them in the concept prompt ``c_e``:

- ``prefix``: ``[SOT, delta, c_e, EOT, pad...]`` (the reference's default ``prefix_k``),
- ``suffix``: ``[SOT, c_e, delta, EOT, pad...]`` (``suffix_k``),
- ``replace``: ``[SOT, delta, EOT, pad...]``: the concept's own tokens are removed (``replace_k``;
  the reference fills their places with EOT embeddings, which is the padding of SD 1.x).

It minimises ``|| eps_theta(x_t, t, TE([delta, c_e])) - eps*(x_t, t, TE*(c_e)) ||^2``: the attacked
model (its current UNet and text encoder) should predict the noise that the frozen original
predicted with the plain concept prompt, on ``x_t`` from the original's concept trajectories
(DDIM with guidance, stopped at a random step). For a v- or x0-predicting model the outputs are
turned into noise estimates first (``erasure.diffusion.eps_from_output``).

Update rules (``algorithm``): ``pgd`` (the reference's name: Adam steps on the gradient, lr 1e-3,
30 steps) and ``fast_at`` (the reference's fast-AT: the gradient's sign is fed to Adam; with
``steps: 1`` it is the single sign-gradient step of the paper). ``epsilon``: optional projection of
each adversarial token onto the L2 ball of that radius around where this attack started; off by
default, as in the reference (whose "pgd" does not project, the name notwithstanding).
Initialisation: the embeddings of ``k`` random vocabulary tokens (the reference's random init), or,
with ``init: latest``, the embeddings the caller passes (AdvUnlearn passes the previous round's).

How the adversarial tokens reach the text encoder: a forward hook on its token-embedding table
replaces the rows at the adversarial positions, so the text encoder's own ``forward`` runs
unchanged (any transformers version, gradient checkpointing, mixed precision); the token ids at
those positions are placeholders (id 0) that only the pooled output (unused by SD 1.x/2.x
conditioning) could see. Pipelines with one CLIP text encoder (SD 1.x, 2.x, canvas-mini) are
supported; SDXL (two text encoders, pooled conditioning) is refused.

Also here: ``teacher_samples`` (the original's x_t and predictions, batched by depth, drawn and
computed by ``erasure.sampling`` as ESD and AdvUnlearn draw and compute theirs),
``generate_from_embeddings`` (seeded generation from prompt embeddings, as
``erasure.pipelines.generation.generate`` does for texts), and ``SoftPromptAdversary``: the attack
behind the registry ("soft-prompt"), matching the original's samples of the concept prompt.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from erasure.config import MethodConfig
from erasure.diffusion import (
    TIMESTEP_MODES,
    Conditions,
    TextConditioner,
    alphas_cumprod,
    ddim_for,
    eps_from_output,
    latent_shape,
    native_resolution,
    prediction_type,
    unet_output,
)
from erasure.errors import ErasureInputError
from erasure.sampling import (
    SampleStore,
    check_trajectories,
    draw_points,
    frozen_predictions,
    share_trajectories,
    trajectory_of,
)
from erasure.training import mean_over_processes

from .base import Attack, AttackConfig, AttackResult
from .registry import register_attack

logger = logging.getLogger(__name__)

PLACEMENTS = ("prefix", "suffix", "replace")
ALGORITHMS = ("pgd", "fast_at")
INITS = ("random", "latest")
#: Token id written at the adversarial positions; its embedding row is replaced by the hook, so the
#: id is seen only by the pooled output. Not the EOT id, so EOT-based pooling still finds the real EOT.
PLACEHOLDER_ID = 0

#: (x_t, t, target noise) for attack step i.
SampleFn = Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

# ----------------------------------------------------------------------------- config
@dataclass
class SoftPromptAttackConfig(MethodConfig):
    """The attack's settings. Defaults: AdvUnlearn's reference (one prefixed token, 30 Adam steps, lr 1e-3)."""

    method: ClassVar[str] = "soft-prompt-attack"

    tokens: int = 1
    placement: str = "prefix"
    init: str = "random"
    steps: int = 30
    lr: float = 1e-3
    algorithm: str = "pgd"
    epsilon: float | None = None
    batch_size: int = 1

    def validate(self) -> None:
        check_attack_settings("soft-prompt-attack config ", tokens=self.tokens, placement=self.placement,
                              init=self.init, steps=self.steps, lr=self.lr, algorithm=self.algorithm,
                              epsilon=self.epsilon, batch_size=self.batch_size)


def check_attack_settings(prefix: str, *, tokens: int, placement: str, init: str, steps: int, lr: float,
                          algorithm: str, epsilon: float | None, batch_size: int, names: dict | None = None) -> None:
    """One-line ``ErasureInputError`` for a bad attack setting; ``names`` maps a setting to the
    caller's key (AdvUnlearn's ``attack_steps`` for ``steps``)."""
    key = (names or {}).get
    choices = {"placement": (placement, PLACEMENTS), "init": (init, INITS), "algorithm": (algorithm, ALGORITHMS)}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ErasureInputError(f"{prefix}{key(name, name)}: {value!r}; expected one of {', '.join(allowed)}")
    for name, value in (("tokens", tokens), ("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ErasureInputError(f"{prefix}{key(name, name)}: must be at least 1, got {value}")
    if lr <= 0:
        raise ErasureInputError(f"{prefix}{key('lr', 'lr')}: must be positive, got {lr}")
    if epsilon is not None and epsilon <= 0:
        raise ErasureInputError(f"{prefix}{key('epsilon', 'epsilon')}: must be positive (or null: no projection), got {epsilon}")


def check_single_text_encoder(pipe, who: str) -> None:
    if getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "text_encoder", None) is None:
        raise ErasureInputError(
            f"{who} needs a pipeline with one CLIP text encoder (Stable Diffusion 1.x/2.x, canvas-mini); "
            f"{type(pipe).__name__} is not supported"
        )


# ----------------------------------------------------------------------------- soft prompts
@dataclass(frozen=True)
class SoftPrompt:
    """A concept prompt's token ids with placeholders where the adversarial embeddings go."""

    prompt: str
    ids: torch.Tensor  # (1, T) long
    attention_mask: torch.Tensor  # (1, T): 1 up to and including EOT
    positions: tuple[int, ...]

    @classmethod
    def build(cls, tokenizer, prompt: str, tokens: int, placement: str) -> "SoftPrompt":
        if placement not in PLACEMENTS:
            raise ErasureInputError(f"placement {placement!r}; expected one of {', '.join(PLACEMENTS)}")
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
        body = ids[1:ids.index(tokenizer.eos_token_id, 1)]
        head, tail = {"prefix": ([], body), "suffix": (body, []), "replace": ([], [])}[placement]
        return cls._around(tokenizer, prompt, head, tokens, tail, f"prompt {prompt!r}")

    @classmethod
    def in_template(cls, tokenizer, template: str, tokens: int = 1) -> "SoftPrompt":
        """``template`` with ``tokens`` adversarial (or learned) tokens where its ``{}`` is, e.g.
        "a painting in the style of {}" (concept inversion's placeholder)."""
        if template.count("{}") != 1:
            raise ErasureInputError(f"template {template!r}: needs exactly one {{}} for the token")
        before, after = (part.strip() for part in template.split("{}"))

        def body(text: str) -> list[int]:
            return tokenizer(text).input_ids[1:-1] if text else []

        return cls._around(tokenizer, template, body(before), tokens, body(after), f"template {template!r}")

    @classmethod
    def _around(cls, tokenizer, text: str, head: list[int], tokens: int, tail: list[int], what: str) -> "SoftPrompt":
        """BOS, ``head``, ``tokens`` placeholders, ``tail``, EOS, padded to the text encoder's length
        (the attention mask covers up to EOS); refused in one line when it does not fit."""
        length = tokenizer.model_max_length
        seq = [tokenizer.bos_token_id, *head, *[PLACEHOLDER_ID] * tokens, *tail, tokenizer.eos_token_id]
        if len(seq) > length:
            raise ErasureInputError(f"{what} with {tokens} adversarial token(s) needs {len(seq)} tokens; the text encoder takes {length}")
        used = len(seq)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        seq += [pad] * (length - used)
        mask = [1] * used + [0] * (length - used)
        start = 1 + len(head)
        return cls(text, torch.tensor([seq]), torch.tensor([mask]), tuple(range(start, start + tokens)))


@contextmanager
def soft_tokens(text_encoder, positions: Sequence[int], delta: torch.Tensor) -> Iterator[None]:
    """Inside the block, the text encoder's token-embedding rows at ``positions`` are ``delta`` (k, D)."""
    table = text_encoder.get_input_embeddings()
    index = torch.as_tensor(list(positions), dtype=torch.long)

    def put(module, args, output):
        out = output.clone()
        out[:, index.to(out.device)] = delta.to(out.device, out.dtype)
        return out

    handle = table.register_forward_hook(put)
    try:
        yield
    finally:
        handle.remove()


def encode_soft_prompt(text_encoder, soft: SoftPrompt, delta: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings (1, T, D) of ``soft`` with ``delta`` in place, as ``StableDiffusionPipeline.encode_prompt``
    computes them (last hidden state, the attention mask only where the encoder's config asks for it).
    Runs under the caller's grad mode."""
    device = text_encoder.device
    mask = soft.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    with soft_tokens(text_encoder, soft.positions, delta):
        hidden = text_encoder(soft.ids.to(device), attention_mask=mask)[0]
    return hidden.to(text_encoder.dtype)


def random_token_embeddings(text_encoder, tokens: int, seed: int | str) -> torch.Tensor:
    """The embeddings (k, D, float32) of ``tokens`` vocabulary tokens drawn from ``seed`` (the reference's random init)."""
    table = text_encoder.get_input_embeddings().weight
    rng = random.Random(f"soft-prompt-init/{seed}")
    ids = [rng.randrange(table.shape[0]) for _ in range(tokens)]
    return table.detach()[ids].float().clone()


# ----------------------------------------------------------------------------- teacher samples
@dataclass
class TeacherSamples:
    """The frozen original's samples for one concept prompt: x_t, t and its noise estimates (CPU)."""

    prompt: str
    x_t: torch.Tensor
    t: torch.Tensor
    eps_cond: torch.Tensor
    eps_uncond: torch.Tensor

    def __len__(self) -> int:
        return self.x_t.shape[0]

    def sampler(self, batch_size: int, seed: int | str, device) -> SampleFn:
        """Attack step i's batch: consecutive entries of a seeded permutation, cycling when the
        attack takes more samples than there are (every sample used once before any repeats)."""
        order = list(range(len(self)))
        random.Random(f"teacher-order/{seed}").shuffle(order)

        def batch(i: int):
            idx = [order[(i * batch_size + j) % len(order)] for j in range(batch_size)]
            return self.x_t[idx].to(device), self.t[idx].to(device), self.eps_cond[idx].to(device)

        return batch


def teacher_samples(pipe, prompt: str, n: int, *, seed: int | str = 0, ddim_steps: int = 50, guidance: float = 3.0,
                    timesteps: str = "matched", batch_size: int = 16, resolution: int | None = None,
                    trajectories: str = "per-step") -> TeacherSamples:
    """``n`` samples of the ORIGINAL pipeline ``pipe`` for ``prompt`` (draws from ``seed``), computed in
    batches of similar depth (each sample's noise from its own seed: batch-independent).
    ``trajectories: shared`` takes several of them from one trajectory (``erasure.sampling.share_trajectories``,
    a deviation from AdvUnlearn's reference, which samples each afresh)."""
    if timesteps not in TIMESTEP_MODES:
        raise ErasureInputError(f"timesteps {timesteps!r}; expected one of {', '.join(TIMESTEP_MODES)}")
    check_trajectories("", trajectories)
    if n < 1:
        raise ErasureInputError(f"teacher samples: n must be at least 1, got {n}")
    check_single_text_encoder(pipe, "the soft-prompt attack")
    resolution = resolution or native_resolution(pipe)
    ddim = ddim_for(pipe.scheduler, ddim_steps)
    points = draw_points(f"teacher/{seed}", n, ddim, timesteps, pipe.scheduler.config.num_train_timesteps)
    if trajectories == "shared":
        points = share_trajectories(points, f"teacher/{seed}")
    ac, kind = alphas_cumprod(pipe.scheduler, pipe.unet.device), prediction_type(pipe.scheduler)
    encode = TextConditioner(pipe, resolution)
    shape = latent_shape(pipe, resolution)
    keys = ("x_t", "t", "eps_cond", "eps_uncond")
    with torch.no_grad():
        cond, uncond = encode([prompt]), encode([""])
    store = SampleStore.compute(
        range(n), lambda ids: frozen_predictions(pipe.unet, ddim, cond, uncond, [points[i] for i in ids], shape,
                                                 guidance, ac, kind, batch_size=batch_size),
        keys, batch_size=batch_size, key=lambda i: points[i].depth, group=lambda i: trajectory_of(points[i]))
    return TeacherSamples(prompt, *store.rows(range(n), keys))


# ----------------------------------------------------------------------------- the attack
@dataclass
class SoftPromptResult:
    """The adversarial embeddings ``delta`` (k, D, float32) for ``soft`` and the attack's loss per step."""

    delta: torch.Tensor
    soft: SoftPrompt
    losses: list[float]

    @torch.no_grad()
    def prompt_embeds(self, text_encoder) -> torch.Tensor:
        """The adversarial prompt's embeddings (1, T, D), what a pipeline takes as ``prompt_embeds``."""
        return encode_soft_prompt(text_encoder, self.soft, self.delta)


class SoftPromptAttack:
    """Optimise soft tokens so that ``pipe`` (its current weights) reproduces the original's concept predictions."""

    def __init__(self, config: SoftPromptAttackConfig | dict | None = None, **overrides) -> None:
        if config is None:
            config = SoftPromptAttackConfig()
        elif isinstance(config, dict):
            config = SoftPromptAttackConfig.from_dict(config)
        self.config = config.with_overrides(**overrides) if overrides else config

    def run(self, pipe, prompt: str | SoftPrompt, samples: SampleFn, *, init: torch.Tensor | None = None,
            seed: int | str = 0, average_gradients: bool = False,
            progress: Callable[[int, int], None] | None = None) -> SoftPromptResult:
        """Attack ``pipe`` for ``config.steps`` steps; step i trains on ``samples(i)`` = (x_t, t, target
        noise of the original with the concept prompt).

        ``init``: starting embeddings (k, D) used when ``config.init`` is "latest" (else, and when
        ``None``, random vocabulary tokens drawn from ``seed``). ``average_gradients``: average the
        gradient over the processes of a ``torch.distributed`` group (data-parallel callers), so every
        process ends with the same embeddings. Only ``delta`` receives gradients; the model is left
        as it is (its parameters' ``.grad`` untouched).
        """
        c = self.config
        check_single_text_encoder(pipe, "the soft-prompt attack")
        soft = prompt if isinstance(prompt, SoftPrompt) else SoftPrompt.build(pipe.tokenizer, prompt, c.tokens, c.placement)
        te, unet = pipe.text_encoder, pipe.unet
        device = unet.device
        ac, kind = alphas_cumprod(pipe.scheduler, device), prediction_type(pipe.scheduler)
        start = init if (init is not None and c.init == "latest") else random_token_embeddings(te, len(soft.positions), seed)
        if tuple(start.shape) != (len(soft.positions), te.get_input_embeddings().weight.shape[1]):
            raise ErasureInputError(f"attack init: shape {tuple(start.shape)} does not fit {len(soft.positions)} token(s) of this text encoder")
        delta = start.detach().to(device, torch.float32).clone().requires_grad_(True)
        anchor = delta.detach().clone()
        opt = torch.optim.Adam([delta], lr=c.lr)
        losses: list[float] = []
        for i in range(c.steps):
            x_t, t, target = samples(i)
            with torch.enable_grad():
                hidden = encode_soft_prompt(te, soft, delta)
                out = unet_output(unet, x_t, t, Conditions(hidden.expand(x_t.shape[0], -1, -1)))
                loss = F.mse_loss(eps_from_output(ac, out, x_t, t, kind).float(), target.float())
                (grad,) = torch.autograd.grad(loss, [delta])
            loss = loss.detach()
            if average_gradients:
                grad, loss = mean_over_processes(grad), mean_over_processes(loss.float())
            delta.grad = grad.sign() if c.algorithm == "fast_at" else grad
            opt.step()
            opt.zero_grad(set_to_none=True)
            if c.epsilon is not None:
                _project(delta, anchor, c.epsilon)
            losses.append(float(loss))
            if progress:
                progress(i + 1, c.steps)
        return SoftPromptResult(delta.detach(), soft, losses)

    @torch.no_grad()
    def loss(self, pipe, soft: SoftPrompt, delta: torch.Tensor, batch) -> float:
        """The attack objective for ``delta`` on one batch (x_t, t, target) (diagnostics, tests)."""
        x_t, t, target = batch
        ac, kind = alphas_cumprod(pipe.scheduler, pipe.unet.device), prediction_type(pipe.scheduler)
        hidden = encode_soft_prompt(pipe.text_encoder, soft, delta)
        out = unet_output(pipe.unet, x_t, t, Conditions(hidden.expand(x_t.shape[0], -1, -1)))
        return float(F.mse_loss(eps_from_output(ac, out, x_t, t, kind).float(), target.float()))


def _project(delta: torch.Tensor, anchor: torch.Tensor, radius: float) -> None:
    """Each token of ``delta`` onto the L2 ball of ``radius`` around its starting point."""
    with torch.no_grad():
        step = delta - anchor
        norm = step.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        delta.copy_(anchor + step * (radius / norm).clamp(max=1.0))


# ----------------------------------------------------------------------------- generation and ASR
@torch.no_grad()
def generate_from_embeddings(pipe, prompt_embeds: torch.Tensor, *, seeds: Sequence[int], steps: int = 25,
                             guidance: float = 3.0, scheduler: str | None = "ddim") -> list:
    """One PIL image per seed from ``prompt_embeds`` (1, T, D), the empty prompt as the negative; each
    image's noise from its own CPU generator, as ``erasure.pipelines.generation.generate`` draws it."""
    from erasure.pipelines.generation import scheduler_swapped

    negative = TextConditioner(pipe, native_resolution(pipe))([""]).hidden
    n = len(seeds)
    pipe.set_progress_bar_config(disable=True)
    with scheduler_swapped(pipe, scheduler):
        out = pipe(
            prompt_embeds=prompt_embeds.expand(n, -1, -1).to(pipe.text_encoder.dtype),
            negative_prompt_embeds=negative.expand(n, -1, -1),
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            num_inference_steps=steps, guidance_scale=guidance, output_type="pil",
        )
    return list(out.images)


# ----------------------------------------------------------------------------- behind the attack registry
@dataclass
class SoftPromptConfig(SoftPromptAttackConfig, AttackConfig):
    """The registered "soft-prompt" attack: the optimiser's settings (``SoftPromptAttackConfig``:
    AdvUnlearn's reference defaults), the original's samples it matches, and how its image is drawn
    (``AttackConfig``)."""

    method: ClassVar[str] = "soft-prompt"

    teacher_samples: int = 64  # the original's (x_t, noise) samples for the concept prompt
    teacher_ddim_steps: int = 20

    def validate(self) -> None:
        AttackConfig.validate(self)
        SoftPromptAttackConfig.validate(self)
        if self.init != "random":
            raise ErasureInputError(f"soft-prompt config init: {self.init!r}; an attack on a model starts from random tokens")
        self.check_bounds(at_least_one=("teacher_samples", "teacher_ddim_steps"))

    def optimiser(self) -> SoftPromptAttackConfig:
        keys = {f.name for f in dataclasses.fields(SoftPromptAttackConfig)}
        return SoftPromptAttackConfig.from_dict({k: v for k, v in self.to_dict().items() if k in keys})


@register_attack("soft-prompt")
class SoftPromptAdversary(Attack):
    """The soft-prompt attack (AdvUnlearn's, Zhang et al. 2024, OPTML-Group/AdvUnlearn) on an erased model.

    ``teacher_samples`` samples of the ORIGINAL for the concept prompt (DDIM ``teacher_ddim_steps``
    at the config's ``guidance``, drawn from a seed fixed per concept, so every attack seed and every
    run of an evaluation matches the same samples; kept per (original, concept) for this instance),
    then ``steps`` optimiser steps of ``tokens`` adversarial embeddings against the erased model
    (init and sample order from the attack seed), then one image per ``images`` from the adversarial
    embeddings. The result is embeddings, not text. Deviation from the reference: its attack uses the
    ESD-style samples of the model being trained; here they come from the untouched original.
    """

    config_class = SoftPromptConfig
    config: SoftPromptConfig

    def __init__(self, config=None, **overrides) -> None:
        super().__init__(config, **overrides)
        self._teachers: dict[tuple, TeacherSamples] = {}

    def teacher(self, original, concept: str, config: SoftPromptConfig) -> TeacherSamples:
        key = (id(original), concept, config.teacher_samples, config.teacher_ddim_steps, config.guidance)
        if key not in self._teachers:
            self._teachers[key] = teacher_samples(original, concept, config.teacher_samples, seed=f"asr-teacher/{concept}",
                                                  ddim_steps=config.teacher_ddim_steps, guidance=config.guidance)
        return self._teachers[key]

    def attack(self, erased, original, concept, *, config, seed, progress):
        check_single_text_encoder(erased, "the soft-prompt attack")
        teacher = self.teacher(original, concept, config)
        optimiser = SoftPromptAttack(config.optimiser())
        found = optimiser.run(erased, concept, teacher.sampler(config.batch_size, f"asr/{seed}", erased.unet.device),
                              seed=f"asr/{seed}", progress=progress)
        embeds = found.prompt_embeds(erased.text_encoder)
        images = generate_from_embeddings(erased, embeds, seeds=[seed + i for i in range(config.images)],
                                          steps=config.sample_steps, guidance=config.guidance, scheduler=config.scheduler)
        return AttackResult(self.name, concept, seed, None, embeds.detach().cpu(), images,
                            {"steps": config.steps, "teacher_samples": len(teacher)}, 0.0, found.losses,
                            details={"tokens": config.tokens, "placement": config.placement})
