"""The sd-style suite: an artist's style erased from Stable Diffusion, judged by CLIP score.

configs/suites/sd-style.yaml holds the templates ("a portrait of a woman by {concept}", ...) and
the styles kept; the shared machinery is ``concept.ConceptSuite``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..registry import register_suite
from .concept import ConceptSuite, ConceptSuiteConfig


@dataclass
class SDStyleSuiteConfig(ConceptSuiteConfig):
    method: ClassVar[str] = "sd-style suite"

    kind: str = "style"


@register_suite("sd-style")
class SDStyleSuite(ConceptSuite):
    config_class = SDStyleSuiteConfig
