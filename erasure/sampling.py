"""The frozen model's training samples, written once: the sampling plan, the frozen predictions and
the store that keeps them for a run.

- ``TrajectoryPoint`` / ``draw_point`` / ``draw_points``: one sample of the frozen model on its own
  partial DDIM trajectory (prompt, depth, noise seed, timestep), drawn from a seeded
  ``random.Random`` per sample index, so a plan is a pure function of (key, index). This is the
  draw of ESD (Gandikota et al. 2023; rohitgandikota/erasing), AdvUnlearn (Zhang et al. 2024;
  OPTML-Group/AdvUnlearn) and the soft-prompt attack (``erasure.attacks``).
- ``share_trajectories`` (``trajectories: shared``, a deviation from the papers, off by default): the
  same plan with its noise seeds reassigned so that several samples of a prompt lie on one
  trajectory at different depths, each (trajectory, depth) used once.
- ``frozen_predictions``: x_t (DDIM with guidance from each sample's own noise down to its depth;
  samples that share a prompt and a noise seed from one trajectory) and the frozen model's
  conditional and unconditional noise estimates there.
- ``process_block`` / ``step_block``: the part of a step's global batch one process trains on.
- ``SampleStore``: samples computed once in batches (similar depths together, a trajectory's samples
  in one batch) and kept for the run:
  each process saves the rows it computed beside the checkpoint and reloads them on resume (ESD,
  AdvUnlearn), or the processes' rows are gathered so every process holds all of them and the main
  one saves them in one file (DoCo's anchor images). ``teacher_samples`` keeps its rows in memory.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from erasure.atomic import atomic_path
from erasure.diffusion import Conditions, SampleSteps, eps_from_output, sample_trajectory_points, unet_output
from erasure.errors import ErasureInputError

#: What ``progress(stage, done, total, metrics)`` is called with while samples are computed.
SAMPLING_STAGE = "sampling x_t"
#: Where a plan's x_t come from: "per-step", a fresh trajectory per sample (the papers' and the
#: references'); "shared", several samples of a prompt taken from one trajectory (``share_trajectories``).
TRAJECTORY_MODES = ("per-step", "shared")


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class TrajectoryPoint:
    """One sample of the frozen model: the prompt (an index into the caller's prompt table), the DDIM
    depth its trajectory stops at, the seed of its starting noise and the timestep it is evaluated at."""

    prompt: int
    depth: int
    noise_seed: int
    timestep: int


def draw_point(rng: random.Random, ddim, mode: str, num_train_timesteps: int,
               n_prompts: int | None = None) -> TrajectoryPoint:
    """One sample from ``rng``: DDIM depth uniform in [0, ddim steps); with ``n_prompts``, a prompt
    uniform among them (else prompt 0, drawing nothing); the noise seed; the timestep, the DDIM
    step's own ("matched") or uniform in the depth's bin of the training range ("reference", the
    CompVis ESD script's). The draws are made in that order."""
    steps = ddim.num_inference_steps
    depth = rng.randrange(steps)
    prompt = rng.randrange(n_prompts) if n_prompts is not None else 0
    noise_seed = rng.randrange(2**31)
    if mode == "matched":
        timestep = int(ddim.timesteps[depth])
    else:
        lo = round(depth / steps * num_train_timesteps)
        hi = round((depth + 1) / steps * num_train_timesteps)
        timestep = rng.randrange(lo, max(hi, lo + 1))
    return TrajectoryPoint(prompt, depth, noise_seed, timestep)


def draw_points(key: str, n: int, ddim, mode: str, num_train_timesteps: int,
                n_prompts: int | None = None) -> list[TrajectoryPoint]:
    """``n`` samples, sample i drawn by ``draw_point`` from ``random.Random(f"{key}/{i}")``."""
    return [draw_point(random.Random(f"{key}/{i}"), ddim, mode, num_train_timesteps, n_prompts) for i in range(n)]


def check_trajectories(prefix: str, mode: str) -> None:
    """One-line ``ErasureInputError`` for an unknown ``trajectories`` setting (``prefix``: the caller's)."""
    if mode not in TRAJECTORY_MODES:
        raise ErasureInputError(f"{prefix}trajectories: {mode!r}; expected one of {', '.join(TRAJECTORY_MODES)}")


def share_trajectories(points: Sequence[TrajectoryPoint], key: str) -> list[TrajectoryPoint]:
    """``points`` with their noise seeds reassigned so that samples of one prompt share trajectories.

    A deviation from ESD (Gandikota et al. 2023; rohitgandikota/erasing draws a fresh trajectory for
    every iteration) and AdvUnlearn, for ``trajectories: shared``: every point keeps its prompt, depth
    and timestep (so the plan's distribution of those, and everything else drawn with them, is
    unchanged); only where its x_t comes from changes. The points of prompt p are packed into W_p
    trajectories, W_p the largest number of its points at any one depth: the m-th point of (p, d) in
    plan order goes to trajectory (m + o_pd) mod W_p, the offset o_pd drawn from ``key``, so a
    trajectory holds at most one point per depth (each (trajectory, depth) is used once) and
    consecutive iterations draw from different trajectories. Trajectory j of prompt p starts from
    the j-th of W_p distinct seeds drawn from ``random.Random(f"{key}/trajectories/{p}")``.

    The frozen model then runs about W_p trajectories to (near) the last depth instead of one per
    point to its depth: with n points of one prompt over D depths, roughly (n/D + a few sqrt(n/D))
    trajectories of D - 1 steps against n (D - 1) / 2 steps. The x_t of a trajectory are correlated,
    so a run sees fewer independent samples of the concept: a quality question, measured per preset by
    bench/trajectory_reuse.py (ESD-x on canvas-mini styles held; ESD-u and AdvUnlearn lost UA).
    """
    per_depth = Counter((p.prompt, p.depth) for p in points)
    width: dict[int, int] = {}
    for (prompt, _), count in per_depth.items():
        width[prompt] = max(width.get(prompt, 0), count)
    seeds = {prompt: _distinct_seeds(random.Random(f"{key}/trajectories/{prompt}"), w) for prompt, w in width.items()}
    offset = {pd: random.Random(f"{key}/offset/{pd[0]}/{pd[1]}").randrange(width[pd[0]]) for pd in sorted(per_depth)}
    seen: Counter = Counter()
    out = []
    for p in points:
        pd = (p.prompt, p.depth)
        j = (seen[pd] + offset[pd]) % width[p.prompt]
        seen[pd] += 1
        out.append(dataclasses.replace(p, noise_seed=seeds[p.prompt][j]))
    return out


def _distinct_seeds(rng: random.Random, n: int) -> list[int]:
    """``n`` distinct noise seeds from ``rng`` (two trajectories of a prompt must not merge)."""
    seeds: list[int] = []
    while len(seeds) < n:
        seed = rng.randrange(2**31)
        if seed not in seeds:
            seeds.append(seed)
    return seeds


def trajectory_of(point: TrajectoryPoint) -> tuple[int, int]:
    """The trajectory a point lies on: its prompt and noise seed (what its x_t depends on besides its depth)."""
    return (point.prompt, point.noise_seed)


def process_block(ids: Sequence[int], per_process: int, rank: int) -> list[int]:
    """Block ``rank`` of ``per_process`` entries of ``ids`` (a step's global batch): what process ``rank`` takes."""
    return list(ids[rank * per_process:(rank + 1) * per_process])


def step_block(step: int, per_process: int, rank: int, world: int) -> list[int]:
    """Process ``rank``'s sample indices at ``step`` when step s's global batch is the samples
    ``[s B W, (s+1) B W)`` (``B = per_process``, ``W = world``)."""
    start = step * per_process * world
    return process_block(range(start, start + per_process * world), per_process, rank)


# ----------------------------------------------------------------------------- frozen predictions
@torch.no_grad()
def frozen_predictions(unet, ddim, prompts: Conditions, uncond: Conditions, points: Sequence[TrajectoryPoint],
                       shape: tuple[int, int, int], guidance: float, ac: torch.Tensor, kind: str, *,
                       counter: SampleSteps | None = None, batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """For each point: x_t (DDIM with guidance ``guidance`` from its noise seed down to its depth, with
    the prompt ``prompts[point.prompt]``) and ``unet``'s noise estimates there at the point's
    timestep, with that prompt and with ``uncond``: ``{"x_t", "t", "eps_cond", "eps_uncond"}``, the
    estimates in float32. Call it with the frozen model's weights in place.

    Points on one trajectory (``trajectory_of``: same prompt and seed) are taken from one run of it.
    ``counter`` adds up the sampler's sample-steps; ``batch_size`` bounds the rows of one noise-estimate
    call (None: all points at once).
    """
    trajectories: dict[tuple[int, int], int] = {}
    pairs = [(trajectories.setdefault(trajectory_of(p), len(trajectories)), p.depth) for p in points]
    cond = prompts.index([prompt for prompt, _ in trajectories])
    x_t = sample_trajectory_points(unet, ddim, cond, uncond, [seed for _, seed in trajectories], pairs, shape,
                                   guidance, counter)
    t = torch.tensor([p.timestep for p in points], device=x_t.device)
    step = batch_size or max(len(points), 1)
    parts = [_noise_estimates(unet, prompts.index([p.prompt for p in points[i:i + step]]), uncond,
                              x_t[i:i + step], t[i:i + step], ac, kind) for i in range(0, len(points), step)]
    eps_u = torch.cat([u for u, _ in parts]) if parts else x_t.float()
    eps_c = torch.cat([c for _, c in parts]) if parts else x_t.float()
    return {"x_t": x_t, "t": t, "eps_cond": eps_c, "eps_uncond": eps_u}


def _noise_estimates(unet, cond: Conditions, uncond: Conditions, x_t: torch.Tensor, t: torch.Tensor,
                     ac: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(unconditional, conditional) float32 noise estimates of ``x_t`` at ``t``, in one batched call."""
    n = len(x_t)
    both = Conditions.cat([uncond if len(uncond) == n else uncond.index([0] * n), cond])
    x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
    eps_u, eps_c = eps_from_output(ac, unet_output(unet, x2, t2, both), x2, t2, kind).float().chunk(2)
    return eps_u, eps_c


# ----------------------------------------------------------------------------- the store
class SampleStore:
    """Rows of tensors keyed by sample id (``data["ids"]``), computed once and kept for a run."""

    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.data = data
        self._row = {int(i): r for r, i in enumerate(data["ids"].tolist())}

    def __len__(self) -> int:
        return len(self._row)

    @property
    def ids(self) -> list[int]:
        return self.data["ids"].tolist()

    def rows(self, ids: Sequence[int], keys: Sequence[str], device=None) -> list[torch.Tensor]:
        """The rows of ``ids`` of each of ``keys`` (on ``device`` when given)."""
        r = [self._row[int(i)] for i in ids]
        out = [self.data[k][r] for k in keys]
        return out if device is None else [v.to(device) for v in out]

    # -- computing
    @classmethod
    def compute(cls, ids: Sequence[int], fn: Callable[[list[int]], dict[str, torch.Tensor]], keys: Sequence[str], *,
                batch_size: int, key: Callable[[int], object] | None = None,
                group: Callable[[int], Hashable] | None = None, progress=None,
                stage: str = SAMPLING_STAGE) -> "SampleStore":
        """``fn(batch ids) -> {name: rows}`` (``keys``: the names) over ``ids`` in batches, ordered by
        ``key`` first (e.g. the depth: similar depths step together); rows kept on the CPU.
        ``progress(stage, done, total, {})`` after each batch.

        A batch holds ``batch_size`` ids, or with ``group`` (e.g. ``trajectory_of``) ``batch_size``
        whole groups, ordered by their last id's ``key``: the samples of one trajectory are computed
        in one run of it. Ids in groups of one batch exactly as without ``group``."""
        order = sorted(ids, key=key) if key is not None else list(ids)
        batches = _batches(order, batch_size, key, group)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        done = 0
        if progress:
            progress(stage, 0, len(order), {})
        with torch.no_grad():
            for batch in batches:
                for name, value in fn(batch).items():
                    parts.setdefault(name, []).append(value.cpu())
                done += len(batch)
                if progress:
                    progress(stage, done, len(order), {})
        data = {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}
        data["ids"] = torch.tensor([i for batch in batches for i in batch], dtype=torch.long)
        return cls(data)

    def gathered(self, everyone: Sequence[Sequence[int]], state) -> "SampleStore":
        """Every process's rows, in process order (``everyone[r]``: process r's ids, as it computed
        them); each process calls it with the same ``everyone``."""
        from accelerate.utils import gather, gather_object

        keys = [k for k in self.data if k != "ids"]
        # A process may hold no rows; the others' give the row shape of each tensor.
        layouts = gather_object([{k: (tuple(self.data[k].shape[1:]), self.data[k].dtype)
                                  for k in keys if len(self.data[k])}])
        most = max(len(ids) for ids in everyone)
        data = {}
        for name in keys:
            row_shape, dtype = next(layout[name] for layout in layouts if name in layout)
            padded = torch.zeros((most, *row_shape), dtype=dtype)  # equal shapes for all_gather
            if len(self.data[name]):
                padded[:len(self.data[name])] = self.data[name]
            every = gather(padded.to(state.device)).cpu()
            data[name] = torch.cat([every[r * most:r * most + len(ids)] for r, ids in enumerate(everyone)])
        data["ids"] = torch.tensor([i for ids in everyone for i in ids], dtype=torch.long)
        return SampleStore(data)

    # -- files
    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.data.items()}, str(tmp))

    @classmethod
    def load(cls, path: Path, ids: Sequence[int], keys: Sequence[str]) -> "SampleStore | None":
        """The rows saved at ``path`` if the file holds exactly ``keys`` for exactly ``ids``, else None."""
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        data = load_file(str(path))
        if set(data) != {*keys, "ids"} or sorted(data["ids"].tolist()) != sorted(ids):
            return None
        return cls(data)

    @classmethod
    def precomputed(cls, directory: Path | None, stem: str, fn: Callable[[list[int]], dict[str, torch.Tensor]],
                    keys: Sequence[str], *, mine: Sequence[int], state, resume: bool, batch_size: int,
                    key: Callable[[int], object] | None = None, group: Callable[[int], Hashable] | None = None,
                    everyone: Sequence[Sequence[int]] | None = None,
                    progress=None, stage: str = SAMPLING_STAGE) -> "SampleStore":
        """The run's samples: loaded from ``directory`` on ``resume`` when there, else computed by
        ``fn`` (``keys``: the names it returns; batched as ``compute`` batches with ``key`` and ``group``)
        and saved there (``directory`` None: nothing is saved).

        Without ``everyone`` each process computes its own ids ``mine`` and keeps them in its own
        file, ``{stem}-{rank}-of-{world}.safetensors``: on resume it needs exactly those. With
        ``everyone`` (every process's ids, ``mine`` among them) the rows are gathered so every
        process holds all of them, and the main process saves them as ``{stem}.safetensors``, which
        every process reads on resume.
        """
        rank, world = state.process_index, state.num_processes
        name = f"{stem}.safetensors" if everyone is not None else f"{stem}-{rank}-of-{world}.safetensors"
        path = directory / name if directory is not None else None
        wanted = [i for ids in everyone for i in ids] if everyone is not None else list(mine)
        store = cls.load(path, wanted, keys) if (resume and path is not None) else None
        if store is not None:
            return store
        store = cls.compute(mine, fn, keys, batch_size=batch_size, key=key, group=group, progress=progress,
                            stage=stage)
        if everyone is not None:
            if world > 1:
                store = store.gathered(everyone, state)
            if path is not None and state.is_main_process:
                store.save(path)
        elif path is not None:
            store.save(path)
        return store


def _batches(order: list[int], batch_size: int, key: Callable[[int], object] | None,
             group: Callable[[int], Hashable] | None) -> list[list[int]]:
    """``order`` cut into batches of ``batch_size`` ids, or of ``batch_size`` whole groups (see ``compute``)."""
    if group is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    members: dict[Hashable, list[int]] = {}
    for i in order:
        members.setdefault(group(i), []).append(i)
    groups = list(members.values())
    if key is not None:  # groups that end at similar depths run together (stable: single ids keep ``order``)
        groups.sort(key=lambda g: key(g[-1]))
    return [[i for g in groups[j:j + batch_size] for i in g] for j in range(0, len(groups), batch_size)]
