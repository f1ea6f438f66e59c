"""DoCo: concept-domain correction with concept-preserving gradient surgery (Wu et al., AAAI 2025).

The erased concept's output domain is aligned with an anchor concept's by adversarial training,
and the unlearning gradient is stripped of the part that conflicts with a prior-preservation
gradient. Each training step (the paper's; reference: yongliang-wu/DoCo ``train.py``,
``gradient_clip.py``, ``gan.py``):

1. Anchor images ``x_0`` (made once, up front, by the original model from anchor prompts) are noised
   to ``x_t`` at a uniform random timestep ``t``.
2. ``y_A = x0(eps*(x_t, t, c_anchor))`` from the frozen model with the anchor prompt, and
   ``y_S = x0(eps_theta(x_t, t, c_target))`` from the trained model with the paired target prompt
   (the anchor prompt with the anchor swapped for the erased concept).
3. Generator (the UNet's cross-attention K/V): ``L_adv = BCE(D(y_S), real)`` and, on a second batch
   of noised anchor images, ``L_prior = || eps_theta(x'_t, t', c_anchor) - noise ||^2``.
   During the warm-up the update is the gradient of ``L_adv + prior_weight * L_prior``; afterwards
   gradient surgery (``gradient_surgery``) per trained tensor: ``g_a = grad L_adv``,
   ``g_p = grad L_prior``; when ``cos(g_a, g_p) < 0``, ``g_a`` loses its conflicting part, and the
   step uses the adjusted ``g_a`` only. AdamW (lr 6e-6, weight decay 1e-2), gradient-norm clip 1.
4. Discriminator ``D`` (a PatchGAN on the UNet's input space: latents for SD, pixels for
   canvas-mini): ``BCE(D(y_A), real) + BCE(D(y_S), fake)``, Adam betas (0.5, 0.999), lr 1e-4
   (objects) / 5e-4 (styles). Labels as in the reference: real = 0, fake = 1.

Surgery forms (``surgery``):

- ``"projection"`` (default, the paper's wording, PCGrad): ``g_a - lambda (g_a . g_p / |g_p|^2) g_p``;
  with lambda = 1 the result is orthogonal to ``g_p``.
- ``"reference"`` (the reference code, ``gradient_clip.adjust_gradient``):
  ``g_a - lambda * cos * g_p / |g_p|``, where ``cos`` is the cosine of the two gradients: a
  different magnitude (it removes ``|cos|`` of a unit vector, not the projection), so the result
  is orthogonal to ``g_p`` only when ``|g_a| = 1``; with ``g_a`` clipped to a global norm of at
  most 1 (``max_grad_norm``), each tensor's ``|g_a| <= 1`` and this form removes at least as much
  as the projection.
- ``"off"``: no surgery; the plain ``L_adv + prior_weight * L_prior`` update throughout (the
  reference without ``--gradient_clip``), for ablations.

``surgery_lambda`` scales the removed part in both forms (1 = the paper; the reference's object
and nudity scripts use 0.5).

Implementation choices and deviations (same algorithm; every difference named):

- Prompts. The reference asks a chat API for 200 anchor captions (objects) or retrieves LAION
  captions (styles); no external service is used here. Prompt pairs (anchor, target) come from
  shipped templates (``prompt_pairs``): canvas-mini uses its own caption templates (``templates``
  selects which; the default, template 0 only, is UnlearnCanvas' form, so the paraphrase templates
  stay unseen for the generalisation test); a style's anchor is the style-free caption "a {object}",
  an object's the object-free caption "{style} style" (``canvas_anchors: concept-free``), or, with
  ``canvas_anchors: others``, the same captions with every concept of the kind not being erased
  (the other styles' or objects' captions, a mixture like the reference's generic "painting"
  captions: canvas-mini draws its concept-free captions in a random style, sometimes the erased
  one, and often with the wrong shape); an explicit canvas-mini style or object as the request's
  anchor uses that concept's captions. Stable Diffusion: style anchors "{anchor} of {subject}" paired with the reference's two
  target forms "{caption}, in the style of {T}" and "in {T}'s style, {caption}"; other kinds fill
  photo/painting templates with the anchor and with the target (the reference's
  ``caption.replace(anchor, target)``). A request with explicit ``prompts`` uses them as the target
  prompts, each paired with itself with the target text swapped for the anchor; an empty anchor
  pairs each target prompt with the empty prompt.
- Anchor images are sampled by the original model with DDIM (``anchor_steps`` steps, guidance
  ``anchor_guidance``; the reference uses DPM-Solver 25 steps, guidance 6) directly in the UNet's
  input space: the latents are kept instead of being decoded to JPEG files and re-encoded by the
  VAE. Image ``i`` uses anchor prompt ``i mod n_pairs`` (the reference's ``PromptDataset``). They
  are saved beside the checkpoints (``doco-anchors.safetensors``, through ``erasure.sampling.SampleStore``:
  each process makes its share, all are gathered), so a resumed run trains on the same data. No flip/crop augmentation (the reference's style script turns its resize augmentation
  off; its horizontal flip is omitted: a mirrored canvas-mini arrow or moon is another image).
- Every step's samples (anchor image, noise seed, timestep for both batches) are drawn up front
  from ``seed``, so a resumed run equals an uninterrupted one; the discriminator and its optimiser
  state are checkpointed with the UNet's (``TrainLoop.track``), and the step itself, which fills the
  trained tensors' gradients, runs through ``TrainLoop.run_steps``.
- Warm-up (``warmup``): ``"plain"`` (default; the paper's description: the generator trains on
  ``L_adv + prior_weight * L_prior`` without surgery for ``warmup_steps``) or ``"discriminator"``
  (what the reference code does: during ``--warm_up`` steps only the discriminator trains). The
  reference's scripts also pass ``--prior_loss_weight 0``, so their plain steps have no prior term
  (``prior_weight: 0``); surgery uses the unweighted prior gradient either way (only its direction
  matters).
- The discriminator's gradient comes from its own loss only. (The reference's generator backward
  also leaves the gradient of ``L_adv`` with respect to ``D`` in ``D``'s ``.grad``, which its next
  ``optimizer_D.step()`` then applies; the paper describes ``D`` learning y_A -> real, y_S -> fake,
  which is what is done here.)
- Gradient clipping as the reference: each of ``g_p`` and ``g_a`` is clipped to a global norm of
  ``max_grad_norm`` over the trained tensors before surgery (in plain steps, the combined gradient).
  Surgery uses exact norms, with no ``1e-8`` in the denominators; a tensor whose ``g_a`` or ``g_p`` is
  zero is left as it is.
- ``x0`` estimates are not clipped (the reference's SD scheduler has ``clip_sample`` off; clipping
  would cut the gradient through saturated pixels). Noise-prediction losses are in noise space for
  every prediction type (``eps_from_output``), so v-prediction models (canvas-mini) work unchanged.
- Model families: the paper and reference are SD 1.x (CompVis v1.4); the algorithm carries over
  unchanged to SD 2.x and SDXL, whose UNets have the same ``attn2.to_k``/``to_v`` projections (on
  SDXL they read both text encoders' concatenated features) and 4-channel latents for the
  discriminator (64x64 at 512 px, 96x96 at SD 2.x's 768 px, 128x128 at SDXL's 1024 px). SDXL's
  added conditions (pooled text projection, size) come from ``TextConditioner`` and are frozen with
  the text encoders; its empty prompt is the zero embedding the SDXL pipeline guides with.
- Memory: one UNet. The frozen model's K/V values are kept apart (``FrozenCopy``) and swapped in for
  the ``y_A`` forward; the trained tensors are fp32 master weights. Mixed precision: "no" or "bf16"
  (autocast); fp16 is refused, because surgery needs unscaled gradients and fp16 training needs a
  loss scaler.
- The UNet stays in eval mode (Stable Diffusion has no dropout); the discriminator trains in
  train mode (BatchNorm on batch statistics, as the reference). It is not part of the edit, which
  holds only the changed K/V tensors; the per-step losses, the discriminator's and the share of
  conflicting tensors are summarised in the edit's ``extra["history"]``.
- Several targets in one request: the reference's scripts erase the one concept their prompt
  file is about; here every target's (anchor, target) pairs are pooled into one list, so one
  discriminator and one run align all of them with their anchors (on canvas-mini with
  ``canvas_anchors: others`` the anchors are the concepts not being erased, the erased ones never
  serve as anchors). The pairs are taken target by target in turn, so the anchor images (image i:
  pair i mod n_pairs) are spread evenly over the targets even when there are fewer images than
  pairs, and each step draws images uniformly: the targets share the steps equally. Steps and anchor
  images are the config's, so the cost does not grow with the number of targets (only the prompts
  encoded once); ``extra["targets"]`` records the training samples each target got.
- Diagnostics: ``probe_samples`` / ``x0_estimates`` give the x0 estimates the discriminator sees, for
  fixed noised samples, before and after a run (tests and benches).
- Several processes (``accelerate launch``): data-parallel like ESD (the plan holds
  ``steps * batch_size * W`` samples, process r takes the r-th block of each step's global batch);
  ``g_a``, ``g_p`` and the discriminator's gradients are each averaged over the processes before
  clipping and surgery (as DDP averages before the reference's surgery). The discriminator's
  BatchNorm uses per-process batch statistics (as under the reference's DDP), so W processes are
  not bit-equal to one process with a W times larger batch.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from erasure.diffusion import (
    Conditions,
    add_noise,
    ddim_for,
    eps_from_output,
    initial_noise,
    sample_partial_trajectories,
    unet_output,
    x0_from_output,
)
from erasure.edit import Edit
from erasure.errors import ErasureInputError
from erasure.prompts import with_article
from erasure.request import ErasureRequest, prompt_targets, spread
from erasure.sampling import SampleStore, step_block
from erasure.training import (
    MIXED_PRECISION,
    PARAMETER_PRESETS,
    FrozenCopy,
    TrainLoop,
    mean_over_processes,
    select_parameters,
    setup_model,
    setup_run,
    tail_mean,
)

from .base import ErasureMethod, MethodConfig
from .registry import register

logger = logging.getLogger(__name__)

SURGERY_MODES = ("projection", "reference", "off")
WARMUP_MODES = ("plain", "discriminator")
#: canvas-mini anchors when the request names none: the concept-free captions ("a {object}",
#: "{style} style"), or the same captions with each of the other concepts of the kind.
CANVAS_ANCHORS = ("concept-free", "others")
#: The anchor images, gathered from every process into one file beside the checkpoint (``SampleStore``).
ANCHORS_STEM = "doco-anchors"
#: Per-step records kept in the checkpoint and summarised in the edit: generator adversarial and
#: prior losses (NaN in discriminator-only warm-up steps), discriminator loss, and the share of
#: trained tensors whose g_a conflicted with g_p (NaN in steps without surgery).
HISTORY = ("adv", "prior", "disc", "conflicts")

#: Stable Diffusion prompt material (DoCo's reference asks a chat API or LAION for captions).
SD_SUBJECTS: tuple[str, ...] = (
    "a house", "a tree", "a river", "a woman", "a man", "a dog", "a cat", "a city street", "a mountain landscape",
    "a bowl of fruit", "a boat on the sea", "a garden", "a bridge", "flowers in a vase", "a horse", "a church",
    "a forest path", "a village", "a child", "an old man",
)
SD_TEMPLATES: tuple[str, ...] = ("a photo of {}", "a picture of {}", "a painting of {}", "a close-up photo of {}", "{}")
SD_PLACES: tuple[str, ...] = (
    "", " in a park", " on a beach", " in a city street", " in a forest", " at night", " in the snow", " indoors",
    " on a table", " in a field",
)


@dataclass
class DoCoConfig(MethodConfig):
    """DoCo hyperparameters. Defaults: the paper's for Stable Diffusion 1.x."""

    parameters: str | list[str] = "attn2-kv"
    steps: int = 2000
    batch_size: int = 8
    lr: float = 6e-6
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    surgery: str = "projection"
    surgery_lambda: float = 1.0
    warmup_steps: int = 1000
    warmup: str = "plain"
    prior_weight: float = 0.1
    disc_lr: float | None = None
    disc_betas: list[float] = (0.5, 0.999)  # type: ignore[assignment]  # a list after validation
    disc_widths: list[int] = (64, 128, 256, 512)  # type: ignore[assignment]
    anchor_images: int = 1000
    anchor_steps: int = 25
    anchor_guidance: float = 6.0
    anchor_batch: int = 16
    templates: list[int] = (0,)  # type: ignore[assignment]
    canvas_anchors: str = "concept-free"
    resolution: int | None = None
    seed: int = 0
    checkpoint_every: int = 100
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        self.disc_betas, self.disc_widths, self.templates = list(self.disc_betas), list(self.disc_widths), list(self.templates)
        if isinstance(self.parameters, str) and self.parameters not in PARAMETER_PRESETS:
            raise _bad(f"parameters: {self.parameters!r}; expected one of {', '.join(PARAMETER_PRESETS)} or a list of patterns")
        if not isinstance(self.parameters, str):
            self.parameters = list(self.parameters)
            if not self.parameters:
                raise _bad("parameters: empty list; expected a preset name or regular expressions")
        for name, options in (("surgery", SURGERY_MODES), ("warmup", WARMUP_MODES), ("mixed_precision", MIXED_PRECISION),
                              ("canvas_anchors", CANVAS_ANCHORS)):
            if getattr(self, name) not in options:
                raise _bad(f"{name}: {getattr(self, name)!r}; expected one of {', '.join(options)}")
        self.check_bounds(at_least_one=("steps", "batch_size", "anchor_images", "anchor_steps", "anchor_batch"),
                          non_negative=("warmup_steps", "checkpoint_every", "weight_decay", "max_grad_norm", "prior_weight",
                                        "surgery_lambda"),
                          positive=("lr", "disc_lr"), optional=("lr", "disc_lr"), prefix="doco config ")
        if len(self.disc_betas) != 2 or not all(0 <= b < 1 for b in self.disc_betas):
            raise _bad(f"disc_betas: expected two numbers in [0, 1), got {self.disc_betas}")
        if not self.disc_widths or any(w < 1 for w in self.disc_widths):
            raise _bad(f"disc_widths: expected a non-empty list of positive channel counts, got {self.disc_widths}")
        if not self.templates or any(k < 0 for k in self.templates) or len(set(self.templates)) != len(self.templates):
            raise _bad(f"templates: expected distinct caption-template indices >= 0, got {self.templates}")
        if self.resolution is not None and self.resolution < 8:
            raise _bad(f"resolution: {self.resolution} is too small")


def _bad(message: str) -> ErasureInputError:
    return ErasureInputError(f"doco config {message}")


# ----------------------------------------------------------------------------- gradient surgery
def gradient_surgery(g_adv: torch.Tensor, g_prior: torch.Tensor, mode: str = "projection",
                     lam: float = 1.0) -> tuple[torch.Tensor, float]:
    """The adversarial gradient of one tensor after concept-preserving surgery, and the cosine.

    When ``cos(g_adv, g_prior) < 0``: ``"projection"`` returns
    ``g_adv - lam * (g_adv . g_prior / |g_prior|^2) g_prior`` (PCGrad, the paper); ``"reference"``
    returns ``g_adv - lam * cos * g_prior / |g_prior|`` (the reference code). Otherwise, or with
    ``"off"``, or when either gradient is zero (cosine undefined, returned as NaN), ``g_adv`` itself.
    """
    if mode not in SURGERY_MODES:
        raise ValueError(f"unknown surgery mode {mode!r}")
    a, p = g_adv.float(), g_prior.float()
    norm_a, norm_p = a.norm(), p.norm()
    if norm_a == 0 or norm_p == 0:
        return g_adv, math.nan
    dot = (a * p).sum()
    cos = float(dot / (norm_a * norm_p))
    if mode == "off" or cos >= 0:
        return g_adv, cos
    if mode == "projection":
        adjusted = a - lam * (dot / norm_p**2) * p
    else:
        adjusted = a - lam * cos * (p / norm_p)
    return adjusted.to(g_adv.dtype), cos


def clip_global_norm(grads: Sequence[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    """``grads`` scaled to a global L2 norm of at most ``max_norm`` (0: unchanged), as
    ``torch.nn.utils.clip_grad_norm_`` does to ``.grad`` (same ``1e-6`` guard)."""
    grads = list(grads)
    if not max_norm:
        return grads
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    coef = max_norm / (float(total) + 1e-6)
    return [g * coef for g in grads] if coef < 1 else grads


# ----------------------------------------------------------------------------- discriminator
class PatchDiscriminator(nn.Module):
    """The reference's PatchGAN (``gan.py``): stride-2 4x4 convolutions of ``widths`` channels
    (BatchNorm after all but the first, LeakyReLU 0.2), then a 4x4 convolution to one logit per patch."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            layers.append(nn.Conv2d(channels, width, 4, stride=2, padding=1))
            if i > 0:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2))
            channels = width
        layers.append(nn.Conv2d(channels, 1, 4, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def check_discriminator_fits(widths: Sequence[int], shape: tuple[int, int, int]) -> None:
    """Each stride-2 block halves the side and the last 4x4 convolution needs a side of 2 or more."""
    side = min(shape[1:])
    need = 2 ** (len(widths) + 1)
    if side < need:
        raise _bad(f"disc_widths: {len(widths)} blocks need inputs of at least {need} px a side; "
                   f"this model's are {side} (use fewer widths)")


def build_discriminator(in_channels: int, widths: Sequence[int], seed: int) -> PatchDiscriminator:
    """The discriminator with PyTorch's default initialisation drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PatchDiscriminator(in_channels, widths)


# ----------------------------------------------------------------------------- prompt pairs
def prompt_pairs(request: ErasureRequest, pipe_or_family, templates: Sequence[int] = (0,),
                 canvas_anchors: str = "concept-free") -> list[tuple[str, str]]:
    """(anchor prompt, target prompt) pairs for ``request`` (see the module docstring).

    ``request`` is the request as given (unresolved), so explicit prompts and anchors can be told
    from defaults. A model family with its own captions supplies the pairs (``ModelFamily.anchor_pairs``:
    canvas-mini's caption templates, ``canvas_anchors`` picking its anchors when the request names none).
    """
    from erasure.families import family_of

    family = family_of(pipe_or_family)
    req = request.resolve(family)
    if request.prompts is not None:
        return [(_swap(p, req.targets, req.anchor), p) for p in req.prompts]
    own = family.anchor_pairs(req, request.anchor, templates, canvas_anchors)
    if own is not None:
        return own
    if not req.anchor:
        return [("", p) for p in req.prompts]
    return _sd_pairs(req)


def _swap(prompt: str, targets: Sequence[str], anchor: str) -> str:
    for t in targets:
        if t.lower() in prompt.lower():
            return re.sub(re.escape(t), anchor, prompt, flags=re.IGNORECASE).strip()
    return anchor


def _sd_pairs(req: ErasureRequest) -> list[tuple[str, str]]:
    pairs = []
    for target in req.targets:
        if req.kind == "style":
            for subject in SD_SUBJECTS:
                anchor = f"{req.anchor} of {subject}"
                pairs += [(anchor, f"{anchor}, in the style of {target}"), (anchor, f"in {target}'s style, {anchor}")]
            continue
        phrase = target
        if req.kind == "object" and not re.match(r"(a|an|the)\s", target, flags=re.IGNORECASE):
            phrase = with_article(target)
        for template in SD_TEMPLATES:
            for place in SD_PLACES:
                pairs.append((template.format(req.anchor + place), template.format(phrase + place)))
    return pairs


# ----------------------------------------------------------------------------- the plan
@dataclass
class _Plan:
    """Every training sample, drawn up front: a pure function of (seed, sample index)."""

    adv_image: list[int]
    adv_seed: list[int]
    adv_t: list[int]
    prior_image: list[int]
    prior_seed: list[int]
    prior_t: list[int]


def make_plan(n_samples: int, n_images: int, num_train_timesteps: int, seed: int) -> _Plan:
    plan = _Plan([], [], [], [], [], [])
    for i in range(n_samples):
        rng = random.Random(f"doco/{seed}/{i}")
        for prefix in ("adv", "prior"):
            getattr(plan, f"{prefix}_image").append(rng.randrange(n_images))
            getattr(plan, f"{prefix}_seed").append(rng.randrange(2**31))
            getattr(plan, f"{prefix}_t").append(rng.randrange(num_train_timesteps))
    return plan


def _owners(request: ErasureRequest, pipe, pairs: Sequence[tuple[str, str]]) -> list[int | None]:
    """The target each pair trains (the one its target prompt names), or None."""
    from erasure.families import family_of

    req = request.resolve(pipe)
    return prompt_targets([t for _, t in pairs], req.targets, req.kind, family_of(pipe))


def interleaved(pairs: list[tuple[str, str]], request: ErasureRequest, pipe) -> list[tuple[str, str]]:
    """Several targets: their pairs taken in turn (first of each target, then second of each, ...), so
    the anchor images, image i of pair i mod n_pairs, are spread evenly over the targets even when
    there are fewer images than pairs. One target, or pairs not attributable to one each: unchanged."""
    owners = _owners(request, pipe, pairs)
    if len(request.targets) == 1 or any(o is None for o in owners):
        return pairs
    groups = [[p for p, o in zip(pairs, owners) if o == k] for k in range(len(request.targets))]
    return [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]


def pair_spread(request: ErasureRequest, pipe, pairs: Sequence[tuple[str, str]], images: Sequence[int]) -> dict:
    """Training samples per target (the edit's ``extra["targets"]``): a sample's anchor image is of
    pair ``image mod len(pairs)``, and the pair trains the target its target prompt names."""
    owners = _owners(request, pipe, pairs)
    if len(request.targets) == 1 or any(o is None for o in owners):
        schedule = "one target" if len(request.targets) == 1 else "shared: pairs not attributable to one target"
        return spread(request.targets, [len(images)] * len(request.targets), "training samples", schedule)
    counts = [sum(owners[i % len(pairs)] == k for i in images) for k in range(len(request.targets))]
    return spread(request.targets, counts, "training samples",
                  "pooled: the targets' prompt pairs in one list, taken in turn; anchor images spread over them, "
                  "each sample's image drawn uniformly")


# ----------------------------------------------------------------------------- the method
@register("doco")
class DoCo(ErasureMethod):
    """DoCo (see the module docstring for the algorithm and every implementation choice)."""

    paper = 'Wu et al., "Unlearning Concepts in Diffusion Model via Concept Domain Correction", AAAI 2025'
    reference_code = "yongliang-wu/DoCo"

    config_class = DoCoConfig

    def __call__(self, pipe, request, *, run_dir=None, resume: bool = False, progress=None) -> Edit:
        c: DoCoConfig = self.config
        pairs = interleaved(prompt_pairs(request, pipe, c.templates, c.canvas_anchors), request, pipe)
        s = setup_run(pipe, request, run_dir, resolution=c.resolution, mixed_precision=c.mixed_precision)
        req, device, rank, world, shape, ac, kind = s.request, s.device, s.rank, s.world, s.shape, s.ac, s.kind
        unet = pipe.unet
        check_discriminator_fits(c.disc_widths, shape)
        if s.mixed == "fp16":
            raise ErasureInputError("doco: fp16 training is not supported (gradient surgery needs unscaled gradients); "
                                    "load the pipeline in bf16 or fp32")
        params = select_parameters(unet, c.parameters)
        frozen = FrozenCopy(params)  # the original K/V, swapped in for the frozen model's y_A

        with torch.no_grad():
            cond_anchor = s.encode([a for a, _ in pairs])
            cond_target = s.encode([t for _, t in pairs])
            uncond = s.encode([""])

        with s.meter.phase("anchor images"):
            images = self._anchors(pipe, cond_anchor, uncond, len(pairs), s, resume, progress)
        image_pair = torch.tensor([i % len(pairs) for i in range(len(images))])
        plan = make_plan(c.steps * c.batch_size * world, len(images), pipe.scheduler.config.num_train_timesteps, c.seed)

        disc_lr = c.disc_lr if c.disc_lr is not None else (5e-4 if req.kind == "style" else 1e-4)
        disc = build_discriminator(shape[0], c.disc_widths, c.seed).to(device).train()
        disc_opt = torch.optim.Adam(disc.parameters(), lr=disc_lr, betas=tuple(c.disc_betas))
        loop = TrainLoop(
            unet, params, lr=c.lr, steps=c.steps, optimizer="adamw", weight_decay=c.weight_decay,
            mixed_precision=s.mixed, gradient_checkpointing=c.gradient_checkpointing, checkpoint_dir=s.checkpoint_dir,
            checkpoint_every=c.checkpoint_every, progress=progress, stage="training",
        )
        loop.track("discriminator", disc)
        loop.track("disc_optimizer", disc_opt)
        if resume:
            loop.resume()
        plist = list(params.values())

        def noised(image_idx: list[int], seeds: list[int], ts: list[int]):
            x0 = images[image_idx].to(device, unet.dtype)
            noise = initial_noise(seeds, shape, device, unet.dtype)
            t = torch.tensor(ts, device=device)
            return add_noise(ac, x0, noise, t), t, noise, torch.tensor([int(image_pair[i]) for i in image_idx])

        def step_fn(step: int) -> dict:
            idx = step_block(step, c.batch_size, rank, world)
            x_a, t_a, _, pair_a = noised([plan.adv_image[i] for i in idx], [plan.adv_seed[i] for i in idx],
                                         [plan.adv_t[i] for i in idx])
            with loop.accelerator.autocast(), torch.no_grad(), frozen.original():
                y_anchor = x0_from_output(ac, unet_output(unet, x_a, t_a, cond_anchor.index(pair_a)), x_a, t_a, kind)
            record: dict[str, float] = {}
            if step < c.warmup_steps and c.warmup == "discriminator":
                with loop.accelerator.autocast(), torch.no_grad():
                    y_erased = x0_from_output(ac, unet_output(unet, x_a, t_a, cond_target.index(pair_a)), x_a, t_a, kind)
            else:
                x_p, t_p, noise_p, pair_p = noised([plan.prior_image[i] for i in idx], [plan.prior_seed[i] for i in idx],
                                                   [plan.prior_t[i] for i in idx])
                with loop.accelerator.autocast():
                    both = Conditions.cat([cond_target.index(pair_a), cond_anchor.index(pair_p)])
                    out_a, out_p = unet_output(unet, torch.cat([x_a, x_p]), torch.cat([t_a, t_p]), both).chunk(2)
                    y_erased = x0_from_output(ac, out_a, x_a, t_a, kind)
                    logits = disc(y_erased.float())
                    l_adv = F.binary_cross_entropy_with_logits(logits.float(), torch.zeros_like(logits, dtype=torch.float32))
                    eps_p = eps_from_output(ac, out_p, x_p, t_p, kind)
                    l_prior = F.mse_loss(eps_p.float(), noise_p.float())
                record["conflicts"] = self._generator_gradients(plist, l_adv, l_prior, surgery=step >= c.warmup_steps)
                record["adv"], record["prior"] = float(l_adv.detach()), float(l_prior.detach())
            record["disc"] = self._discriminator_step(loop, disc, disc_opt, y_anchor, y_erased.detach())
            if world > 1:
                keys = sorted(k for k in record if not math.isnan(record[k]))
                means = mean_over_processes(torch.tensor([record[k] for k in keys], device=device))
                record.update({k: float(v) for k, v in zip(keys, means)})
            return record

        with s.meter.phase("training"):
            loop.run_steps(step_fn, record=HISTORY, show=("adv", "disc"))
        tensors = loop.finish(frozen, prefix="unet.")
        logger.info("doco: %d of %d trained tensors changed", len(tensors), len(params))
        return self.trained_edit(
            req, tensors, params, cost=s.meter.summary(), device=device, mixed_precision=s.mixed, num_processes=world,
            extra={
                "resolution": s.resolution,
                "prediction_type": kind,
                "global_batch_size": c.batch_size * world,
                "prompt_pairs": len(pairs),
                "prompt_pair_examples": [list(p) for p in pairs[:4]],
                "targets": pair_spread(req, pipe, pairs, plan.adv_image),
                "anchor_images": len(images),
                "discriminator_lr": disc_lr,
                "discriminator_parameters": int(sum(p.numel() for p in disc.parameters())),
                "history": summarise(loop.history),
            },
        )

    # -- one step's two updates
    def _generator_gradients(self, plist: list, l_adv, l_prior, surgery: bool) -> float:
        """Fill the trained tensors' ``.grad``: plain combined gradient, or g_a after surgery.
        Returns the share of tensors whose g_a conflicted with g_p (NaN without surgery)."""
        c: DoCoConfig = self.config
        if not surgery or c.surgery == "off":
            grads = _grads(l_adv + c.prior_weight * l_prior, plist)
            grads = clip_global_norm(_mean_over_processes(grads), c.max_grad_norm)
            conflicts = math.nan
        else:
            g_prior = clip_global_norm(_mean_over_processes(_grads(l_prior, plist, retain_graph=True)), c.max_grad_norm)
            g_adv = clip_global_norm(_mean_over_processes(_grads(l_adv, plist)), c.max_grad_norm)
            adjusted = [gradient_surgery(a, p, c.surgery, c.surgery_lambda) for a, p in zip(g_adv, g_prior)]
            grads = [g for g, _ in adjusted]
            conflicts = sum(cos < 0 for _, cos in adjusted) / len(adjusted)
        for p, g in zip(plist, grads):
            p.grad = g.to(p.dtype)
        return conflicts

    @staticmethod
    def _discriminator_step(loop: TrainLoop, disc: nn.Module, disc_opt, y_anchor, y_erased) -> float:
        """One Adam step of D on y_A -> real (0), y_S -> fake (1); returns its loss."""
        disc_opt.zero_grad(set_to_none=True)
        with loop.accelerator.autocast():
            real, fake = disc(y_anchor.float()).float(), disc(y_erased.float()).float()
            loss = (F.binary_cross_entropy_with_logits(real, torch.zeros_like(real))
                    + F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake)))
        dparams = [p for p in disc.parameters()]
        for p, g in zip(dparams, _mean_over_processes(torch.autograd.grad(loss, dparams))):
            p.grad = g
        disc_opt.step()
        return float(loss.detach())

    # -- anchor images
    def _anchors(self, pipe, cond_anchor: Conditions, uncond: Conditions, n_pairs: int, s, resume: bool,
                 progress) -> torch.Tensor:
        """The original model's samples for the anchor prompts (image i: prompt i mod ``n_pairs``), loaded
        on ``resume`` when saved; else each process makes its share and all are gathered."""
        c: DoCoConfig = self.config
        n, world = c.anchor_images, s.world
        seeds = [random.Random(f"doco-anchor/{c.seed}/{i}").randrange(2**31) for i in range(n)]
        per = -(-n // world)
        everyone = [list(range(r * per, min(n, (r + 1) * per))) for r in range(world)]
        ddim = ddim_for(pipe.scheduler, c.anchor_steps)

        def make(idx: list[int]) -> dict[str, torch.Tensor]:
            x = sample_partial_trajectories(pipe.unet, ddim, cond_anchor.index([i % n_pairs for i in idx]), uncond,
                                            [c.anchor_steps] * len(idx), [seeds[i] for i in idx], s.shape,
                                            c.anchor_guidance)
            return {"images": x.float()}

        store = SampleStore.precomputed(s.checkpoint_dir, ANCHORS_STEM, make, ("images",), mine=everyone[s.rank],
                                        everyone=everyone, state=s.state, resume=resume, batch_size=c.anchor_batch,
                                        progress=progress, stage="anchor images")
        return store.rows(range(n), ("images",))[0]

    # -- diagnostics (tests, benches)
    def probe_samples(self, pipe, prompts: Sequence[str], n: int = 16, seed: int = 1,
                      t_range: tuple[int, int] = (400, 1000)) -> dict:
        """``n`` fixed noised samples of ``pipe``'s own images of ``prompts`` (DDIM 10 steps, guidance
        ``anchor_guidance``), at timesteps drawn from ``t_range``: inputs for ``x0_estimates``."""
        c: DoCoConfig = self.config
        s = setup_model(pipe, None, c.resolution)
        shape, device, encode = s.shape, s.device, s.encode
        rng = random.Random(f"doco-probe/{seed}")
        which = [rng.randrange(len(prompts)) for _ in range(n)]
        seeds = [rng.randrange(2**31) for _ in range(2 * n)]
        t = torch.tensor([rng.randrange(*t_range) for _ in range(n)], device=device)
        with torch.no_grad():
            cond = encode([prompts[i] for i in which])
            x0 = sample_partial_trajectories(pipe.unet, ddim_for(pipe.scheduler, 10), cond, encode([""]), [10] * n,
                                             seeds[:n], shape, c.anchor_guidance)
        x_t = add_noise(s.ac, x0, initial_noise(seeds[n:], shape, device, x0.dtype), t)
        return {"x_t": x_t, "t": t, "which": which}

    def x0_estimates(self, pipe, samples: dict, prompts: Sequence[str]) -> torch.Tensor:
        """``pipe``'s x0 estimate for each of ``samples`` (``probe_samples``) conditioned on
        ``prompts[which]``: what the discriminator sees."""
        s = setup_model(pipe, None, self.config.resolution)
        with torch.no_grad():
            cond = s.encode([prompts[i] for i in samples["which"]])
            out = unet_output(pipe.unet, samples["x_t"], samples["t"], cond)
            return x0_from_output(s.ac, out, samples["x_t"], samples["t"], s.kind).float()


def _mean_over_processes(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [mean_over_processes(t) for t in tensors]


def _grads(loss: torch.Tensor, plist: list, retain_graph: bool = False) -> list[torch.Tensor]:
    """d loss / d each tensor of ``plist`` (zeros for a tensor the loss does not reach)."""
    grads = torch.autograd.grad(loss, plist, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(plist, grads)]


def summarise(history: dict[str, list[float]]) -> dict:
    """First value, last value and mean of the last 10% of each recorded series (NaNs skipped)."""
    out = {}
    for key, values in history.items():
        finite = [v for v in values if not math.isnan(v)]
        out[key] = {"first": finite[0] if finite else None, "last": finite[-1] if finite else None,
                    "mean_last_10pct": tail_mean(finite), "steps": len(finite)}
    return out
