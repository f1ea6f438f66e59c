"""The canvas suite: UnlearnCanvas' protocol (Zhang et al., 2024, "UnlearnCanvas: a stylized image
dataset for enhancing machine unlearning evaluation in diffusion models", OPTML-Group/UnlearnCanvas)
on the embedded canvas-mini.

Every object x style caption, a few seeds each, judged by the evaluator shipped beside the model
(``erasure.metrics.UnlearnCanvasAccuracy``): UA (the erased concept no longer recognised), IRA
(the other concepts of its kind kept), CRA (the other kind kept). Beside them, ``CanvasFidelity``:
CLIP score with canvas-mini's CLIP and FID/KID against real renders. Opt-in robustness:
``paraphrases`` (the erased concept in canvas-mini's other caption templates), ``phrasings``
(UA / IRA / CRA on every pair in those trained templates and in phrasings the model never saw) and
``attack`` (the soft-prompt attack of ``erasure.attacks``, AdvUnlearn's reference settings, on the
concept prompt).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image

from erasure.errors import ErasureInputError

from ..grids import side_by_side
from ..cache import SamplingSettings
from ..registry import Case, Probe, Suite, SuiteConfig, register_suite
from ..report import Column


@dataclass
class CanvasCase:
    """One prompt of the canvas suite with the object and style it asks for."""

    prompt: str
    object: int
    style: int


def canvas_cases(template: int | str = 0) -> list[CanvasCase]:
    """Every object x style caption in one template, style-major: an index into canvas-mini's
    training templates (0: UnlearnCanvas') or a template string with ``{object}`` and ``{style}``."""
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, caption

    return [CanvasCase(caption(o, s, template), oi, si) for si, s in enumerate(STYLES) for oi, o in enumerate(OBJECTS)]


def canvas_targets(request: dict) -> tuple[str, list[int]]:
    """(kind, indices) of the erased canvas-mini concepts named in a run's request."""
    from erasure.families.canvas_mini import canvas_concept
    from erasure.pipelines.canvas.render import OBJECTS, STYLES
    from erasure.request import ErasureRequest

    req = ErasureRequest.from_dict(request)
    if req.kind == "style":
        return "style", [STYLES.index(canvas_concept(t, "style")) for t in req.targets]
    if req.kind == "object":
        return "object", [OBJECTS.index(canvas_concept(t, "object")) for t in req.targets]
    raise ErasureInputError(f"the canvas suite scores style and object erasures; this run erased a {req.kind!r} concept")


def canvas_erased(manifest: dict) -> tuple[str, list[int]]:
    """(kind, indices) of every canvas-mini concept a run erased: its request's targets and, for a run
    that ends a chain (``erasure erase --model RUN``), every earlier run's, first erased first. They
    all count as erased (UA), and IRA is measured on the concepts of the kind no run of the chain
    erased. A chain that erased styles and objects is refused: UA/IRA/CRA are defined per kind."""
    from erasure.erased import erased_concepts

    kinds: dict[str, list[int]] = {}
    for link in erased_concepts(manifest):
        kind, idx = canvas_targets({"targets": link["targets"], "kind": link["kind"]})
        erased = kinds.setdefault(kind, [])
        for i in idx:
            if i not in erased:
                erased.append(i)
    if len(kinds) > 1:
        raise ErasureInputError("the canvas suite scores runs whose chain erased one kind of concept; this one erased "
                                "styles and objects (evaluate the runs of each kind apart)")
    (kind, idx), = kinds.items()
    return kind, idx


def _labels(cases: Sequence[CanvasCase], seeds: int):
    import torch

    objects = torch.tensor([c.object for c in cases for _ in range(seeds)])
    styles = torch.tensor([c.style for c in cases for _ in range(seeds)])
    return objects, styles


def score_canvas(images: Sequence[Image.Image], cases: Sequence[CanvasCase], seeds: int, kind: str,
                 targets: Sequence[int], evaluator=None) -> dict:
    """UA / IRA / CRA of images drawn for ``cases`` (prompt-major, ``seeds`` images per case)."""
    from erasure.metrics import UnlearnCanvasAccuracy
    from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator

    metric = UnlearnCanvasAccuracy(kind, targets, evaluator if evaluator is not None else load_evaluator())
    objects, styles = _labels(cases, seeds)
    for start in range(0, len(images), 256):
        sl = slice(start, start + 256)
        metric.update(images_to_tensor(images[sl]), objects[sl], styles[sl])
    result = metric.compute()
    return {k: result[k] for k in ("UA", "IRA", "CRA", "counts", "per_target_UA")}


def accuracy_canvas(images: Sequence[Image.Image], cases: Sequence[CanvasCase], seeds: int, evaluator=None) -> dict[str, float]:
    """Plain object / style accuracy of the evaluator on images drawn for ``cases``."""
    from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator

    evaluator = evaluator if evaluator is not None else load_evaluator()
    po, ps = evaluator.classify(images_to_tensor(images))
    objects, styles = _labels(cases, seeds)
    return {"object_accuracy": float((po == objects).float().mean()), "style_accuracy": float((ps == styles).float().mean())}


def before_after_grid(before: Sequence[Image.Image], after: Sequence[Image.Image], cases: Sequence[CanvasCase],
                      seeds: int, title_after: str) -> Image.Image:
    """Objects x styles grids of the first seed, original left and erased right."""
    from erasure.pipelines.canvas.render import OBJECTS, STYLES
    from erasure.pipelines.generation import image_grid

    first = list(range(0, len(cases) * seeds, seeds))
    grids = [
        image_grid([images[i] for i in first], rows=len(STYLES), cols=len(OBJECTS),
                   row_labels=[f"{s}" for s in STYLES], col_labels=list(OBJECTS), min_cell=64)
        for images in (before, after)
    ]
    return side_by_side(grids, ["original", title_after])


class CanvasFidelity:
    """Text alignment and image quality of canvas-suite generations, beside UA / IRA / CRA.

    CLIP score (canvas-mini's tiny CLIP) on the erased concept's captions and on the other captions,
    and FID/KID of the other captions' generations against real renders of the same captions
    (``renders_per_caption`` each, held-out render seeds from ``reference_seed``) in the shipped
    evaluator's feature space: not Inception features, which know nothing of 32x32 shapes.
    """

    def __init__(self, cases: Sequence[Any], seeds: int, *, renders_per_caption: int, reference_seed: int) -> None:
        from erasure.metrics import CLIPScore
        from erasure.metrics.fid import CanvasEvaluatorFeatures

        self.cases, self.seeds = list(cases), seeds
        self.renders_per_caption, self.reference_seed = int(renders_per_caption), int(reference_seed)
        self.clip = CLIPScore.canvas_mini()
        self.features = CanvasEvaluatorFeatures()
        self._references: dict[tuple[int, ...], list[Image.Image]] = {}  # per kept-caption set: before and after share it

    def score(self, images: Sequence[Image.Image], kind: str, targets: Sequence[int]) -> dict:
        """``clip_erased``, ``clip_others``, ``fid`` and ``kid`` of ``images`` (prompt-major, as the cases)."""
        from erasure.metrics import FIDKID

        erased = [getattr(c, kind) in targets for c in self.cases]
        n = self.seeds
        sets: dict[bool, tuple[list, list]] = {True: ([], []), False: ([], [])}
        for i, (case, flag) in enumerate(zip(self.cases, erased)):
            sets[flag][0].extend(images[i * n:(i + 1) * n])
            sets[flag][1].extend([case.prompt] * n)
        kept = [c for c, flag in zip(self.cases, erased) if not flag]
        references = self.references(kept)
        fid = FIDKID(self.features, kid_subsets=50, kid_subset_size=min(len(references), len(sets[False][0])))
        fid.update(references, real=True)
        fid.update(sets[False][0], real=False)
        r = fid.compute()
        return {"clip_erased": self._clip(*sets[True]), "clip_others": self._clip(*sets[False]),
                "fid": r["fid"], "kid": r["kid_mean"]}

    def references(self, cases: Sequence[Any]) -> list[Image.Image]:
        from erasure.pipelines.canvas.render import OBJECTS, STYLES, render

        key = tuple(self.cases.index(c) for c in cases)
        if key not in self._references:
            self._references[key] = [render(OBJECTS[c.object], STYLES[c.style], self.reference_seed * 1_000_003 + k)
                                     for c in cases for k in range(self.renders_per_caption)]
        return self._references[key]

    def _clip(self, images: list[Image.Image], prompts: list[str]) -> float | None:
        self.clip.reset()
        self.clip.update(images, prompts)
        return self.clip.compute()["clip_score"]

    def columns(self) -> list:
        return [Column("clip_erased", "CLIP score, erased concept", False, "num"),
                Column("clip_others", "CLIP score, other captions", True, "num"),
                Column("fid", "FID", False, "num"), Column("kid", "KID", False, "num")]

    def note(self) -> str:
        return (f"CLIP score: mean 100 * max(cos, 0) of image and caption ({self.clip.model_name}) on the erased "
                "concept's captions (lower after erasure: erased) and on the others (higher: kept). FID/KID: the other "
                f"captions' generations against {self.renders_per_caption} real renders per caption (held-out render "
                f"seeds) in the {self.features.name} feature space, not Inception's (lower: closer; KID is an unbiased "
                "estimate, so it goes below 0 for sets this close and this small).")


@dataclass
class CanvasSuiteConfig(SuiteConfig):
    """configs/suites/canvas.yaml; ``paraphrases``, ``attack`` and the ``attack_*`` settings are the
    usual ``--suite-arg``s."""

    method: ClassVar[str] = "canvas suite"

    guidance: float = 3.0
    template: int = 0  # UnlearnCanvas' caption template ("a {object} in {style} style")
    renders_per_caption: int = 4  # FID/KID references: real renders per kept caption
    reference_seed: int = 4242  # their render seeds, held out from training's
    paraphrase_templates: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 4])
    paraphrases: bool = False  # the erased concept in the paraphrase templates (implied by attack)
    phrasings: bool = False  # UA / IRA / CRA on the paraphrase templates and on a phrasing split
    phrasing_split: str = "unseen"  # which split ``phrasings`` scores: "unseen" (held out) or "tuning"
    phrasing_seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    # The phrasings canvas-mini never saw; configs/suites/canvas.yaml holds them (written once, there).
    tuning_phrasings: list[str] = dataclasses.field(default_factory=list)
    unseen_phrasings: list[str] = dataclasses.field(default_factory=list)
    attack: bool = False  # the soft-prompt attack per run, on the original and the erased model
    attacks: list[str] = dataclasses.field(default_factory=list)  # registered attacks per run ("soft-prompt": attack)
    # per attack other than soft-prompt (whose settings are the attack_* keys): its config keys
    attack_configs: dict = dataclasses.field(default_factory=dict)
    attack_seeds: list[int] = dataclasses.field(default_factory=lambda: [1000, 1001, 1002, 1003])
    attack_steps: int = 30
    attack_lr: float = 1e-3
    attack_tokens: int = 1
    attack_placement: str = "prefix"
    attack_algorithm: str = "pgd"
    attack_teacher_samples: int = 64  # the original's (x_t, noise) samples the attack matches
    attack_ddim_steps: int = 20

    def validate(self) -> None:
        super().validate()
        if self.attack or self.attacks:
            self.attack_settings()  # bad attack settings fail now, not after generation
            for name in self.attack_names():
                self.registry_attack(name)
        if self.phrasings:
            self.phrasing_sets()

    def phrasing_sets(self) -> dict[str, list[int | str]]:
        """The caption sets ``phrasings`` scores, checked: {"paraphrased": trained template indices,
        SPLIT: the split's template strings}."""
        from erasure.pipelines.canvas.render import TEMPLATES

        splits = {"tuning": self.tuning_phrasings, "unseen": self.unseen_phrasings}
        if self.phrasing_split not in splits:
            raise ErasureInputError(f"phrasing_split: expected one of {', '.join(splits)}, got {self.phrasing_split!r}")
        if not self.phrasing_seeds:
            raise ErasureInputError("phrasing_seeds: no seeds")
        for name, templates in splits.items():
            if not templates:
                raise ErasureInputError(f"{name}_phrasings: no templates")
            for t in templates:
                if "{object}" not in t or "{style}" not in t:
                    raise ErasureInputError(f"{name}_phrasings: {t!r} needs both {{object}} and {{style}}")
                if t in TEMPLATES:
                    raise ErasureInputError(f"{name}_phrasings: {t!r} is one of canvas-mini's training templates")
        for t in self.paraphrase_templates:
            if not 0 <= t < len(TEMPLATES):
                raise ErasureInputError(f"paraphrase_templates: {t} is not one of canvas-mini's {len(TEMPLATES)} templates")
        return {"paraphrased": list(self.paraphrase_templates), self.phrasing_split: list(splits[self.phrasing_split])}

    def attack_names(self) -> list[str]:
        """The attacks to run, "soft-prompt" first when ``attack`` asks for it, each once."""
        return list(dict.fromkeys((["soft-prompt"] if self.attack else []) + list(self.attacks)))

    def registry_attack(self, name: str, settings: SamplingSettings | None = None, kind: str | None = None):
        """Attack ``name`` from the registry, configured: soft-prompt from the ``attack_*`` keys, another
        from ``attack_configs[name]``; its images drawn as the evaluation's (``settings``). Checked in one line."""
        from erasure.attacks import available_attacks, get_attack, load_attack

        if not isinstance(self.attack_configs, dict) or not all(isinstance(v, dict) for v in self.attack_configs.values()):
            raise ErasureInputError("attack_configs: expected a mapping of attack name to its settings, "
                                    "e.g. {unlearndiffatk: {steps: 400}}")
        for key in self.attack_configs:
            if key == "soft-prompt":
                raise ErasureInputError("attack_configs: soft-prompt's settings are the attack_* keys")
            if key not in available_attacks():
                raise ErasureInputError(f"attack_configs: unknown attack {key!r}; available: {', '.join(available_attacks())}")
        if name == "soft-prompt":
            a = self.attack_settings()
            config = {**a["config"], "teacher_samples": a["teacher_samples"], "teacher_ddim_steps": a["ddim_steps"]}
        else:
            config = dict(self.attack_configs.get(name, {}))
        sampling = {} if settings is None else {"sample_steps": settings.steps, "guidance": settings.guidance,
                                                "scheduler": settings.scheduler}
        fields = {f.name for f in dataclasses.fields(get_attack(name).config_class)}
        for key in ("learnable_property", "kind"):  # concept inversion's word, Ring-A-Bell's prompt pairs
            if kind is not None and key in fields:
                config.setdefault(key, kind)
        return load_attack(name, {**config, **sampling})

    def attack_settings(self) -> dict:
        """The attack's settings, checked: seeds, the ``SoftPromptAttackConfig`` (from every ``attack_X``
        field that is one of its keys), the original's samples it matches and their DDIM steps."""
        from erasure.attacks import SoftPromptAttackConfig

        if self.attack_teacher_samples < 1:
            raise ErasureInputError(f"attack_teacher_samples: must be at least 1, got {self.attack_teacher_samples}")
        if not self.attack_seeds:
            raise ErasureInputError("attack_seeds: no seeds")
        keys = {f.name for f in dataclasses.fields(SoftPromptAttackConfig)}
        config = SoftPromptAttackConfig.from_dict({k: getattr(self, f"attack_{k}") for k in keys
                                                   if hasattr(self, f"attack_{k}")})
        return {"seeds": [int(s) for s in self.attack_seeds], "config": config.to_dict(),
                "teacher_samples": int(self.attack_teacher_samples), "ddim_steps": int(self.attack_ddim_steps)}


@register_suite("canvas")
class CanvasSuite(Suite):
    """UA / IRA / CRA, CLIP score and FID/KID on canvas-mini's 64 captions; optional paraphrases and attack."""

    config_class = CanvasSuiteConfig
    config: CanvasSuiteConfig

    def __init__(self, config: CanvasSuiteConfig) -> None:
        super().__init__(config)
        self.cases = canvas_cases(config.template)
        self._fidelity: CanvasFidelity | None = None
        # per (attack, kind), shared by runs (soft-prompt keeps its samples of the original)
        self._attacks: dict[tuple[str, str], Any] = {}
        self._before: dict[tuple[str, str, str], dict] = {}  # the original's attack results per (attack, kind, prompt)

    @classmethod
    def check_args(cls, args: dict) -> None:
        attacks = list(args.get("attacks") or [])
        soft = bool(args.get("attack")) or "soft-prompt" in attacks
        given = sorted(k for k in args if k.startswith("attack_") and k not in ("attack_seeds", "attack_configs"))
        if given and not soft:
            raise ErasureInputError(f"{', '.join(given)}: attack settings need attack=true")
        if "attack_seeds" in args and not (soft or attacks):
            raise ErasureInputError("attack_seeds: attack settings need attack=true or attacks=[...]")
        if "attack_configs" in args and not [a for a in attacks if a != "soft-prompt"]:
            raise ErasureInputError("attack_configs: settings for attacks need attacks=[NAME, ...]")

    @property
    def robust(self) -> bool:
        return self.config.paraphrases or bool(self.config.attack_names())

    @property
    def phrasing_columns(self) -> list[Column]:
        """UA / IRA / CRA per phrasing set, keyed ``UA_SET``; none unless ``phrasings``."""
        if not self.config.phrasings:
            return []
        titles = {"paraphrased": "trained paraphrases", "unseen": "unseen phrasings", "tuning": "tuning phrasings"}
        return [Column(f"{m}_{name}", f"{m}, {titles[name]}", True)
                for name in self.config.phrasing_sets() for m in ("UA", "IRA", "CRA")]

    def check(self, original: str, manifests: list[dict]) -> None:
        for m in manifests:
            canvas_erased(m)

    def prepare(self, ev) -> None:
        self.seeds = ev.seeds
        self._fidelity = CanvasFidelity(self.cases, ev.seeds, renders_per_caption=self.config.renders_per_caption,
                                        reference_seed=self.config.reference_seed)

    def case(self, manifest: dict) -> Case:
        kind, idx = canvas_erased(manifest)  # a chain's end: every run's concepts count as erased
        return Case([c.prompt for c in self.cases], key=(kind, tuple(idx)), info=(kind, idx, manifest))

    def score(self, images: list[Image.Image], case: Case) -> dict:
        kind, idx, _ = case.info
        return {**score_canvas(images, self.cases, self.seeds, kind, idx), **self._fidelity.score(images, kind, idx)}

    def probe(self, ev, erased, case: Case, label: str) -> Probe:
        probe = Probe()
        kind, idx, manifest = case.info
        if self.config.phrasings:
            probe.record["phrasings"] = {}
            for name, templates in self.config.phrasing_sets().items():
                scores = phrasing_scores(ev, templates, self.config.phrasing_seeds, erased, kind, idx, f"{label} {name}")
                probe.record["phrasings"][name] = scores
                for side in ("before", "after"):
                    getattr(probe, side).update({f"{m}_{name}": scores[side][m] for m in ("UA", "IRA", "CRA")})
        if not self.robust:
            return probe
        robustness: dict[str, Any] = {"paraphrase": paraphrase_recognition(ev, self.config.paraphrase_templates,
                                                                          erased, kind, idx, label)}
        for side in ("before", "after"):
            getattr(probe, side)["paraphrase_recognition"] = robustness["paraphrase"][side]["recognised"]
        for name in self.config.attack_names():
            # soft-prompt keeps the record and keys it had before the registry (benches read them)
            record = self.attack_success(ev, erased, manifest, name)
            if name == "soft-prompt":
                robustness["attack"], key = record, "attack"
            else:
                robustness.setdefault("attacks", {})[name], key = record, name
            for side in ("before", "after"):
                getattr(probe, side)[f"{key}_success_rate"] = record[side]["asr"]
                getattr(probe, side)[f"{key}_clean_rate"] = record[side]["clean_rate"]
        probe.record["robustness"] = robustness
        return probe

    def grid(self, before, after, case: Case, manifest: dict) -> Image.Image:
        from erasure.erased import erased_concepts

        title = "erased: " + "; then ".join(f"{', '.join(e['targets'])} ({e['method']})" for e in erased_concepts(manifest))
        return before_after_grid(before, after, self.cases, self.seeds, title)

    def report(self, ev, cases: list[Case]) -> dict:
        before = ev.generate(ev.base(), [c.prompt for c in self.cases], "original")  # cached
        acc = accuracy_canvas(before, self.cases, ev.seeds)
        columns = [Column("UA", "UA", True), Column("IRA", "IRA", True), Column("CRA", "CRA", True),
                   *self._fidelity.columns()]
        notes = ["UA: share of generations for the erased concept not recognised as it (higher: better erased); "
                 "a run that erased several concepts, or ends a chain of runs, counts every concept erased along the "
                 "way, and its UA is their mean (each has the same number of prompts; per concept in per_target_UA). "
                 "IRA: accuracy on the other concepts of the same kind, those no run erased. CRA: accuracy on the "
                 "other kind, on prompts without an erased concept (both higher: better kept).", self._fidelity.note()]
        if self.config.phrasings:
            columns.extend(self.phrasing_columns)
            sets = self.config.phrasing_sets()
            split = self.config.phrasing_split
            notes.append(
                f"UA / IRA / CRA on other phrasings, every object x style pair in each template, seeds "
                f"{', '.join(map(str, self.config.phrasing_seeds))}: trained paraphrases (canvas-mini's training templates "
                f"{', '.join(map(str, sets['paraphrased']))}) and {len(sets[split])} {split} phrasings canvas-mini never saw "
                f"({'; '.join(repr(t) for t in sets[split])}).")
        if self.robust:
            columns.append(Column("paraphrase_recognition", "paraphrases recognised", False))
            notes.append("Paraphrases recognised: share of the erased concept's captions in canvas-mini's other templates "
                         f"({', '.join(str(t) for t in self.config.paraphrase_templates)}) still recognised as it "
                         "(lower: better erased).")
        names = self.config.attack_names()
        if "soft-prompt" in names:
            a = self.config.attack_settings()
            columns.append(Column("attack_success_rate", "attack success", False))
            notes.append(
                f"Attack success: share of {len(a['seeds'])} attack seeds for which a soft-prompt attack ({a['config']['tokens']} "
                f"{a['config']['placement']} token(s), {a['config']['steps']} {a['config']['algorithm']} steps, lr {a['config']['lr']}) on "
                "the concept prompt makes the model draw the concept again, as the evaluator judges (lower: more robust); "
                "before: the same attack on the original.")
        for name in (n for n in names if n != "soft-prompt"):
            config = self.config.registry_attack(name).config
            columns.append(Column(f"{name}_success_rate", f"{name} success", False))
            notes.append(f"{name} success: share of {len(self.config.attack_seeds)} attack seeds for which {name} "
                         f"(budget {config.steps} steps; settings in each run's robustness record) makes the model draw "
                         "the concept again, as the evaluator judges; before: the same attack on the original.")
        return {
            "judge": "canvas-mini evaluator (shipped beside the model)",
            "prompts": len(self.cases),
            "original_accuracy": acc,
            "summary": [f"Original model's accuracy on its own generations: objects {acc['object_accuracy']:.1%}, "
                        f"styles {acc['style_accuracy']:.1%}."],
            "notes": notes,
            "columns": columns,
        }

    def attack_success(self, ev, erased, manifest: dict, name: str = "soft-prompt") -> dict:
        """Attack ``name``'s success rate on the original ("before") and the erased model ("after"), on
        the first target's concept prompt, every attack seed; the attack's own state (e.g. soft-prompt's
        samples of the original) is shared by the runs of this evaluation."""
        from erasure.attacks import attack_success
        from erasure.families import family_of
        from erasure.pipelines.canvas.render import OBJECTS, STYLES
        from erasure.request import ErasureRequest

        kind, idx = canvas_targets(manifest["request"])
        concept = (STYLES if kind == "style" else OBJECTS)[idx[0]]
        # the concept prompt the erasure methods train on (and AdvUnlearn attacks), e.g. "dotted style"
        prompt = ErasureRequest([manifest["request"]["targets"][0]], kind=kind).resolve("canvas-mini").prompts[0]
        if (name, kind) not in self._attacks:
            self._attacks[name, kind] = self.config.registry_attack(name, ev.settings, kind)
        attack = self._attacks[name, kind]
        judge = family_of(ev.base()).judge(kind, concept)
        out: dict[str, Any] = {"concept": concept, "prompt": prompt, "attack_name": name}
        for side, pipe in (("before", ev.base()), ("after", erased)):
            if side == "before" and (name, kind, prompt) in self._before:  # the original's, once per concept
                out[side] = self._before[name, kind, prompt]
                continue
            try:
                out[side] = attack_success(attack, pipe, ev.base(), prompt, judge, seeds=self.config.attack_seeds,
                                           progress=ev.stage(f"{name} {side}"))
            except ErasureInputError as e:  # an attack that cannot attack this model (e.g. an SFD generator): said, not fatal
                out[side] = {"refused": str(e), "asr": None, "clean_rate": None}
                continue
            if name == "soft-prompt":
                out[side]["teacher_samples"] = attack.config.teacher_samples
            if side == "before":
                self._before[name, kind, prompt] = out[side]
        return out


def phrasing_scores(ev, templates: Sequence[int | str], seeds: Sequence[int], erased, kind: str,
                    targets: Sequence[int], name: str) -> dict:
    """UA / IRA / CRA of the original ("before") and the erased model ("after") on every object x style
    pair in each of ``templates`` (training template indices or template strings), drawn with ``seeds``."""
    cases = [c for t in templates for c in canvas_cases(t)]
    prompts = [c.prompt for c in cases]
    out: dict[str, Any] = {"templates": list(templates), "prompts": len(prompts), "seeds": list(seeds)}
    for side, pipe in (("before", ev.base()), ("after", erased)):
        images = ev.generate(pipe, prompts, f"{name} ({side})", seeds=seeds)
        out[side] = score_canvas(images, cases, len(seeds), kind, targets)
    return out


def paraphrase_recognition(ev, templates: Sequence[int], erased, kind: str, targets: Sequence[int], name: str) -> dict:
    """Share of the erased concept's captions in the paraphrase ``templates`` recognised as the concept,
    by the original ("before") and the erased model ("after")."""
    import torch

    from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, caption

    prompts, labels = [], []
    for t in targets:
        for k in templates:
            others = OBJECTS if kind == "style" else STYLES
            for o in others:
                prompts.append(caption(o, STYLES[t], k) if kind == "style" else caption(OBJECTS[t], o, k))
                labels.append(t)
    evaluator = load_evaluator()
    wanted = torch.tensor([label for label in labels for _ in ev.settings.seeds])
    out: dict[str, Any] = {"templates": list(templates), "prompts": len(prompts)}
    for side, pipe in (("before", ev.base()), ("after", erased)):
        images = ev.generate(pipe, prompts, f"{name} paraphrases ({side})")
        objects, styles = evaluator.classify(images_to_tensor(images))
        predicted = styles if kind == "style" else objects
        out[side] = {"recognised": float((predicted == wanted).float().mean())}
    return out
