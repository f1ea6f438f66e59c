"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023). The baseline.

For each iteration: sample ``x_t`` by running the frozen model with the concept prompt ``c_e``
(DDIM, ``ddim_steps`` steps, guidance ``guidance``) from fresh noise down to a random depth; the
target is the frozen model's negatively guided noise prediction
``eps*(x_t, t, "") - eta * (eps*(x_t, t, c_e) - eps*(x_t, t, ""))``; the loss
``|| eps_theta(x_t, t, c_e) - target ||^2`` trains either the cross-attention (ESD-x, for styles)
or everything but the cross-attention (ESD-u, for objects and nudity). Adam, no weight decay.

Implementation choices (same algorithm and data as the references; see METHODS.md section 0):

- Precomputation (``precompute=True``, the default). The frozen model never changes, so every
  iteration's (prompt, depth, noise seed, timestep) is drawn up front from ``seed``, and the x_t
  trajectories and frozen targets are computed in batches before training (samples of similar
  depth together); training then runs only the student's forward and backward. Each sample's
  noise comes from its own seed, so the data are the same as computing them one by one
  (``precompute=False`` does exactly that, the reference's schedule). The precomputed data are
  saved beside the checkpoints, so a resumed run trains on exactly the same data.
- Memory: one UNet. The trained tensors are optimised in float32 (master weights; the reference
  trains SD in pure bf16, where small Adam updates vanish) and only they require gradients; the
  frozen model's values of them are kept apart (on the CPU when precomputing) instead of a second
  UNet.
- Trained tensors follow the newer reference (rohitgandikota/erasing, ``esd_sd.py``): the weights
  and biases of Linear/Conv2d layers inside ``attn2`` (ESD-x) or outside it (ESD-u); normalisation
  parameters stay frozen. Deviation from the original CompVis script, whose ESD-u ("noxattn")
  also trained norms and left the time embedding and the output conv frozen. ``parameters``
  (regular expressions) selects any other set.
- Timestep of the target (``timesteps``): "matched" (default) evaluates the UNet at the DDIM
  timestep the trajectory stopped at, so x_t and t agree, as the paper's algorithm states and the
  newer reference does; "reference" draws t uniformly in
  ``[k T / ddim_steps, (k+1) T / ddim_steps)`` for depth k, as the original CompVis script does
  (its x_t after k steps is near timestep T - k T / ddim_steps, so t and x_t disagree there).
- Loss in noise space for every prediction type: a v- or x0-predicting model's outputs are
  converted to noise estimates first (the ESD target is an affine combination of outputs, so it
  is the same target either way; only the loss weighting would differ).
- Resolution: the model's native one (512 px for SD 1.x; the reference's SD-1.x script used
  1024 px, a value carried over from its SDXL script).
- Model families: SD 1.x, SD 2.x and SDXL run through the same code (the noise-space loss covers
  SD 2.x's v-prediction; ``TextConditioner`` gives SDXL both text encoders' features, the pooled
  projection and the size conditioning of ``resolution``). On SDXL the empty prompt is the zero
  embedding the SDXL pipeline guides with (``force_zeros_for_empty_prompt``), for the x_t
  trajectories and for the target's unconditional term alike. The reference's SDXL script
  (``esd_sdxl.py``) samples x_t that way too, but takes the target's unconditional prediction from
  the encoded empty text, and samples x_t with the pipeline's Euler scheduler, passing its unscaled
  latents to the UNet; here x_t comes from DDIM on SDXL's noise schedule, as on SD 1.x. That
  script's defaults (200 iterations, lr 2e-4, sampling guidance 2, ESD-x; it calls ESD-u on SDXL
  experimental) are not the paper's; ``configs/esd/sdxl-style.yaml`` keeps the paper's and names them.
- The UNet is kept in eval mode (Stable Diffusion has no dropout, so this equals the reference's
  train mode).
- Several processes (``accelerate launch --num_processes W``): data-parallel, ``batch_size`` per
  process. The plan holds ``steps * batch_size * W`` samples; step s's global batch is samples
  ``[s B W, (s+1) B W)`` and process r takes the r-th block of ``B`` of them, so W processes with
  ``batch_size`` B train on the same samples as one process with ``batch_size`` B*W (the same run up
  to float summation order; one process is exactly the single-process run). Each process
  precomputes only its own samples; they are then gathered so every process holds all of them
  and the main one can save them for resume. Gradients are averaged by ``TrainLoop``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from erasure.diffusion import (
    TIMESTEP_MODES,
    TextConditioner,
    alphas_cumprod,
    cfg,
    ddim_for,
    eps_from_output,
    latent_shape,
    native_resolution,
    prediction_type,
    sample_partial_trajectories,
    unet_output,
)
from erasure.edit import Edit
from erasure.errors import ErasureInputError
from erasure.training import (
    MIXED_PRECISION,
    CostMeter,
    FrozenCopy,
    TrainLoop,
    process_state,
    resolve_mixed_precision,
    select_parameters,
)

from .base import ErasureMethod, MethodConfig
from .registry import register

logger = logging.getLogger(__name__)

#: ESD variant -> parameter preset of erasure.training.
VARIANTS: dict[str, str] = {"esd-x": "attn2", "esd-u": "non-attn2", "esd-x-strict": "attn2-kv", "esd-all": "all"}
DATA_FILE = "esd-data.safetensors"


@dataclass
class ESDConfig(MethodConfig):
    """ESD hyperparameters. Defaults: the original paper's (1000 iterations, lr 1e-5, eta 1, ESD-x)."""

    variant: str = "esd-x"
    parameters: list[str] | None = None
    steps: int = 1000
    lr: float = 1e-5
    eta: float = 1.0
    guidance: float = 3.0
    ddim_steps: int = 50
    timesteps: str = "matched"
    batch_size: int = 1
    resolution: int | None = None
    precompute: bool = True
    precompute_batch: int = 16
    seed: int = 0
    checkpoint_every: int = 100
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ErasureInputError(f"esd config variant: {self.variant!r}; expected one of {', '.join(VARIANTS)}")
        if self.timesteps not in TIMESTEP_MODES:
            raise ErasureInputError(f"esd config timesteps: {self.timesteps!r}; expected one of {', '.join(TIMESTEP_MODES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ErasureInputError(f"esd config mixed_precision: {self.mixed_precision!r}; expected one of {', '.join(MIXED_PRECISION)}")
        for name in ("steps", "ddim_steps", "batch_size", "precompute_batch"):
            if getattr(self, name) < 1:
                raise ErasureInputError(f"esd config {name}: must be at least 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ErasureInputError("esd config checkpoint_every: must be >= 0 (0: no checkpoints)")
        if self.lr <= 0:
            raise ErasureInputError(f"esd config lr: must be positive, got {self.lr}")
        if self.resolution is not None and self.resolution < 8:
            raise ErasureInputError(f"esd config resolution: {self.resolution} is too small")


@dataclass
class _Plan:
    """Every training sample, drawn up front: a pure function of (seed, iteration)."""

    prompt: list[int]
    depth: list[int]
    noise_seed: list[int]
    timestep: list[int]


@register("esd")
class ESD(ErasureMethod):
    """ESD-x / ESD-u (see the module docstring for the algorithm and every implementation choice)."""

    config_class = ESDConfig

    def __call__(self, pipe, request, *, run_dir=None, resume: bool = False, progress=None) -> Edit:
        c: ESDConfig = self.config
        req = request.resolve(pipe)
        unet = pipe.unet
        device = unet.device
        meter = CostMeter(device)
        resolution = c.resolution or native_resolution(pipe)
        shape = latent_shape(pipe, resolution)
        kind = prediction_type(pipe.scheduler)
        ac = alphas_cumprod(pipe.scheduler, device)
        ddim = ddim_for(pipe.scheduler, c.ddim_steps)
        state = process_state(cpu=device.type == "cpu")
        rank, world = state.process_index, state.num_processes
        plan = self._plan(len(req.prompts), ddim, pipe.scheduler.config.num_train_timesteps, world)
        checkpoint_dir = Path(run_dir) / "checkpoint" if run_dir is not None else None

        def indices(step: int, process: int = rank) -> list[int]:
            start = (step * world + process) * c.batch_size
            return list(range(start, start + c.batch_size))

        selection = c.parameters if c.parameters else VARIANTS[c.variant]
        params = select_parameters(unet, selection)
        frozen = FrozenCopy(params, device="cpu" if c.precompute else None)
        mixed = resolve_mixed_precision(c.mixed_precision, unet.dtype, device)

        encode = TextConditioner(pipe, resolution)
        with torch.no_grad():
            cond = encode(req.prompts)
            uncond = encode([""])

        data = None
        if c.precompute:
            with meter.phase("precompute"):
                data = self._load_data(checkpoint_dir, len(plan.depth)) if resume else None
                if data is None:
                    mine = [i for s in range(c.steps) for i in indices(s)]
                    data = self._precompute(unet, ddim, cond, uncond, plan, mine, shape, ac, kind, progress)
                    if world > 1:
                        everyone = [[i for s in range(c.steps) for i in indices(s, r)] for r in range(world)]
                        self._gather_samples(data, everyone, state)
                    if state.is_main_process:
                        self._save_data(checkpoint_dir, data)

        def samples(step: int):
            idx = indices(step)
            if data is not None:
                return (data["x_t"][idx].to(device), data["t"][idx].to(device),
                        torch.tensor([plan.prompt[i] for i in idx]), data["target"][idx].to(device))
            with frozen.original(), torch.no_grad():
                x_t, t, target = self._frozen_batch(unet, ddim, cond, uncond, plan, idx, shape, ac, kind)
            return x_t, t, torch.tensor([plan.prompt[i] for i in idx]), target

        def loss_fn(step: int) -> torch.Tensor:
            x_t, t, prompt_idx, target = samples(step)
            out = unet_output(unet, x_t, t, cond.index(prompt_idx))
            return F.mse_loss(eps_from_output(ac, out, x_t, t, kind).float(), target.float())

        loop = TrainLoop(
            unet, params, lr=c.lr, steps=c.steps, optimizer="adam", mixed_precision=mixed,
            gradient_checkpointing=c.gradient_checkpointing, checkpoint_dir=checkpoint_dir,
            checkpoint_every=c.checkpoint_every, progress=progress, stage="training",
        )
        if resume:
            loop.resume()
        with meter.phase("training"):
            losses = loop.run(loss_fn)
        changed = frozen.changed()
        trained = loop.finish()
        tensors = {f"unet.{n}": trained[n] for n in params if n in changed}
        logger.info("esd: %d of %d trained tensors changed", len(tensors), len(params))
        return self.trained_edit(
            req, tensors, params, cost=meter.summary(), device=device, mixed_precision=mixed, num_processes=world,
            extra={
                "resolution": resolution,
                "prediction_type": kind,
                "global_batch_size": c.batch_size * world,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "loss_mean_last_10pct": (sum(losses[-max(1, len(losses) // 10):]) / max(1, len(losses) // 10)) if losses else None,
            },
        )

    # -- diagnostics (tests, benches): the ESD loss on a fixed set of samples
    def frozen_samples(self, pipe, request, n: int = 8) -> dict:
        """The first ``n`` planned samples (x_t, t, prompt index, target) from ``pipe`` as it is now."""
        c: ESDConfig = self.config
        req = request.resolve(pipe)
        resolution = c.resolution or native_resolution(pipe)
        ddim = ddim_for(pipe.scheduler, c.ddim_steps)
        plan = self._plan(len(req.prompts), ddim, pipe.scheduler.config.num_train_timesteps)
        encode = TextConditioner(pipe, resolution)
        ac, kind = alphas_cumprod(pipe.scheduler, pipe.unet.device), prediction_type(pipe.scheduler)
        idx = list(range(min(n, len(plan.depth))))
        with torch.no_grad():
            cond, uncond = encode(req.prompts), encode([""])
            x_t, t, target = self._frozen_batch(pipe.unet, ddim, cond, uncond, plan, idx,
                                                latent_shape(pipe, resolution), ac, kind)
        return {"x_t": x_t, "t": t, "prompt": [plan.prompt[i] for i in idx], "target": target}

    def loss(self, pipe, request, samples: dict) -> float:
        """ESD's loss of ``pipe`` (as it is now) on ``samples`` from ``frozen_samples``."""
        req = request.resolve(pipe)
        resolution = self.config.resolution or native_resolution(pipe)
        ac, kind = alphas_cumprod(pipe.scheduler, pipe.unet.device), prediction_type(pipe.scheduler)
        with torch.no_grad():
            cond = TextConditioner(pipe, resolution)(req.prompts)
            out = unet_output(pipe.unet, samples["x_t"], samples["t"], cond.index(samples["prompt"]))
            eps = eps_from_output(ac, out, samples["x_t"], samples["t"], kind)
        return float(F.mse_loss(eps.float(), samples["target"].float()))

    # -- the data
    def _plan(self, n_prompts: int, ddim, num_train_timesteps: int, num_processes: int = 1) -> _Plan:
        c: ESDConfig = self.config
        plan = _Plan([], [], [], [])
        for i in range(c.steps * c.batch_size * num_processes):
            rng = random.Random(f"esd/{c.seed}/{i}")
            depth = rng.randrange(c.ddim_steps)
            plan.prompt.append(rng.randrange(n_prompts))
            plan.depth.append(depth)
            plan.noise_seed.append(rng.randrange(2**31))
            if c.timesteps == "matched":
                plan.timestep.append(int(ddim.timesteps[depth]))
            else:
                lo = round(depth / c.ddim_steps * num_train_timesteps)
                hi = round((depth + 1) / c.ddim_steps * num_train_timesteps)
                plan.timestep.append(rng.randrange(lo, max(hi, lo + 1)))
        return plan

    def _frozen_batch(self, unet, ddim, cond, uncond, plan: _Plan, idx: list[int], shape, ac, kind):
        """x_t, t and the ESD target for the samples ``idx``, from the frozen model."""
        c: ESDConfig = self.config
        prompt_cond = cond.index([plan.prompt[i] for i in idx])
        x_t = sample_partial_trajectories(
            unet, ddim, prompt_cond, uncond, [plan.depth[i] for i in idx], [plan.noise_seed[i] for i in idx],
            shape, c.guidance,
        )
        t = torch.tensor([plan.timestep[i] for i in idx], device=x_t.device)
        both = type(cond).cat([uncond.index([0] * len(idx)), prompt_cond])
        out = unet_output(unet, torch.cat([x_t, x_t]), torch.cat([t, t]), both)
        eps_u, eps_c = eps_from_output(ac, out, torch.cat([x_t, x_t]), torch.cat([t, t]), kind).float().chunk(2)
        # cfg with scale -eta: eps_u - eta (eps_c - eps_u), ESD's negatively guided target.
        return x_t, t, cfg(eps_u, eps_c, -c.eta)

    def _precompute(self, unet, ddim, cond, uncond, plan: _Plan, mine: list[int], shape, ac, kind, progress) -> dict:
        """x_t and targets for the samples ``mine`` (rows of tensors over the whole plan; other rows unset)."""
        c: ESDConfig = self.config
        n = len(plan.depth)
        order = sorted(mine, key=lambda i: plan.depth[i])  # similar depths step together
        x_all = torch.empty((n, *shape), dtype=cond.hidden.dtype)
        target_all = torch.empty((n, *shape), dtype=torch.float32)
        done = 0
        if progress:
            progress("sampling x_t", 0, len(order), {})
        with torch.no_grad():
            for start in range(0, n, c.precompute_batch):
                idx = order[start:start + c.precompute_batch]
                x_t, _, target = self._frozen_batch(unet, ddim, cond, uncond, plan, idx, shape, ac, kind)
                x_all[idx] = x_t.cpu()
                target_all[idx] = target.cpu()
                done += len(idx)
                if progress:
                    progress("sampling x_t", done, len(order), {})
        return {"x_t": x_all, "t": torch.tensor(plan.timestep), "target": target_all}

    @staticmethod
    def _gather_samples(data: dict, everyone: list[list[int]], state) -> None:
        """Fill ``data``'s rows computed by other processes (``everyone[r]``: process r's rows, equal counts)."""
        from accelerate.utils import gather

        order = [i for rows in everyone for i in rows]  # gather concatenates in process order
        mine = everyone[state.process_index]
        for key in ("x_t", "target"):
            data[key][order] = gather(data[key][mine].to(state.device)).cpu()

    @staticmethod
    def _save_data(checkpoint_dir: Path | None, data: dict) -> None:
        if checkpoint_dir is None:
            return
        from safetensors.torch import save_file

        from erasure.atomic import atomic_path

        with atomic_path(checkpoint_dir / DATA_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in data.items()}, str(tmp))

    @staticmethod
    def _load_data(checkpoint_dir: Path | None, n: int) -> dict | None:
        if checkpoint_dir is None or not (checkpoint_dir / DATA_FILE).is_file():
            return None
        from safetensors.torch import load_file

        data = load_file(str(checkpoint_dir / DATA_FILE))
        if set(data) != {"x_t", "t", "target"} or data["t"].shape[0] != n:
            return None
        return data
