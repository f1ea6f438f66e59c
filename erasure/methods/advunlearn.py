"""AdvUnlearn: adversarial text-encoder unlearning (Zhang et al., NeurIPS 2024; OPTML-Group/AdvUnlearn).

A bi-level loop on the text encoder (the UNet, the token and position embeddings stay frozen):

- Inner (every ``attack_every`` iterations after ``warmup``): the soft-prompt attack of
  ``erasure.attacks`` (one code path, also used after training to measure attack success) finds
  ``attack_tokens`` word embeddings ``delta`` that, placed in the concept prompt ``c_e``
  (``attack_placement``), make the CURRENT model predict what the original predicted for ``c_e``:
  ``min_delta || eps(x_t, t, TE([delta, c_e])) - eps*(x_t, t, TE*(c_e)) ||^2``, ``attack_steps``
  Adam steps of ``attack_lr`` (``attack_algorithm: fast_at``: sign gradients), each on a fresh x_t.
  ``attack_init: latest`` starts from the previous round's delta, ``random`` from random tokens.
- Outer (every iteration): ``L_u + gamma * L_r`` with ``L_u`` the ESD loss on the adversarial
  prompt, ``|| eps(x_t, t, TE([delta, c_e])) - (eps*(x_t,t,"") - eta (eps*(x_t,t,c_e) - eps*(x_t,t,""))) ||^2``
  (the plain prompt during warm-up), and ``L_r = || eps(z_r, t, TE(c_r)) - eps*(z_r, t, TE*(c_r)) ||^2``
  on ``retain_batch`` retain prompts ``c_r`` (x_t from the original's trajectories of ``c_r``).
  Adam on the text encoder's transformer layers and final layer norm (by default).

x_t always comes from the frozen model: DDIM (``ddim_steps``, guidance ``guidance``) from a seeded
noise down to a random depth, exactly as ESD draws it (``erasure.sampling.draw_point``; the frozen
predictions and the precomputed-sample store are ``erasure.sampling``'s too).

Implementation choices and deviations (reference: OPTML-Group/AdvUnlearn ``train-scripts/AdvUnlearn.py``):

- Defaults are the reference's: 1000 iterations, lr 1e-5, warm-up 200, one prefixed adversarial
  token, ``attack_init: latest`` (its argparse default; its README's example uses ``random``),
  30 attack steps of lr 1e-3, attack every iteration (``adv_prompt_update_step`` 1), eta 1,
  start guidance 3, retain batch 5, gamma 0.3 (its README's ``--retain_loss_w 0.3``; argparse says 1.0).
- Retain loss in the reference's ``reg`` mode (the sum above); its ``iter`` mode (a
  separate retain step after each update) is not implemented.
- Retain prompts: the request's (canvas-mini: the other styles' or objects' captions; Stable
  Diffusion: "a photo of a {COCO class}", 80 classes, where the reference reads 243 COCO-object
  prompts from a CSV). Each iteration draws ``retain_batch`` distinct prompts (the reference walks
  its list without replacement across iterations, then restarts). The retain samples share the
  concept sample's depth and timestep, as in the reference.
- Adversarial token positions are counted in BPE tokens; the reference counts words
  (``len(prompt.split())``), which misplaces suffix/replace tokens when a word is several tokens.
- No epsilon-ball projection by default, as in the reference; ``attack_epsilon`` projects each
  token onto the L2 ball of that radius around where its attack round started.
- Timestep of a sample (``timesteps``): "matched" (default; the DDIM timestep the trajectory
  stopped at, as ESD here) or "reference" (uniform in the depth's bin, the CompVis scripts').
- Precomputation (``precompute``, default on): the frozen model's samples (x_t, its conditional
  and unconditional noise estimates) for every iteration, attack step and retain prompt are drawn
  from ``seed`` up front and computed in batches of similar depth; per-sample seeds make them equal
  to computing them one by one (``precompute: false``, the reference's schedule, for models where
  ``steps * (1 + attack_steps + retain_batch)`` samples do not fit in memory). They are saved
  beside the checkpoint so a resumed run trains on the same data. ``sample_pool: N`` (a CPU
  economy, off by default) draws every concept sample, per concept prompt, and every retain
  sample from pools of N precomputed samples instead of fresh ones (retain samples then have
  their own depth and timestep). The sampler steps only the samples still running;
  ``extra["sample_steps"]`` counts the frozen model's sample-steps (``erasure.diffusion.SampleSteps``).
- Trajectories (``trajectories``): "per-step" (default; the reference's, a fresh trajectory for
  every sample) or "shared", a deviation shared with ESD: the plan is drawn as above, then its noise
  seeds are reassigned so that the samples of each prompt (concept, attack and retain samples
  alike) lie on few trajectories, each run once to the deepest depth taken from it, every
  (trajectory, depth) used once (``erasure.sampling.share_trajectories``). Fewer frozen
  sample-steps, correlated x_t; no preset uses it: on canvas-mini it cost dotted's UA 56 and 31 points
  (two training seeds; bench/trajectory_reuse.py), and saved little time (the attacks dominate). It saves work only
  when precomputing; ``precompute_batch`` then counts trajectories run side by side.
- Resume: checkpoints hold the attack state too (the latest delta and the prompt it belongs to),
  so a resumed run equals an uninterrupted one. The attack's Adam state restarts every round, as in
  the reference.
- Trained tensors: all of the text encoder's transformer layers (``layers: k``: the first k) and
  the final layer norm, or only their attention (``component: attn``: ``self_attn``) or feed-forward
  (``ffn``: ``mlp``) parts; the final layer norm by default only with every layer and component
  (the reference's rule; ``final_layer_norm`` sets it explicitly); ``parameters`` (regular
  expressions) chooses any other set. Float32 master weights; ``mixed_precision`` autocasts on
  CUDA; ``gradient_checkpointing`` applies to the text encoder and the UNet.
- The text encoder stays in eval mode (CLIP has no dropout, so this equals the reference's train mode).
- Several targets in one request: the reference splits a comma-separated concept list and draws one
  concept at random for each attack round (``adv_prompt_update_step``); here the targets take turns
  round by round (warm-up: step by step), each round on one prompt of its target, so every target
  gets an equal share of the iterations and attack rounds. The number of iterations is the
  config's, so the cost does not grow with the number of targets; ``extra["targets"]`` records the
  iterations each target got. The retain set (canvas-mini: the styles or objects not erased) is shared.
- Loss in noise space for every prediction type (v- and x0-prediction outputs converted first).
- Model families: SD 1.x, SD 2.x (its OpenCLIP ViT-H text tower is a ``CLIPTextModel`` in diffusers;
  v-prediction is covered by the noise-space loss) and canvas-mini. SDXL is refused, before any
  weight loads where the model's class can be read (``check_model``): the UNet attends to two text
  encoders' features concatenated (CLIP ViT-L and OpenCLIP ViT-bigG), and the second one's pooled
  projection also enters the added conditioning. The paper's unit is one text encoder (attacked in
  its word-embedding space, trained, exported and plugged into other models); extending it means a
  joint attack on two embedding spaces, two trained encoders and a two-part plug-in, none of which
  the paper or the reference defines, so it is not guessed at here.
- Several processes (``accelerate launch``): data-parallel like ESD. The plan holds each
  iteration's global batches (``batch_size``, ``retain_batch`` and ``attack_batch`` times the
  number of processes); process r takes block r of each, the text encoder's gradients are
  averaged by ``TrainLoop`` and the attack's by the attack, so every process holds the same weights
  and the same delta; one process is exactly the single-process run.

Output: an ``Edit`` holding only text-encoder tensors, with the original text encoder's
fingerprint and architecture in ``extra["components"]`` so ``load_erased(..., allow_other_base=True)``
can put it into another pipeline with the same text encoder; ``erasure export RUN --to text-encoder``
(``erasure.export``) writes the erased text encoder as a transformers ``CLIPTextModel`` folder (the
paper's plug-and-play unlearner).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from erasure.attacks import (
    SoftPrompt,
    SoftPromptAttack,
    SoftPromptAttackConfig,
    check_attack_settings,
    check_single_text_encoder,
    encode_soft_prompt,
)
from erasure.diffusion import (
    TIMESTEP_MODES,
    Conditions,
    SampleSteps,
    TextConditioner,
    alphas_cumprod,
    cfg,
    ddim_for,
    eps_from_output,
    native_resolution,
    prediction_type,
    unet_output,
)
from erasure.edit import Edit
from erasure.errors import ErasureInputError
from erasure.request import in_turn, spread
from erasure.sampling import (
    SampleStore,
    TrajectoryPoint,
    check_trajectories,
    draw_point,
    draw_points,
    frozen_predictions,
    process_block,
    share_trajectories,
    trajectory_of,
)
from erasure.training import (
    MIXED_PRECISION,
    FrozenCopy,
    StateDict,
    TrainLoop,
    select_parameters,
    setup_model,
    setup_run,
    tail_mean,
)

from .base import ErasureMethod, MethodConfig
from .registry import register

logger = logging.getLogger(__name__)

COMPONENTS: dict[str, str] = {"all": "", "attn": r"self_attn\.", "ffn": r"mlp\."}
#: The precomputed samples, one file per process beside the checkpoint (``erasure.sampling.SampleStore``).
DATA_STEM = "advunlearn-data"
DATA_KEYS = ("x_t", "t", "eps_cond", "eps_uncond")
#: Methods whose edit is the text encoder alone (exportable as a CLIPTextModel folder).
TEXT_ENCODER_METHODS = ("advunlearn",)
#: AdvUnlearn's attack settings and the SoftPromptAttackConfig fields they fill: every field of the
#: attack's config, as "attack_" + its name ("attack_batch" for its batch size).
ATTACK_FIELDS = {("attack_batch" if f.name == "batch_size" else f"attack_{f.name}"): f.name
                 for f in dataclasses.fields(SoftPromptAttackConfig)}


@dataclass
class AdvUnlearnConfig(MethodConfig):
    """AdvUnlearn hyperparameters. Defaults: the reference's (see the module docstring)."""

    steps: int = 1000
    lr: float = 1e-5
    warmup: int = 200
    gamma: float = 0.3
    retain_batch: int = 5
    eta: float = 1.0
    guidance: float = 3.0
    ddim_steps: int = 50
    timesteps: str = "matched"
    trajectories: str = "per-step"
    batch_size: int = 1
    layers: int | None = None
    component: str = "all"
    final_layer_norm: bool | None = None
    parameters: list[str] | None = None
    attack_tokens: int = 1
    attack_placement: str = "prefix"
    attack_init: str = "latest"
    attack_steps: int = 30
    attack_lr: float = 1e-3
    attack_algorithm: str = "pgd"
    attack_epsilon: float | None = None
    attack_batch: int = 1
    attack_every: int = 1
    sample_pool: int = 0
    resolution: int | None = None
    precompute: bool = True
    precompute_batch: int = 16
    seed: int = 0
    checkpoint_every: int = 100
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        p = "advunlearn config "
        if self.timesteps not in TIMESTEP_MODES:
            raise ErasureInputError(f"{p}timesteps: {self.timesteps!r}; expected one of {', '.join(TIMESTEP_MODES)}")
        check_trajectories(p, self.trajectories)
        if self.component not in COMPONENTS:
            raise ErasureInputError(f"{p}component: {self.component!r}; expected one of {', '.join(COMPONENTS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ErasureInputError(f"{p}mixed_precision: {self.mixed_precision!r}; expected one of {', '.join(MIXED_PRECISION)}")
        self.check_bounds(at_least_one=("steps", "ddim_steps", "batch_size", "precompute_batch", "attack_every"),
                          non_negative=("warmup", "retain_batch", "sample_pool", "checkpoint_every", "gamma"),
                          positive=("lr",), prefix=p)
        if self.layers is not None and self.layers < 1:
            raise ErasureInputError(f"{p}layers: must be at least 1 (or null: every layer), got {self.layers}")
        if self.resolution is not None and self.resolution < 8:
            raise ErasureInputError(f"{p}resolution: {self.resolution} is too small")
        check_attack_settings(p, **{field: getattr(self, key) for key, field in ATTACK_FIELDS.items()},
                              names={field: key for key, field in ATTACK_FIELDS.items()})

    def attack_config(self) -> SoftPromptAttackConfig:
        return SoftPromptAttackConfig(**{field: getattr(self, key) for key, field in ATTACK_FIELDS.items()})


def text_encoder_parameters(text_encoder, c: AdvUnlearnConfig) -> dict[str, torch.nn.Parameter]:
    """The text-encoder tensors AdvUnlearn trains under ``c`` (layers, component, final norm, or ``parameters``)."""
    if c.parameters:
        return select_parameters(text_encoder, c.parameters)
    n_layers = text_encoder.config.num_hidden_layers
    if c.layers is not None and c.layers > n_layers:
        raise ErasureInputError(f"advunlearn config layers: {c.layers}, but the text encoder has {n_layers} layers")
    layers = "|".join(str(i) for i in range(c.layers)) if c.layers is not None else r"\d+"
    patterns = [rf"(^|\.)encoder\.layers\.({layers})\.{COMPONENTS[c.component]}"]
    norm = c.final_layer_norm if c.final_layer_norm is not None else (c.layers is None and c.component == "all")
    if norm:
        patterns.append(r"(^|\.)final_layer_norm\.")
    return select_parameters(text_encoder, patterns)


#: AdvUnlearn's reason for refusing SDXL, one line (``check_model`` and the method itself raise it).
SDXL_REFUSAL = ("advunlearn: AdvUnlearn trains one CLIP text encoder; SDXL has two (CLIP ViT-L and OpenCLIP ViT-bigG, "
                "whose pooled projection also enters the UNet's added conditioning), which the paper's attack, "
                "training and plug-and-play text encoder do not cover; use SD 1.x/2.x")
#: Pipeline classes refused, by the ``_class_name`` of a model_index.json.
REFUSED_PIPELINES: dict[str, str] = {"StableDiffusionXLPipeline": SDXL_REFUSAL}


def check_model(source: str | os.PathLike, config: str | os.PathLike | None = None) -> None:
    """Refuse a model AdvUnlearn cannot train, reading only its ``model_index.json`` (no weights).

    ``source``/``config`` as for ``load_pipeline``: a diffusers folder, or a single file with the folder
    of its component configs. Sources whose class cannot be read here pass; ``load_pipeline`` reports
    their problems and the method refuses an unsupported pipeline once loaded.
    """
    name = _pipeline_class_name(source, config)
    if name in REFUSED_PIPELINES:
        raise ErasureInputError(REFUSED_PIPELINES[name])


def _pipeline_class_name(source: str | os.PathLike, config: str | os.PathLike | None) -> str | None:
    folder = Path(config if config is not None else source).expanduser()
    try:
        return json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


# ----------------------------------------------------------------------------- the plan
def _spread(request, plan: list["_Step"], groups: list[list[int]] | None) -> dict:
    """Iterations per target (the edit's ``extra["targets"]``): an iteration trains the prompt of its
    attack round (of its own draw during warm-up)."""
    if not groups or len(groups) == 1:
        schedule = "one target" if len(request.targets) == 1 else "shared: each round draws from all prompts"
        return spread(request.targets, [len(plan)] * len(request.targets), "iterations", schedule)
    owner = {i: k for k, group in enumerate(groups) for i in group}
    counts = [sum(owner[st.prompt] == k for st in plan) for k in range(len(groups))]
    return spread(request.targets, counts, "iterations", "in turn: attack round r (warm-up step s) on target r mod n")


@dataclass
class _Step:
    """One iteration's global batches, as sample ids; ``attack``: one list per attack step, or None."""

    prompt: int
    concept: list[int]
    retain: list[int]
    attack: list[list[int]] | None


class _Planner:
    """Draws every iteration's samples from the seed: a pure function of (seed, iteration)."""

    def __init__(self, c: AdvUnlearnConfig, n_concept: int, n_retain: int, ddim, num_train_timesteps: int, world: int,
                 groups: list[list[int]] | None = None):
        self.c, self.n_concept, self.n_retain, self.world = c, n_concept, n_retain, world
        self.groups = groups  # the concept prompts of each target (several targets take turns)
        self.ddim, self.T = ddim, num_train_timesteps
        self.samples: list[TrajectoryPoint] = []
        self.pools: dict[str, list[int]] = {}

    def _new(self, rng: random.Random, prompt: int, point: tuple[int, int] | None = None) -> int:
        sample = dataclasses.replace(draw_point(rng, self.ddim, self.c.timesteps, self.T), prompt=prompt)
        if point is not None:
            sample = dataclasses.replace(sample, depth=point[0], timestep=point[1])
        self.samples.append(sample)
        return len(self.samples) - 1

    def _pooled(self, rng: random.Random, key: str, make: Callable[[random.Random], int]) -> int:
        if key not in self.pools:
            prng = random.Random(f"advunlearn/{self.c.seed}/pool/{key}")
            self.pools[key] = [make(prng) for _ in range(self.c.sample_pool)]
        return self.pools[key][rng.randrange(self.c.sample_pool)]

    def _concept(self, rng: random.Random, prompt: int) -> int:
        if self.c.sample_pool:
            return self._pooled(rng, f"concept-{prompt}", lambda r: self._new(r, prompt))
        return self._new(rng, prompt)

    def plan(self) -> list[_Step]:
        c, w = self.c, self.world
        steps: list[_Step] = []
        prompt, turn = 0, 0
        for s in range(c.steps):
            rng = random.Random(f"advunlearn/{c.seed}/{s}")
            attack = s >= c.warmup and (s - c.warmup) % c.attack_every == 0
            if s < c.warmup or attack:  # between attack rounds the round's prompt is kept (reference)
                # Several targets take turns round by round (the reference draws one of its
                # comma-separated concepts at random per round); one target: the draw itself.
                prompt, turn = in_turn(turn, rng.randrange(self.n_concept), self.groups), turn + 1
            concept = [self._concept(rng, prompt) for _ in range(c.batch_size * w)]
            k = c.retain_batch * w
            chosen = rng.sample(range(self.n_retain), k) if k <= self.n_retain else [rng.randrange(self.n_retain) for _ in range(k)]
            if c.sample_pool:
                retain = [self._pooled(rng, "retain", lambda r: self._new(r, self.n_concept + r.randrange(self.n_retain)))
                          for _ in range(k)]
            else:
                point = (self.samples[concept[0]].depth, self.samples[concept[0]].timestep)
                retain = [self._new(rng, self.n_concept + p, point) for p in chosen]
            rounds = None
            if attack:
                rounds = [[self._concept(rng, prompt) for _ in range(c.attack_batch * w)] for _ in range(c.attack_steps)]
            steps.append(_Step(prompt, concept, retain, rounds))
        if c.trajectories == "shared":  # the same plan, its samples packed onto shared trajectories
            self.samples = share_trajectories(self.samples, f"advunlearn/{c.seed}")
        return steps


@register("advunlearn")
class AdvUnlearn(ErasureMethod):
    """AdvUnlearn (see the module docstring for the algorithm and every implementation choice)."""

    paper = 'Zhang et al., "Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models", NeurIPS 2024'
    reference_code = "OPTML-Group/AdvUnlearn"

    config_class = AdvUnlearnConfig
    #: the pipeline components its edits change (the CLI's --export-text-encoder checks it up front).
    edited_components: ClassVar[tuple[str, ...]] = ("text_encoder",)
    #: refuses unsupported models from their model_index.json, before any weight loads (for the CLI).
    check_model = staticmethod(check_model)

    def __call__(self, pipe, request, *, run_dir=None, resume: bool = False, progress=None) -> Edit:
        from erasure.erased import component_record

        c: AdvUnlearnConfig = self.config
        if getattr(pipe, "text_encoder_2", None) is not None:
            raise ErasureInputError(SDXL_REFUSAL)
        check_single_text_encoder(pipe, "advunlearn")
        te, unet = pipe.text_encoder, pipe.unet
        s = setup_run(pipe, request, run_dir, resolution=c.resolution, mixed_precision=c.mixed_precision,
                      dtype=te.dtype)
        req, device, rank, world, encode = s.request, s.device, s.rank, s.world, s.encode
        ddim = ddim_for(pipe.scheduler, c.ddim_steps)
        if c.retain_batch and not req.retain:
            raise ErasureInputError("advunlearn: the request has no retain prompts; give some or set retain_batch 0")

        prompts = list(req.prompts) + list(req.retain)
        softs = [SoftPrompt.build(pipe.tokenizer, p, c.attack_tokens, c.attack_placement) for p in req.prompts]
        groups = req.target_groups(pipe)
        planner = _Planner(c, len(req.prompts), len(req.retain), ddim, pipe.scheduler.config.num_train_timesteps, world,
                           groups)
        plan = planner.plan()
        samples = planner.samples

        params = text_encoder_parameters(te, c)
        record = component_record(te)  # the ORIGINAL text encoder, for plug-and-play checks
        frozen = FrozenCopy(params, device="cpu")
        unet.requires_grad_(False)

        with torch.no_grad():
            original = encode(prompts)  # TE*(c) for every concept and retain prompt
            uncond = encode([""])

        counter = SampleSteps()  # what this process's frozen model samples (nothing when reloaded on resume)

        def compute(ids: list[int]) -> dict[str, torch.Tensor]:
            return frozen_predictions(unet, ddim, original, uncond, [samples[i] for i in ids], s.shape, c.guidance,
                                      s.ac, s.kind, counter=counter, batch_size=c.precompute_batch)

        store = None
        if c.precompute:
            with s.meter.phase("precompute"):
                mine = sorted({i for st in plan for ids in self._my_ids(st, rank, c) for i in ids})
                store = SampleStore.precomputed(s.checkpoint_dir, DATA_STEM, compute, DATA_KEYS, mine=mine,
                                                state=s.state, resume=resume, batch_size=c.precompute_batch,
                                                key=lambda i: samples[i].depth,
                                                group=lambda i: trajectory_of(samples[i]), progress=progress)
            if counter.points:
                logger.info("advunlearn: %d x_t from %d trajectories in %d frozen sample-steps (%d with one "
                            "trajectory per sample)", counter.points, counter.trajectories, counter.executed,
                            counter.independent)

        def rows(ids: list[int]):
            if store is not None:
                return store.rows(ids, DATA_KEYS, device)
            with torch.no_grad():
                return [compute(ids)[k] for k in DATA_KEYS]

        attack = SoftPromptAttack(c.attack_config())
        # The attack's latest delta and the per-step records, checkpointed with the text encoder.
        log = StateDict(delta=None, delta_prompt=None, attack=[], unlearn=[], retain=[])

        def attack_round(step: int, st: _Step) -> None:
            blocks = [process_block(ids, c.attack_batch, rank) for ids in st.attack]

            def batch(i: int):
                x_t, t, eps_c, _ = rows(blocks[i])
                return x_t, t, eps_c

            result = attack.run(pipe, softs[st.prompt], batch, init=log["delta"], seed=f"advunlearn/{c.seed}/{step}",
                                average_gradients=world > 1)
            log["delta"], log["delta_prompt"] = result.delta, st.prompt
            log["attack"].append([result.losses[0], result.losses[-1]])

        def loss_fn(step: int) -> torch.Tensor:
            st = plan[step]
            if st.attack is not None:
                attack_round(step, st)
            concept = process_block(st.concept, c.batch_size, rank)
            retain = process_block(st.retain, c.retain_batch, rank)
            x_t, t, eps_c, eps_u = rows(concept + retain)
            if step < c.warmup:  # warm-up: the plain concept prompt
                hidden = encode([prompts[st.prompt]]).hidden
            else:
                hidden = encode_soft_prompt(te, softs[log["delta_prompt"]], log["delta"])
            hidden = hidden.expand(len(concept), -1, -1)
            if retain:
                hidden = torch.cat([hidden, encode([prompts[samples[i].prompt] for i in retain]).hidden.to(hidden.dtype)])
            eps = eps_from_output(s.ac, unet_output(unet, x_t, t, Conditions(hidden)), x_t, t, s.kind).float()
            b = len(concept)
            unlearn = F.mse_loss(eps[:b], cfg(eps_u[:b], eps_c[:b], -c.eta))  # ESD target, eta = negative guidance
            loss = unlearn
            log["unlearn"].append(float(unlearn.detach()))
            if retain:
                kept = F.mse_loss(eps[b:], eps_c[b:])
                log["retain"].append(float(kept.detach()))
                loss = unlearn + c.gamma * kept
            return loss

        loop = TrainLoop(
            te, params, lr=c.lr, steps=c.steps, optimizer="adam", mixed_precision=s.mixed,
            gradient_checkpointing=c.gradient_checkpointing, checkpointed=(unet,), checkpoint_dir=s.checkpoint_dir,
            checkpoint_every=c.checkpoint_every, progress=progress, stage="training",
        )
        loop.track("method_state", log)
        if resume:
            loop.resume()
        with s.meter.phase("training"):
            losses = loop.run(loss_fn)
        tensors = loop.finish(frozen, prefix="text_encoder.")
        logger.info("advunlearn: %d of %d trained tensors changed, %d attack rounds", len(tensors), len(params),
                    len(log["attack"]))
        return self.trained_edit(
            req, tensors, params, cost=s.meter.summary(), device=device, mixed_precision=s.mixed, num_processes=world,
            extra={
                "components": {"text_encoder": record},
                "resolution": s.resolution,
                "prediction_type": s.kind,
                "frozen_samples": len(samples),
                "attack_rounds": len(log["attack"]),
                "attack_loss_first_mean": _mean([a[0] for a in log["attack"]]),
                "attack_loss_last_mean": _mean([a[1] for a in log["attack"]]),
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "unlearn_loss_last_10pct": tail_mean(log["unlearn"]),
                "retain_loss_last_10pct": tail_mean(log["retain"]),
                "targets": _spread(req, plan, groups),
                "sample_steps": counter.as_dict(),
            },
        )

    # -- diagnostics (tests, benches)
    def concept_samples(self, pipe, request, n: int = 8, seed: int | str = "diagnostic") -> dict:
        """``n`` frozen samples of the first concept prompt (x_t, t, ESD target), drawn from ``seed``."""
        c: AdvUnlearnConfig = self.config
        s = setup_model(pipe, request, c.resolution)
        ddim = ddim_for(pipe.scheduler, c.ddim_steps)
        points = draw_points(str(seed), n, ddim, c.timesteps, pipe.scheduler.config.num_train_timesteps)
        with torch.no_grad():
            cond, uncond = s.encode(s.request.prompts[:1]), s.encode([""])
            out = frozen_predictions(pipe.unet, ddim, cond, uncond, points, s.shape, c.guidance, s.ac, s.kind)
        return {"prompt": s.request.prompts[0], "x_t": out["x_t"], "t": out["t"],
                "target": cfg(out["eps_uncond"], out["eps_cond"], -c.eta)}

    def esd_loss(self, pipe, samples: dict) -> float:
        """The unlearning (ESD) loss of ``pipe`` as it is now, plain concept prompt, on ``concept_samples``."""
        ac, kind = alphas_cumprod(pipe.scheduler, pipe.unet.device), prediction_type(pipe.scheduler)
        with torch.no_grad():
            cond = TextConditioner(pipe, self.config.resolution or native_resolution(pipe))([samples["prompt"]])
            x_t, t = samples["x_t"], samples["t"]
            out = unet_output(pipe.unet, x_t, t, cond.index([0] * len(x_t)))
            return float(F.mse_loss(eps_from_output(ac, out, x_t, t, kind).float(), samples["target"].float()))

    # -- the data
    @staticmethod
    def _my_ids(st: _Step, rank: int, c: AdvUnlearnConfig) -> list[list[int]]:
        """The sample ids of ``st`` that process ``rank`` trains on."""
        ids = [process_block(st.concept, c.batch_size, rank), process_block(st.retain, c.retain_batch, rank)]
        return ids + [process_block(a, c.attack_batch, rank) for a in st.attack or []]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None

