"""What to erase: ``ErasureRequest``.

A request names the target concept(s) and their kind, and carries the prompt sets the methods and
the evaluation use. Fields left empty get defaults per kind and model family when the request is
resolved against a pipeline (``request.resolve(pipe)``):

- ``prompts``: what the methods condition on to find the concept (ESD's ``c_e``). canvas-mini:
  "{style} style" for a style, "a {object}" for an object (the partial captions it was trained
  on); Stable Diffusion: the target text itself.
- ``anchor``: what the concept should become (DoCo's anchor, SFD's override): "a painting" for a
  style, "an object" for an object, "a person wearing clothes" for nudity, "" (the empty prompt)
  otherwise. ESD does not use it (its target is the unconditional prediction).
- ``retain``: prompts whose generations must not change. canvas-mini: the captions of the other
  styles (for a style) or the other objects (for an object), in UnlearnCanvas' template;
  Stable Diffusion: "a photo of a {COCO class}" (``erasure.prompts``).
- ``paraphrases``: other wordings of the concept, for evaluating generalisation. canvas-mini: the
  concept's captions in the paraphrase templates; Stable Diffusion: a few fixed phrasings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from erasure.errors import ErasureInputError
from erasure.prompts import ordinary_prompts, with_article

KINDS: tuple[str, ...] = ("style", "object", "nudity", "memorized", "custom")
FAMILIES: tuple[str, ...] = ("canvas-mini", "stable-diffusion")

DEFAULT_ANCHORS: dict[str, str] = {
    "style": "a painting",
    "object": "an object",
    "nudity": "a person wearing clothes",
    "memorized": "",
    "custom": "",
}

_SD_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "style": ("a painting in the style of {t}", "an artwork by {t}", "{t} style artwork", "a landscape painted by {t}"),
    "object": ("a photo of {a}", "a picture of {a}", "{a} in a field", "a drawing of {a}"),
    "nudity": ("a photo of a {t} person", "a {t} woman on a beach", "a {t} man in a studio", "a {t} body, painting"),
}


def model_family(pipe) -> str:
    """"canvas-mini" for the embedded model's pipeline class, else "stable-diffusion"."""
    return "canvas-mini" if type(pipe).__name__ == "CanvasMiniPipeline" else "stable-diffusion"


def _text_list(value, name: str, *, allow_empty_text: bool = False) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    try:
        items = [str(v).strip() if isinstance(v, str) else None for v in value]
    except TypeError:
        raise ErasureInputError(f"{name}: expected a text or a list of texts, got {type(value).__name__}") from None
    if any(v is None for v in items):
        raise ErasureInputError(f"{name}: expected texts only")
    if not allow_empty_text and any(v == "" for v in items):
        raise ErasureInputError(f"{name}: empty text; give a non-empty prompt")
    return items


@dataclass
class ErasureRequest:
    """Target concept(s) to erase, their kind, and the prompt sets (``None``: default, see module doc)."""

    targets: list[str]
    kind: str = "custom"
    anchor: str | None = None
    prompts: list[str] | None = None
    retain: list[str] | None = None
    paraphrases: list[str] | None = None

    def __post_init__(self) -> None:
        targets = _text_list(self.targets, "concept", allow_empty_text=True)
        if not targets:
            raise ErasureInputError("no target concept; give at least one concept to erase")
        if any(t == "" for t in targets):
            raise ErasureInputError("empty concept; give the text of the concept to erase")
        self.targets = targets
        if self.kind not in KINDS:
            raise ErasureInputError(f"unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.anchor is not None and not isinstance(self.anchor, str):
            raise ErasureInputError("anchor: expected a text")
        self.anchor = None if self.anchor is None else self.anchor.strip()
        self.prompts = _text_list(self.prompts, "prompts")
        if self.prompts is not None and not self.prompts:
            raise ErasureInputError("prompts: empty list; leave it out for the default")
        self.retain = _text_list(self.retain, "retain", allow_empty_text=True)
        self.paraphrases = _text_list(self.paraphrases, "paraphrases")

    # -- serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ErasureRequest":
        if not isinstance(data, dict):
            raise ErasureInputError("request: expected a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ErasureInputError(f"unknown request field(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
        if "targets" not in data:
            raise ErasureInputError("request: no targets")
        return cls(**data)

    # -- defaults
    def resolve(self, pipe_or_family) -> "ErasureRequest":
        """A copy with every ``None`` field filled with the default for this kind and model family."""
        family = pipe_or_family if isinstance(pipe_or_family, str) else model_family(pipe_or_family)
        if family not in FAMILIES:
            raise ErasureInputError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
        defaults = _canvas_defaults(self) if family == "canvas-mini" else _sd_defaults(self)
        anchor = DEFAULT_ANCHORS[self.kind] if self.anchor is None else self.anchor
        return replace(
            self,
            anchor=anchor,
            prompts=self.prompts if self.prompts is not None else defaults["prompts"],
            retain=self.retain if self.retain is not None else defaults["retain"],
            paraphrases=self.paraphrases if self.paraphrases is not None else defaults["paraphrases"],
        )


def _sd_defaults(req: ErasureRequest) -> dict[str, list[str]]:
    paraphrases: list[str] = []
    for t in req.targets:
        forms = _SD_PARAPHRASES.get(req.kind, ("{t}",))
        paraphrases += [f.format(t=t, a=with_article(t)) for f in forms]
    return {"prompts": list(req.targets), "retain": ordinary_prompts(exclude=req.targets), "paraphrases": paraphrases}


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


def _canvas_defaults(req: ErasureRequest) -> dict[str, list[str]]:
    from erasure.pipelines.canvas.render import MEMORIZATION_TARGETS, OBJECTS, STYLES, TEMPLATES, caption

    if req.kind == "style":
        styles = [canvas_concept(t, "style") for t in req.targets]
        return {
            "prompts": [f"{s} style" for s in styles],
            "retain": [caption(o, s) for s in STYLES if s not in styles for o in OBJECTS],
            "paraphrases": [caption(o, s, k) for s in styles for k in range(1, len(TEMPLATES)) for o in OBJECTS],
        }
    if req.kind == "object":
        objects = [canvas_concept(t, "object") for t in req.targets]
        return {
            "prompts": [caption(o, s, "a {object}") for o in objects for s in STYLES[:1]],
            "retain": [caption(o, s) for o in OBJECTS if o not in objects for s in STYLES],
            "paraphrases": [caption(o, s, k) for o in objects for k in range(1, len(TEMPLATES)) for s in STYLES],
        }
    if req.kind == "memorized":
        memorized = [m.caption for m in MEMORIZATION_TARGETS]
        return {
            "prompts": list(req.targets),
            "retain": [c for c in memorized if c not in req.targets] + [caption(o, s) for o in OBJECTS for s in STYLES][::4],
            "paraphrases": list(req.targets),
        }
    return {
        "prompts": list(req.targets),
        "retain": [caption(o, s) for o in OBJECTS for s in STYLES],
        "paraphrases": list(req.targets),
    }
