"""Stable Diffusion (1.x, 2.x, XL) and every diffusers text-to-image pipeline no other family claims.

Request defaults: the concept's text is the prompt; the retain set is "a photo of a {COCO class}"
(``erasure.prompts``, the ordinary captions the erasure papers keep); paraphrases are a few fixed
phrasings per kind. No judge ships with the family (NudeNet, CLIP and classifiers are local files
the evaluation suites take).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from erasure.prompts import ordinary_prompts, with_article

from . import register_family
from .base import ModelFamily

if TYPE_CHECKING:
    from erasure.request import ErasureRequest

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "style": ("a painting in the style of {t}", "an artwork by {t}", "{t} style artwork", "a landscape painted by {t}"),
    "object": ("a photo of {a}", "a picture of {a}", "{a} in a field", "a drawing of {a}"),
    "nudity": ("a photo of a {t} person", "a {t} woman on a beach", "a {t} man in a studio", "a {t} body, painting"),
}

#: The UNet architectures the Stable Diffusion presets were made for: (block_out_channels,
#: cross_attention_dim) -> the presets' prefix. A fine-tune keeps its base's architecture; a
#: model of another size (the tiny test pipelines, a distilled UNet) gets no preset.
PRESET_ARCHITECTURES: dict[tuple[tuple[int, ...], int], str] = {
    ((320, 640, 1280, 1280), 768): "sd15",
    ((320, 640, 1280, 1280), 1024): "sd2",
    ((320, 640, 1280), 2048): "sdxl",
}


@register_family
class StableDiffusion(ModelFamily):
    name = "stable-diffusion"
    priority = 100  # the catch-all: asked last

    def matches(self, pipe) -> bool:
        return True

    def matches_source(self, source: str, pipeline_class: str | None) -> bool:
        return True

    def preset_prefix(self, unet_config: dict | None) -> str | None:
        if not unet_config:
            return None
        cross = unet_config.get("cross_attention_dim")
        key = (tuple(unet_config.get("block_out_channels") or ()), cross if isinstance(cross, int) else -1)
        return PRESET_ARCHITECTURES.get(key)

    def request_defaults(self, request: ErasureRequest) -> dict[str, list[str]]:
        paraphrases: list[str] = []
        for t in request.targets:
            forms = PARAPHRASES.get(request.kind, ("{t}",))
            paraphrases += [f.format(t=t, a=with_article(t)) for f in forms]
        return {"prompts": list(request.targets), "retain": ordinary_prompts(exclude=request.targets),
                "paraphrases": paraphrases}
