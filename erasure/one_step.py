"""One-step generators (SFD, SiD): sampling in one UNet call, and a pipeline that does it.

An SFD run (``erasure.methods.sfd``) turns the pipeline's UNet into a one-step generator ``G``: it
reads pure noise ``z`` as the noisy sample at a fixed timestep ``t*`` and returns its clean-sample
estimate, so an image costs one UNet call instead of the original sampler's tens of steps. The
run's edit holds the generator's UNet tensors and its manifest records how to sample
(``extra = {"sampler": "one-step", "t_star": ...}``).

- ``generator_x0(unet, z, t_star, cond, ac, kind)``: the generator itself, ``x0(G(sqrt(1 - a*) z, t*, c))``,
  as the reference (SiD-LSG's ``sid_sd_sampler``) computes it: ``z`` enters as the noisy sample of
  an all-zero image at ``t*`` (the scheduler's ``add_noise(0, z, t*)``). Shared by training and sampling.
- ``one_step_generate(pipe, prompts, seeds, t_star, ...)``: PIL images, prompt-major, one per
  (prompt, seed), each from its own seeded CPU generator (the same starting noise the base
  pipeline draws for that seed).
- ``OneStepPipeline(pipe, t_star)``: wraps a pipeline whose UNet holds a generator so that it is
  called like any diffusers pipeline (``erasure.pipelines.generate``, the evaluation runner, the
  app, the attacks): ``__call__`` takes the usual arguments (``prompt_embeds`` too, on pipelines with
  one text encoder), samples in ``steps`` generator calls and ignores
  the multi-step sampler's settings (``num_inference_steps``, ``guidance_scale``, the scheduler),
  which do not apply to a generator that has classifier-free guidance distilled into it. Every
  other attribute (components, ``unet``, ``scheduler``, ``to``, ``encode_prompt``, ...) is the
  wrapped pipeline's.
- ``one_step_pipeline(pipe, extra)``: the wrapper for a run's manifest ``extra`` when it names the
  one-step sampler, else the pipeline unchanged (what ``load_erased`` and the app return).

Few-step sampling (``steps > 1``) follows the reference's evaluation sampler: step i re-noises the
previous estimate to ``t_i = t* (1 - i / steps)`` with fresh noise and applies the generator again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from erasure.diffusion import (
    Conditions,
    TextConditioner,
    add_noise,
    alphas_cumprod,
    cfg,
    latent_shape,
    native_resolution,
    prediction_type,
    unet_output,
    x0_from_output,
)
from erasure.errors import ErasureInputError

logger = logging.getLogger(__name__)

#: The value of a manifest's ``extra["sampler"]`` for runs that must be sampled with a generator.
SAMPLER = "one-step"


def generator_x0(unet, z: torch.Tensor, t_star: int | torch.Tensor, cond: Conditions, ac: torch.Tensor,
                 kind: str) -> torch.Tensor:
    """The one-step generator: ``z`` read as the noisy sample at ``t_star``, its clean estimate returned (float32).

    Runs under the caller's grad mode (training back-propagates through it).
    """
    x_t = add_noise(ac, torch.zeros_like(z), z, _per_sample(t_star, z))
    out = unet_output(unet, x_t, _per_sample(t_star, z), cond)
    return x0_from_output(ac, out, x_t, _per_sample(t_star, z), kind).float()


def _per_sample(t, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=like.device).long()
    return t.expand(like.shape[0]) if t.ndim == 0 else t


def sampler_timesteps(t_star: int, steps: int) -> list[int]:
    """The timesteps the few-step sampler applies the generator at: ``t_i = t* (1 - i / steps)`` (the
    reference's evaluation sampler); ``[t*]`` for one step."""
    return [int(t_star * (1 - i / steps)) for i in range(steps)]


def check_sampling(t_star: int, steps: int, num_train_timesteps: int, guidance: float | None) -> None:
    if not 0 < t_star < num_train_timesteps:
        raise ErasureInputError(f"t_star must lie in [1, {num_train_timesteps - 1}], got {t_star}")
    if steps < 1 or steps > t_star:
        raise ErasureInputError(f"one-step sampling: steps must be in [1, t_star={t_star}], got {steps}")
    if guidance is not None and (not math.isfinite(guidance) or guidance < 0):
        raise ErasureInputError(f"guidance must be a finite number >= 0, got {guidance}")


@torch.no_grad()
def sample_generator(
    pipe,
    cond: Conditions,
    z: torch.Tensor,
    t_star: int,
    *,
    steps: int = 1,
    guidance: float | None = None,
    uncond: Conditions | None = None,
    fresh_noise=None,
    on_step=None,
) -> torch.Tensor:
    """Clean samples (float32, model space: latents or pixels) from starting noise ``z``.

    ``guidance`` None or 1: the generator alone, one UNet call per step (SFD's generator has the
    teacher's guidance distilled into it, and the reference samples it so). Another value applies
    classifier-free guidance with ``uncond`` in the same call (the batch doubled). ``fresh_noise()``
    returns new noise like ``z`` for steps after the first.
    """
    unet = pipe.unet
    ac = alphas_cumprod(pipe.scheduler, unet.device)
    kind = prediction_type(pipe.scheduler)
    guided = guidance is not None and guidance != 1
    if guided and uncond is None:
        raise ValueError("guidance needs the unconditional conditions")
    x0 = torch.zeros_like(z, dtype=torch.float32)
    for i, t in enumerate(sampler_timesteps(t_star, steps)):
        noise = z if i == 0 else fresh_noise()
        x_t = add_noise(ac, x0, noise.float(), t).to(unet.dtype)
        if guided:
            both = Conditions.cat([uncond, cond])
            out_u, out_c = unet_output(unet, torch.cat([x_t, x_t]), t, both).chunk(2)
            out = cfg(out_u, out_c, guidance)
        else:
            out = unet_output(unet, x_t, t, cond)
        x0 = x0_from_output(ac, out, x_t, t, kind).float()
        if on_step is not None:
            on_step(i, t)
    return x0


def decode(pipe, x0: torch.Tensor, output_type: str = "pil"):
    """Model-space samples to images: through the VAE when the pipeline has one (canvas-mini has none)."""
    vae = getattr(pipe, "vae", None)
    if output_type == "latent":
        return x0
    if vae is None:
        image = x0
    else:
        latents = x0 / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):
            latents = latents + vae.config.shift_factor
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        dtype = vae.dtype
        if upcast:  # SDXL's fp16 VAE overflows; diffusers decodes it in float32 the same way
            vae.to(torch.float32)
        try:
            image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        finally:
            if upcast:
                vae.to(dtype)
    return pipe.image_processor.postprocess(image.float(), output_type=output_type)


def _noise(generators, shape: tuple[int, ...], n: int, dtype) -> torch.Tensor:
    """Starting noise as diffusers' ``randn_tensor`` draws it on the CPU: one draw per generator."""
    if isinstance(generators, (list, tuple)):
        if len(generators) != n:
            raise ErasureInputError(f"{len(generators)} generators for {n} images")
        return torch.cat([torch.randn((1, *shape), generator=g, dtype=dtype) for g in generators])
    return torch.randn((n, *shape), generator=generators, dtype=dtype)


@dataclass
class OneStepOutput:
    """What a diffusers text-to-image pipeline returns: ``images`` (and no NSFW flags)."""

    images: list
    nsfw_content_detected: None = None


class OneStepPipeline:
    """A pipeline whose UNet is a one-step generator, called like the diffusers pipeline it wraps.

    Args:
        pipe: the pipeline with the generator's weights in its UNet (``load_erased`` of an SFD run).
        t_star: the generator's timestep (the run's ``extra["t_star"]``).
        steps: generator calls per image (1: one-step; more: the reference's few-step sampler).
        guidance: None (default): no classifier-free guidance, one UNet call per step.

    ``__call__`` accepts the arguments ``erasure.pipelines.generate`` passes to any pipeline and
    ignores ``num_inference_steps``, ``guidance_scale`` and the scheduler (the original sampler's).
    """

    _own = ("pipe", "t_star", "steps", "guidance", "num_timesteps")

    def __init__(self, pipe, t_star: int, *, steps: int = 1, guidance: float | None = None) -> None:
        check_sampling(int(t_star), steps, pipe.scheduler.config.num_train_timesteps, guidance)
        object.__setattr__(self, "pipe", pipe)
        object.__setattr__(self, "t_star", int(t_star))
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "guidance", guidance)
        object.__setattr__(self, "num_timesteps", steps)

    # Everything else is the wrapped pipeline's (components, unet, scheduler, device, to, ...), so
    # fingerprints, generation caches and scheduler swaps see the real pipeline.
    def __getattr__(self, name: str):
        return getattr(object.__getattribute__(self, "pipe"), name)

    def __setattr__(self, name: str, value) -> None:
        if name in self._own:
            object.__setattr__(self, name, value)
        else:
            setattr(self.pipe, name, value)

    def __repr__(self) -> str:
        return f"OneStepPipeline({type(self.pipe).__name__}, t_star={self.t_star}, steps={self.steps})"

    def to(self, *args, **kwargs) -> "OneStepPipeline":
        self.pipe.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        generator=None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        **ignored,
    ):
        if (height or width) and height != width:
            raise ErasureInputError("one-step sampling draws square images; give equal height and width")
        resolution = height or native_resolution(self.pipe)
        shape = latent_shape(self.pipe, resolution)
        unet = self.pipe.unet
        encode = TextConditioner(self.pipe, resolution)
        cond = self._conditions(encode, prompt, prompt_embeds)
        n = len(cond)
        uncond = None
        if self.guidance is not None and self.guidance != 1:
            if negative_prompt_embeds is not None:
                uncond = self._conditions(encode, None, negative_prompt_embeds)
            else:
                negatives = list(negative_prompt) if isinstance(negative_prompt, (list, tuple)) else [negative_prompt or ""] * n
                uncond = encode(negatives)
        dtype = cond.hidden.dtype
        z = _noise(generator, shape, n, dtype).to(unet.device)

        def fresh():
            return _noise(generator, shape, n, dtype).to(unet.device)

        def on_step(i, t):
            if callback_on_step_end is not None:
                callback_on_step_end(self, i, t, {})

        x0 = sample_generator(self.pipe, cond, z, self.t_star, steps=self.steps, guidance=self.guidance,
                              uncond=uncond, fresh_noise=fresh, on_step=on_step)
        images = decode(self.pipe, x0, output_type)
        if not return_dict:
            return (images, None)
        return OneStepOutput(images=images)

    def _conditions(self, encode: TextConditioner, prompt, prompt_embeds: torch.Tensor | None) -> Conditions:
        """The prompts' conditions, or given text embeddings (a pipeline with one text encoder: SDXL's
        pooled embeddings and size conditions have no such argument here)."""
        if (prompt is None) == (prompt_embeds is None):
            raise ErasureInputError("one-step sampling: give either prompt or prompt_embeds")
        if prompt_embeds is None:
            return encode([prompt] if isinstance(prompt, str) else list(prompt))
        if encode.xl:
            raise ErasureInputError("one-step sampling from prompt_embeds needs a pipeline with one text encoder")
        return Conditions(prompt_embeds.to(self.pipe.unet.device, self.pipe.unet.dtype))


def one_step_generate(
    pipe,
    prompts: str | Sequence[str],
    seeds: Sequence[int],
    t_star: int,
    guidance: float | None = None,
    *,
    steps: int = 1,
    batch_size: int = 16,
    negative_prompt: str | None = None,
) -> list[Image.Image]:
    """One PIL image per (prompt, seed), prompt-major, each from its seed's noise, in ``steps`` generator calls.

    ``pipe``: a pipeline whose UNet holds a one-step generator (or a ``OneStepPipeline``). Images do
    not depend on ``batch_size`` (``erasure.pipelines.generate`` draws them).
    """
    from erasure.pipelines.generation import generate

    inner = pipe.pipe if isinstance(pipe, OneStepPipeline) else pipe
    wrapped = OneStepPipeline(inner, t_star, steps=steps, guidance=guidance)
    return generate(wrapped, prompts, seeds=seeds, batch_size=batch_size, negative_prompt=negative_prompt)


def one_step_pipeline(pipe, extra: dict | None):
    """``OneStepPipeline(pipe, t_star)`` when a run's manifest ``extra`` names the one-step sampler, else ``pipe``."""
    if not extra or extra.get("sampler") != SAMPLER or isinstance(pipe, OneStepPipeline):
        return pipe  # not a one-step run, or already wrapped (load_erased wraps)
    if "t_star" not in extra:
        raise ErasureInputError("the run's manifest names the one-step sampler but records no t_star")
    return OneStepPipeline(pipe, int(extra["t_star"]))
