"""What a loaded pipeline is made of: components, parameter counts, scheduler, attention, device, dtype."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import DiffusionPipeline

from .attention import active_attention


@dataclass(frozen=True)
class ComponentInfo:
    name: str
    class_name: str
    #: Number of parameters for torch modules; None for tokenizers, schedulers and empty slots.
    parameters: int | None


@dataclass(frozen=True)
class PipelineInfo:
    pipeline: str
    components: tuple[ComponentInfo, ...]
    scheduler: str
    attention: str
    device: str
    dtype: str

    @property
    def total_parameters(self) -> int:
        return sum(c.parameters or 0 for c in self.components)

    def to_dict(self) -> dict:
        return {**asdict(self), "total_parameters": self.total_parameters}


def describe(pipe: DiffusionPipeline) -> PipelineInfo:
    """Summarise ``pipe``; the attention backend is read from the installed processors."""
    components = tuple(_component(name, value) for name, value in pipe.components.items())
    return PipelineInfo(
        pipeline=type(pipe).__name__,
        components=components,
        scheduler=type(pipe.scheduler).__name__,
        attention=active_attention(pipe),
        device=str(pipe.device),
        dtype=str(pipe.dtype).removeprefix("torch."),
    )


def _component(name: str, value: object) -> ComponentInfo:
    if value is None:
        return ComponentInfo(name, "None", None)
    params = sum(p.numel() for p in value.parameters()) if isinstance(value, torch.nn.Module) else None
    return ComponentInfo(name, type(value).__name__, params)
