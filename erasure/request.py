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

A request has one kind and any number of targets, erased together in one run; its default prompt
sets cover all of them (canvas-mini's retain set: the styles or objects not erased).
``prompt_targets`` / ``target_groups`` tell which prompts evoke which target, so the methods can
spread their steps over the targets (``in_turn``) and record how they did (``spread``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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
    def target_groups(self, pipe_or_family) -> list[list[int]] | None:
        """For each target, the indices of the (resolved) request's ``prompts`` that evoke it, or None
        when the prompts cannot be told apart by target (see ``prompt_targets``)."""
        from erasure.families import family_of

        family = family_of(pipe_or_family)
        prompts = self.prompts if self.prompts is not None else self.resolve(family).prompts
        return target_groups(prompt_targets(prompts, self.targets, self.kind, family), len(self.targets))

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


# ----------------------------------------------------------------------------- several targets
def _names(target: str, kind: str, family) -> list[str]:
    """The words that name ``target`` in a prompt: the target text, without a leading article, and the
    family's own name for the concept (canvas-mini's "dotted" for "dotted style")."""
    names = {target, re.sub(r"^(a|an|the)\s+", "", target.strip(), flags=re.IGNORECASE)}
    if family is not None:
        try:
            names.add(family.concept(target, kind))
        except ErasureInputError:
            pass
    return sorted((n for n in names if n), key=len, reverse=True)


def prompt_targets(prompts: Sequence[str], targets: Sequence[str], kind: str, family=None) -> list[int | None]:
    """For each prompt, the index of the one target it names (whole words, case-insensitive), or None
    when it names none or several: which concept a prompt trains, for methods that spread their steps
    over the targets of a multi-concept request."""
    patterns = [[re.compile(r"\b" + re.escape(n) + r"\b", re.IGNORECASE) for n in _names(t, kind, family)]
                for t in targets]
    out: list[int | None] = []
    for prompt in prompts:
        hits = [k for k, pats in enumerate(patterns) if any(p.search(prompt) for p in pats)]
        out.append(hits[0] if len(hits) == 1 else None)
    return out


def target_groups(owners: Sequence[int | None], n_targets: int) -> list[list[int]] | None:
    """Prompt indices per target from ``prompt_targets``' answer; None unless every prompt names exactly
    one target and every target has a prompt (then the prompts are shared: drawn from all alike)."""
    groups: list[list[int]] = [[] for _ in range(n_targets)]
    for i, k in enumerate(owners):
        if k is None:
            return None
        groups[k].append(i)
    return groups if all(groups) else None


def in_turn(i: int, drawn: int, groups: Sequence[Sequence[int]] | None) -> int:
    """The prompt of sample (or round) ``i`` when the targets take turns: target ``i mod n``, and of its
    prompts the one ``drawn`` (a uniform draw over all prompts) falls on. ``groups=None`` (prompts not
    attributable) and a single target keep ``drawn`` itself, so one-target plans are unchanged."""
    if not groups:
        return drawn
    group = groups[i % len(groups)]
    return group[drawn % len(group)]


def spread(targets: Sequence[str], counts: Sequence[int], unit: str, schedule: str) -> dict:
    """How a run divided its work among the request's targets (recorded as the edit's ``extra["targets"]``)."""
    return {"count": len(targets), "schedule": schedule, "unit": unit,
            "per_target": {t: int(n) for t, n in zip(targets, counts)}}
