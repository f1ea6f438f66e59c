"""canvas-mini, the embedded model: 8 objects x 8 styles in UnlearnCanvas' caption templates.

Its concepts are the renderer's styles and objects ("dotted", "dotted style", "a star" all name
one); its prompt sets are its own captions (``erasure.pipelines.canvas.render``): a style is evoked
by "{style} style" and retained through the other styles' captions, paraphrased by the other
caption templates; its memorized captions and its judge (the evaluator trained on real renders)
ship beside the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from erasure.errors import ErasureInputError

from . import register_family
from .base import Judge, ModelFamily

if TYPE_CHECKING:
    from erasure.request import ErasureRequest

NAME = "canvas-mini"
PIPELINE_CLASS = "CanvasMiniPipeline"


def canvas_concept(target: str, kind: str) -> str:
    """The canvas-mini style or object named by ``target`` ("dotted", "dotted style", "a star")."""
    from erasure.pipelines.canvas.render import OBJECTS, STYLES

    names, suffix = (STYLES, " style") if kind == "style" else (OBJECTS, "")
    text = target.lower()
    for prefix in ("a ", "an "):
        if kind == "object" and text.startswith(prefix):
            text = text[len(prefix):]
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)]
    if text not in names:
        raise ErasureInputError(f"canvas-mini has no {kind} {target!r}; its {kind}s are {', '.join(names)}")
    return text


@register_family
class CanvasMini(ModelFamily):
    name = NAME
    priority = 10
    guidance = 3.0  # canvas-mini's best: objects 34% / 30% and styles 99% / 78% at 3 / 5 (the canvas suite's)

    def matches(self, pipe) -> bool:
        return type(pipe).__name__ == PIPELINE_CLASS

    def matches_source(self, source: str, pipeline_class: str | None) -> bool:
        return source == NAME or pipeline_class == PIPELINE_CLASS

    def preset_prefix(self, unet_config: dict | None) -> str | None:
        return NAME

    def concept(self, target: str, kind: str) -> str:
        return canvas_concept(target, kind) if kind in ("style", "object") else target

    def request_defaults(self, request: ErasureRequest) -> dict[str, list[str]]:
        from erasure.pipelines.canvas.render import MEMORIZATION_TARGETS, OBJECTS, STYLES, TEMPLATES, caption

        if request.kind == "style":
            styles = [canvas_concept(t, "style") for t in request.targets]
            return {
                "prompts": [f"{s} style" for s in styles],
                "retain": [caption(o, s) for s in STYLES if s not in styles for o in OBJECTS],
                "paraphrases": [caption(o, s, k) for s in styles for k in range(1, len(TEMPLATES)) for o in OBJECTS],
            }
        if request.kind == "object":
            objects = [canvas_concept(t, "object") for t in request.targets]
            return {
                "prompts": [caption(o, s, "a {object}") for o in objects for s in STYLES[:1]],
                "retain": [caption(o, s) for o in OBJECTS if o not in objects for s in STYLES],
                "paraphrases": [caption(o, s, k) for o in objects for k in range(1, len(TEMPLATES)) for s in STYLES],
            }
        if request.kind == "memorized":
            memorized = [m.caption for m in MEMORIZATION_TARGETS]
            return {
                "prompts": list(request.targets),
                "retain": [c for c in memorized if c not in request.targets] + [caption(o, s) for o in OBJECTS for s in STYLES][::4],
                "paraphrases": list(request.targets),
            }
        return {
            "prompts": list(request.targets),
            "retain": [caption(o, s) for o in OBJECTS for s in STYLES],
            "paraphrases": list(request.targets),
        }

    def anchor_pairs(self, request: ErasureRequest, anchor: str | None, templates: Sequence[int],
                     anchors: str) -> list[tuple[str, str]] | None:
        """Captions of the erased style (object) in ``templates``, paired with the same captions for the
        anchor: an explicit canvas-mini style (object), every other one (``anchors="others"``), or the
        concept-free partial caption the model was trained on ("a {object}" / "{style} style")."""
        from erasure.pipelines.canvas.render import OBJECTS, STYLES, TEMPLATES, caption

        if request.kind not in ("style", "object") or anchor == "":
            return None
        bad = [k for k in templates if k >= len(TEMPLATES)]
        if bad:
            raise ErasureInputError(f"templates: {bad} out of range; canvas-mini has caption templates 0-{len(TEMPLATES) - 1}")
        names = STYLES if request.kind == "style" else OBJECTS
        targets = [canvas_concept(t, request.kind) for t in request.targets]
        other = None
        if anchor is not None:
            try:
                other = canvas_concept(anchor, request.kind)
            except ErasureInputError:
                raise ErasureInputError(
                    f"anchor {anchor!r}: on canvas-mini a {request.kind} anchor is one of its {request.kind}s "
                    f"({', '.join(names)}), or leave it out for "
                    f"{'style-free' if request.kind == 'style' else 'object-free'} captions") from None
            if other in targets:
                raise ErasureInputError(f"anchor {anchor!r} is a concept being erased; choose another anchor")
        if other is not None:
            chosen = [other]
        elif anchors == "others":
            chosen = [n for n in names if n not in targets]
        else:
            chosen = [None]  # the concept-free caption
        pairs = []
        for target in targets:
            for k in templates:
                for a in chosen:
                    if request.kind == "style":
                        pairs += [(caption(o, a, k) if a else caption(o, target, "a {object}"), caption(o, target, k))
                                  for o in OBJECTS]
                    else:
                        pairs += [(caption(a, s, k) if a else f"{s} style", caption(target, s, k)) for s in STYLES]
        return pairs

    def word_templates(self, kind: str) -> list[str] | None:
        """canvas-mini's own caption with the word in the concept's place: "a circle in {} style", ... for
        a style (every object), "a {} in solid style", ... for an object (every style)."""
        from erasure.pipelines.canvas.render import OBJECTS, STYLES, caption

        if kind == "style":
            return [caption(o, "{}") for o in OBJECTS]
        if kind == "object":
            return [caption("{}", s).replace("an {}", "a {}") for s in STYLES]
        return None

    def concept_pairs(self, request: ErasureRequest) -> tuple[list[str], list[str]] | None:
        """A style's 8 captions against the same objects without a style ("a {object}"); an object's 8
        captions against the same styles without an object ("{style} style")."""
        from erasure.pipelines.canvas.render import OBJECTS, STYLES, caption

        if request.kind not in ("style", "object"):
            return None
        targets, bases = [], []
        for t in request.targets:
            if request.kind == "style":
                s = canvas_concept(t, "style")
                targets += [caption(o, s) for o in OBJECTS]
                bases += [caption(o, s, "a {object}") for o in OBJECTS]
            else:
                o = canvas_concept(t, "object")
                targets += [caption(o, s) for s in STYLES]
                bases += [caption(o, s, "{style} style") for s in STYLES]
        return targets, bases

    def memorized(self):
        from erasure.pipelines.canvas.render import MEMORIZATION_TARGETS

        return [(m.caption, m.image()) for m in MEMORIZATION_TARGETS]

    def judge(self, kind: str, concept: str, evaluator=None) -> Judge:
        """The shipped evaluator as a judge: True where its ``kind`` head ("style"/"object") predicts ``concept``."""
        import torch

        from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator

        if kind not in ("style", "object"):
            raise ErasureInputError(f"canvas judge: kind {kind!r}; expected style or object")
        evaluator = evaluator or load_evaluator()
        names = evaluator.config.styles if kind == "style" else evaluator.config.objects
        if concept not in names:
            raise ErasureInputError(f"canvas judge: no {kind} {concept!r}; expected one of {', '.join(names)}")
        index = list(names).index(concept)

        def judge(images) -> torch.Tensor:
            x = images if isinstance(images, torch.Tensor) else images_to_tensor(images)
            objects, styles = evaluator.classify(x)
            return (styles if kind == "style" else objects) == index

        return judge
