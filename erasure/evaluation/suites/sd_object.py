"""The sd-object suite: an object erased from Stable Diffusion, judged by CLIP score.

configs/suites/sd-object.yaml holds the templates ("a photo of {a_concept}", ...) and the objects
kept; the shared machinery is ``concept.ConceptSuite``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..registry import register_suite
from .concept import ConceptSuite, ConceptSuiteConfig


@dataclass
class SDObjectSuiteConfig(ConceptSuiteConfig):
    method: ClassVar[str] = "sd-object suite"

    kind: str = "object"


@register_suite("sd-object")
class SDObjectSuite(ConceptSuite):
    config_class = SDObjectSuiteConfig
