"""Attention backends: pick one for a device, apply it to a pipeline, read back which is active.

Backends are the classic diffusers attention processors, which every Stable Diffusion UNet and VAE
supports: ``AttnProcessor2_0`` (PyTorch's scaled_dot_product_attention, "sdpa") and
``XFormersAttnProcessor`` ("xformers", CUDA only). The active backend is read from the processors
themselves rather than stored, so it stays true after anything else swaps processors.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from erasure.errors import ErasureInputError

logger = logging.getLogger(__name__)

#: Names accepted by ``load_pipeline(attention=...)`` and the CLI's ``--attention``.
ATTENTION_CHOICES = ("auto", "sdpa", "xformers")

#: Processor class name -> backend name reported by ``active_attention``.
_PROCESSOR_BACKENDS = {
    "AttnProcessor2_0": "sdpa",
    "XFormersAttnProcessor": "xformers",
    "AttnProcessor": "eager",
}


def xformers_installed() -> bool:
    return importlib.util.find_spec("xformers") is not None


def resolve_attention(requested: str, device: torch.device) -> str:
    """The concrete backend ("sdpa" or "xformers") for ``requested`` on ``device``.

    Raises ``ErasureInputError`` when xformers is asked for but cannot run; checked before any
    weights are loaded so a bad choice fails fast.
    """
    name = requested.strip().lower()
    if name not in ATTENTION_CHOICES:
        raise ErasureInputError(f"unknown attention backend {requested!r}; expected one of {', '.join(ATTENTION_CHOICES)}")
    problem = _xformers_problem(device)
    if name == "auto":
        return "sdpa" if problem else "xformers"
    if name == "xformers" and problem:
        raise ErasureInputError(f"attention 'xformers' is unavailable: {problem}; use --attention sdpa (or auto)")
    return name


def _xformers_problem(device: torch.device) -> str | None:
    """Why xformers cannot be used on ``device``, or None when it can."""
    if not xformers_installed():
        return "xformers is not installed (pip install 'erasure[gpu]' on a CUDA machine)"
    if device.type != "cuda":
        return f"xformers needs a CUDA device, the pipeline is on {device.type}"
    return None


def attention_models(pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    """The pipeline's components that hold attention processors (UNet, VAE), by component name."""
    return {name: c for name, c in pipe.components.items() if hasattr(c, "attn_processors")}


def apply_attention(pipe: DiffusionPipeline, backend: str) -> None:
    """Install ``backend`` ("sdpa" or "xformers", as returned by ``resolve_attention``) on every attention model."""
    for name, model in attention_models(pipe).items():
        if backend == "xformers":
            model.enable_xformers_memory_efficient_attention()
        else:
            model.set_attn_processor(AttnProcessor2_0())
        logger.debug("attention %s on %s", backend, name)


def active_attention(pipe: DiffusionPipeline) -> str:
    """The backend in use: "sdpa", "xformers", "eager", a processor class name, or "mixed: a, b"."""
    names = set()
    for model in attention_models(pipe).values():
        for processor in model.attn_processors.values():
            cls = type(processor).__name__
            names.add(_PROCESSOR_BACKENDS.get(cls, cls))
    if not names:
        return "none"
    return names.pop() if len(names) == 1 else "mixed: " + ", ".join(sorted(names))
