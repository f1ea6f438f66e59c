"""Diffusion arithmetic every erasure method shares, written once.

- ``add_noise`` / ``x0_from_output`` / ``eps_from_output``: the forward process and the clean-sample
  and noise estimates from a UNet output, for every ``prediction_type`` a diffusers scheduler can
  carry ("epsilon", "v_prediction", "sample"), from the scheduler's ``alphas_cumprod``.
- ``cfg``: classifier-free guidance.
- ``TextConditioner``: prompt embeddings (and, for SDXL, the added conditioning) for a pipeline; the
  empty prompt is the pipeline's unconditional condition (zeros on SDXL, as its own sampler).
- ``sample_partial_trajectories``: run the frozen model with a prompt from pure noise (DDIM,
  classifier-free guidance) and stop each sample at its own depth, returning the x_t "where the
  concept lives" that ESD, AdvUnlearn and DoCo train on. Batched: each step evaluates only the
  samples still running (none is stepped past its depth), and each sample's starting noise comes
  from its own seed, so the result does not depend on the batch (up to float summation order).
  ``sample_trajectory_points`` is the general form: several depths taken from one trajectory
  (``trajectories: shared`` in ESD and AdvUnlearn); ``SampleSteps`` counts what either ran.

Everything here is stateless; the UNet is whatever module the caller passes (the frozen one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from erasure.errors import ErasureInputError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: The timestep at which a loss is taken on a point of a sampled partial trajectory: the DDIM
#: timestep the trajectory stopped at ("matched"), or drawn in [k T / n, (k+1) T / n) for depth k
#: of n ("reference", the original ESD script's, where t and x_t disagree).
TIMESTEP_MODES = ("matched", "reference")


def prediction_type(scheduler) -> str:
    kind = getattr(scheduler.config, "prediction_type", "epsilon") or "epsilon"
    if kind not in PREDICTION_TYPES:
        raise ErasureInputError(f"unsupported prediction type {kind!r}; expected one of {', '.join(PREDICTION_TYPES)}")
    return kind


def alphas_cumprod(scheduler, device: torch.device | str = "cpu") -> torch.Tensor:
    """The scheduler's cumulative alpha products (float64 is not needed; float32 on ``device``)."""
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ErasureInputError(f"{type(scheduler).__name__} has no alphas_cumprod; a DDPM-family noise schedule is needed")
    return torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32).to(device)


def _coefficients(ac: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(a_t) and sqrt(1 - a_t) for timesteps ``t`` (scalar or per sample), broadcast to ``like``."""
    t = torch.as_tensor(t, device=ac.device).long().reshape(-1)
    a = ac[t].to(like.device, torch.float32)
    shape = (-1,) + (1,) * (like.ndim - 1)
    return a.sqrt().reshape(shape), (1 - a).sqrt().reshape(shape)


def add_noise(ac: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """q(x_t | x_0): ``sqrt(a_t) x0 + sqrt(1 - a_t) noise``."""
    sa, sb = _coefficients(ac, t, x0)
    return (sa * x0.float() + sb * noise.float()).to(x0.dtype)


def x0_from_output(ac: torch.Tensor, output: torch.Tensor, x_t: torch.Tensor, t, kind: str) -> torch.Tensor:
    """Clean-sample estimate from a model output of the given prediction type."""
    sa, sb = _coefficients(ac, t, x_t)
    out, x = output.float(), x_t.float()
    if kind == "epsilon":
        x0 = (x - sb * out) / sa
    elif kind == "v_prediction":
        x0 = sa * x - sb * out
    elif kind == "sample":
        x0 = out
    else:
        raise ErasureInputError(f"unsupported prediction type {kind!r}")
    return x0.to(output.dtype)


def eps_from_output(ac: torch.Tensor, output: torch.Tensor, x_t: torch.Tensor, t, kind: str) -> torch.Tensor:
    """Noise estimate from a model output of the given prediction type."""
    sa, sb = _coefficients(ac, t, x_t)
    out, x = output.float(), x_t.float()
    if kind == "epsilon":
        eps = out
    elif kind == "v_prediction":
        eps = sa * out + sb * x
    elif kind == "sample":
        eps = (x - sa * out) / sb
    else:
        raise ErasureInputError(f"unsupported prediction type {kind!r}")
    return eps.to(output.dtype)


def velocity(ac: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """The v-prediction target ``sqrt(a_t) noise - sqrt(1 - a_t) x0``."""
    sa, sb = _coefficients(ac, t, x0)
    return (sa * noise.float() - sb * x0.float()).to(x0.dtype)


def cfg(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


# ----------------------------------------------------------------------------- text conditions
@dataclass
class Conditions:
    """What a UNet call needs besides x_t and t: text features and, for SDXL, added conditions."""

    hidden: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def index(self, idx: torch.Tensor | Sequence[int]) -> "Conditions":
        idx = torch.as_tensor(idx, device=self.hidden.device).long()
        added = None if self.added is None else {k: v[idx.to(v.device)] for k, v in self.added.items()}
        return Conditions(self.hidden[idx], added)

    @staticmethod
    def cat(parts: Sequence["Conditions"]) -> "Conditions":
        hidden = torch.cat([p.hidden for p in parts])
        added = None
        if parts[0].added is not None:
            added = {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}
        return Conditions(hidden, added)

    def unet_kwargs(self) -> dict:
        kwargs = {"encoder_hidden_states": self.hidden}
        if self.added is not None:
            kwargs["added_cond_kwargs"] = self.added
        return kwargs


class TextConditioner:
    """Encodes prompts into ``Conditions`` for a Stable Diffusion (1.x, 2.x, XL) or canvas-mini pipeline.

    Runs under the caller's grad mode, so a method that trains the text encoder can encode with
    gradients. SDXL's size conditioning is (resolution, resolution, 0, 0, resolution, resolution),
    the pipeline's own default for a square image of that size.

    The empty prompt "" stands for the unconditional condition (classifier-free guidance, ESD's
    ``eps(x_t, t, "")``, prompt dropout). On SDXL pipelines whose config sets
    ``force_zeros_for_empty_prompt`` (SDXL base 1.0 does) that is the zero embedding, hidden states
    and pooled projection alike: what ``StableDiffusionXLPipeline`` itself guides with when no
    negative prompt is given, and what SDXL was trained with for dropped captions. ``zero_empty``
    overrides the pipeline's setting (False: encode "" as text, as SD 1.x/2.x always do).
    """

    def __init__(self, pipe, resolution: int, zero_empty: bool | None = None) -> None:
        self.pipe = pipe
        self.resolution = resolution
        self.xl = hasattr(pipe, "text_encoder_2")
        pipeline_default = bool(getattr(getattr(pipe, "config", None), "force_zeros_for_empty_prompt", False))
        self.zero_empty = self.xl and (pipeline_default if zero_empty is None else zero_empty)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def __call__(self, prompts: Sequence[str]) -> Conditions:
        prompts = list(prompts)
        if not self.xl:
            hidden, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
            return Conditions(hidden)
        hidden, _, pooled, _ = self.pipe.encode_prompt(
            prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        if self.zero_empty:
            hidden, pooled = _zero_rows(hidden, prompts), _zero_rows(pooled, prompts)
        r = self.resolution
        time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=hidden.dtype, device=self.device).repeat(len(prompts), 1)
        return Conditions(hidden, {"text_embeds": pooled, "time_ids": time_ids})


def _zero_rows(values: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """``values`` with the rows of empty prompts set to zero (out of place: gradients still reach the rest)."""
    empty = torch.tensor([p == "" for p in prompts], device=values.device)
    if not bool(empty.any()):
        return values
    return values.masked_fill(empty.reshape(-1, *([1] * (values.ndim - 1))), 0)


def unet_output(unet, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
    """The UNet's raw output (in its prediction type) for a batch; ``t`` per sample or scalar."""
    t = torch.as_tensor(t, device=x_t.device)
    if t.ndim == 0:
        t = t.expand(x_t.shape[0])
    return unet(x_t, t, **cond.unet_kwargs(), return_dict=False)[0]


# ----------------------------------------------------------------------------- trajectories
def latent_shape(pipe, resolution: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) of the UNet's input for images of ``resolution`` pixels."""
    scale = getattr(pipe, "vae_scale_factor", 8) or 1
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    side = size if resolution is None else resolution // scale
    return (pipe.unet.config.in_channels, side, side)


def native_resolution(pipe) -> int:
    scale = getattr(pipe, "vae_scale_factor", 8) or 1
    size = pipe.unet.config.sample_size
    return (size if isinstance(size, int) else size[0]) * scale


def ddim_for(scheduler, steps: int) -> DDIMScheduler:
    """A DDIM sampler with the pipeline scheduler's noise schedule and prediction type, set to ``steps``.

    x0 clipping stays off unless the pipeline's scheduler asks for it: DDIM's own default (on) would
    clip latents, and the schedulers whose configs lack the key (Euler, DPM++) never clip.
    """
    ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=scheduler.config.get("clip_sample", False))
    ddim.set_timesteps(steps)
    return ddim


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    """One standard-normal sample per seed, drawn on the CPU (the same on every device)."""
    out = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(out).to(device, dtype)


@dataclass
class SampleSteps:
    """What the trajectory sampler ran: a counter a caller passes in and reads back (benches, a run's
    ``extra``). A sample-step is one trajectory advanced one DDIM step: one guided UNet evaluation
    (its unconditional and conditional rows, in one batched call with the other running trajectories).

    ``independent``: the sample-steps the points would need if each ran its own trajectory (the sum of
    their depths: the paper's per-step draw); ``needed``: those the trajectories need, each run to the
    deepest depth taken from it; ``held``: those a batch run to its deepest depth with finished samples
    held fixed would execute (this module's sampler before issue 29); ``executed``: those run.
    """

    points: int = 0
    trajectories: int = 0
    independent: int = 0
    needed: int = 0
    held: int = 0
    executed: int = 0
    unet_calls: int = 0

    def as_dict(self) -> dict[str, int | float | None]:
        """The counts, plus ``executed / needed`` and ``independent / executed`` (None before any step)."""
        out: dict[str, int | float | None] = dict(vars(self))
        out["executed_per_needed"] = round(self.executed / self.needed, 4) if self.needed else None
        out["independent_per_executed"] = round(self.independent / self.executed, 4) if self.executed else None
        return out


@torch.no_grad()
def sample_trajectory_points(
    unet,
    ddim: DDIMScheduler,
    cond: Conditions,
    uncond: Conditions,
    seeds: Sequence[int],
    points: Sequence[tuple[int, int]],
    shape: tuple[int, int, int],
    guidance: float,
    counter: SampleSteps | None = None,
) -> torch.Tensor:
    """x at ``points`` = (trajectory j, depth d) of DDIM trajectories (eta 0, guidance ``guidance``).

    Trajectory j starts from the noise of ``seeds[j]`` (``initial_noise``: its own generator, so an x_t
    does not depend on the batch it is computed in) with the condition ``cond[j]``; ``uncond`` holds one
    condition (broadcast) or one per trajectory. Depth d is the x after d steps, at noise level
    ``ddim.timesteps[d]`` (d = 0: the noise itself). Each trajectory runs only to the deepest depth
    taken from it, and each step evaluates only the trajectories still running: they are ordered
    deepest first, so the running ones are always a prefix of the batch and are sliced, not gathered.
    Returns (len(points), *shape), in the order of ``points``.
    """
    n = len(seeds)
    if len(cond) != n:
        raise ValueError("one condition and seed per trajectory")
    if n == 0:
        return torch.empty((len(points), *shape), device=unet.device, dtype=cond.hidden.dtype)
    if len(uncond) == 1 and n > 1:
        uncond = uncond.index([0] * n)
    order, taken, running, deepest = _schedule(n, points)
    cond, uncond = cond.index(order), uncond.index(order)
    x = initial_noise([seeds[j] for j in order], shape, unet.device, cond.hidden.dtype) * ddim.init_noise_sigma
    result = x.new_empty((len(points), *shape))
    _take(result, x, taken.get(0, ()))
    # One input buffer for the whole run (the running trajectories, unconditional then conditional
    # rows), and the conditions rebuilt only when a trajectory finishes: no per-step allocation here.
    model_in = x.new_empty((2 * n, *shape))
    both, width = None, -1
    for i, k in enumerate(running):
        t = ddim.timesteps[i]
        if k != width:
            both, width = Conditions.cat([uncond.index(list(range(k))), cond.index(list(range(k)))]), k
        batch = model_in[: 2 * k]
        batch[:k] = x[:k]
        batch[k:] = x[:k]
        out = unet_output(unet, ddim.scale_model_input(batch, t), t, both)
        out_u, out_c = out[:k], out[k:]
        guided = out_c.sub_(out_u).mul_(guidance).add_(out_u)  # cfg(out_u, out_c, guidance), in place
        x[:k] = ddim.step(guided, t, x[:k], eta=0.0, return_dict=False)[0]
        _take(result, x, taken.get(i + 1, ()))
    if counter is not None:
        _count(counter, n, [d for _, d in points], deepest, running)
    return result


def _schedule(n: int, points: Sequence[tuple[int, int]]
              ) -> tuple[list[int], dict[int, list[tuple[int, int]]], list[int], list[int]]:
    """For ``n`` trajectories and the (trajectory, depth) ``points`` taken from them: the trajectories
    deepest first (``order``), per depth the (row of the result, row of the ordered batch) to copy
    there (``taken``), how many trajectories run at each step (``running``, non-increasing: the
    running ones are a prefix of ``order``) and each trajectory's deepest depth."""
    deepest = [0] * n
    for j, d in points:
        deepest[j] = max(deepest[j], d)
    order = sorted(range(n), key=lambda j: -deepest[j])  # stable: ties keep their order
    position = {j: p for p, j in enumerate(order)}
    taken: dict[int, list[tuple[int, int]]] = {}
    for r, (j, d) in enumerate(points):
        taken.setdefault(d, []).append((r, position[j]))
    running = [sum(1 for j in order if deepest[j] > i) for i in range(max(deepest))]
    return order, taken, running, deepest


def _take(result: torch.Tensor, x: torch.Tensor, rows: Sequence[tuple[int, int]]) -> None:
    for r, p in rows:
        result[r] = x[p]


def _count(counter: SampleSteps, trajectories: int, depths: list[int], deepest: list[int], running: list[int]) -> None:
    counter.points += len(depths)
    counter.trajectories += trajectories
    counter.independent += sum(depths)
    counter.needed += sum(deepest)
    counter.held += len(depths) * max(depths, default=0)
    counter.executed += sum(running)
    counter.unet_calls += len(running)


def sample_partial_trajectories(
    unet,
    ddim: DDIMScheduler,
    cond: Conditions,
    uncond: Conditions,
    depths: Sequence[int],
    seeds: Sequence[int],
    shape: tuple[int, int, int],
    guidance: float,
    counter: SampleSteps | None = None,
) -> torch.Tensor:
    """Run DDIM (eta 0) with guidance from each sample's own noise for ``depths[i]`` steps.

    ``cond`` holds one condition per sample; ``uncond`` one (broadcast) or one per sample. Sample i
    stops after ``depths[i]`` steps, so it lies at noise level ``ddim.timesteps[depths[i]]``; each step
    evaluates only the samples still running (``sample_trajectory_points``, one trajectory per
    sample). Returns x_t (B, *shape).
    """
    n = len(depths)
    if len(cond) != n or len(seeds) != n:
        raise ValueError("one condition, depth and seed per sample")
    return sample_trajectory_points(unet, ddim, cond, uncond, seeds, list(enumerate(depths)), shape, guidance, counter)
