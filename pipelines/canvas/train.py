"""Training of canvas-mini: the text-to-image model, its evaluator and its tiny CLIP.

``train_all(TrainSettings(out=...))`` (CLI: ``erasure canvas train --out DIR``) rebuilds everything
from scratch on a CPU. Each stage is resumable: the diffusion stages checkpoint every
``checkpoint_every`` steps, and every batch is a pure function of (seed, step), so a resumed run
sees exactly the batches an uninterrupted one would.

The diffusion recipe has two stages, as the shipped model was made: ``diffusion`` (v-prediction
with Min-SNR-5 loss weighting, learning rate 1e-3 on a cosine schedule), then ``finetune`` from its
EMA weights with the plain v-loss at 3e-4. Min-SNR-5 weights the noisiest timesteps, where an
object's shape is decided, towards zero; the fine-tune without it fixed the shipped model's
triangle/heart/moon and star/arrow confusions (objects 76% -> 99%, README).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from erasure.atomic import atomic_path, check_output_folder
from erasure.errors import ErasureInputError

from .data import CanvasData, to_tensor, training_caption
from .model import build_untrained

logger = logging.getLogger(__name__)

#: progress(stage, done, total, metrics) — the CLI draws bars from it.
ProgressFn = Callable[[str, int, int, dict], None]


@dataclass
class DiffusionSettings:
    """One diffusion training stage: optimiser, schedule and loss weighting."""

    steps: int = 2750
    batch_size: int = 32
    lr: float = 1e-3
    text_lr: float = 5e-4
    warmup: int = 200
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0  # 0: no weighting (plain v-prediction loss)
    ema_decay: float = 0.999
    checkpoint_every: int = 250


@dataclass
class TrainSettings:
    out: str
    seed: int = 0
    per_pair: int = 384
    memorization_repeats: int = 384  # as often as each object x style pair
    threads: int = 0  # 0: torch's default
    clip: bool = True  # also train the tiny open_clip CLIP (for CLIP score)
    #: Fine-tune instead of training from scratch: "canvas-mini" (the shipped model) or an earlier
    #: training's --out folder. Its text encoder and UNet are the starting point; its evaluator and
    #: CLIP are kept (they judge the data, which a fine-tune does not change).
    init_from: str | None = None
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    #: The second stage, started from ``diffusion``'s EMA weights with a fresh optimiser and schedule;
    #: None: the first stage's model is the result.
    finetune: DiffusionSettings | None = field(default_factory=lambda: DiffusionSettings(
        steps=1200, lr=3e-4, min_snr_gamma=0.0))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSettings":
        """The inverse of ``asdict``: a ``settings.json`` read back."""
        data = dict(data)
        data["diffusion"] = DiffusionSettings(**data["diffusion"])
        if data.get("finetune") is not None:
            data["finetune"] = DiffusionSettings(**data["finetune"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def prepare_data(settings: TrainSettings) -> CanvasData:
    path = Path(settings.out) / "data.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return CanvasData.load(path)
    data = CanvasData.build(settings.per_pair, settings.memorization_repeats, seed=settings.seed)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        data.save(f)
    return data


# ----------------------------------------------------------------------------- diffusion model
def _encode(pipe, captions: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0]


def _batch(data: CanvasData, settings: TrainSettings, d: DiffusionSettings, step: int):
    """The (images, captions, noise, timesteps) of ``step``: a pure function of (seed, step)."""
    rng = np.random.default_rng([settings.seed, step])
    idx = rng.integers(0, len(data), size=d.batch_size)
    crng = random.Random(f"{settings.seed}/{step}")
    captions = [
        "" if crng.random() < d.caption_dropout
        else training_caption(int(data.objects[i]), int(data.styles[i]), int(data.memorized[i]), crng)
        for i in idx
    ]
    g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    x0 = to_tensor(data.images[idx])
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (d.batch_size,), generator=g)
    return x0, captions, noise, t


def _target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    return noise


def _min_snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for the scheduler's prediction type; all ones
    when ``gamma`` is 0 (no weighting)."""
    if gamma <= 0:
        return torch.ones(t.shape, dtype=scheduler.alphas_cumprod.dtype)
    alpha_bar = scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    clamped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clamped / (snr + 1)
    return clamped / snr


def _lr_lambda(d: DiffusionSettings):
    def f(step: int) -> float:
        if step < d.warmup:
            return (step + 1) / d.warmup
        progress = (step - d.warmup) / max(1, d.steps - d.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def train_diffusion(settings: TrainSettings, data: CanvasData, progress: ProgressFn | None = None, *,
                    stage: str = "diffusion", init: Path | None = None):
    """Train (or resume) the text encoder and UNet for one stage; returns the pipeline holding the EMA weights.

    ``stage`` names the settings (``settings.diffusion`` or ``settings.finetune``), the checkpoint
    file and the progress bar; ``init`` is a saved pipeline to start from (default: the
    ``init_from`` model for the first stage, random weights otherwise).
    """
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    d: DiffusionSettings = getattr(settings, stage)
    torch.manual_seed(settings.seed)
    pipe = build_untrained(out / "tokenizer")
    if init is None and settings.init_from is not None and stage == "diffusion":
        init = init_source(settings.init_from)["model"]
    if init is not None:
        _load_weights(pipe, init)
    unet, te = pipe.unet, pipe.text_encoder
    unet.train(), te.train()
    unet.to(memory_format=torch.channels_last)  # about 1.5x faster convolutions on a CPU
    opt = torch.optim.AdamW(
        [{"params": unet.parameters(), "lr": d.lr}, {"params": te.parameters(), "lr": d.text_lr}],
        weight_decay=0.0,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(d))
    params = dict(unet.named_parameters(prefix="unet")) | dict(te.named_parameters(prefix="text_encoder"))
    ema = {k: p.detach().clone() for k, p in params.items()}
    step, elapsed = 0, 0.0  # elapsed: training seconds before this process, kept across resumes
    ckpt = out / f"{stage}-checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        unet.load_state_dict(state["unet"]), te.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["optimizer"]), sched.load_state_dict(state["lr_scheduler"])
        ema, step = state["ema"], state["step"]
        elapsed = state.get("elapsed_s", 0.0)
        logger.info("resumed %s training at step %d", stage, step)
    noise_sched = pipe.scheduler
    start, first_step = time.time(), step
    while step < d.steps:
        x0, captions, noise, t = _batch(data, settings, d, step)
        xt = noise_sched.add_noise(x0, noise, t).contiguous(memory_format=torch.channels_last)
        pred = unet(xt, t, _encode(pipe, captions)).sample
        target = _target(noise_sched, x0, noise, t)
        per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * _min_snr_weights(noise_sched, t, d.min_snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        sched.step()
        step += 1
        decay = min(d.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, p in params.items():
                ema[k].lerp_(p.detach(), 1 - decay)
        if progress:
            progress(stage, step, d.steps, {"loss": loss.item(), "s/step": (time.time() - start) / (step - first_step)})
        if step % d.checkpoint_every == 0 or step == d.steps:
            _atomic_save({"unet": unet.state_dict(), "text_encoder": te.state_dict(),
                          "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                          "ema": ema, "step": step, "elapsed_s": elapsed + time.time() - start}, ckpt)
    _load_ema(pipe, ema)
    return pipe


def stage_seconds(out: str | os.PathLike, stage: str = "diffusion") -> float:
    """Training seconds of a stage so far, over every process that worked on it (from its checkpoint)."""
    state = torch.load(Path(out) / f"{stage}-checkpoint.pt", weights_only=True, mmap=True)
    return float(state.get("elapsed_s", 0.0))


def init_source(init_from: str) -> dict[str, Path]:
    """The folders of a fine-tune's starting point: its model, evaluator, CLIP and training record."""
    from .model import EMBEDDED_MODEL_NAME, MODEL_DIR

    if init_from == EMBEDDED_MODEL_NAME:
        paths = {"model": MODEL_DIR, "evaluator": MODEL_DIR / "evaluator", "clip": MODEL_DIR / "clip",
                 "record": MODEL_DIR / "training.json"}
    else:
        root = Path(init_from).expanduser()
        paths = {"model": root / "canvas-mini", "evaluator": root / "evaluator", "clip": root / "clip",
                 "record": root / "training.json"}
    if not (paths["model"] / "model_index.json").is_file():
        raise ErasureInputError(f"--init-from {init_from}: no trained canvas-mini there (expected {paths['model']}/model_index.json)")
    return paths


def _load_weights(pipe, model_dir: Path) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", local_files_only=True)
    te = CLIPTextModel.from_pretrained(model_dir / "text_encoder", local_files_only=True)
    pipe.unet.load_state_dict(unet.state_dict())
    pipe.text_encoder.load_state_dict(te.state_dict())


def _load_ema(pipe, ema: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for prefix, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
            for name, p in module.named_parameters(prefix=prefix):
                p.copy_(ema[name])
    pipe.unet.to(memory_format=torch.contiguous_format)  # safetensors stores contiguous tensors only
    pipe.unet.eval(), pipe.text_encoder.eval()


# ----------------------------------------------------------------------------- all stages
def _atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Write a folder under a temporary name, then rename: a killed run never leaves a half folder."""
    with atomic_path(final) as tmp:
        write(tmp)
        shutil.rmtree(final, ignore_errors=True)  # an older version is replaced only once the new one is complete
    return final


#: What ``train_all`` writes into its folder (besides ``<stage>-checkpoint.pt``).
TRAINING_ENTRIES = ("settings.json", "training.json", "data.npz", "tokenizer", "evaluator", "clip", "canvas-mini",
                    "pretrained")


def check_training_folder(settings: TrainSettings) -> Path:
    """``settings.out``, refused before anything is written when it cannot be written, holds something
    other than a canvas-mini training (``settings.json`` is the first file a training writes), or a
    training made with other settings."""
    out = check_output_folder(settings.out, "--out")
    visible = [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []
    # A folder holding only parts of a training (an evaluator or CLIP copied in to skip their stage,
    # a killed run's data) is resumed; anything else is someone's folder.
    foreign = [name for name in visible if name not in TRAINING_ENTRIES and not name.endswith("-checkpoint.pt")]
    if foreign and not (out / "settings.json").is_file():
        raise ErasureInputError(f"--out {out}: not empty and not a canvas-mini training ({foreign[0]}); "
                                "choose a new folder")
    _check_same_settings(out / "settings.json", settings)
    return out


def _check_same_settings(path: Path, settings: TrainSettings) -> None:
    """Refuse to resume a folder with other settings: its data and checkpoints were made with the old ones."""
    if not path.exists():
        return
    ignored = ("out", "threads")  # where and how fast, not what is trained
    try:
        old, new = json.loads(path.read_text()), json.loads(settings.to_json())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ErasureInputError(f"{path}: malformed JSON ({exc}); choose another --out") from None
    if not isinstance(old, dict):
        raise ErasureInputError(f"{path}: not a canvas-mini training's settings; choose another --out")
    changed = sorted(k for k in set(old) | set(new) if k not in ignored and old.get(k) != new.get(k))
    if changed:
        raise ErasureInputError(f"{path.parent} holds a training with other settings ({', '.join(changed)} differ): "
                                "resume it with the same options, or choose another --out")


def train_all(settings: TrainSettings, progress: ProgressFn | None = None) -> Path:
    """Build data, evaluator, CLIP and model into ``settings.out``; resumes whatever is already there.

    Returns the folder ``<out>/canvas-mini`` holding the pipeline; the evaluator and CLIP are in
    ``<out>/evaluator`` and ``<out>/clip``.
    """
    from .evaluator import EvaluatorSettings, train_evaluator

    out = check_training_folder(settings)
    out.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    (out / "settings.json").write_text(settings.to_json())
    record_path = out / "training.json"
    # A resumed run keeps the wall times of the stages finished before it.
    timings: dict[str, float] = json.loads(record_path.read_text())["wall_time_s"] if record_path.exists() else {}
    source = init_source(settings.init_from) if settings.init_from is not None else None

    def save_record() -> None:
        """Written after every stage, so that a run killed later still has the finished stages' times."""
        record = {"settings": json.loads(settings.to_json()), "wall_time_s": timings,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}
        if source is not None and source["record"].is_file():
            record["init_from"] = json.loads(source["record"].read_text())  # the starting point's own record
        with atomic_path(record_path) as tmp:
            tmp.write_text(json.dumps(record, indent=2))

    if source is not None:
        for name in ("evaluator", "clip"):
            if source[name].is_dir() and not (out / name).exists():
                shutil.copytree(source[name], out / name)
    rendered = not (out / "data.npz").exists()
    start = time.time()
    data = prepare_data(settings)
    if rendered:
        timings["data_s"] = time.time() - start
        save_record()

    evaluator_dir = out / "evaluator"
    if not (evaluator_dir / "evaluator.safetensors").exists():
        t = time.time()
        grid = data.memorized < 0  # the judge sees real renders of the grid only
        model = train_evaluator(data.images[grid], data.objects[grid], data.styles[grid],
                                EvaluatorSettings(seed=settings.seed), progress)
        _atomic_dir(evaluator_dir, model.save)
        timings["evaluator_s"] = time.time() - t
        save_record()

    clip_dir = out / "clip"
    if settings.clip and not (clip_dir / "open_clip_model.safetensors").exists():
        from .clip import ClipSettings, save_clip, train_clip

        t = time.time()
        clip = train_clip(data, ClipSettings(seed=settings.seed), progress)
        _atomic_dir(clip_dir, lambda d: save_clip(clip, d))
        timings["clip_s"] = time.time() - t
        save_record()

    model_dir = out / "canvas-mini"
    # Without a fine-tune the first stage writes the model itself; with one, it writes "pretrained".
    stages = [("diffusion", model_dir if settings.finetune is None else out / "pretrained")]
    if settings.finetune is not None:
        stages.append(("finetune", model_dir))
    init = None
    for stage, stage_dir in stages:
        if not (stage_dir / "model_index.json").exists():
            pipe = train_diffusion(settings, data, progress, stage=stage, init=init)
            _atomic_dir(stage_dir, lambda d: pipe.save_pretrained(d, safe_serialization=True))
            timings[f"{stage}_s"] = stage_seconds(out, stage)
            save_record()
        init = stage_dir
    save_record()
    return model_dir


def install_weights(out: str | os.PathLike) -> Path:
    """Copy a finished training's model and evaluator into the package (the embedded canvas-mini)."""
    from .model import MODEL_DIR

    src = Path(out)
    for required in (src / "canvas-mini" / "model_index.json", src / "evaluator" / "evaluator.safetensors"):
        if not required.exists():
            raise FileNotFoundError(f"training in {src} is not finished: {required} is missing")

    def write(tmp: Path) -> None:
        shutil.copytree(src / "canvas-mini", tmp)
        shutil.copytree(src / "evaluator", tmp / "evaluator")
        if (src / "clip").is_dir():
            shutil.copytree(src / "clip", tmp / "clip")
        shutil.copy(src / "training.json", tmp / "training.json")
        store_embeddings_fp16(tmp / "text_encoder" / "model.safetensors")

    return _atomic_dir(MODEL_DIR, write)


#: The text encoder's vocabulary table: 49,408 x 128, 25 MB of the repository's 60 MB budget in fp32.
EMBEDDING_TABLE = "embeddings.token_embedding.weight"


def store_embeddings_fp16(path: str | os.PathLike) -> None:
    """Rewrite a text encoder's safetensors with its token embedding table in float16 (halves the
    shipped weights' largest tensor). transformers loads it back into the float32 model (the
    config's dtype), so only the storage is rounded: outputs move by about 1e-3."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    if tensors[EMBEDDING_TABLE].dtype == torch.float16:
        return
    tensors[EMBEDDING_TABLE] = tensors[EMBEDDING_TABLE].half()
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
