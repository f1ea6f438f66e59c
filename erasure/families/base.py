"""``ModelFamily``: what the toolkit needs to know about a kind of model beyond its weights.

A family answers the questions methods, requests and evaluation would otherwise ask with
``if model == "canvas-mini"``: which pipelines (and which sources on disk) belong to it, how a
request's concept is named on it, the default prompt sets of a request (the prompts that evoke
the concept, the retain set, paraphrases), the anchor prompt pairs a method that maps a concept
onto an anchor trains on, the concept/base prompt pairs that isolate a concept, the memorized
captions it ships with, and the judge that tells whether an image shows a concept.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from erasure.errors import ErasureInputError

if TYPE_CHECKING:
    from erasure.request import ErasureRequest

#: images (a float (N, 3, H, W) tensor in [0, 1] or PIL images) -> a bool tensor, True where the concept is seen
Judge = Callable[[Any], Any]

#: What a concept becomes when no anchor is given, per kind (DoCo's anchor, SFD's override).
DEFAULT_ANCHORS: dict[str, str] = {
    "style": "a painting",
    "object": "an object",
    "nudity": "a person wearing clothes",
    "memorized": "",
    "custom": "",
}


class ModelFamily(ABC):
    """A family of models: canvas-mini, Stable Diffusion, or a user's (see ``erasure.families``)."""

    name: ClassVar[str] = ""
    #: families are asked in this order (lowest first); the catch-all family has the highest
    priority: ClassVar[int] = 50
    #: classifier-free guidance the family's images are drawn with unless a caller says otherwise
    guidance: ClassVar[float] = 7.5

    # -- membership
    @abstractmethod
    def matches(self, pipe) -> bool:
        """Whether a loaded pipeline belongs to the family."""

    def matches_source(self, source: str, pipeline_class: str | None) -> bool:
        """Whether a model source (a name, or a folder whose ``model_index.json`` names ``pipeline_class``)
        belongs to the family, before any weight loads."""
        return False

    # -- requests
    def concept(self, target: str, kind: str) -> str:
        """The family's name for the concept ``target`` of ``kind`` (refusing one it does not have)."""
        return target

    def anchor(self, kind: str) -> str:
        return DEFAULT_ANCHORS[kind]

    @abstractmethod
    def request_defaults(self, request: ErasureRequest) -> dict[str, list[str]]:
        """``prompts``, ``retain`` and ``paraphrases`` for a request that leaves them out."""

    def anchor_pairs(self, request: ErasureRequest, anchor: str | None, templates: Sequence[int],
                     anchors: str) -> list[tuple[str, str]] | None:
        """(anchor prompt, target prompt) pairs in the family's own captions, or None for the method's
        defaults. ``anchor``: the request's explicit anchor; ``anchors``: "concept-free" or "others"."""
        return None

    def concept_pairs(self, request: ErasureRequest) -> tuple[list[str], list[str]] | None:
        """(prompts with the concept, the same prompts without it) in the family's own captions, or None."""
        return None

    def word_templates(self, kind: str) -> list[str] | None:
        """Prompts with one ``{}`` where a learned word for a concept of ``kind`` goes, in the family's own
        captions (concept inversion trains and generates with them), or None for the attack's own lists."""
        return None

    # -- presets
    def preset_prefix(self, unet_config: dict | None) -> str | None:
        """The name the shipped presets made for this model start with (``configs/<method>/<prefix>-<kind>.yaml``),
        or None when none were made for it. ``unet_config``: the model's UNet config, where known."""
        return None

    # -- data and judges shipped with the family
    def memorized(self) -> list[tuple[str, Any]] | None:
        """(caption, training image) pairs the family's model is known to have memorized, or None."""
        return None

    def judge(self, kind: str, concept: str) -> Judge:
        """A classifier of the concept for the family's images."""
        raise ErasureInputError(f"{self.name} ships no judge for {kind} {concept!r}; bring a classifier")
