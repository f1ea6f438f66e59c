"""Loading, attention backends, generation and inspection of diffusers text-to-image pipelines."""

from .attention import ATTENTION_CHOICES, active_attention
from .generation import SCHEDULERS, check_scheduler, generate, image_grid, make_scheduler, parse_seeds
from .info import ComponentInfo, PipelineInfo, describe
from .loading import load_pipeline
from .single_file import save_single_file

__all__ = [
    "ATTENTION_CHOICES",
    "SCHEDULERS",
    "ComponentInfo",
    "PipelineInfo",
    "active_attention",
    "check_scheduler",
    "describe",
    "generate",
    "image_grid",
    "load_pipeline",
    "make_scheduler",
    "parse_seeds",
    "save_single_file",
]
