"""SFD: Score Forgetting Distillation (Chen et al., ICLR 2025) into a one-step generator.

Data-free: the method takes prompts only. The pipeline's UNet is distilled, by Score identity
Distillation (SiD), into a one-step generator ``G`` whose scores for the forget prompts are pulled
to the teacher's scores for the override prompts. Three UNets: the frozen teacher ``eps*`` (the
pipeline's own UNet), a fake-score network ``f_psi`` and the generator ``G``, both initialised from
the teacher. ``G(z, c) = x0(eps_G(sqrt(1 - a*) z, t*, c))``: pure noise read as the noisy sample at
a fixed ``t*`` (``erasure.one_step.generator_x0``).

Prompts (``request.resolve(pipe)``): forget prompts ``c_f`` are the request's prompts (and, by
default, its paraphrases); each override prompt ``c_o`` is its forget prompt with the target
concept replaced by the request's anchor ("dotted" -> "a painting", "brad pitt" -> "a middle aged
man"; the reference's ``re.sub``); remain prompts ``c_r`` are the request's retain prompts.

Every iteration, with a remain batch and a forget batch of ``batch_size`` each (``t ~ U[t_min, t_max)``,
fresh noise, classifier-free guidance ``CFG(e, x_t, t, c, w)`` with the empty prompt):

1. Fake-score step: ``x = sg(G(z, c))`` for ``c`` in both batches (10% of prompts dropped to "",
   for G's input and f_psi's condition alike); ``x_t = add_noise(x, noise, t)``;
   ``L_psi = sum_i w_i || eps(CFG(f_psi, x_t, t, c, kappa1)) - noise ||^2 / B``; Adam (betas 0, 0.999).
2. Generator step: ``x = G(z, c)``; remain rows ``y_real = x0(CFG(eps*, x_t, t, c_r, kappa4))``,
   forget rows ``y_real = x0(CFG(eps*, x_t, t, c_o, kappa4))`` (the teacher's score for the OVERRIDE
   prompt: the forgetting term), ``y_fake = x0(CFG(f_psi, x_t, t, c, kappa2))``;
   ``L_G = sum_i w_i sum((y_real - y_fake) * ((y_real - x) - alpha (y_real - y_fake))) / sg(mean|x - y_real|) / B``
   (alpha = 1: ``(y_real - y_fake) * (y_fake - x)``); Adam. ``w_i``: ``remain_weight`` or ``forget_weight``.
3. Samples with NaN/inf are dropped from each loss; NaN/inf gradients are zeroed; under fp16 the
   generator's gradient values are clipped to ``fp16_grad_clip``.

The result is an ``Edit`` holding the generator's changed UNet tensors, with
``extra = {"sampler": "one-step", "t_star": t*}``: sample it with
``erasure.one_step.OneStepPipeline`` (one UNet call per image); as a multi-step model the
edited UNet is meaningless. The pipeline passed in is left holding the generator's weights.

Implementation choices (reference: tqch/score-forgetting-distillation, ``SD/training/training_loop.py``
and ``sd_util.py``, run with ``run_sfd.sh``):

- Timesteps. The reference's ``t* = 625`` and ``t ~ U[20, 980)`` are for SD's schedule; its CIFAR-10
  DDPM config uses ``t* = 440`` and ``[38, 712)`` on a linear schedule. Both sets have the same
  alpha_bar (0.138 at t*, i.e. SiD's sigma_init = 2.5; 0.981 and 0.0058 at the ends), so
  ``t_star``/``t_min``/``t_max`` left at None are the timesteps whose alpha_bar is nearest SD's at
  625, 20 and 980: exactly 625/20/980 on SD 1.x/2.x/XL, 755/79/950 on canvas-mini's cosine schedule.
- Generator input: ``z`` enters as ``add_noise(0, z, t*) = sqrt(1 - a*) z``, as the reference's
  sampler computes it (not ``z`` itself). No x0 clipping anywhere in training (the reference's
  ``scheduler.step`` clips only when the scheduler is configured to; neither canvas-mini's DDIM nor
  SD's is): x0 estimates come from ``erasure.diffusion.x0_from_output``, which also serves v-prediction.
- Losses in the reference's normalisation: sums over pixels, divided by the per-process batch.
  The fake-score loss is taken in noise space for every prediction type (the reference's
  v-prediction branch weights the velocity error by snr/(snr+1) = a_t, which is the same loss).
- Gradients reach G through ``x`` and through ``y_real``/``y_fake``, which are evaluated at
  ``x_t(x)`` (as the reference: neither the teacher nor f_psi is detached from its input; their
  parameters are not trained in this step). ``sg(mean|x - y_real|)`` is per sample, clamped at 1e-5.
- Prompt dropout: ``prompt_dropout`` (0.1) in the fake-score step, as the reference (which drops
  only when the fake guidance is not 1); ``generator_prompt_dropout`` (reference: 0) in the
  generator step, where a dropped forget row drops its override prompt too.
- Batches: the remain and forget batches of a step are one UNet call (2B rows, 4B with CFG) with
  per-row weights; the same sums as the reference's two passes. Prompts are drawn uniformly with
  replacement per sample (the reference cycles a shuffled list). Every sample (prompt, dropout,
  t, noise seeds) is a pure function of (seed, step, phase, branch, index), so a resumed run equals
  an uninterrupted one and W processes with batch B equal one process with batch W*B.
- Guidance: ``guidance`` (4.5) for kappa1 (fake training), kappa2/3 (fake evaluation) and kappa4
  (teacher), each overridable. ``negative_prompt`` replaces "" in the teacher's guidance on forget
  rows (the reference's ``use_neg = 0,0,1`` with a negative prompt); "" by default.
- No EMA of the generator (the reference's SFD runs use ``--ema 0``). No LoRA. The reference starts
  SD runs from a SiD-LSG-distilled one-step generator; ``generator_init`` takes the run folder of an
  earlier SFD run on the same base (e.g. with ``forget_weight: 0``, i.e. plain SiD) for that.
- Memory: the teacher is the pipeline's own UNet in its own dtype (no copy, frozen; bfloat16 when
  the pipeline is loaded so, the default on a GPU); G and f_psi are float32 copies (master weights)
  run under autocast with mixed precision. With ``beta1 = 0`` (the reference's betas) Adam keeps no
  first-moment buffer (``erasure.training.ZeroBeta1Adam``: the same updates bit for bit), and
  ``optimizer_in_backward`` (default) updates each tensor as soon as its gradient is complete, so no
  whole-UNet gradient is ever held (bit for bit the same; used with one process, no fp16 loss
  scaling and no micro-batches). ``micro_batch_size`` runs a step's 2B rows in parts with gradient
  accumulation (the same gradient up to float summation order) to bound activation memory.
  Gradient checkpointing (``gradient_checkpointing``) applies to all three UNets, since the
  generator step back-propagates through the teacher and f_psi as well. Peak memory is measured
  (``CostMeter``); bench/sd_scale.py and bench/sd_memory.py measure it at SD 1.5's size.
- Several targets in one request: the forget set is every target's prompts (and paraphrases),
  each forget prompt's override replacing whichever target it names, and every forget row draws
  a prompt uniformly from the pooled set, so each target gets the share of its prompts (the
  reference's forget list is a prompt file, cycled the same way whatever concepts it holds). The
  steps are the config's: the cost does not grow with the number of targets (only the prompts
  encoded once); ``extra["targets"]`` records each target's forget prompts. A chain of runs
  (``erasure erase --model RUN``) cannot continue after an SFD run: its UNet is a one-step
  generator, not the noise predictor every method (SFD's own teacher included) trains from.
- Checkpoints hold both networks, both optimisers, the fp16 loss scaler state and the losses: state
  tracked by an ``erasure.training.TrainLoop`` (``track``) whose steps (``run_steps``) update the
  two networks themselves.
- Several processes (``accelerate launch``): data-parallel as ESD; both networks' gradients are
  averaged over the processes every step.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from erasure.diffusion import (
    Conditions,
    TextConditioner,
    add_noise,
    alphas_cumprod,
    cfg,
    eps_from_output,
    initial_noise,
    latent_shape,
    prediction_type,
    unet_output,
    x0_from_output,
)
from erasure.edit import CHECKPOINT_DIR, Edit
from erasure.errors import ErasureInputError
from erasure.one_step import SAMPLER, generator_x0
from erasure.request import prompt_targets, spread
from erasure.training import (
    MIXED_PRECISION,
    ParameterState,
    TrainLoop,
    ZeroBeta1Adam,
    adam,
    average_gradients,
    mean_over_processes,
    setup_run,
    step_in_backward,
    tail_mean,
)

from .base import ErasureMethod, MethodConfig
from .registry import register

logger = logging.getLogger(__name__)

FORGET_SETS = ("prompts", "prompts+paraphrases")
#: The per-step losses the loop records (and the progress shows).
LOSSES = ("fake_loss", "generator_loss")
#: The reference's timesteps on Stable Diffusion's schedule; other schedules match their alpha_bar.
REFERENCE_TIMESTEPS = {"t_min": 20, "t_star": 625, "t_max": 980}


@dataclass
class SFDConfig(MethodConfig):
    """SFD hyperparameters. Defaults: the reference's SD run (run_sfd.sh), steps = its evaluated 100k-image snapshot."""

    steps: int = 12500
    batch_size: int = 8
    generator_lr: float = 1e-6
    fake_lr: float = 3e-6
    adam_betas: list[float] = field(default_factory=lambda: [0.0, 0.999])
    adam_eps: float | None = None
    alpha: float = 1.0
    guidance: float = 4.5
    fake_train_guidance: float | None = None
    fake_guidance: float | None = None
    real_guidance: float | None = None
    prompt_dropout: float = 0.1
    generator_prompt_dropout: float = 0.0
    t_star: int | None = None
    t_min: int | None = None
    t_max: int | None = None
    remain_weight: float = 1.0
    forget_weight: float = 1.0
    forget_set: str = "prompts+paraphrases"
    negative_prompt: str = ""
    generator_init: str | None = None
    resolution: int | None = None
    seed: int = 0
    checkpoint_every: int = 100
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    fp16_grad_clip: float = 1.0
    optimizer_in_backward: bool = True
    micro_batch_size: int | None = None

    def validate(self) -> None:
        def bad(key: str, why: str) -> ErasureInputError:
            return ErasureInputError(f"sfd config {key}: {why}, got {getattr(self, key)!r}")

        for key in ("steps", "batch_size"):
            if getattr(self, key) < 1:
                raise bad(key, "must be at least 1")
        if self.checkpoint_every < 0:
            raise bad("checkpoint_every", "must be >= 0 (0: no checkpoints)")
        for key in ("generator_lr", "fake_lr"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                raise bad(key, "must be a positive number")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise bad("adam_betas", "must be two numbers in [0, 1)")
        if self.adam_eps is not None and not self.adam_eps > 0:
            raise bad("adam_eps", "must be positive")
        for key in ("alpha", "guidance", "fake_train_guidance", "fake_guidance", "real_guidance", "remain_weight",
                    "forget_weight", "fp16_grad_clip"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise bad(key, "must be a finite number >= 0")
        if self.alpha <= 0:
            raise bad("alpha", "must be positive (SiD's alpha; the reference uses 1, 1.2 for CIFAR-10)")
        if self.remain_weight == 0 and self.forget_weight == 0:
            raise ErasureInputError("sfd config: remain_weight and forget_weight are both 0; nothing to train")
        for key in ("prompt_dropout", "generator_prompt_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise bad(key, "must be in [0, 1)")
        for key in ("t_star", "t_min", "t_max"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise bad(key, "must be a timestep >= 0 (or null: matched to the reference)")
        if self.forget_set not in FORGET_SETS:
            raise bad("forget_set", f"expected one of {', '.join(FORGET_SETS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad("mixed_precision", f"expected one of {', '.join(MIXED_PRECISION)}")
        if self.resolution is not None and self.resolution < 8:
            raise bad("resolution", "is too small")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise bad("micro_batch_size", "must be at least 1 (or null: every row of a step at once)")

    def guidances(self) -> dict[str, float]:
        """kappa1 (fake training), kappa2/3 (fake evaluation), kappa4 (teacher), defaulting to ``guidance``."""
        pick = lambda v: self.guidance if v is None else v  # noqa: E731
        return {"fake_train": pick(self.fake_train_guidance), "fake": pick(self.fake_guidance),
                "real": pick(self.real_guidance)}


# ----------------------------------------------------------------------------- pure pieces (tested by hand)
def sid_generator_loss(x: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, alpha: float,
                       weights: torch.Tensor | None = None, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SiD's generator loss, per sample normalised by ``sg(mean|x - y_real|)``; returns (loss, kept rows).

    ``sum_i w_i sum_pixels((y_real - y_fake) * ((y_real - x) - alpha (y_real - y_fake))) / n_i / batch``
    over the rows without NaN/inf in x, y_real or y_fake (``batch`` defaults to all rows, kept or not,
    as the reference divides by its per-GPU batch). alpha = 1 uses the simplified form
    ``(y_real - y_fake) * (y_fake - x)``, as the reference does.
    """
    x, y_real, y_fake = x.float(), y_real.float(), y_fake.float()
    n = x.shape[0]
    kept = _finite_rows(x) & _finite_rows(y_real) & _finite_rows(y_fake)
    weights = torch.ones(n, device=x.device) if weights is None else weights.to(x.device, torch.float32)
    x, y_real, y_fake, weights = x[kept], y_real[kept], y_fake[kept], weights[kept]
    dims = tuple(range(1, x.ndim))
    with torch.no_grad():
        norm = (x - y_real).abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
    if alpha == 1:
        per = (y_real - y_fake) * (y_fake - x) / norm
    else:
        per = (y_real - y_fake) * ((y_real - x) - alpha * (y_real - y_fake)) / norm
    return (weights * per.sum(dim=dims)).sum() / (batch or n), kept


def fake_score_loss(eps: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor | None = None,
                    batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoising loss of the fake-score network in noise space over rows without NaN/inf; (loss, kept rows)."""
    eps, noise = eps.float(), noise.float()
    n = eps.shape[0]
    kept = _finite_rows(eps)
    weights = torch.ones(n, device=eps.device) if weights is None else weights.to(eps.device, torch.float32)
    per = (eps[kept] - noise[kept]).pow(2).flatten(1).sum(1)
    return (weights[kept] * per).sum() / (batch or n), kept


def _finite_rows(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t.detach()).flatten(1).all(1)


def _finite_grad(grad: torch.Tensor) -> None:
    """NaN -> 0, +-inf -> +-1e5 in place (the reference's ``torch.nan_to_num`` of every gradient)."""
    torch.nan_to_num(grad, nan=0.0, posinf=1e5, neginf=-1e5, out=grad)


def override_prompt(prompt: str, targets: list[str], anchor: str) -> str | None:
    """``prompt`` with each target concept replaced by ``anchor`` (case-insensitive, whole words); None if no target occurs.

    An anchor with its own article ("a painting") also takes the place of an article before the
    target ("a dotted painting" keeps working: "a star in dotted style" -> "a star in a painting style").
    """
    article = re.match(r"(a|an|the)\s", anchor, flags=re.IGNORECASE) is not None
    out, hit = prompt, False
    for target in sorted(targets, key=len, reverse=True):
        core = re.sub(r"^(a|an|the)\s+", "", target.strip(), flags=re.IGNORECASE)
        lead = r"\b(?:(?:a|an|the)\s+)?" if article else r"\b"
        pattern = re.compile(lead + re.escape(core) + r"\b", flags=re.IGNORECASE)
        out, count = pattern.subn(lambda _m: anchor, out)
        hit = hit or count > 0
    return " ".join(out.split()) if hit else None


@dataclass
class PromptSets:
    """SFD's prompts: forget (with their override, row by row) and remain."""

    forget: list[str]
    override: list[str]
    remain: list[str]

    def texts(self, negative: str) -> list[str]:
        """Every distinct text to encode; "" first."""
        return list(dict.fromkeys(["", negative, *self.forget, *self.override, *self.remain]))


def prompt_sets(request, forget_set: str = "prompts+paraphrases") -> PromptSets:
    """The forget, override and remain prompts of a resolved request."""
    forget = list(request.prompts or [])
    if forget_set == "prompts+paraphrases":
        forget += list(request.paraphrases or [])
    forget = list(dict.fromkeys(forget))
    anchor = request.anchor or ""
    override = []
    for p in forget:
        o = override_prompt(p, request.targets, anchor)
        if o is None:
            # The reference would keep the prompt as it is, which distils the concept instead of
            # forgetting it; the anchor alone is the override then.
            logger.info("sfd: no target in forget prompt %r; its override is the anchor %r", p, anchor)
            o = anchor
        override.append(o)
    remain = [r for r in dict.fromkeys(request.retain or []) if r not in set(forget)]
    if not forget:
        raise ErasureInputError("sfd: the request has no forget prompts")
    if not remain:
        raise ErasureInputError("sfd: the request has no retain prompts (SFD's remain set); give some")
    return PromptSets(forget, override, remain)


def forget_spread(request, sets: PromptSets, pipe) -> dict:
    """Forget prompts per target (the edit's ``extra["targets"]``): every sample draws a forget prompt
    uniformly, so a target's share of the forget rows is its share of the prompts."""
    from erasure.families import family_of

    owners = prompt_targets(sets.forget, request.targets, request.kind, family_of(pipe))
    counts = [sum(o == k for o in owners) for k in range(len(request.targets))]
    unnamed = sum(o is None for o in owners)
    schedule = ("one target" if len(request.targets) == 1 else
                "pooled: forget rows drawn uniformly from every target's prompts and paraphrases"
                + (f" ({unnamed} prompts name no single target)" if unnamed else ""))
    return spread(request.targets, counts, "forget prompts", schedule)


def reference_alpha_bars() -> dict[str, float]:
    """Stable Diffusion's alpha_bar at the reference timesteps (scaled-linear betas 0.00085..0.012, 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    ac = torch.cumprod(1 - betas, dim=0)
    return {k: float(ac[t]) for k, t in REFERENCE_TIMESTEPS.items()}


def resolve_timesteps(config: SFDConfig, scheduler) -> dict[str, int]:
    """t_star, t_min, t_max on this scheduler: the configured values, or those matching the reference's alpha_bar."""
    ac = alphas_cumprod(scheduler)
    total = len(ac)
    out = {}
    for key, target in reference_alpha_bars().items():
        value = getattr(config, key)
        out[key] = int((ac - target).abs().argmin()) if value is None else int(value)
    if not 0 <= out["t_min"] < out["t_max"] <= total:
        raise ErasureInputError(f"sfd timesteps: need 0 <= t_min < t_max <= {total}, got {out['t_min']}, {out['t_max']}")
    if not 0 < out["t_star"] < total:
        raise ErasureInputError(f"sfd t_star: must lie in [1, {total - 1}], got {out['t_star']}")
    return out


def guided_output(unet, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions, uncond: Conditions,
                  scale: float) -> torch.Tensor:
    """``CFG(unet, x_t, t, cond, scale)`` in the model's output space; one call (doubled batch), none doubled at scale 1."""
    if scale == 1:
        return unet_output(unet, x_t, t, cond)
    out_u, out_c = unet_output(unet, torch.cat([x_t, x_t]), torch.cat([t, t]), Conditions.cat([uncond, cond])).chunk(2)
    return cfg(out_u, out_c, scale)


# ----------------------------------------------------------------------------- the per-step samples
@dataclass
class _Batch:
    """One phase's rows on this process: remain rows first, then forget rows."""

    g_cond: list[int]      # text index of G's condition (= f_psi's)
    real_cond: list[int]   # text index of the teacher's condition (override prompt on forget rows)
    real_uncond: list[int]  # text index of the teacher's unconditional branch
    forget: list[bool]
    t: list[int]
    z_seed: list[int]
    noise_seed: list[int]

    def split(self, rows: int | None) -> list["_Batch"]:
        """Consecutive parts of at most ``rows`` rows (the whole batch for None)."""
        n = len(self.t)
        if rows is None or rows >= n:
            return [self]
        names = [f.name for f in fields(self)]
        return [_Batch(*(getattr(self, k)[i:i + rows] for k in names)) for i in range(0, n, rows)]


class _Plan:
    """Every sample of every step, a pure function of (seed, step, phase, branch, global index)."""

    def __init__(self, c: SFDConfig, sets: PromptSets, index: dict[str, int], times: dict[str, int]) -> None:
        self.c, self.sets, self.index, self.times = c, sets, index, times

    def batch(self, step: int, phase: str, rank: int = 0) -> _Batch:
        c, s, idx = self.c, self.sets, self.index
        dropout = c.prompt_dropout if phase == "fake" else c.generator_prompt_dropout
        out = _Batch([], [], [], [], [], [], [])
        for branch in ("remain", "forget"):
            for j in range(rank * c.batch_size, (rank + 1) * c.batch_size):
                rng = random.Random(f"sfd/{c.seed}/{step}/{phase}/{branch}/{j}")
                k = rng.randrange(len(s.remain if branch == "remain" else s.forget))
                dropped = rng.random() < dropout
                if branch == "remain":
                    g = real = "" if dropped else s.remain[k]
                    uncond = ""
                else:
                    g = "" if dropped else s.forget[k]
                    real = "" if dropped else s.override[k]
                    uncond = "" if dropped else c.negative_prompt
                out.g_cond.append(idx[g])
                out.real_cond.append(idx[real])
                out.real_uncond.append(idx[uncond])
                out.forget.append(branch == "forget")
                out.t.append(rng.randrange(self.times["t_min"], self.times["t_max"]))
                out.z_seed.append(rng.randrange(2**31))
                out.noise_seed.append(rng.randrange(2**31))
        return out


# ----------------------------------------------------------------------------- the method
@register("sfd")
class SFD(ErasureMethod):
    """Score forgetting distillation into a one-step generator (see the module docstring)."""

    paper = 'Chen et al., "Score Forgetting Distillation: A Swift, Data-Free Method for Machine Unlearning in Diffusion Models", ICLR 2025'
    reference_code = "tqch/score-forgetting-distillation"

    config_class = SFDConfig

    def __call__(self, pipe, request, *, run_dir=None, resume: bool = False, progress=None) -> Edit:
        c: SFDConfig = self.config
        s = setup_run(pipe, request, run_dir, resolution=c.resolution, mixed_precision=c.mixed_precision)
        sets = prompt_sets(s.request, c.forget_set)
        times = resolve_timesteps(c, pipe.scheduler)
        run = _Run(self, pipe, sets, times, s.mixed, s.resolution, s.state, run_dir, progress)
        try:
            if resume:
                run.resume()
            with s.meter.phase("training"):
                run.train()
            run.drop_training_state()  # the fake network and both optimisers: memory for the edit's tensors
            tensors = run.changed_generator_tensors()
            extra = {**run.summary(), "targets": forget_spread(s.request, sets, pipe)}
        finally:
            run.close()
        edit = self.trained_edit(s.request, tensors, cost=s.meter.summary(), device=s.device, mixed_precision=s.mixed,
                                 num_processes=s.world, extra=extra)
        edit.apply(pipe)  # the pipeline passed in holds the generator now (sample it with OneStepPipeline)
        logger.info("sfd: %d generator tensors changed; t* = %d", len(tensors), times["t_star"])
        return edit


class _Run:
    """The state of one SFD run: networks, optimisers, data plan, losses, checkpoints."""

    def __init__(self, method: SFD, pipe, sets: PromptSets, times: dict[str, int], mixed: str, resolution: int,
                 state, run_dir, progress=None) -> None:
        c: SFDConfig = method.config
        self.c, self.pipe, self.sets, self.times, self.mixed, self.state = c, pipe, sets, times, mixed, state
        self.teacher = pipe.unet
        self.device = self.teacher.device
        self.kind = prediction_type(pipe.scheduler)
        self.ac = alphas_cumprod(pipe.scheduler, self.device)
        self.shape = latent_shape(pipe, resolution)
        self.resolution = resolution
        self.world, self.rank = state.num_processes, state.process_index
        self.kappa = c.guidances()

        texts = sets.texts(c.negative_prompt)
        self.index = {t: i for i, t in enumerate(texts)}
        encode = TextConditioner(pipe, resolution)
        with torch.no_grad():
            parts = [encode(texts[i:i + 64]) for i in range(0, len(texts), 64)]
        self.texts = Conditions.cat(parts)
        self.plan = _Plan(c, sets, self.index, times)

        self.teacher.requires_grad_(False)
        self.generator = self._copy_of_teacher()
        self.fake = self._copy_of_teacher()
        if c.generator_init:
            self._load_generator_init(c.generator_init)
        self.loop = TrainLoop(
            None, None, steps=c.steps, device=self.device, mixed_precision=mixed,
            gradient_checkpointing=c.gradient_checkpointing, checkpointed=(self.generator, self.fake, self.teacher),
            checkpoint_dir=Path(run_dir) / CHECKPOINT_DIR if run_dir is not None else None,
            checkpoint_every=c.checkpoint_every, progress=progress, stage="training",
        )
        self.accelerator = self.loop.accelerator
        eps = c.adam_eps if c.adam_eps is not None else (1e-6 if mixed == "fp16" else 1e-8)  # the reference's
        betas = tuple(c.adam_betas)
        opt_g = adam(self.generator.parameters(), lr=c.generator_lr, betas=betas, eps=eps)
        opt_f = adam(self.fake.parameters(), lr=c.fake_lr, betas=betas, eps=eps)
        self.opt_g, self.opt_f = self.accelerator.prepare(opt_g, opt_f)
        # Where it changes nothing (see the module docstring), each tensor is updated as its gradient
        # completes and the gradient freed: one UNet's worth of gradient memory less.
        whole_steps = c.micro_batch_size is None or c.micro_batch_size >= 2 * c.batch_size  # no accumulation
        self.in_backward = (c.optimizer_in_backward and isinstance(opt_g, ZeroBeta1Adam) and mixed != "fp16"
                            and self.world == 1 and whole_steps)
        # Checkpointed and resumed exactly: both networks, both optimisers, the fp16 loss scaler.
        self.loop.track("generator", ParameterState(dict(self.generator.named_parameters())))
        self.loop.track("fake", ParameterState(dict(self.fake.named_parameters())))
        self.loop.track("generator_optimizer", self.opt_g)
        self.loop.track("fake_optimizer", self.opt_f)
        if self.accelerator.scaler is not None:
            self.loop.track("scaler", self.accelerator.scaler)

    def _copy_of_teacher(self) -> torch.nn.Module:
        # float32 master weights whatever the pipeline's dtype; autocast runs the forward in half precision.
        net = copy.deepcopy(self.teacher).eval()
        if net.dtype != torch.float32:
            net.to(torch.float32)
        net.requires_grad_(False)
        return net

    def _load_generator_init(self, run_dir: str) -> None:
        from erasure.edit import Edit, fingerprint, read_manifest

        manifest = read_manifest(run_dir)
        extra = manifest.get("extra", {})
        if manifest.get("method") != "sfd" or extra.get("sampler") != SAMPLER:
            raise ErasureInputError(f"sfd generator_init {run_dir}: not an SFD run")
        if int(extra.get("t_star", -1)) != self.times["t_star"]:
            raise ErasureInputError(f"sfd generator_init {run_dir}: its generator uses t_star {extra.get('t_star')}, "
                                    f"this run {self.times['t_star']}")
        if manifest["base"].get("fingerprint") not in (None, fingerprint(self.pipe)):
            raise ErasureInputError(f"sfd generator_init {run_dir}: made for another base model")
        params = dict(self.generator.named_parameters())
        with torch.no_grad():
            for key, value in Edit.load(run_dir).tensors.items():
                comp, _, name = key.partition(".")
                if comp == "unet" and name in params:
                    params[name].copy_(value.to(self.device, torch.float32))
        logger.info("sfd: generator initialised from %s", run_dir)

    # -- one step of each network
    def _rows(self, batch: _Batch):
        cond = lambda ids: self.texts.index(ids)  # noqa: E731
        t = torch.tensor(batch.t, device=self.device)
        z = initial_noise(batch.z_seed, self.shape, self.device, torch.float32)
        noise = initial_noise(batch.noise_seed, self.shape, self.device, torch.float32)
        c = self.c
        weights = torch.tensor([c.forget_weight if f else c.remain_weight for f in batch.forget], device=self.device)
        return cond, t, z, noise, weights

    def fake_step(self, step: int) -> float:
        def loss_of(batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
            cond, t, z, noise, weights = self._rows(batch)
            g_cond = cond(batch.g_cond)
            empty = cond([self.index[""]] * len(batch.t))
            with torch.no_grad():
                x = generator_x0(self.generator, z, self.times["t_star"], g_cond, self.ac, self.kind)
            x_t = add_noise(self.ac, x, noise, t)
            out = guided_output(self.fake, x_t, t, g_cond, empty, self.kappa["fake_train"])
            eps = eps_from_output(self.ac, out, x_t, t, self.kind)
            return fake_score_loss(eps, noise, weights, self.c.batch_size)

        return self._train(self.plan.batch(step, "fake", self.rank), loss_of, self.fake, self.opt_f, clip=None)

    def generator_step(self, step: int) -> float:
        def loss_of(batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
            cond, t, z, noise, weights = self._rows(batch)
            g_cond = cond(batch.g_cond)
            empty = cond([self.index[""]] * len(batch.t))
            x = generator_x0(self.generator, z, self.times["t_star"], g_cond, self.ac, self.kind)
            x_t = add_noise(self.ac, x, noise, t)
            y_fake = x0_from_output(self.ac, guided_output(self.fake, x_t, t, g_cond, empty, self.kappa["fake"]),
                                    x_t, t, self.kind)
            out_real = guided_output(self.teacher, x_t, t, cond(batch.real_cond), cond(batch.real_uncond),
                                     self.kappa["real"])
            y_real = x0_from_output(self.ac, out_real, x_t, t, self.kind)
            return sid_generator_loss(x, y_real, y_fake, self.c.alpha, weights, self.c.batch_size)

        clip = self.c.fp16_grad_clip if self.mixed == "fp16" and self.c.fp16_grad_clip > 0 else None
        return self._train(self.plan.batch(step, "generator", self.rank), loss_of, self.generator, self.opt_g, clip)

    def _train(self, batch: _Batch, loss_of, net: torch.nn.Module, optimizer, clip: float | None) -> float:
        """One optimiser step of ``net`` on ``batch``, in micro-batches of ``micro_batch_size`` rows.

        Each part's loss is already divided by the whole batch size, so the accumulated gradient is
        the whole batch's (up to float summation order).
        """
        acc = self.accelerator
        params = list(net.parameters())
        parts = batch.split(self.c.micro_batch_size)
        net.requires_grad_(True)
        try:
            if self.in_backward:
                with acc.autocast():
                    loss, kept = loss_of(batch)
                if not kept.any():
                    logger.warning("sfd: every sample of this step was NaN/inf; step skipped")
                    return float("nan")
                with step_in_backward(optimizer.optimizer, params, _finite_grad):
                    acc.backward(loss)
                return float(loss.detach())
            total = 0.0
            for part in parts:
                with acc.autocast():
                    loss, kept = loss_of(part)
                if kept.any():
                    acc.backward(loss)
                total += float(loss.detach())
            return self._step(torch.tensor(total), params, optimizer, clip)
        finally:
            net.requires_grad_(False)

    def _step(self, loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer, clip: float | None) -> float:
        """Average over processes, clean and clip the accumulated gradients, then step."""
        acc = self.accelerator
        if self.world > 1:
            # A process with no finite sample has no gradients: zeros keep the collectives matched.
            average_gradients(params, fill_missing=True)
            loss = mean_over_processes(loss.to(self.device).float())
        if all(p.grad is None for p in params):
            logger.warning("sfd: every sample of this step was NaN/inf; step skipped")
            optimizer.zero_grad(set_to_none=True)
            return float("nan")
        acc.unscale_gradients(optimizer=optimizer)  # fp16: real gradients (and the overflow check) before editing them
        for p in params:
            if p.grad is not None:
                _finite_grad(p.grad)
        if clip is not None:
            torch.nn.utils.clip_grad_value_(params, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    # -- the loop
    def train(self) -> None:
        """Every step: the fake-score network's update, then the generator's (each fills and applies
        its own gradients), through the loop's checkpoints and progress."""
        def step(i: int) -> dict[str, float]:
            return {"fake_loss": self.fake_step(i), "generator_loss": self.generator_step(i)}

        self.loop.run_steps(step, record=LOSSES)

    def resume(self) -> int:
        return self.loop.resume()

    # -- the result
    def changed_generator_tensors(self) -> dict[str, torch.Tensor]:
        # The generator is not trained any more, so its float32 CPU tensors are taken as they are
        # (no clone: at SD 1.5's size a copy is 3.4 GB more at the run's end).
        teacher = dict(self.teacher.named_parameters())
        out = {}
        for n, p in self.generator.named_parameters():
            value = p.detach().float().cpu()
            if not torch.equal(value, teacher[n].detach().float().cpu()):
                out[f"unet.{n}"] = value
        return out

    def drop_training_state(self) -> None:
        """Free the fake-score network and both optimisers once training is over."""
        self.accelerator.free_memory()
        self.fake = self.opt_g = self.opt_f = None

    def summary(self) -> dict:
        losses = {k: self.loop.history.get(k, []) for k in LOSSES}
        return {
            "sampler": SAMPLER,
            "t_star": self.times["t_star"],
            "sampling_steps": 1,
            "t_min": self.times["t_min"],
            "t_max": self.times["t_max"],
            "guidance": self.kappa,
            "prediction_type": self.kind,
            "resolution": self.resolution,
            "global_batch_size": self.c.batch_size * self.world,
            "forget_prompts": len(self.sets.forget),
            "remain_prompts": len(self.sets.remain),
            "override_examples": dict(list(zip(self.sets.forget, self.sets.override))[:8]),
            "generator_parameters": int(sum(p.numel() for p in self.generator.parameters())),
            "optimizer": "adam without first moment (beta1 0)" if self.c.adam_betas[0] == 0 else "adam",
            "optimizer_in_backward": self.in_backward,
            "resumed_from_step": self.loop.start_step,  # > 0: the cost's wall time covers the steps from here on only
            "fake_loss_first": losses["fake_loss"][0] if losses["fake_loss"] else None,
            "fake_loss_mean_last_10pct": tail_mean(losses["fake_loss"]),
            "generator_loss_first": losses["generator_loss"][0] if losses["generator_loss"] else None,
            "generator_loss_mean_last_10pct": tail_mean(losses["generator_loss"]),
        }

    def close(self) -> None:
        self.accelerator.free_memory()
        self.generator = self.fake = self.opt_g = self.opt_f = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

