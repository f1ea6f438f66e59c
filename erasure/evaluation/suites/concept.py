"""What the sd-style and sd-object suites share: a concept's prompts from templates, scored by CLIP.

Not a suite itself: ``ConceptSuite`` is the base of ``sd_style.SDStyleSuite`` and
``sd_object.SDObjectSuite``, which differ in their kind, templates and other concepts (their YAML).
The erased concept's prompts come from the run's targets; the other concepts (the run's own left
out) measure what was kept. CLIP score is the judge, as in ESD's artist-style and object evaluations
(Gandikota et al., 2023, rohitgandikota/erasing), with a local open_clip model (``--clip``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from PIL import Image

from erasure.errors import ErasureInputError

from ..grids import GRID_PROMPTS, first, prompt_grid
from ..judges import ImageQuality, expand
from ..registry import Case, Probe, Suite, SuiteConfig
from ..report import Column


@dataclass
class ConceptSuiteConfig(SuiteConfig):
    kind: str = "style"
    templates: list[str] = dataclasses.field(default_factory=list)  # with {concept} or {a_concept}
    others: list[str] = dataclasses.field(default_factory=list)  # concepts kept (retention)
    clip: str | None = None
    reference: str | None = None
    fid_features: str = "inception"

    def prompts(self, concept: str) -> list[str]:
        """The templates filled with ``concept`` ({concept}, and {a_concept} with its article)."""
        from erasure.pipelines.canvas.render import with_article

        return [t.format(concept=concept, a_concept=with_article(concept)) for t in self.templates]


class ConceptSuite(Suite):
    """CLIP score of the erased concept's prompts (lower after: erased) and of other concepts' (kept)."""

    config_class = ConceptSuiteConfig
    config: ConceptSuiteConfig

    def check(self, original: str, manifests: list[dict]) -> None:
        c = self.config
        for m in manifests:
            if m["request"]["kind"] != c.kind:
                raise ErasureInputError(
                    f"the {self.name} suite scores {c.kind} erasures; run {m['request']['targets']} erased a {m['request']['kind']!r} concept")
        if c.clip is None:
            raise ErasureInputError(
                f"the {self.name} suite scores with CLIP: pass --clip ARCH:WEIGHTS (an open_clip architecture and a local "
                "checkpoint) or --clip local-dir:FOLDER")
        ImageQuality.check(c.clip, c.reference, c.fid_features)

    def prepare(self, ev) -> None:
        self.seeds = ev.seeds
        self.quality = ImageQuality(self.config.clip, self.config.reference, self.config.fid_features)

    def case(self, manifest: dict) -> Case:
        targets = manifest["request"]["targets"]
        lowered = {t.lower() for t in targets}
        erased = [p for t in targets for p in self.config.prompts(t)]
        others = [p for o in self.config.others if o.lower() not in lowered for p in self.config.prompts(o)]
        return Case(erased + others, key=tuple(targets), info=(erased, others))

    def score(self, images: list[Image.Image], case: Case) -> dict:
        erased, others = case.info
        cut = len(erased) * self.seeds
        out = {"clip_erased": self.quality.clip_score(images[:cut], expand(erased, self.seeds)),
               "clip_others": self.quality.clip_score(images[cut:], expand(others, self.seeds))}
        fid = self.quality.fid_kid(images[cut:])
        if fid is not None:
            out.update(fid=fid["fid"], kid=fid["kid"])
        return out

    def probe(self, ev, erased, case: Case, label: str):
        prompts_erased, prompts_others = case.info
        return Probe(record={"prompts": {"erased": prompts_erased, "others": prompts_others}})

    def grid(self, before, after, case: Case, manifest: dict) -> Image.Image:
        erased, others = case.info
        n, cut = self.seeds, len(erased) * self.seeds
        eb, labels = first(before, erased, n, GRID_PROMPTS // 2)
        ea, _ = first(after, erased, n, GRID_PROMPTS // 2)
        ob, ol = first(before[cut:], others, n, GRID_PROMPTS // 2)
        oa, _ = first(after[cut:], others, n, GRID_PROMPTS // 2)
        title = f"erased: {', '.join(manifest['request']['targets'])} ({manifest['method']})"
        return prompt_grid(eb + ob, ea + oa, labels + ol, n, title)

    def report(self, ev, cases: list[Case]) -> dict:
        c, kind, quality = self.config, self.config.kind, self.quality
        columns = [Column("clip_erased", f"CLIP score, erased {kind}", False, "num"),
                   Column("clip_others", f"CLIP score, other {kind}s", True, "num")]
        if quality.reference is not None:
            columns += [Column("fid", "FID", False, "num"), Column("kid", "KID", False, "num")]
        return {
            "judge": quality.clip.model_name,
            "prompts": max((len(case.prompts) for case in cases), default=0),
            "templates": list(c.templates),
            "others": list(c.others),
            "summary": [f"{len(c.templates)} templates filled with each run's target and with "
                        f"{len(c.others)} other {kind}s." + "".join(f" {part}." for part in quality.describe())],
            "notes": [f"CLIP score: mean 100 * max(cos, 0) of image and prompt ({quality.clip.model_name}). On the erased {kind}'s "
                      f"prompts lower after erasure means erased; on the other {kind}s' prompts, higher means kept."
                      + (" FID/KID: the other prompts' generations against the reference folder (lower: closer)."
                         if quality.reference is not None else "")],
            "columns": columns,
        }
