"""ESD: Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023). The baseline.

For each iteration: sample ``x_t`` by running the frozen model with the concept prompt ``c_e``
(DDIM, ``ddim_steps`` steps, guidance ``guidance``) from fresh noise down to a random depth; the
target is the frozen model's negatively guided noise prediction
``eps*(x_t, t, "") - eta * (eps*(x_t, t, c_e) - eps*(x_t, t, ""))``; the loss
``|| eps_theta(x_t, t, c_e) - target ||^2`` trains either the cross-attention (ESD-x, for styles)
or everything but the cross-attention (ESD-u, for objects and nudity). Adam, no weight decay.

Implementation choices (same algorithm and data as the references: the paper and
rohitgandikota/erasing, whose original CompVis-based script and newer diffusers scripts
``esd_sd.py``/``esd_sdxl.py`` are named below where they differ):

- Precomputation (``precompute=True``, the default). The frozen model never changes, so every
  iteration's (prompt, depth, noise seed, timestep) is drawn up front from ``seed``, and the x_t
  trajectories and frozen targets are computed in batches before training (samples of similar
  depth together); training then runs only the student's forward and backward. Each sample's
  noise comes from its own seed, so the data are the same as computing them one by one
  (``precompute=False`` does exactly that, the reference's schedule). The plan, the frozen
  predictions and the store are ``erasure.sampling``'s (shared with AdvUnlearn and the attack).
  The precomputed data are saved beside the checkpoints, so a resumed run trains on exactly the
  same data. The sampler steps only the samples still running (a batch's shallow samples are not
  carried to its deepest depth); ``extra["sample_steps"]`` counts the frozen model's sample-steps
  (``erasure.diffusion.SampleSteps``: executed, needed, and what per-sample trajectories would need).
- Trajectories (``trajectories``): "per-step" (default) gives every iteration's sample its own
  trajectory from its own noise, as the paper (Algorithm 1 samples x_t afresh each iteration) and
  rohitgandikota/erasing do. "shared" is a deviation that reuses trajectories: the plan's prompts,
  depths and timesteps are kept, but the samples of a prompt are packed onto few trajectories, each
  run once to the deepest depth taken from it, with every (trajectory, depth) used once
  (``erasure.sampling.share_trajectories``). It cuts the frozen model's sampling sample-steps by
  about the number of samples per trajectory (counted: 7.3x at 100 iterations and 50 DDIM steps,
  18x at 1000; the noise estimates at the samples, one per sample, are unchanged), at the price of
  correlated x_t (fewer independent noise draws per run). bench/trajectory_reuse.py measured it on
  canvas-mini: ESD-x on styles kept UA / IRA / CRA (its canvas-mini preset uses it), ESD-u on an
  object lost UA (its preset keeps per-step). It saves work only when precomputing, and under several processes each
  process reruns the trajectories its own samples lie on. ``precompute_batch`` then counts the
  trajectories run side by side (the noise estimates at their samples are taken that many at a time).
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
- Several targets in one request: each sample trains one target, the targets in turn (sample i
  the target i mod n, with one of that target's prompts), where the reference's scripts split a
  comma-separated concept and draw one at random per iteration. The number of iterations is the
  config's whatever the number of targets, so each gets steps / n of them and the cost does not
  grow; ``extra["targets"]`` records the samples each target got. Prompts that do not each name one
  target (``--prompt`` given) are shared: every sample draws from all of them.
- Several processes (``accelerate launch --num_processes W``): data-parallel, ``batch_size`` per
  process. The plan holds ``steps * batch_size * W`` samples; step s's global batch is samples
  ``[s B W, (s+1) B W)`` and process r takes the r-th block of ``B`` of them, so W processes with
  ``batch_size`` B train on the same samples as one process with ``batch_size`` B*W (the same run up
  to float summation order; one process is exactly the single-process run). Each process
  precomputes only its own samples and keeps them in its own file for resume. Gradients are
  averaged by ``TrainLoop``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from erasure.diffusion import TIMESTEP_MODES, SampleSteps, cfg, ddim_for, eps_from_output, unet_output
from erasure.edit import Edit
from erasure.errors import ErasureInputError
from erasure.request import in_turn, spread
from erasure.sampling import (
    SampleStore,
    TrajectoryPoint,
    check_trajectories,
    draw_points,
    frozen_predictions,
    share_trajectories,
    step_block,
    trajectory_of,
)
from erasure.training import (
    MIXED_PRECISION,
    FrozenCopy,
    TrainLoop,
    select_parameters,
    setup_model,
    setup_run,
    tail_mean,
)

from .base import ErasureMethod, MethodConfig
from .registry import register

logger = logging.getLogger(__name__)

#: ESD variant -> parameter preset of erasure.training.
VARIANTS: dict[str, str] = {"esd-x": "attn2", "esd-u": "non-attn2", "esd-x-strict": "attn2-kv", "esd-all": "all"}
#: The precomputed samples, one file per process beside the checkpoint (``erasure.sampling.SampleStore``).
DATA_STEM = "esd-data"
DATA_KEYS = ("x_t", "t", "target")


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
    trajectories: str = "per-step"
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
        check_trajectories("esd config ", self.trajectories)
        if self.mixed_precision not in MIXED_PRECISION:
            raise ErasureInputError(f"esd config mixed_precision: {self.mixed_precision!r}; expected one of {', '.join(MIXED_PRECISION)}")
        self.check_bounds(at_least_one=("steps", "ddim_steps", "batch_size", "precompute_batch"),
                          non_negative=("checkpoint_every",), positive=("lr",))
        if self.resolution is not None and self.resolution < 8:
            raise ErasureInputError(f"esd config resolution: {self.resolution} is too small")


@register("esd")
class ESD(ErasureMethod):
    """ESD-x / ESD-u (see the module docstring for the algorithm and every implementation choice)."""

    paper = 'Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023'
    reference_code = "rohitgandikota/erasing"

    config_class = ESDConfig

    def __call__(self, pipe, request, *, run_dir=None, resume: bool = False, progress=None) -> Edit:
        c: ESDConfig = self.config
        s = setup_run(pipe, request, run_dir, resolution=c.resolution, mixed_precision=c.mixed_precision)
        unet, device, world = pipe.unet, s.device, s.world
        ddim = ddim_for(pipe.scheduler, c.ddim_steps)
        groups = s.request.target_groups(pipe)
        plan = self.plan(len(s.request.prompts), ddim, pipe.scheduler.config.num_train_timesteps, world, groups=groups)

        def indices(step: int) -> list[int]:
            return step_block(step, c.batch_size, s.rank, world)

        selection = c.parameters if c.parameters else VARIANTS[c.variant]
        params = select_parameters(unet, selection)
        frozen = FrozenCopy(params, device="cpu" if c.precompute else None)

        with torch.no_grad():
            cond = s.encode(s.request.prompts)
            uncond = s.encode([""])

        counter = SampleSteps()  # what this process's frozen model samples (nothing when reloaded on resume)

        def compute(idx: list[int]) -> dict[str, torch.Tensor]:
            return self._frozen_batch(unet, ddim, cond, uncond, [plan[i] for i in idx], s.shape, s.ac, s.kind,
                                      counter)

        store = None
        if c.precompute:
            with s.meter.phase("precompute"):
                mine = [i for step in range(c.steps) for i in indices(step)]
                store = SampleStore.precomputed(s.checkpoint_dir, DATA_STEM, compute, DATA_KEYS, mine=mine,
                                                state=s.state, resume=resume, batch_size=c.precompute_batch,
                                                key=lambda i: plan[i].depth, group=lambda i: trajectory_of(plan[i]),
                                                progress=progress)
            if counter.points:
                logger.info("esd: %d x_t from %d trajectories in %d frozen sample-steps (%d with one trajectory per sample)",
                            counter.points, counter.trajectories, counter.executed, counter.independent)

        def samples(step: int):
            idx = indices(step)
            if store is not None:
                x_t, t, target = store.rows(idx, DATA_KEYS, device)
            else:
                with frozen.original(), torch.no_grad():
                    batch = compute(idx)
                x_t, t, target = (batch[k] for k in DATA_KEYS)
            return x_t, t, torch.tensor([plan[i].prompt for i in idx]), target

        def loss_fn(step: int) -> torch.Tensor:
            x_t, t, prompt_idx, target = samples(step)
            out = unet_output(unet, x_t, t, cond.index(prompt_idx))
            return F.mse_loss(eps_from_output(s.ac, out, x_t, t, s.kind).float(), target.float())

        loop = TrainLoop(
            unet, params, lr=c.lr, steps=c.steps, optimizer="adam", mixed_precision=s.mixed,
            gradient_checkpointing=c.gradient_checkpointing, checkpoint_dir=s.checkpoint_dir,
            checkpoint_every=c.checkpoint_every, progress=progress, stage="training",
        )
        if resume:
            loop.resume()
        with s.meter.phase("training"):
            losses = loop.run(loss_fn)
        tensors = loop.finish(frozen, prefix="unet.")
        logger.info("esd: %d of %d trained tensors changed", len(tensors), len(params))
        return self.trained_edit(
            s.request, tensors, params, cost=s.meter.summary(), device=device, mixed_precision=s.mixed,
            num_processes=world,
            extra={
                "resolution": s.resolution,
                "prediction_type": s.kind,
                "global_batch_size": c.batch_size * world,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "loss_mean_last_10pct": tail_mean(losses),
                "sample_steps": counter.as_dict(),
                "targets": self.spread(s.request, plan, groups),
            },
        )

    # -- diagnostics (tests, benches): the ESD loss on a fixed set of samples
    def frozen_samples(self, pipe, request, n: int = 8) -> dict:
        """The first ``n`` planned samples (x_t, t, prompt index, target) from ``pipe`` as it is now."""
        c: ESDConfig = self.config
        s = setup_model(pipe, request, c.resolution)
        ddim = ddim_for(pipe.scheduler, c.ddim_steps)
        plan = self.plan(len(s.request.prompts), ddim, pipe.scheduler.config.num_train_timesteps,
                         count=min(n, c.steps * c.batch_size), groups=s.request.target_groups(pipe))
        with torch.no_grad():
            cond, uncond = s.encode(s.request.prompts), s.encode([""])
            batch = self._frozen_batch(pipe.unet, ddim, cond, uncond, plan, s.shape, s.ac, s.kind)
        return {"x_t": batch["x_t"], "t": batch["t"], "prompt": [p.prompt for p in plan], "target": batch["target"]}

    def loss(self, pipe, request, samples: dict) -> float:
        """ESD's loss of ``pipe`` (as it is now) on ``samples`` from ``frozen_samples``."""
        s = setup_model(pipe, request, self.config.resolution)
        with torch.no_grad():
            cond = s.encode(s.request.prompts)
            out = unet_output(pipe.unet, samples["x_t"], samples["t"], cond.index(samples["prompt"]))
            eps = eps_from_output(s.ac, out, samples["x_t"], samples["t"], s.kind)
        return float(F.mse_loss(eps.float(), samples["target"].float()))

    # -- the data
    def plan(self, n_prompts: int, ddim, num_train_timesteps: int, num_processes: int = 1,
             count: int | None = None, groups: list[list[int]] | None = None) -> list[TrajectoryPoint]:
        """Every training sample (``steps * batch_size * num_processes``, or the first ``count``),
        drawn up front: sample i from ``random.Random(f"esd/{seed}/{i}")`` (``erasure.sampling.draw_point``);
        with ``trajectories: shared`` their noise seeds then reassigned by ``share_trajectories`` (the
        whole plan at once: ``count`` samples share among themselves)."""
        c: ESDConfig = self.config
        n = c.steps * c.batch_size * num_processes if count is None else count
        points = draw_points(f"esd/{c.seed}", n, ddim, c.timesteps, num_train_timesteps, n_prompts)
        # Several targets (``groups``: each one's prompt indices, ``ErasureRequest.target_groups``) take
        # turns: sample i trains target i mod n with the prompt of it the draw falls on. The reference
        # (rohitgandikota/erasing) draws one of its comma-separated concepts at random per iteration:
        # the same share in expectation, exact here even for short runs. One target: unchanged.
        points = [replace(p, prompt=in_turn(i, p.prompt, groups)) for i, p in enumerate(points)] if groups else points
        return share_trajectories(points, f"esd/{c.seed}") if c.trajectories == "shared" else points

    @staticmethod
    def spread(request, plan: list[TrajectoryPoint], groups: list[list[int]] | None) -> dict:
        """Training samples per target (the edit's ``extra["targets"]``)."""
        if not groups or len(groups) == 1:  # one target, or prompts not each naming one: drawn from all alike
            schedule = "one target" if len(request.targets) == 1 else "shared: every sample draws from all prompts"
            return spread(request.targets, [len(plan)] * len(request.targets), "training samples", schedule)
        owner = {i: k for k, group in enumerate(groups) for i in group}
        counts = [sum(owner[p.prompt] == k for p in plan) for k in range(len(groups))]
        return spread(request.targets, counts, "training samples", "in turn: sample i trains target i mod n")

    def _frozen_batch(self, unet, ddim, cond, uncond, points: list[TrajectoryPoint], shape, ac, kind,
                      counter: SampleSteps | None = None) -> dict:
        """x_t, t and the ESD target for ``points``, from the frozen model (noise estimates
        ``precompute_batch`` points at a time)."""
        out = frozen_predictions(unet, ddim, cond, uncond, points, shape, self.config.guidance, ac, kind,
                                 counter=counter, batch_size=self.config.precompute_batch)
        # cfg with scale -eta: eps_u - eta (eps_c - eps_u), ESD's negatively guided target.
        return {"x_t": out["x_t"], "t": out["t"], "target": cfg(out["eps_uncond"], out["eps_cond"], -self.config.eta)}
