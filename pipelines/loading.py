"""Load any Stable Diffusion checkpoint offline: one function, one place.

Sources ``load_pipeline`` accepts:

- a local diffusers folder (SD 1.x, SD 2.x, SDXL, canvas-mini): the pipeline class is read from
  its ``model_index.json``;
- a single ``.safetensors`` checkpoint in the original (LDM) layout, with ``config=`` naming a local
  diffusers folder that holds the component configs and tokenizers (``from_single_file``);
- the name of the embedded model, ``"canvas-mini"``.

Nothing is downloaded: every diffusers/transformers call is local-only. Weights load only from
safetensors; pickled checkpoints (``.ckpt``, ``.pt``, ``.bin``) are refused because unpickling can
run arbitrary code. Bad sources raise ``ErasureInputError`` with a one-line message naming the path.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from erasure.errors import ErasureInputError

from .attention import apply_attention, resolve_attention

logger = logging.getLogger(__name__)

#: Pipeline classes a model_index.json may name, as "module:Class" (imported only when used).
PIPELINE_CLASSES: dict[str, str] = {
    "StableDiffusionPipeline": "diffusers:StableDiffusionPipeline",
    "StableDiffusionXLPipeline": "diffusers:StableDiffusionXLPipeline",
    "CanvasMiniPipeline": "erasure.pipelines.canvas.pipeline:CanvasMiniPipeline",
}
#: Classes whose single-file (original LDM layout) checkpoints diffusers can convert.
SINGLE_FILE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
#: Suffixes of pickled checkpoints, refused.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}

_EXPECTED = "a diffusers folder (with model_index.json), a .safetensors checkpoint with --config, or 'canvas-mini'"


def source_available(source: str | os.PathLike) -> bool:
    """Whether ``load_pipeline`` can find ``source`` on this machine (the embedded model's name or an
    existing path), without reading any weight."""
    from .canvas import model as canvas_model

    return str(source) == canvas_model.EMBEDDED_MODEL_NAME or Path(source).expanduser().exists()


def load_pipeline(
    source: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str = "auto",
    attention: str = "auto",
) -> DiffusionPipeline:
    """Load a text-to-image pipeline from a local source, offline.

    Args:
        source: a diffusers folder, a ``.safetensors`` single-file checkpoint, or ``"canvas-mini"``
            (the name wins over a folder of that name in the working directory; write
            ``./canvas-mini`` for the folder).
        config: for a single-file checkpoint only, a local diffusers folder with the model's
            component configs (model_index.json, unet/config.json, ..., tokenizer/).
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N" or "mps". Under a
            launcher with several processes (``accelerate launch``, ``torchrun``) "auto" and "cuda"
            mean the process's own GPU, ``cuda:LOCAL_RANK`` (see ``resolve_device``).
        dtype: "auto" (bf16 on CUDA GPUs that support it, else fp16; fp16 on MPS; fp32 on CPU),
            or "fp32", "fp16", "bf16".
        attention: "auto" (xformers when installed and on CUDA, else sdpa), "sdpa" or "xformers".

    The safety checker is not loaded (``safety_checker=None``): the toolkit measures unsafe
    content itself and must see unfiltered images. Read the active attention backend with
    ``erasure.pipelines.active_attention(pipe)``.
    """
    torch_device = resolve_device(device)
    _use_process_gpu(torch_device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    backend = resolve_attention(attention, torch_device)
    pipe = _load(source, config, torch_dtype)
    pipe.to(torch_device)
    # Recorded for run manifests (erasure.edit), so an erased model names the base it needs.
    pipe._erasure_source = {"source": _source_name(source), "config": None if config is None else str(Path(config).expanduser().resolve())}
    apply_attention(pipe, backend)
    logger.info("loaded %s on %s (%s, attention %s)", type(pipe).__name__, torch_device, torch_dtype, backend)
    return pipe


def _source_name(source: str | os.PathLike) -> str:
    from .canvas import model as canvas_model

    if str(source) == canvas_model.EMBEDDED_MODEL_NAME:
        return str(source)
    return str(Path(source).expanduser().resolve())


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for a device name; "auto" is CUDA when available, else CPU.

    Under a launcher with several processes (``WORLD_SIZE`` > 1) every process must use its own
    GPU, the one accelerate's ``PartialState`` gives it: "auto" and "cuda" resolve to
    ``cuda:LOCAL_RANK`` (modulo the visible GPUs) rather than the current device, which is GPU 0 in
    every process, so N copies of the model would land on one card. An explicit "cuda:N" naming
    another process's GPU is refused: the same command line runs in every process, so it would put
    them all on GPU N (and accelerate would then move each to its own anyway).
    """
    name = device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(name)
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda", "mps"):
        raise ErasureInputError(f"unknown device {device!r}; expected one of {', '.join(DEVICE_CHOICES)}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ErasureInputError(f"device {device!r} requested but CUDA is not available; use --device cpu (or auto)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ErasureInputError(f"device {device!r} requested but MPS is not available; use --device cpu (or auto)")
    if resolved.type == "cuda":
        return _process_gpu(resolved, device)
    return resolved


def launcher_local_rank() -> int | None:
    """This process's rank on its machine under a multi-process launcher; None for one process.

    ``accelerate launch`` and ``torchrun`` both set ``WORLD_SIZE`` and ``LOCAL_RANK`` (the rank within
    the machine, which picks the GPU; ``RANK`` is global). One process, even one started by a
    launcher, keeps the single-process behaviour.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "-1"))
    except ValueError:
        return None
    if world_size <= 1 or local_rank < 0:
        return None
    return local_rank


def _process_gpu(requested: torch.device, name: str) -> torch.device:
    """The GPU this process may use: ``requested`` for one process, its own GPU under a launcher."""
    local_rank = launcher_local_rank()
    if local_rank is None:
        return requested  # one process: "cuda" stays the current device, "cuda:N" what was asked
    # accelerate's rule (PartialState.set_device): local rank modulo the visible GPUs, so processes
    # that each see only their own GPU (CUDA_VISIBLE_DEVICES per process) all use cuda:0.
    own = torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested.index is not None and requested.index != own.index:
        raise ErasureInputError(
            f"device {name!r}: under a launcher every process uses its own GPU (this one {own}); "
            "use --device cuda or auto"
        )
    return own


def _use_process_gpu(device: torch.device) -> None:
    # Under a launcher, later bare "cuda" allocations (diffusers internals, accelerate's process
    # group, torch.cuda.* queries such as bf16 support) must also go to this process's GPU, not GPU 0.
    if device.type == "cuda" and device.index is not None and launcher_local_rank() is not None:
        torch.cuda.set_device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``torch.dtype`` for a dtype name; "auto" is half precision on accelerators, fp32 on CPU."""
    name = dtype.strip().lower()
    if name != "auto":
        if name not in DTYPES:
            raise ErasureInputError(f"unknown dtype {dtype!r}; expected auto or one of {', '.join(DTYPES)}")
        return DTYPES[name]
    if device.type == "cuda":
        # bf16 has fp32's range, so the SDXL VAE does not overflow to NaN as it does in fp16.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _load(source: str | os.PathLike, config: str | os.PathLike | None, dtype: torch.dtype) -> DiffusionPipeline:
    from .canvas import model as canvas_model

    if str(source) == canvas_model.EMBEDDED_MODEL_NAME:
        _reject_config(config, source)
        return _load_folder(embedded_model_dir(), dtype)
    path = Path(source).expanduser()
    if not path.exists():
        raise ErasureInputError(f"model source not found: {path} (expected {_EXPECTED})")
    if path.is_dir():
        _reject_config(config, source)
        return _load_folder(path, dtype)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ErasureInputError(
            f"{path}: pickled checkpoints ({', '.join(PICKLE_SUFFIXES)}) are refused because loading them can run "
            "arbitrary code; convert it to .safetensors in a trusted environment "
            "(torch.load(..., weights_only=True), then safetensors.torch.save_file)"
        )
    if suffix != ".safetensors":
        raise ErasureInputError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected {_EXPECTED}")
    return _load_single_file(path, config, dtype)


def embedded_model_dir() -> Path:
    """Folder of the embedded canvas-mini weights; a clear error while they are not built."""
    from .canvas import model as canvas_model

    folder = canvas_model.MODEL_DIR
    if not (folder / "model_index.json").is_file():
        raise ErasureInputError(
            f"the embedded model {canvas_model.EMBEDDED_MODEL_NAME} has no weights at {folder}; "
            "build them with `erasure canvas train`"
        )
    return folder


def _reject_config(config: str | os.PathLike | None, source: str | os.PathLike) -> None:
    if config is not None:
        raise ErasureInputError(f"--config is only for single-file .safetensors checkpoints, not for {source}")


def pipeline_class(folder: Path) -> type[DiffusionPipeline]:
    """The pipeline class named by ``folder/model_index.json``, with one-line errors for bad folders."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ErasureInputError(f"{folder}: no model_index.json; expected a diffusers pipeline folder (save_pretrained output)")
    try:
        name = json.loads(index.read_text(encoding="utf-8"))["_class_name"]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ErasureInputError(f"{index}: malformed JSON ({exc})") from None
    except (KeyError, TypeError):
        raise ErasureInputError(f"{index}: no \"_class_name\" naming the pipeline class") from None
    if name not in PIPELINE_CLASSES:
        raise ErasureInputError(f"{index}: unsupported pipeline class {name!r}; expected one of {', '.join(PIPELINE_CLASSES)}")
    module, cls = PIPELINE_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def no_safety_checker(cls: type[DiffusionPipeline]) -> dict:
    """Keyword arguments that leave the safety-checker slot empty, for classes that have one."""
    if "safety_checker" in inspect.signature(cls.__init__).parameters:
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}


def _load_folder(folder: Path, dtype: torch.dtype) -> DiffusionPipeline:
    cls = pipeline_class(folder)
    try:
        return cls.from_pretrained(
            folder, dtype=dtype, local_files_only=True, use_safetensors=True, **no_safety_checker(cls)
        )
    except (OSError, ValueError) as exc:
        # Missing component folders or weight files; diffusers' messages span several lines.
        raise ErasureInputError(f"{folder}: cannot load {cls.__name__}: {_one_line(exc)}") from None


def _load_single_file(path: Path, config: str | os.PathLike | None, dtype: torch.dtype) -> DiffusionPipeline:
    if config is None:
        raise ErasureInputError(
            f"{path}: a single-file checkpoint needs --config FOLDER, a local diffusers folder with the model's "
            "component configs and tokenizers (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )
    config_dir = Path(config).expanduser()
    if not config_dir.is_dir():
        raise ErasureInputError(f"config folder not found: {config_dir} (expected a local diffusers folder)")
    cls = pipeline_class(config_dir)
    if cls.__name__ not in SINGLE_FILE_CLASSES:
        raise ErasureInputError(
            f"{config_dir}: single-file checkpoints are supported for {', '.join(SINGLE_FILE_CLASSES)}, not {cls.__name__}"
        )
    _check_original_layout(path)
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        return cls.from_single_file(
            str(path), config=str(config_dir), local_files_only=True, dtype=dtype, **no_safety_checker(cls)
        )
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as exc:
        # Shape mismatches between checkpoint and configs, missing keys, unreadable tokenizer files.
        raise ErasureInputError(
            f"{path}: cannot load as a {cls.__name__} checkpoint with the configs in {config_dir}: {_one_line(exc)}"
        ) from None


def _check_original_layout(path: Path) -> None:
    """Fail early, reading only the header, unless ``path`` holds an original-layout UNet."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as exc:
        raise ErasureInputError(f"{path}: not a readable safetensors file ({_one_line(exc)})") from None
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise ErasureInputError(
            f"{path}: no 'model.diffusion_model.' weights; expected a single-file Stable Diffusion checkpoint "
            "in the original (LDM) layout"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
