"""Memorization-subspace pruning (Chavhan, Li, Hospedales 2024) and its concept variant (ConceptPrune).

Training-free. Memorized captions (or prompts with a concept) drive a small set of feed-forward
neurons that ordinary prompts barely use; zeroing the weights that read from them removes the
memorized images (or the concept) and leaves the rest of the model alone.

Algorithm (the paper's; reference ``ruchikachavhan/concept-prune``, ``wanda/``):

1. Record. Forward pre-hooks on every transformer block's second feed-forward linear
   (``ff.net.2``, whose input is the GEGLU output) while the frozen model samples (DDIM, guidance
   ``guidance``) from ``seeds`` noises per prompt. For each of the first ``tau`` sampling steps and
   each layer, every token row of the input (both classifier-free-guidance halves) is
   L2-normalised and its squared entries are accumulated per input channel, giving
   ``||X_j||`` for input channel j, once for a *target* prompt set and once for a *base* set.
   Nothing but these running sums is kept in memory.
2. Score and select, per step t: Wanda scores ``S_ij = |W_ij| * ||X_j||``; ``M_ij(t) = 1`` where
   ``S^target_ij`` is among the top ``rho * d_in`` of row i and ``S^target_ij > S^base_ij``.
   The mask is the union over the ``tau`` steps.
3. Edit: ``W <- W * (1 - M)``, stored sparsely as the indices of the zeroed entries
   (``Edit.zeroed``; the storage cost is 4 bytes per pruned weight).

Prompt sets (``request.kind``):

- ``memorized``: target = the memorized captions (``request.prompts``); base = ordinary captions
  (``request.retain``; ``base: empty`` uses the empty prompt, the reference's other option).
- concepts (style, object, ...), ConceptPrune: target = prompts with the concept, base = the same
  prompts without it. canvas-mini: a style's 8 captions "a {object} in {style} style" against
  "a {object}"; an object's "a {object} in {style} style" against "{style} style" (the partial
  captions it was trained on). Stable Diffusion: for a style, ordinary captions with ", in the
  style of {style}" against the captions alone; for other kinds the concept prompts and
  paraphrases against the empty prompt.

Implementation choices:

- ``||X_j||`` is a root mean square over the recorded rows (Wanda's running average), not a
  plain sum, so target and base sets of different sizes compare fairly; it is the same selection
  as the reference's whenever both sets have the same number of rows.
- Model families: the references prune SD 1.x's 16 transformer blocks; SD 2.x has the same 16 and
  SDXL 70 (24 in the down path, 10 in the middle, 36 in the up path), each with
  the same GEGLU ``ff.net.2``, so the selection and the edit carry over unchanged (rho is a share of
  each row, so the count per layer scales with the width). SDXL samples with both text encoders and
  its added conditions (``TextConditioner``); its classifier-free guidance uses the zero embedding
  for the empty prompt, as the SDXL pipeline does.
- Several targets (concept kinds): a mask per target, each from that target's own prompts against
  its base set, zeroed as their union, as ConceptPrune's multi-concept erasure (reference
  ``wanda/multi_concept_union.py``, which also thresholds the per-step masks by a select ratio;
  here each per-target mask is already the union over the ``tau`` steps). The recording, the
  method's whole cost, grows linearly with the targets (a base set shared by several, such as a
  style's "a {object}" captions on canvas-mini, is recorded once). Memorized captions are one set,
  as in the memorization paper; prompts given that do not each name one target are pooled.
- Recording stops after the ``tau`` steps it needs (the rest of each trajectory does not affect
  the mask). Under several processes every process computes the same mask (no sharding: the
  recording is seconds on canvas-mini and minutes on SD).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from erasure.diffusion import (
    Conditions,
    TextConditioner,
    cfg,
    ddim_for,
    initial_noise,
    latent_shape,
    native_resolution,
    unet_output,
)
from erasure.edit import Edit
from erasure.errors import ErasureInputError
from erasure.request import ErasureRequest, prompt_targets, spread, target_groups
from erasure.training import CostMeter

from .base import ErasureMethod, MethodConfig
from .registry import register

logger = logging.getLogger(__name__)

BASES = ("auto", "retain", "empty", "without-concept")


@dataclass
class PruneConfig(MethodConfig):
    """Pruning hyperparameters. Defaults: the reference's for memorization on SD 1.x (rho 0.01, tau 10)."""

    rho: float = 0.01
    tau: int = 10
    ddim_steps: int = 50
    guidance: float = 7.5
    seeds: int = 1
    base: str = "auto"
    layers: str = r"ff\.net\.2$"
    resolution: int | None = None
    batch_size: int = 8
    seed: int = 0

    def validate(self) -> None:
        if not 0 < self.rho <= 1:
            raise ErasureInputError(f"prune config rho: must be in (0, 1], got {self.rho}")
        self.check_bounds(at_least_one=("tau", "ddim_steps", "seeds", "batch_size"))
        if self.tau > self.ddim_steps:
            raise ErasureInputError(f"prune config tau: {self.tau} steps, more than ddim_steps {self.ddim_steps}")
        if self.base not in BASES:
            raise ErasureInputError(f"prune config base: {self.base!r}; expected one of {', '.join(BASES)}")
        try:
            re.compile(self.layers)
        except re.error as exc:
            raise ErasureInputError(f"prune config layers: bad pattern ({exc})") from None
        if self.resolution is not None and self.resolution < 8:
            raise ErasureInputError(f"prune config resolution: {self.resolution} is too small")


# ----------------------------------------------------------------------------- recording
class ActivationNorms:
    """Forward pre-hooks that accumulate, per (layer, sampling step), the input's per-channel sum of squares.

    Every token row of a hooked linear layer's input is L2-normalised first. ``step`` is set by the
    sampler before each UNet call; calls while it is ``None`` are not recorded. ``norms()`` gives,
    per layer, a ``(steps, d_in)`` tensor of root-mean-square channel values over the rows seen.
    """

    def __init__(self, unet: torch.nn.Module, pattern: str, steps: int) -> None:
        self.layers = {n: m for n, m in unet.named_modules() if re.search(pattern, n) and isinstance(m, torch.nn.Linear)}
        if not self.layers:
            raise ErasureInputError(f"prune: no linear layer of the UNet matches {pattern!r}")
        self.steps = steps
        self.step: int | None = None
        self.squares = {n: torch.zeros(steps, m.in_features, dtype=torch.float64) for n, m in self.layers.items()}
        self.rows = {n: torch.zeros(steps, dtype=torch.float64) for n in self.layers}
        self._handles: list = []

    def __enter__(self) -> "ActivationNorms":
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module, args):
            if self.step is None:
                return
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            x = F.normalize(x, dim=1)
            self.squares[name][self.step] += x.square().sum(0).double().cpu()
            self.rows[name][self.step] += x.shape[0]

        return hook

    def norms(self) -> dict[str, torch.Tensor]:
        return {n: (self.squares[n] / self.rows[n].clamp_min(1)[:, None]).sqrt().float() for n in self.layers}


@torch.no_grad()
def record_activation_norms(pipe, prompts: Sequence[str], config: PruneConfig,
                            on_batch: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """``||X_j||`` per layer and step (``(tau, d_in)``) while ``pipe`` samples ``prompts`` x ``config.seeds``.

    ``on_batch(n)`` is called after each batch of ``n`` samples (progress: at Stable Diffusion's size
    on a CPU a batch takes minutes).
    """
    c = config
    unet = pipe.unet
    resolution = c.resolution or native_resolution(pipe)
    shape = latent_shape(pipe, resolution)
    ddim = ddim_for(pipe.scheduler, c.ddim_steps)
    encode = TextConditioner(pipe, resolution)
    uncond = encode([""])
    jobs = [(p, c.seed + s) for p in prompts for s in range(c.seeds)]
    with ActivationNorms(unet, c.layers, c.tau) as recorder:
        for start in range(0, len(jobs), c.batch_size):
            batch = jobs[start:start + c.batch_size]
            cond = encode([p for p, _ in batch])
            both = Conditions.cat([uncond.index([0] * len(batch)), cond])
            x = initial_noise([s for _, s in batch], shape, unet.device, cond.hidden.dtype) * ddim.init_noise_sigma
            for i, t in enumerate(ddim.timesteps[: c.tau]):
                recorder.step = i
                model_in = ddim.scale_model_input(torch.cat([x, x]), t)
                out_u, out_c = unet_output(unet, model_in, t, both).chunk(2)
                x = ddim.step(cfg(out_u, out_c, c.guidance), t, x, eta=0.0, return_dict=False)[0]
            recorder.step = None
            if on_batch is not None:
                on_batch(len(batch))
    return recorder.norms()


# ----------------------------------------------------------------------------- selection
def wanda_mask(weight: torch.Tensor, target_norms: torch.Tensor, base_norms: torch.Tensor, rho: float) -> torch.Tensor:
    """The pruning mask (bool, ``weight``'s shape): union over steps of (row top-k of S_target) AND (S_target > S_base).

    ``target_norms``/``base_norms``: ``(steps, d_in)``; ``k = max(1, round(rho * d_in))``.
    """
    a = weight.detach().abs().float()
    d_in = a.shape[1]
    k = max(1, round(rho * d_in))
    mask = torch.zeros_like(a, dtype=torch.bool)
    for t in range(target_norms.shape[0]):
        s_target = a * target_norms[t].to(a.device)
        s_base = a * base_norms[t].to(a.device)
        top = torch.zeros_like(mask).scatter_(1, s_target.topk(k, dim=1).indices, True)
        mask |= top & (s_target > s_base)
    return mask


# ----------------------------------------------------------------------------- prompt sets
def prompt_sets(pipe, request: ErasureRequest, base: str = "auto") -> tuple[list[str], list[str]]:
    """(target prompts, base prompts) for a resolved request (see the module docstring)."""
    from erasure.families import family_of

    family = family_of(pipe)
    if base == "auto":
        base = "retain" if request.kind == "memorized" else "without-concept"
    if request.kind == "memorized" or base != "without-concept":
        targets = list(request.prompts)
        if request.kind != "memorized":
            targets += [p for p in request.paraphrases if p not in targets]
        if base == "retain":
            return targets, [p for p in request.retain if p not in targets] or [""]
        return targets, [""]
    own = family.concept_pairs(request)  # a family with its own captions (canvas-mini) pairs them itself
    if own is not None:
        return own
    if request.kind == "style":
        from erasure.prompts import ordinary_prompts

        plain = ordinary_prompts(exclude=request.targets)[:16]
        return [f"{p}, in the style of {t}" for t in request.targets for p in plain], plain * len(request.targets)
    targets = list(request.prompts) + [p for p in request.paraphrases if p not in request.prompts]
    return targets, [""]


# ----------------------------------------------------------------------------- the method
@register("prune")
class Prune(ErasureMethod):
    """Wanda-score pruning of the memorization (or concept) subspace of the FFN layers."""

    paper = 'Chavhan et al., "Memorized Images in Diffusion Models share a Subspace that can be Located and Deleted", 2024 (concept variant: ConceptPrune, Chavhan et al., 2024)'
    reference_code = "ruchikachavhan/concept-prune"

    config_class = PruneConfig

    def __call__(self, pipe, request, *, run_dir=None, resume: bool = False, progress=None) -> Edit:
        c: PruneConfig = self.config
        req = request.resolve(pipe)
        unet = pipe.unet
        meter = CostMeter(unet.device)
        subs = per_target_requests(pipe, req)
        sets = [prompt_sets(pipe, sub, c.base) for sub in (subs or [req])]
        with meter.phase("recording"):
            norms = self._record(pipe, sets, progress)
        zeroed, per_layer, per_target = {}, {}, [0] * len(sets)
        with meter.phase("pruning"), torch.no_grad():
            for name, module in ActivationNorms(unet, c.layers, 1).layers.items():
                masks = [wanda_mask(module.weight, target[name], base[name], c.rho) for target, base in norms]
                for k, m in enumerate(masks):
                    per_target[k] += int(m.sum())
                mask = torch.stack(masks).any(0)  # several targets: the union (ConceptPrune's multi-concept rule)
                key = f"unet.{name}.weight"
                zeroed[key] = mask.flatten().nonzero().squeeze(1).to(torch.int32).cpu()
                module.weight.masked_fill_(mask.to(module.weight.device), 0)
                per_layer[name] = int(mask.sum())
        pruned = sum(per_layer.values())
        layer_weights = sum(m.weight.numel() for m in ActivationNorms(unet, c.layers, 1).layers.values())
        unet_weights = sum(p.numel() for p in unet.parameters())
        logger.info("prune: zeroed %d weights (%.4f%% of the UNet) in %d layers", pruned,
                    100 * pruned / unet_weights, len(per_layer))
        return self.trained_edit(
            req, {}, cost=meter.summary(), device=unet.device,
            zeroed={k: v for k, v in zeroed.items() if v.numel()},
            extra={
                "pruned_weights": pruned,
                "fraction_of_unet": pruned / unet_weights,
                "fraction_of_pruned_layers": pruned / layer_weights,
                "pruned_per_layer": per_layer,
                "target_prompts": sum(len(t) for t, _ in sets),
                "base_prompts": sum(len(b) for b in dict.fromkeys(tuple(b) for _, b in sets)),
                "resolution": c.resolution or native_resolution(pipe),
                "targets": _spread(req, subs, per_target),
            },
        )

    def _record(self, pipe, sets: list[tuple[list[str], list[str]]], progress) -> list[tuple[dict, dict]]:
        """(target norms, base norms) per prompt-set pair; a base set shared by several targets
        (a style's "a {object}" captions) is recorded once."""
        c: PruneConfig = self.config
        bases = list(dict.fromkeys(tuple(b) for _, b in sets))
        # One unit per sampled prompt (prompt x seed), target sets then base sets.
        total, done = (sum(len(t) for t, _ in sets) + sum(len(b) for b in bases)) * c.seeds, 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            progress("recording activations", done, total, {})

        if progress:
            progress("recording activations", 0, total, {})
        on_batch = advance if progress else None
        targets = [record_activation_norms(pipe, t, c, on_batch) for t, _ in sets]
        recorded = {b: record_activation_norms(pipe, list(b), c, on_batch) for b in bases}
        return [(norms, recorded[tuple(b)]) for norms, (_, b) in zip(targets, sets)]


def per_target_requests(pipe, request: ErasureRequest) -> list[ErasureRequest] | None:
    """One request per target, each with the prompts and paraphrases that name it, for a concept
    request with several targets (ConceptPrune's multi-concept erasure: a mask per concept, then their
    union, reference ``wanda/multi_concept_union.py``); None for one target, for memorized captions
    (the memorization paper prunes them as one set) and for prompts that do not each name one target
    (then pooled into one set)."""
    from erasure.families import family_of

    if len(request.targets) == 1 or request.kind == "memorized":
        return None
    family = family_of(pipe)
    groups = target_groups(prompt_targets(request.prompts, request.targets, request.kind, family), len(request.targets))
    if groups is None:
        return None
    owners = prompt_targets(request.paraphrases or [], request.targets, request.kind, family)
    return [replace(request, targets=[t], prompts=[request.prompts[i] for i in group],
                    paraphrases=[p for p, o in zip(request.paraphrases or [], owners) if o == k])
            for k, (t, group) in enumerate(zip(request.targets, groups))]


def _spread(request: ErasureRequest, subs: list | None, per_target: list[int]) -> dict:
    """Weights each target's own mask selected (the edit's ``extra["targets"]``; the edit is their union)."""
    if subs is None:
        schedule = "one target" if len(request.targets) == 1 else "pooled: one prompt set for every target, one mask"
        return spread(request.targets, per_target * len(request.targets), "weights selected", schedule)
    return spread(request.targets, per_target, "weights selected by the target's own mask",
                  "a mask per target (its own prompts against its base set), zeroed as their union")
