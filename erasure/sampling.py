"""The frozen model's training samples, written once: the sampling plan, the frozen predictions and
the store that keeps them for a run.

- ``TrajectoryPoint`` / ``draw_point`` / ``draw_points``: one sample of the frozen model on its own
  partial DDIM trajectory (prompt, depth, noise seed, timestep), drawn from a seeded
  ``random.Random`` per sample index, so a plan is a pure function of (key, index). This is the
  draw of ESD (Gandikota et al. 2023; rohitgandikota/erasing), AdvUnlearn (Zhang et al. 2024;
  OPTML-Group/AdvUnlearn) and the soft-prompt attack (``erasure.attacks``).
- ``frozen_predictions``: x_t (DDIM with guidance from each sample's own noise down to its depth)
  and the frozen model's conditional and unconditional noise estimates there.
- ``process_block`` / ``step_block``: the part of a step's global batch one process trains on.
- ``SampleStore``: samples computed once in batches (similar depths together) and kept for the run:
  each process saves the rows it computed beside the checkpoint and reloads them on resume (ESD,
  AdvUnlearn), or the processes' rows are gathered so every process holds all of them and the main
  one saves them in one file (DoCo's anchor images). ``teacher_samples`` keeps its rows in memory.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from erasure.atomic import atomic_path
from erasure.diffusion import Conditions, eps_from_output, sample_partial_trajectories, unet_output

#: What ``progress(stage, done, total, metrics)`` is called with while samples are computed.
SAMPLING_STAGE = "sampling x_t"


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
                       shape: tuple[int, int, int], guidance: float, ac: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """For each point: x_t (DDIM with guidance ``guidance`` from its noise seed down to its depth, with
    the prompt ``prompts[point.prompt]``) and ``unet``'s noise estimates there at the point's
    timestep, with that prompt and with ``uncond``: ``{"x_t", "t", "eps_cond", "eps_uncond"}``, the
    estimates in float32. Call it with the frozen model's weights in place."""
    cond = prompts.index([p.prompt for p in points])
    x_t = sample_partial_trajectories(unet, ddim, cond, uncond, [p.depth for p in points],
                                      [p.noise_seed for p in points], shape, guidance)
    n = len(points)
    t = torch.tensor([p.timestep for p in points], device=x_t.device)
    both = Conditions.cat([uncond if len(uncond) == n else uncond.index([0] * n), cond])
    x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
    eps_u, eps_c = eps_from_output(ac, unet_output(unet, x2, t2, both), x2, t2, kind).float().chunk(2)
    return {"x_t": x_t, "t": t, "eps_cond": eps_c, "eps_uncond": eps_u}


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
                batch_size: int, key: Callable[[int], object] | None = None, progress=None,
                stage: str = SAMPLING_STAGE) -> "SampleStore":
        """``fn(batch ids) -> {name: rows}`` (``keys``: the names) over ``ids`` in batches of
        ``batch_size``, ordered by ``key`` first (e.g. the depth: similar depths step together); rows
        kept on the CPU. ``progress(stage, done, total, {})`` after each batch."""
        order = sorted(ids, key=key) if key is not None else list(ids)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        if progress:
            progress(stage, 0, len(order), {})
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                for name, value in fn(batch).items():
                    parts.setdefault(name, []).append(value.cpu())
                if progress:
                    progress(stage, start + len(batch), len(order), {})
        data = {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}
        data["ids"] = torch.tensor(order, dtype=torch.long)
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
                    key: Callable[[int], object] | None = None, everyone: Sequence[Sequence[int]] | None = None,
                    progress=None, stage: str = SAMPLING_STAGE) -> "SampleStore":
        """The run's samples: loaded from ``directory`` on ``resume`` when there, else computed by
        ``fn`` (``keys``: the names it returns) and saved there (``directory`` None: nothing is saved).

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
        store = cls.compute(mine, fn, keys, batch_size=batch_size, key=key, progress=progress, stage=stage)
        if everyone is not None:
            if world > 1:
                store = store.gathered(everyone, state)
            if path is not None and state.is_main_process:
                store.save(path)
        elif path is not None:
            store.save(path)
        return store
