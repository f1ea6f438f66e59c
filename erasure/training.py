"""Training machinery every erasure method shares: parameter selection, frozen copies, the loop.

- ``select_parameters(module, preset_or_patterns)``: the tensors a method trains, by named preset
  ("attn2", "non-attn2", "attn2-kv", "ffn", "text-encoder-layers", "all") or regular expressions
  over parameter names.
- ``FrozenCopy``: keeps the original values of only the trained tensors (not a second model),
  can swap them into the live module for a frozen-model call (``with frozen.original(): ...``) and
  reports which tensors changed.
- ``setup_run``: what every training method's ``__call__`` starts from (resolved request, device,
  resolution, latent shape, prediction type, noise schedule, text conditioner, mixed precision,
  process state, cost meter, checkpoint folder), as one ``RunSetup``; ``setup_model``: its
  model-only part, for the methods' diagnostics.
- ``TrainLoop``: an ``accelerate.Accelerator`` loop (mixed precision, gradient checkpointing on
  request) with fp32 master copies of the trained tensors, progress callbacks, cost accounting and
  atomic checkpoints every N steps that ``resume`` continues from exactly. Under ``accelerate
  launch`` with several processes it is data-parallel (see ``TrainLoop``). Methods extend it in
  one way: ``track(name, obj)`` adds state of their own to the checkpoint, and ``run_steps``
  runs steps that compute (or apply) their gradients themselves.
- ``mean_over_processes`` / ``average_gradients``: the one all-reduce mean of the data-parallel
  methods and the attack.
- ``tail_mean``: the mean of the last 10% of a run's recorded values (the edits' summaries).
- ``process_state``: accelerate's process-wide state (rank, number of processes, barrier).
- ``CostMeter``: wall time and peak memory (CUDA max allocated, else process peak RSS);
  ``StageClock``: seconds per unit of each progress stage (per training step, per sample).
- ``ZeroBeta1Adam`` / ``adam`` / ``step_in_backward``: optimiser memory savings that change no update.
"""

from __future__ import annotations

import logging
import math
import os
import re
import resource
import sys
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from erasure.atomic import atomic_path
from erasure.edit import CHECKPOINT_DIR
from erasure.errors import ErasureInputError

if typing.TYPE_CHECKING:
    from erasure.diffusion import TextConditioner

logger = logging.getLogger(__name__)

#: progress(stage, done, total, metrics): the CLI draws one bar per stage from it.
ProgressFn = Callable[[str, int, int, dict], None]

_LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d)

#: Named parameter sets. Each is (regular expression a parameter name must match, expression it must
#: not match, whether only Linear/Conv2d weights and biases count).
PARAMETER_PRESETS: dict[str, tuple[str, str | None, bool]] = {
    # UNet cross-attention (ESD-x): every projection of attn2.
    "attn2": (r"(^|\.)attn2\.", None, True),
    # Cross-attention keys and values only (DoCo, ESD-x-strict).
    "attn2-kv": (r"(^|\.)attn2\.to_(k|v)\.", None, True),
    # Everything but cross-attention (ESD-u): every Linear/Conv2d outside attn2.
    "non-attn2": (r".*", r"(^|\.)attn2\.", True),
    # Transformer feed-forward layers.
    "ffn": (r"(^|\.)ff\.net\.", None, True),
    # Text-encoder transformer layers and final norm (AdvUnlearn); embeddings excluded.
    "text-encoder-layers": (r"(^|\.)(encoder\.layers\.|final_layer_norm\.)", None, False),
    "all": (r".*", None, False),
}


def select_parameters(module: torch.nn.Module, selection: str | Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """Parameters of ``module`` chosen by a preset name or by regular expressions over names.

    ``selection``: a key of ``PARAMETER_PRESETS``, or a list of regular expressions (a parameter is
    chosen when any matches, searched anywhere in its dotted name). Raises ``ErasureInputError`` when
    nothing matches.
    """
    if isinstance(selection, str):
        if selection not in PARAMETER_PRESETS:
            raise ErasureInputError(
                f"unknown parameter set {selection!r}; expected one of {', '.join(PARAMETER_PRESETS)} or a list of patterns"
            )
        include, exclude, layers_only = PARAMETER_PRESETS[selection]
        inc, exc = re.compile(include), re.compile(exclude) if exclude else None
        chosen: dict[str, torch.nn.Parameter] = {}
        for mod_name, mod in module.named_modules():
            if layers_only and not isinstance(mod, _LAYER_TYPES):
                continue
            for p_name, p in mod.named_parameters(recurse=False):
                name = f"{mod_name}.{p_name}" if mod_name else p_name
                if inc.search(name) and not (exc and exc.search(name)):
                    chosen[name] = p
        order = {n: i for i, (n, _) in enumerate(module.named_parameters())}
        chosen = dict(sorted(chosen.items(), key=lambda kv: order[kv[0]]))
    else:
        try:
            patterns = [re.compile(p) for p in selection]
        except re.error as exc:
            raise ErasureInputError(f"bad parameter pattern: {exc}") from None
        chosen = {n: p for n, p in module.named_parameters() if any(r.search(n) for r in patterns)}
    if not chosen:
        raise ErasureInputError(f"parameter selection {selection!r} matches no parameter of {type(module).__name__}")
    return chosen


class FrozenCopy:
    """The original values of the trained tensors only; the rest of the model is shared, not copied.

    ``original()`` swaps the saved values into the live parameters for a frozen-model call (pointer
    swaps, no copies); ``changed()`` lists the tensors that differ from the originals.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], device: torch.device | str | None = None) -> None:
        self.params = params
        # On another device (the CPU) the copy costs no accelerator memory; swapping it in then copies.
        self.saved = {n: p.detach().to(device or p.device, copy=True) for n, p in params.items()}

    @contextmanager
    def original(self) -> Iterator[None]:
        live = {n: p.data for n, p in self.params.items()}
        try:
            for n, p in self.params.items():
                p.data = self.saved[n].to(p.device, p.dtype)
            yield
        finally:
            for n, p in self.params.items():
                p.data = live[n]

    def changed(self) -> dict[str, torch.Tensor]:
        """The parameters whose values differ (compared in float32) from the saved originals."""
        out = {}
        for n, p in self.params.items():
            saved = self.saved[n]
            if not torch.equal(p.detach().to(saved.device, torch.float32), saved.float()):
                out[n] = p.detach()
        return out

    def restore(self) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.data = self.saved[n].to(p.device, p.dtype, copy=True)


# ----------------------------------------------------------------------------- optimisers
class ZeroBeta1Adam(torch.optim.Optimizer):
    """Adam with ``beta1 = 0`` and no first-moment buffer: the updates of ``torch.optim.Adam(betas=(0, beta2))``.

    With ``beta1 = 0`` Adam's first moment is the current gradient (``lerp(m, g, 1) = g`` exactly)
    and its bias correction is 1, so the buffer holds a copy of the gradient and nothing else.
    SiD and SFD train with betas (0, 0.999) (tqch/score-forgetting-distillation, ``run_sfd.sh``);
    on SD 1.5 that buffer is 3.4 GB per trained UNet in float32. The arithmetic follows
    ``torch.optim.adam._single_tensor_adam`` op for op, so on the CPU the parameters equal torch's
    bit for bit (tests/test_training.py). ``step_parameter`` updates one tensor, for an optimiser
    step fused into the backward pass (``step_in_backward``).
    """

    def __init__(self, params, lr: float = 1e-3, beta2: float = 0.999, eps: float = 1e-8) -> None:
        if not 0 <= beta2 < 1:
            raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
        super().__init__(params, {"lr": lr, "beta2": beta2, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group)
        return loss

    @torch.no_grad()
    def step_parameter(self, p: torch.Tensor, group: dict) -> None:
        """Update ``p`` (a parameter of ``group``) alone from its ``.grad``, which the caller then frees."""
        self._update(p, p.grad, group)

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        beta2, step = group["beta2"], state["step"].item()
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
        p.addcdiv_(grad, denom, value=-group["lr"])


def adam(params, lr: float, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """``torch.optim.Adam``, or ``ZeroBeta1Adam`` (the same updates, one buffer fewer) when ``beta1`` is 0."""
    if betas[0] == 0:
        return ZeroBeta1Adam(params, lr=lr, beta2=betas[1], eps=eps)
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps)


@contextmanager
def step_in_backward(optimizer: ZeroBeta1Adam, params: Sequence[torch.nn.Parameter],
                     prepare_grad: Callable[[torch.Tensor], None] | None = None) -> Iterator[None]:
    """Within the block, each of ``params`` is updated as soon as its gradient is complete, then the
    gradient is freed: no gradient buffer for the whole network ever exists.

    PyTorch's pattern for fusing the optimiser into the backward pass
    (``Tensor.register_post_accumulate_grad_hook``; tutorial "How to save memory by fusing the
    optimizer step into the backward pass"). Equal to ``backward(); step()`` when each parameter's
    update depends on its own gradient only (Adam-type optimisers, per-element clipping and
    ``prepare_grad``), and every parameter is used once in the forward (a UNet's are).
    """
    group_of = {p: g for g in optimizer.param_groups for p in g["params"]}

    def hook(p: torch.Tensor) -> None:
        if prepare_grad is not None:
            prepare_grad(p.grad)
        optimizer.step_parameter(p, group_of[p])
        p.grad = None

    handles = [p.register_post_accumulate_grad_hook(hook) for p in params]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------- cost
@dataclass
class CostMeter:
    """Wall time per phase and peak memory of a run."""

    device: torch.device
    phases: dict[str, float] = field(default_factory=dict)
    _start: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> dict:
        out = {"wall_seconds": round(time.perf_counter() - self._start, 3),
               "phases_seconds": {k: round(v, 3) for k, v in self.phases.items()}}
        if self.device.type == "cuda":
            out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
            out["peak_memory_kind"] = "cuda_max_allocated"
        else:
            out["peak_memory_bytes"] = peak_rss_bytes()
            out["peak_memory_kind"] = "process_peak_rss"
        return out


class StageClock:
    """A progress callback that times every update of every stage, then passes it on.

    ``progress(stage, done, total, metrics)`` is called by methods after each unit of work (a
    training step, a batch of precomputed samples); the time between two updates of a stage,
    divided by the units they cover, is that work's cost. ``summary()`` gives per stage the units
    timed, their seconds, and the seconds per unit of the first update (start-up included) and
    the median of the rest. A stage whose count goes back (an attack run inside every step)
    starts a new round.
    """

    def __init__(self, progress: ProgressFn | None = None) -> None:
        self.progress = progress
        self._last: dict[str, tuple[float, int]] = {}
        self.updates: dict[str, list[tuple[float, int]]] = {}

    def __call__(self, stage: str, done: int, total: int, metrics: dict) -> None:
        now = time.perf_counter()
        last = self._last.get(stage)
        if last is not None and done > last[1]:
            self.updates.setdefault(stage, []).append((now - last[0], done - last[1]))
        self._last[stage] = (now, done)
        if self.progress is not None:
            self.progress(stage, done, total, metrics)

    def summary(self) -> dict[str, dict]:
        out = {}
        for stage, updates in self.updates.items():
            rest = sorted(seconds / units for seconds, units in updates[1:])
            out[stage] = {
                "units": sum(u for _, u in updates),
                "seconds": round(sum(s for s, _ in updates), 3),
                "first_per_unit": round(updates[0][0] / updates[0][1], 4),
                "median_per_unit": round(rest[len(rest) // 2], 4) if rest else None,
            }
        return out


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# ----------------------------------------------------------------------------- loop
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


def resolve_mixed_precision(name: str, dtype: torch.dtype, device: torch.device) -> str:
    """"auto": autocast in the pipeline's own half precision on CUDA (fp32 master weights), else none."""
    if name not in MIXED_PRECISION:
        raise ErasureInputError(f"unknown mixed_precision {name!r}; expected one of {', '.join(MIXED_PRECISION)}")
    if name == "auto":
        if dtype == torch.float32:
            return "no"
        if device.type != "cuda":
            raise ErasureInputError(f"training a {dtype} pipeline on {device.type} is not supported; load it in float32 (--dtype fp32)")
        return "bf16" if dtype == torch.bfloat16 else "fp16"
    if name == "no" and dtype != torch.float32:
        raise ErasureInputError(f"mixed_precision 'no' needs a float32 pipeline, this one is {dtype}; use 'auto' or load it with --dtype fp32")
    if name != "no" and device.type != "cuda":
        raise ErasureInputError(f"mixed_precision {name!r} needs a CUDA device; use 'no' on {device.type}")
    return name


def process_state(cpu: bool = False):
    """accelerate's ``PartialState``: process index, number of processes, ``wait_for_everyone``.

    Under ``accelerate launch`` / ``torchrun`` the first call joins the process group, and ``cpu``
    (the pipeline is on the CPU) picks gloo there; later calls return the same state whatever
    ``cpu`` says. Without a launcher it is one process and creates nothing.
    """
    from accelerate.state import PartialState

    return PartialState(cpu=cpu)


def make_accelerator(mixed_precision: str, device: torch.device):
    """An ``accelerate.Accelerator`` for one run; a single-process state left by an earlier run with
    another precision is reset (accelerate keeps its state process-wide)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision) and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu", device_placement=False)


# ----------------------------------------------------------------------------- several processes
def _world_size() -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def mean_over_processes(value: torch.Tensor, *, in_place: bool = False) -> torch.Tensor:
    """``value``'s mean over the processes of the ``torch.distributed`` group: one ``all_reduce`` (which
    hands every process the same sum), divided by the number of processes. Without a group, or with
    one process, ``value`` itself. ``in_place``: the result is written into ``value`` (a gradient)."""
    world = _world_size()
    if world == 1:
        return value
    import torch.distributed as dist

    out = value if in_place else value.clone()
    dist.all_reduce(out)
    return out.div_(world)


def average_gradients(params: Iterable[torch.Tensor], *, fill_missing: bool = False) -> None:
    """Replace every parameter's ``.grad`` by its mean over the processes (``mean_over_processes``).

    A parameter without a gradient is skipped (the forward did not reach it: the same in every
    process, so the collectives stay matched and the optimiser skips it as in one process), or, with
    ``fill_missing``, given zeros first (where one process may have no gradient when another has:
    SFD's steps whose samples were all NaN).
    """
    for p in params:
        if p.grad is None:
            if not fill_missing:
                continue
            p.grad = torch.zeros_like(p)
        mean_over_processes(p.grad, in_place=True)


def tail_mean(values: Sequence[float]) -> float | None:
    """Mean of the last 10% (at least one) of ``values`` that are not NaN (a NaN records a step
    without that value); None when there is none. The edits' "mean of the last 10%" summaries."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return None
    tail = finite[-max(1, len(finite) // 10):]
    return sum(tail) / len(tail)


# ----------------------------------------------------------------------------- set-up
@dataclass
class RunSetup:
    """What a method's ``__call__`` (``setup_run``) or diagnostic (``setup_model``) starts from."""

    request: object  # the resolved ``ErasureRequest`` (None: ``setup_model`` without one)
    device: torch.device
    resolution: int
    shape: tuple[int, int, int]  # the UNet's input at ``resolution``
    kind: str  # prediction type
    ac: torch.Tensor  # alphas_cumprod on ``device``
    encode: TextConditioner
    # set by ``setup_run`` only:
    mixed: str | None = None  # resolved mixed precision
    state: object = None  # ``process_state()``
    meter: CostMeter | None = None
    checkpoint_dir: Path | None = None

    @property
    def rank(self) -> int:
        return self.state.process_index

    @property
    def world(self) -> int:
        return self.state.num_processes


def setup_model(pipe, request=None, resolution: int | None = None) -> RunSetup:
    """``request`` (if any) resolved for ``pipe``, the UNet's device and input shape at ``resolution``
    (default: the model's native one), the prediction type, the noise schedule and a
    ``TextConditioner``: what the methods' diagnostics need."""
    from erasure.diffusion import TextConditioner, alphas_cumprod, latent_shape, native_resolution, prediction_type

    device = pipe.unet.device
    resolution = resolution or native_resolution(pipe)
    return RunSetup(
        request=request.resolve(pipe) if request is not None else None,
        device=device,
        resolution=resolution,
        shape=latent_shape(pipe, resolution),
        kind=prediction_type(pipe.scheduler),
        ac=alphas_cumprod(pipe.scheduler, device),
        encode=TextConditioner(pipe, resolution),
    )


def setup_run(pipe, request, run_dir: str | os.PathLike | None, *, resolution: int | None = None,
              mixed_precision: str = "no", dtype: torch.dtype | None = None) -> RunSetup:
    """The common set-up of a training run on ``pipe`` (ESD, AdvUnlearn, DoCo, SFD): a ``CostMeter``
    started now, ``setup_model``'s pieces, ``mixed_precision`` resolved for ``dtype`` (the trained
    module's; default the UNet's), the process state (joined on the CPU backend for a CPU pipeline)
    and the run folder's checkpoint folder (None without a run folder)."""
    device = pipe.unet.device
    meter = CostMeter(device)
    setup = setup_model(pipe, request, resolution)
    setup.mixed = resolve_mixed_precision(mixed_precision, dtype or pipe.unet.dtype, device)
    setup.state = process_state(cpu=device.type == "cpu")
    setup.meter = meter
    setup.checkpoint_dir = Path(run_dir) / CHECKPOINT_DIR if run_dir is not None else None
    return setup


# ----------------------------------------------------------------------------- checkpointed state
class ParameterState:
    """Named tensors as checkpoint state (``TrainLoop.track``): saved on the CPU, restored in place;
    a checkpoint holding other names is refused."""

    def __init__(self, params: dict[str, torch.Tensor]) -> None:
        self.params = params

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu() for n, p in self.params.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if sorted(state) != sorted(self.params):
            raise ErasureInputError("the checkpoint holds other tensors than this run trains")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n])


class StateDict(dict):
    """A dictionary of plain values and tensors that is its own checkpoint state (``TrainLoop.track``):
    tensors are saved on the CPU; loading replaces the saved entries."""

    def state_dict(self) -> dict:
        return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in self.items()}

    def load_state_dict(self, state: dict) -> None:
        self.update(state)


#: The checkpoint file inside a run's checkpoint folder (``erasure.edit.CHECKPOINT_DIR``).
CHECKPOINT_FILE = "checkpoint.pt"


class TrainLoop:
    """Optimise ``params`` (inside ``model``) for ``steps`` steps, with checkpoints and exact resume.

    The trained tensors are held in float32 (master weights) whatever the model's dtype; with mixed
    precision the forward runs under autocast. Checkpoints are written atomically to
    ``checkpoint_dir/checkpoint.pt`` every ``checkpoint_every`` steps; ``resume()`` continues from
    the latest. Because every step's data must be a pure function of the step index (the caller's
    responsibility), a resumed run equals an uninterrupted one.

    A checkpoint holds the step, the recorded losses and metrics and every tracked state: the
    trained tensors ("params") and their optimiser ("optimizer"), plus what the method registers.

    Extending the loop (the one way every method does it):

    - ``track(name, obj)``: ``obj`` (anything with ``state_dict()``/``load_state_dict()``: a module,
      an optimiser, a gradient scaler, a ``ParameterState``, a ``StateDict``) is saved under
      ``name`` in every checkpoint and restored by ``resume``; a checkpoint without it is refused.
      DoCo tracks its discriminator and that one's optimiser, AdvUnlearn the attack's state, SFD
      its two networks, their optimisers and its loss scaler.
    - ``run(loss_fn)``: the plain step, ``loss_fn(step) -> loss`` under autocast, backward,
      gradients averaged over the processes, an optimiser step (ESD, AdvUnlearn).
    - ``run_steps(step_fn)``: ``step_fn(step) -> metrics`` does the step's work itself. It may leave
      gradients of the trained tensors in ``.grad`` (averaged over the processes by itself), which
      the loop's optimiser then applies (DoCo: gradient surgery), or update networks of its own and
      leave none (SFD, which gives the loop no ``params``). The metrics named in ``record`` are
      kept per step in ``history`` (checkpointed; NaN where a step returned none).

    Several processes (``accelerate launch``): each process calls ``loss_fn(step)`` on its own part
    of the step's global batch (the caller's responsibility, e.g. ESD's sample indices), and in
    ``run`` the trained tensors' gradients are averaged over the processes (``average_gradients``)
    before the optimiser step, so every process holds the same weights after every step; ``finish``
    checks that. The model is not wrapped in ``DistributedDataParallel``: methods call the
    pipeline's own modules, which would bypass the wrapper's hooks. Recorded losses are the means
    over the processes. Only the main process writes checkpoints; every process reads them.

    ``gradient_checkpointing`` applies to ``model`` and the ``checkpointed`` modules while the loop
    runs (those that support it and do not have it on already). ``device`` is needed only without
    ``params``.
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        params: dict[str, torch.nn.Parameter] | None,
        *,
        steps: int,
        lr: float | None = None,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        mixed_precision: str = "no",
        gradient_checkpointing: bool = False,
        checkpointed: Sequence[torch.nn.Module] = (),
        device: torch.device | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 0,
        progress: ProgressFn | None = None,
        stage: str = "training",
    ) -> None:
        self.model, self.params, self.steps = model, dict(params or {}), steps
        first = next(iter(self.params.values()), None)
        self.device = first.device if first is not None else torch.device(device)
        self.model_dtype = first.dtype if first is not None else None
        self.checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None
        self.checkpoint_every = checkpoint_every
        self.progress, self.stage = progress, stage
        self.gradient_checkpointing = gradient_checkpointing
        self.checkpointed = [m for m in (model, *checkpointed) if m is not None]
        self.losses: list[float] = []
        self.history: dict[str, list[float]] = {}
        self.tracked: dict[str, object] = {}
        self.accelerator = make_accelerator(mixed_precision, self.device)
        self.num_processes = self.accelerator.num_processes
        self.optimizer: torch.optim.Optimizer | None = None
        self.start_step = 0
        if not self.params:
            return
        model.requires_grad_(False)
        with torch.no_grad():
            for p in self.params.values():
                if p.dtype != torch.float32:
                    p.data = p.data.float()  # fp32 master weights
                p.requires_grad_(True)
        if optimizer == "adam":
            opt = torch.optim.Adam(self.params.values(), lr=lr, weight_decay=weight_decay)
        elif optimizer == "adamw":
            opt = torch.optim.AdamW(self.params.values(), lr=lr, weight_decay=weight_decay)
        else:
            raise ErasureInputError(f"unknown optimizer {optimizer!r}; expected adam or adamw")
        self.optimizer = opt
        self.track("params", ParameterState(self.params))
        self.track("optimizer", opt)

    # -- checkpoints
    def track(self, name: str, obj):
        """Save ``obj.state_dict()`` under ``name`` in every checkpoint and restore it on ``resume``; returns ``obj``."""
        if name in self.tracked or name in ("step", "losses", "history"):
            raise ValueError(f"checkpoint state {name!r} is taken")
        self.tracked[name] = obj
        return obj

    def resume(self) -> int:
        """Load the latest checkpoint if there is one; returns the step it continues from."""
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            return 0
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        for name, obj in self.tracked.items():
            if name not in state:
                raise ErasureInputError(f"{self.checkpoint_path}: checkpoint holds no {name!r} state; start a new run")
            try:
                obj.load_state_dict(state[name])
            except ErasureInputError as exc:
                raise ErasureInputError(f"{self.checkpoint_path}: {name}: {exc}") from None
        self.losses = list(state.get("losses", []))
        self.history = {k: list(v) for k, v in state.get("history", {}).items()}
        self.start_step = int(state["step"])
        logger.info("resumed from %s at step %d", self.checkpoint_path, self.start_step)
        return self.start_step

    def save_checkpoint(self, step: int) -> None:
        if self.checkpoint_path is None or not self.accelerator.is_main_process:
            return
        state = {
            "step": step,
            "losses": list(self.losses),
            "history": {k: list(v) for k, v in self.history.items()},
            **{name: obj.state_dict() for name, obj in self.tracked.items()},
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    # -- the loop
    def run(self, loss_fn: Callable[[int], torch.Tensor]) -> list[float]:
        """The plain step: ``loss_fn(step)`` under autocast, backward, gradients averaged over the
        processes, an optimiser step. Returns the recorded losses."""
        acc = self.accelerator
        with self._running():
            if self.num_processes == 1:
                prepared, optimizer = acc.prepare(self.model, self.optimizer)
            else:
                # Preparing the model would wrap it in DistributedDataParallel; gradients are averaged
                # explicitly instead, and ``acc.autocast()`` below covers mixed precision.
                prepared, optimizer = None, acc.prepare(self.optimizer)

            def step_fn(step: int) -> dict[str, float]:
                with acc.autocast():
                    loss = loss_fn(step)
                acc.backward(loss)
                if self.num_processes > 1:
                    average_gradients(self.params.values())
                    loss = mean_over_processes(loss.detach().float())
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.losses.append(float(loss.detach()))
                return {"loss": self.losses[-1]}

            try:
                self._steps(step_fn, lambda metrics: metrics)
            finally:
                if prepared is not None:
                    acc.unwrap_model(prepared, keep_fp32_wrapper=False)
                acc.free_memory()
        return self.losses

    def run_steps(self, step_fn: Callable[[int], dict[str, float]], *, record: Sequence[str] = (),
                  show: Sequence[str] | None = None) -> dict[str, list[float]]:
        """Steps whose work ``step_fn(step) -> metrics`` does itself (see the class docstring): the
        loop's optimiser steps when a trained tensor has a gradient, ``record``'s metrics are kept
        in ``history``, ``show``'s (default: all returned) go to the progress callback."""
        for key in record:
            self.history.setdefault(key, [])

        def step(i: int) -> dict[str, float]:
            metrics = step_fn(i)
            if self.optimizer is not None:
                if any(p.grad is not None for p in self.params.values()):
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            for key in record:
                self.history[key].append(float(metrics.get(key, math.nan)))
            return metrics

        def shown(metrics: dict[str, float]) -> dict[str, float]:
            return dict(metrics) if show is None else {k: metrics[k] for k in show if k in metrics}

        with self._running():
            self._steps(step, shown)
        return self.history

    def _steps(self, step_fn: Callable[[int], dict[str, float]], shown: Callable[[dict], dict]) -> None:
        if self.progress:
            self.progress(self.stage, self.start_step, self.steps, {})
        for step in range(self.start_step, self.steps):
            metrics = step_fn(step)
            done = step + 1
            if self.checkpoint_every and done % self.checkpoint_every == 0 and done < self.steps:
                self.save_checkpoint(done)
            if self.progress:
                self.progress(self.stage, done, self.steps, shown(metrics))

    @contextmanager
    def _running(self) -> Iterator[None]:
        """Gradient checkpointing on (where asked, supported and not on already) while the loop runs;
        afterwards off again and the model's tensors frozen."""
        enabled = []
        if self.gradient_checkpointing:
            for module in self.checkpointed:
                if getattr(module, "_supports_gradient_checkpointing", False) and not module.is_gradient_checkpointing:
                    module.enable_gradient_checkpointing()
                    enabled.append(module)
        try:
            yield
        finally:
            for module in enabled:
                module.disable_gradient_checkpointing()
            if self.model is not None:
                self.model.requires_grad_(False)

    # -- several processes
    def _check_processes_agree(self) -> None:
        """Raise if the processes' trained tensors differ (they must: same start, same updates)."""
        from accelerate.utils import gather

        sums = torch.stack([p.detach().double().sum() for p in self.params.values()])
        every = gather(sums.to(self.accelerator.device)).view(self.num_processes, -1)
        if not torch.equal(every.min(0).values, every.max(0).values):
            raise RuntimeError("the processes' trained weights diverged; gradients were not synchronised")

    def finish(self, frozen: FrozenCopy | None = None, prefix: str = "") -> dict[str, torch.Tensor]:
        """The trained tensors in float32 (master copies), keyed ``prefix + name`` (an edit's
        "component." keys); with ``frozen`` (their original values) only those that changed. The
        model's tensors are cast back to its dtype."""
        if self.num_processes > 1:
            self._check_processes_agree()
        changed = frozen.changed() if frozen is not None else self.params
        out = {prefix + n: p.detach().float().cpu().clone() for n, p in self.params.items() if n in changed}
        with torch.no_grad():
            for p in self.params.values():
                p.data = p.data.to(self.model_dtype)
        return out
