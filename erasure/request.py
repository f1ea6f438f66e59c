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

KINDS: tuple[str, ...] = ("style", "object", "nudity", "memorized", "custom")


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
        """A copy with every ``None`` field filled with the default for this kind and model family
        (a pipeline, a family name such as "canvas-mini", or an ``erasure.families.ModelFamily``)."""
        from erasure.families import family_of

        family = family_of(pipe_or_family)
        defaults = family.request_defaults(self)
        return replace(
            self,
            anchor=family.anchor(self.kind) if self.anchor is None else self.anchor,
            prompts=self.prompts if self.prompts is not None else defaults["prompts"],
            retain=self.retain if self.retain is not None else defaults["retain"],
            paraphrases=self.paraphrases if self.paraphrases is not None else defaults["paraphrases"],
        )

