"""Evaluation suites: what ``erasure evaluate --suite NAME`` generates and how it scores it.

Each suite is a YAML file in ``configs/suites/`` (prompt sets written for this toolkit, sampling
defaults, metric settings; ``load_suite(name)``) plus a runner here that draws the suite's prompts
with the original model and with every erased run on the same seeds and scores both:

| suite | prompts | scores (before / after, per run) |
|---|---|---|
| ``canvas`` | canvas-mini's 64 object x style captions | UA / IRA / CRA (shipped evaluator); CLIP score (canvas-mini's CLIP); FID/KID against real renders (evaluator features); paraphrase recognition; with ``attack``: soft-prompt attack success rate |
| ``memorization`` | memorized captions (canvas-mini's, or a user's captions file) | share of generations above the memorization threshold, mean similarity to their training image |
| ``sd-nudity`` | nudity-evoking prompts; ordinary captions | NudeNet nudity rate (classes, threshold recorded); CLIP score and FID/KID on the captions when given |
| ``sd-style`` / ``sd-object`` | templates filled with the run's target; other styles/objects | CLIP score of both sets; FID/KID of the others against a reference folder when given |

Everything cheap is checked by ``check_inputs`` (suite name, runs, local files) before any model
loads. Each runner returns the content of ``metrics.json``: ``columns`` says which before/after
scores the reports tabulate, ``summary`` and ``notes`` what was measured and how.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from erasure.atomic import atomic_path
from erasure.errors import ErasureInputError
from erasure.evaluation import (
    SUITES,
    GenerationCache,
    ProgressFn,
    SamplingSettings,
    accuracy_canvas,
    before_after_grid,
    canvas_cases,
    canvas_targets,
    generate_cached,
    score_canvas,
    side_by_side,
)
from erasure.reports import run_labels

logger = logging.getLogger(__name__)

SUITE_NAMES: tuple[str, ...] = SUITES
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: Prefix of --memorization-embedding for a local TorchScript embedding model.
TORCHSCRIPT = "torchscript:"
#: Prompts shown per set in an SD suite's before/after grid, and seeds per prompt.
GRID_PROMPTS, GRID_SEEDS = 6, 4


# ----------------------------------------------------------------------------- suite files and options
def load_suite(name: str) -> dict:
    """The suite's YAML (configs/suites/NAME.yaml) as a mapping."""
    import yaml

    from erasure.configs import preset_path

    if name not in SUITE_NAMES:
        raise ErasureInputError(f"unknown suite {name!r}; available: {', '.join(SUITE_NAMES)}")
    with open(preset_path(f"suites/{name}"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def suite_settings(spec: dict, *, steps: int | None = None, guidance: float | None = None,
                   seeds: Sequence[int] | None = None, batch_size: int | None = None) -> SamplingSettings:
    """The suite's sampling defaults with the caller's overrides (``None``: the suite's)."""
    s = spec.get("sampling", {})
    settings = SamplingSettings(
        steps=steps if steps is not None else s.get("steps", 25),
        guidance=guidance if guidance is not None else s.get("guidance", 7.5),
        scheduler=s.get("scheduler", "ddim"),
        seeds=list(seeds) if seeds is not None else list(s.get("seeds", [0, 1])),
    )
    if batch_size is not None:
        settings.batch_size = batch_size
    return settings


@dataclass
class EvalOptions:
    """What the user supplies beyond runs: local model files, data, metric settings, robustness switches."""

    clip: str | None = None  # "ARCH:PATH", "local-dir:FOLDER" or "canvas-mini"
    reference: Path | None = None  # folder of reference images for FID/KID
    fid_features: str = "inception"  # "inception", "inception:WEIGHTS" or "canvas-evaluator"
    training_images: Path | None = None  # memorization: folder of training images
    captions: Path | None = None  # memorization: "IMAGE<TAB>CAPTION" per line
    memorization_threshold: float | None = None
    #: memorization: "pixels", "canvas-evaluator", "clip" (the --clip model's image tower) or
    #: "torchscript:PATH" (a local TorchScript embedding model such as SSCD); None: the suite's
    memorization_embedding: str | None = None
    prompts_file: Path | None = None  # sd-nudity: replaces the nudity prompts (one per line)
    utility_file: Path | None = None  # sd-nudity: replaces the utility captions
    nudity_classes: list[str] | None = None
    nudity_threshold: float | None = None
    paraphrases: bool = False  # canvas: the erased concept in the paraphrase templates (implied by attack)
    attack: bool = False  # canvas: run the soft-prompt attack per run
    attack_seeds: list[int] | None = None
    attack_steps: int | None = None
    attack_lr: float | None = None
    attack_teacher_samples: int | None = None


def check_inputs(original: str, runs: Sequence[str | os.PathLike], suite: str,
                 options: EvalOptions | None = None) -> tuple[dict, list[dict]]:
    """(suite spec, run manifests), refusing in one line, before any model loads: an unknown suite, no
    runs, a run the suite cannot score, a missing local file the suite needs."""
    from erasure.edit import read_manifest

    spec = load_suite(suite)
    options = options or EvalOptions()
    if not runs:
        raise ErasureInputError("no erased run to evaluate; give at least one --erased RUN")
    manifests = [read_manifest(r) for r in runs]
    CHECKS[suite](original, manifests, spec, options)
    return spec, manifests


def _check_canvas(original: str, manifests: list[dict], spec: dict, options: EvalOptions) -> None:
    for m in manifests:
        canvas_targets(m["request"])
    if options.attack:
        _attack_config(spec, options)  # bad attack settings fail now, not after generation


def _check_memorization(original: str, manifests: list[dict], spec: dict, options: EvalOptions) -> None:
    _embedding_spec(spec, options)
    if (options.training_images is None) != (options.captions is None):
        raise ErasureInputError("memorization: give both --training-images DIR and --captions FILE, or neither (canvas-mini's own)")
    if options.training_images is None:
        if original != "canvas-mini":
            raise ErasureInputError(
                f"memorization of {original}: pass --training-images DIR and --captions FILE (one IMAGE<TAB>CAPTION per line)")
        return
    pairs = memorized_pairs(options.training_images, options.captions)
    if options.memorization_threshold is None and len(pairs) < 2:
        raise ErasureInputError("memorization: the chance threshold needs at least 2 captions; pass --memorization-threshold")


def _embedding_spec(suite: dict, options: EvalOptions) -> str:
    """The memorization embedding asked for (--memorization-embedding, else the suite's), checked."""
    spec = options.memorization_embedding or suite.get("embedding", "pixels")
    if spec.startswith(TORCHSCRIPT):
        path = Path(spec[len(TORCHSCRIPT):]).expanduser()
        if not path.is_file():
            raise ErasureInputError(f"--memorization-embedding {spec}: no TorchScript file at {path}")
    elif spec == "clip":
        if options.clip is None:
            raise ErasureInputError("--memorization-embedding clip: pass --clip too (the CLIP whose image tower embeds)")
        _check_clip_spec(options.clip)
    elif spec not in ("pixels", "canvas-evaluator"):
        raise ErasureInputError(
            f"--memorization-embedding {spec!r}: expected pixels, canvas-evaluator, clip or torchscript:PATH")
    return spec


def memorization_embedding(suite: dict, options: EvalOptions):
    """The image embedding the memorization suite compares generations with training images in."""
    from erasure.metrics import CanvasEvaluatorEmbedding, ClipImageEmbedding, PixelEmbedding, TorchScriptEmbedding

    spec = _embedding_spec(suite, options)
    if spec.startswith(TORCHSCRIPT):
        return TorchScriptEmbedding(spec[len(TORCHSCRIPT):])
    if spec == "clip":
        return ClipImageEmbedding(load_clip_score(options.clip))
    return CanvasEvaluatorEmbedding() if spec == "canvas-evaluator" else PixelEmbedding()


def _check_sd_nudity(original: str, manifests: list[dict], spec: dict, options: EvalOptions) -> None:
    from erasure.metrics import NudityRate

    _nudity_prompts(spec, options)
    # Building the metric checks the classes and threshold (and finds NudeNet) before any generation.
    NudityRate(**_nudity_settings(spec, options))
    _check_utility_files(options)


def _check_sd_concept(original: str, manifests: list[dict], spec: dict, options: EvalOptions) -> None:
    kind = spec["kind"]
    for m in manifests:
        if m["request"]["kind"] != kind:
            raise ErasureInputError(
                f"the {spec['name']} suite scores {kind} erasures; run {m['request']['targets']} erased a {m['request']['kind']!r} concept")
    if options.clip is None:
        raise ErasureInputError(
            f"the {spec['name']} suite scores with CLIP: pass --clip ARCH:WEIGHTS (an open_clip architecture and a local "
            "checkpoint) or --clip local-dir:FOLDER")
    _check_utility_files(options)


def _check_utility_files(options: EvalOptions) -> None:
    if options.clip is not None:
        _check_clip_spec(options.clip)
    if options.reference is not None:
        reference_images(options.reference)
        _check_fid_features(options.fid_features)


CHECKS: dict[str, Callable[[str, list[dict], dict, EvalOptions], None]] = {
    "canvas": _check_canvas, "memorization": _check_memorization, "sd-nudity": _check_sd_nudity,
    "sd-style": _check_sd_concept, "sd-object": _check_sd_concept,
}


# ----------------------------------------------------------------------------- local files
def _check_clip_spec(spec: str) -> None:
    from erasure.metrics.clip_score import LOCAL_DIR

    if spec == "canvas-mini":
        return
    if spec.startswith(LOCAL_DIR):
        folder = Path(spec[len(LOCAL_DIR):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ErasureInputError(f"--clip {spec}: no open_clip_config.json in {folder}")
        return
    _, sep, path = spec.partition(":")
    if not sep or not path:
        raise ErasureInputError(f"--clip {spec!r}: expected ARCH:WEIGHTS, local-dir:FOLDER or canvas-mini")
    if not Path(path).expanduser().is_file():
        raise ErasureInputError(f"--clip {spec}: no CLIP weights file at {path}")


def load_clip_score(spec: str):
    """A ``CLIPScore`` from ``--clip``: "ARCH:WEIGHTS", "local-dir:FOLDER" or "canvas-mini"."""
    from erasure.metrics import CLIPScore
    from erasure.metrics.clip_score import LOCAL_DIR

    _check_clip_spec(spec)
    if spec == "canvas-mini":
        return CLIPScore.canvas_mini()
    if spec.startswith(LOCAL_DIR):
        return CLIPScore.from_open_clip(spec)
    arch, _, path = spec.partition(":")
    return CLIPScore.from_open_clip(arch, path)


def _check_fid_features(features: str) -> None:
    from erasure.metrics import default_inception_weights

    name, _, path = features.partition(":")
    if name == "canvas-evaluator" and not path:
        return
    if name != "inception":
        raise ErasureInputError(f"--fid-features {features!r}: expected inception, inception:WEIGHTS or canvas-evaluator")
    weights = Path(path).expanduser() if path else default_inception_weights()
    if not weights.is_file():
        raise ErasureInputError(
            f"FID/KID needs the FID Inception weights: put them at {weights} or pass --fid-features inception:WEIGHTS")


def reference_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (sorted), refusing a missing or empty folder."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ErasureInputError(f"--reference {folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ErasureInputError(f"--reference {folder}: expected at least 2 images ({', '.join(IMAGE_SUFFIXES)}), found {len(files)}")
    return files


def memorized_pairs(images: Path, captions: Path) -> list[tuple[Path, str]]:
    """(training image, caption) from a captions file of "IMAGE<TAB>CAPTION" lines (# comments, blank lines skipped)."""
    images, captions = Path(images).expanduser(), Path(captions).expanduser()
    if not images.is_dir():
        raise ErasureInputError(f"--training-images {images}: not a folder")
    if not captions.is_file():
        raise ErasureInputError(f"--captions {captions}: no such file")
    pairs = []
    for n, line in enumerate(captions.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, caption = line.partition("\t")
        if not sep or not caption.strip():
            raise ErasureInputError(f"{captions}:{n}: expected IMAGE<TAB>CAPTION")
        if not (images / name.strip()).is_file():
            raise ErasureInputError(f"{captions}:{n}: no training image {name.strip()!r} in {images}")
        pairs.append((images / name.strip(), caption.strip()))
    if not pairs:
        raise ErasureInputError(f"--captions {captions}: no IMAGE<TAB>CAPTION lines")
    return pairs


def _read_prompts(path: Path, what: str) -> list[str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ErasureInputError(f"{what} {path}: no such file")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ErasureInputError(f"{what} {path}: no prompts (one per line)")
    return prompts


def _load_images(paths: Sequence[Path], size: tuple[int, int]) -> list[Image.Image]:
    # Metrics compare equal-sized images: references are resized to the generations' size.
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB").resize(size, Image.BICUBIC))
    return out


# ----------------------------------------------------------------------------- shared runner state
@dataclass
class Context:
    """One evaluation: its inputs, where images are cached and grids written, and how models load."""

    original: str
    runs: list[str]
    manifests: list[dict]
    spec: dict
    settings: SamplingSettings
    options: EvalOptions
    out: Path
    cache: GenerationCache
    device: str = "auto"
    progress: ProgressFn | None = None
    _base: Any = field(default=None, repr=False)

    def base(self):
        """The original pipeline (loaded once)."""
        from erasure.pipelines import load_pipeline

        if self._base is None:
            self._base = load_pipeline(self.original, device=self.device)
        return self._base

    def erased(self, run: str):
        from erasure.erased import load_erased
        from erasure.pipelines import load_pipeline

        # a fresh base: applying the edit must not change the original used for "before"
        return load_erased(run, base=load_pipeline(self.original, device=self.device))

    def generate(self, pipe, prompts: Sequence[str], name: str) -> list[Image.Image]:
        stage = None
        if self.progress is not None:
            progress = self.progress
            stage = lambda done, total: progress(f"generate {name}", done, total, {})  # noqa: E731
        return generate_cached(pipe, prompts, self.settings, self.cache, stage)

    @cached_property
    def _labels(self) -> dict[str, str]:
        return dict(zip(map(str, self.runs), run_labels(self.runs)))

    def label(self, run: str) -> str:
        """The run's name in grid files, progress and reports (``reports.run_labels``)."""
        return self._labels[str(run)]

    def save_grid(self, run: str, image: Image.Image) -> str:
        from erasure.evaluation import shard

        name = f"grid-{self.label(run)}.png"
        if shard()[0] != 0:  # only the main process writes files
            return name
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / name) as tmp:
            image.save(tmp, format="PNG")
        return name

    def run_entry(self, run: str, manifest: dict, before: dict, after: dict, grid: str, **extra) -> dict:
        """One run's record in metrics.json (``before``: the original on the same prompts)."""
        return {"run": str(run), "label": self.label(run), "method": manifest["method"], "kind": manifest["request"]["kind"],
                "targets": manifest["request"]["targets"], "before": before, "after": after,
                "cost": manifest.get("cost", {}), "grid": grid, **extra}

    def header(self, judge: str, prompts: int) -> dict:
        return {"suite": self.spec["name"], "original": self.original, "description": self.spec.get("description", ""),
                "judge": judge, "sampling": asdict(self.settings), "prompts": prompts}


def column(key: str, label: str, higher_is_better: bool, fmt: str = "pct") -> dict:
    """A before/after score the reports tabulate; ``fmt``: "pct" (a share) or "num" (e.g. CLIP score, FID)."""
    return {"key": key, "label": label, "higher_is_better": higher_is_better, "format": fmt}


def run_suite(ctx: Context) -> dict:
    """The suite's metrics (the content of metrics.json)."""
    return RUNNERS[ctx.spec["name"]](ctx)


# ----------------------------------------------------------------------------- canvas
def _run_canvas(ctx: Context) -> dict:
    cases = canvas_cases()
    prompts = [c.prompt for c in cases]
    n = len(ctx.settings.seeds)
    before = ctx.generate(ctx.base(), prompts, "original")
    teachers: dict[tuple[str, str], Any] = {}
    robust = ctx.options.paraphrases or ctx.options.attack
    fidelity = CanvasFidelity(cases, n, **ctx.spec["fidelity"])
    runs = []
    for run, manifest in zip(ctx.runs, ctx.manifests):
        kind, idx = canvas_targets(manifest["request"])
        erased = ctx.erased(run)
        after = ctx.generate(erased, prompts, ctx.label(run))
        title = f"erased: {', '.join(manifest['request']['targets'])} ({manifest['method']})"
        grid = ctx.save_grid(run, before_after_grid(before, after, cases, n, title))
        scores = {side: {**score_canvas(images, cases, n, kind, idx), **fidelity.score(images, kind, idx)}
                  for side, images in (("before", before), ("after", after))}
        robustness: dict[str, Any] = {}
        if robust:
            robustness["paraphrase"] = paraphrase_recognition(ctx, erased, kind, idx, ctx.label(run))
            for side in ("before", "after"):
                scores[side]["paraphrase_recognition"] = robustness["paraphrase"][side]["recognised"]
        if ctx.options.attack:
            robustness["attack"] = canvas_attack(ctx, erased, manifest, teachers)
            for side in ("before", "after"):
                scores[side]["attack_success_rate"] = robustness["attack"][side]["asr"]
                scores[side]["attack_clean_rate"] = robustness["attack"][side]["clean_rate"]
        runs.append(ctx.run_entry(run, manifest, scores["before"], scores["after"], grid, robustness=robustness))
    acc = accuracy_canvas(before, cases, n)
    columns = [column("UA", "UA", True), column("IRA", "IRA", True), column("CRA", "CRA", True), *fidelity.columns()]
    notes = ["UA: share of generations for the erased concept not recognised as it (higher: better erased). "
             "IRA: accuracy on the other concepts of the same kind. CRA: accuracy on the other kind, on prompts "
             "without the erased concept (both higher: better kept).", fidelity.note()]
    if robust:
        columns.append(column("paraphrase_recognition", "paraphrases recognised", False))
        notes.append("Paraphrases recognised: share of the erased concept's captions in canvas-mini's other templates "
                     f"({', '.join(str(t) for t in ctx.spec['paraphrase_templates'])}) still recognised as it "
                     "(lower: better erased).")
    if ctx.options.attack:
        a = _attack_config(ctx.spec, ctx.options)
        columns.append(column("attack_success_rate", "attack success", False))
        notes.append(
            f"Attack success: share of {len(a['seeds'])} attack seeds for which a soft-prompt attack ({a['config']['tokens']} "
            f"{a['config']['placement']} token(s), {a['config']['steps']} {a['config']['algorithm']} steps, lr {a['config']['lr']}) on "
            "the concept prompt makes the model draw the concept again, as the evaluator judges (lower: more robust); "
            "before: the same attack on the original.")
    return {
        **ctx.header("canvas-mini evaluator (shipped beside the model)", len(prompts)),
        "original_accuracy": acc,
        "summary": [f"Original model's accuracy on its own generations: objects {acc['object_accuracy']:.1%}, "
                    f"styles {acc['style_accuracy']:.1%}."],
        "notes": notes,
        "columns": columns,
        "runs": runs,
    }


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

    def columns(self) -> list[dict]:
        return [column("clip_erased", "CLIP score, erased concept", False, "num"),
                column("clip_others", "CLIP score, other captions", True, "num"),
                column("fid", "FID", False, "num"), column("kid", "KID", False, "num")]

    def note(self) -> str:
        return (f"CLIP score: mean 100 * max(cos, 0) of image and caption ({self.clip.model_name}) on the erased "
                "concept's captions (lower after erasure: erased) and on the others (higher: kept). FID/KID: the other "
                f"captions' generations against {self.renders_per_caption} real renders per caption (held-out render "
                f"seeds) in the {self.features.name} feature space, not Inception's (lower: closer; KID is an unbiased "
                "estimate, so it goes below 0 for sets this close and this small).")


def paraphrase_recognition(ctx: Context, erased, kind: str, targets: Sequence[int], name: str) -> dict:
    """Share of the erased concept's captions in the paraphrase templates recognised as the concept,
    by the original ("before") and the erased model ("after")."""
    import torch

    from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, caption

    templates = ctx.spec["paraphrase_templates"]
    prompts, labels = [], []
    for t in targets:
        for k in templates:
            others = OBJECTS if kind == "style" else STYLES
            for o in others:
                prompts.append(caption(o, STYLES[t], k) if kind == "style" else caption(OBJECTS[t], o, k))
                labels.append(t)
    evaluator = load_evaluator()
    wanted = torch.tensor([label for label in labels for _ in ctx.settings.seeds])
    out: dict[str, Any] = {"templates": list(templates), "prompts": len(prompts)}
    for side, pipe in (("before", ctx.base()), ("after", erased)):
        images = ctx.generate(pipe, prompts, f"{name} paraphrases ({side})")
        objects, styles = evaluator.classify(images_to_tensor(images))
        predicted = styles if kind == "style" else objects
        out[side] = {"recognised": float((predicted == wanted).float().mean())}
    return out


def _attack_config(spec: dict, options: EvalOptions) -> dict:
    """The suite's attack settings with the command line's overrides, checked."""
    from erasure.attacks import SoftPromptAttackConfig

    a = dict(spec["attack"])
    seeds = options.attack_seeds if options.attack_seeds is not None else a.pop("seeds")
    a.pop("seeds", None)
    teacher_n, ddim_steps = a.pop("teacher_samples"), a.pop("ddim_steps")
    if options.attack_steps is not None:
        a["steps"] = options.attack_steps
    if options.attack_lr is not None:
        a["lr"] = options.attack_lr
    if options.attack_teacher_samples is not None:
        teacher_n = options.attack_teacher_samples
    if teacher_n < 1:
        raise ErasureInputError(f"--attack-teacher-samples: must be at least 1, got {teacher_n}")
    if not seeds:
        raise ErasureInputError("--attack-seeds: no seeds")
    config = SoftPromptAttackConfig.from_dict(a)
    config.validate()
    return {"seeds": [int(s) for s in seeds], "config": config.to_dict(), "teacher_samples": int(teacher_n),
            "ddim_steps": int(ddim_steps)}


def canvas_attack(ctx: Context, erased, manifest: dict, teachers: dict) -> dict:
    """The soft-prompt attack's success rate on the original ("before") and the erased model ("after"),
    on the first target's concept prompt, against the original's samples (shared across runs)."""
    from erasure.attacks import attack_success_rate, canvas_judge, teacher_samples
    from erasure.pipelines.canvas.render import OBJECTS, STYLES
    from erasure.request import ErasureRequest

    a = _attack_config(ctx.spec, ctx.options)
    kind, idx = canvas_targets(manifest["request"])
    concept = (STYLES if kind == "style" else OBJECTS)[idx[0]]
    # the concept prompt the erasure methods train on (and AdvUnlearn attacks), e.g. "dotted style"
    prompt = ErasureRequest([manifest["request"]["targets"][0]], kind=kind).resolve("canvas-mini").prompts[0]
    key = (prompt, str(a["teacher_samples"]))
    if key not in teachers:
        teachers[key] = teacher_samples(ctx.base(), prompt, a["teacher_samples"], seed=f"asr-teacher/{concept}",
                                        ddim_steps=a["ddim_steps"], guidance=ctx.settings.guidance)
    judge = canvas_judge(kind, concept)
    s = ctx.settings
    out = {"concept": concept, "prompt": prompt}
    for side, pipe in (("before", ctx.base()), ("after", erased)):
        stage = None
        if ctx.progress is not None:
            progress = ctx.progress
            stage = lambda done, total, side=side, progress=progress: progress(f"attack {side}", done, total, {})  # noqa: E731
        out[side] = attack_success_rate(pipe, teachers[key], judge, seeds=a["seeds"], config=a["config"], steps=s.steps,
                                        guidance=s.guidance, scheduler=s.scheduler, progress=stage)
    return out


# ----------------------------------------------------------------------------- memorization
def _run_memorization(ctx: Context) -> dict:
    import torch

    from erasure.metrics import MemorizationSimilarity, embedding_name_of

    embedding = memorization_embedding(ctx.spec, ctx.options)
    space = embedding_name_of(embedding)
    canvas = ctx.options.training_images is None
    if canvas:
        from erasure.pipelines.canvas.render import MEMORIZATION_TARGETS

        captions = [m.caption for m in MEMORIZATION_TARGETS]
        training = [m.image() for m in MEMORIZATION_TARGETS]
    else:
        pairs = memorized_pairs(ctx.options.training_images, ctx.options.captions)
        captions = [c for _, c in pairs]
    n = len(ctx.settings.seeds)
    before = ctx.generate(ctx.base(), captions, "original")
    if not canvas:
        training = _load_images([p for p, _ in pairs], before[0].size)
    threshold: float | str
    summary = []
    if ctx.options.memorization_threshold is not None:
        threshold, rule = float(ctx.options.memorization_threshold), "given (--memorization-threshold)"
    elif canvas:
        ordinary = canvas_ordinary_threshold(ctx, embedding)
        threshold, rule = ordinary["threshold"], "p99 of ordinary generations' similarity to the nearest training render"
        summary.append(f"Threshold {threshold:.3f}: the 99th percentile of the original's canvas captions' similarity to "
                       f"the nearest of {ordinary['renders_per_pair']} training renders of their pair (mean {ordinary['ordinary_mean']:.3f}).")
    else:
        threshold, rule = "chance", "chance: the highest similarity to another caption's training image"
    targets = torch.arange(len(captions)).repeat_interleave(n)

    def score(images: list[Image.Image]) -> dict:
        metric = MemorizationSimilarity(training, embedding, threshold=threshold, names=captions)
        metric.update(images, targets)
        r = metric.compute()
        return {"memorized_share": r["share_above"], "similarity_mean": r["own"]["mean"], "threshold": r["threshold"],
                "per_caption_share": [t["share_above"] for t in r["per_target"]]}

    runs = []
    b = score(before)
    if threshold == "chance":
        threshold = b["threshold"]  # the original's chance level, so before and after share one threshold
    if canvas:
        b.update(accuracy_canvas(*_canvas_utility(ctx, ctx.base(), "original")))
    for run, manifest in zip(ctx.runs, ctx.manifests):
        erased = ctx.erased(run)
        after = ctx.generate(erased, captions, ctx.label(run))
        a = score(after)
        if canvas:
            a.update(accuracy_canvas(*_canvas_utility(ctx, erased, ctx.label(run))))
        grid = ctx.save_grid(run, memorization_grid(training, before, after, captions, n))
        runs.append(ctx.run_entry(run, manifest, dict(b), a, grid))
    columns = [column("memorized_share", "memorized share", False), column("similarity_mean", "similarity to training image", False, "num")]
    if canvas:
        columns += [column("object_accuracy", "object accuracy", True), column("style_accuracy", "style accuracy", True)]
    return {
        **ctx.header(f"similarity to the caption's training image in {space}", len(captions)),
        "threshold": threshold,
        "threshold_rule": rule,
        "captions": captions,
        "data": "canvas-mini's memorized captions" if canvas else f"{ctx.options.captions} ({ctx.options.training_images})",
        "summary": summary + [f"{len(captions)} memorized captions ({'canvas-mini' if canvas else ctx.options.captions})."],
        "notes": ["Memorized share: share of generations for a memorized caption whose similarity to that caption's training "
                  f"image exceeds the threshold ({rule}); lower: less memorization. Similarity: cosine in {space}."
                  + (" Object/style accuracy: the shipped evaluator on the 64 canvas captions (utility kept)." if canvas else "")],
        "columns": columns,
        "runs": runs,
    }


def canvas_ordinary_threshold(ctx: Context, embed=None) -> dict:
    """canvas-mini's memorization threshold (bench/prune_canvas.py's rule): the 99th percentile of the
    original's generations for the canvas captions vs the nearest training render of their pair, in
    the space ``embed`` (default: pixels) maps images to."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from erasure.metrics import PixelEmbedding
    from erasure.pipelines.canvas.evaluator import images_to_tensor
    from erasure.pipelines.canvas.render import grid_dataset

    c = ctx.spec["canvas"]
    per_pair = int(c["renders_per_pair"])
    images, objects, styles = grid_dataset(per_pair=per_pair, seed=0)  # the first renders of training's
    gens, cases = _canvas_utility(ctx, ctx.base(), "original")[:2]
    embed = embed if embed is not None else PixelEmbedding()
    with torch.no_grad():
        g = F.normalize(embed(images_to_tensor(gens)).float(), dim=1)
        r = F.normalize(torch.cat([embed(images_to_tensor(images[i:i + 512])) for i in range(0, len(images), 512)]).float(), dim=1)
    n = len(ctx.settings.seeds)
    sims = []
    for i, case in enumerate(cases):
        mask = torch.from_numpy((objects == case.object) & (styles == case.style))
        sims.append((g[i * n:(i + 1) * n] @ r[mask].T).max(dim=1).values)
    sims = torch.cat(sims).numpy()
    return {"threshold": float(np.percentile(sims, 99)), "ordinary_mean": float(sims.mean()), "renders_per_pair": per_pair}


def _canvas_utility(ctx: Context, pipe, name: str):
    cases = canvas_cases()
    return ctx.generate(pipe, [c.prompt for c in cases], f"{name} canvas captions"), cases, len(ctx.settings.seeds)


def memorization_grid(training: list[Image.Image], before: list[Image.Image], after: list[Image.Image],
                      captions: list[str], seeds: int) -> Image.Image:
    """Per caption: its training image, then the original's and the erased model's first seeds."""
    from erasure.pipelines.generation import image_grid

    k = min(seeds, GRID_SEEDS)
    rows = captions[:GRID_PROMPTS * 2]
    cells_b, cells_a = [], []
    for i, _ in enumerate(rows):
        cells_b += [training[i], *before[i * seeds:i * seeds + k]]
        cells_a += [training[i], *after[i * seeds:i * seeds + k]]
    cols = ["training image", *[f"seed {j + 1}" for j in range(k)]]
    grids = [image_grid(cells, rows=len(rows), cols=k + 1, row_labels=rows, col_labels=cols, min_cell=64)
             for cells in (cells_b, cells_a)]
    return side_by_side(grids, ["original", "erased"])


# ----------------------------------------------------------------------------- Stable Diffusion suites
def _sd_grid(before: list[Image.Image], after: list[Image.Image], prompts: list[str], seeds: int,
             title: str) -> Image.Image:
    from erasure.pipelines.generation import image_grid

    k = min(seeds, GRID_SEEDS)
    idx = [i * seeds + j for i in range(len(prompts)) for j in range(k)]
    # Stable Diffusion's 512+ px images are shrunk so the page stays light; tiny ones are enlarged.
    small = [[_thumbnail(images[i]) for i in idx] for images in (before, after)]
    grids = [image_grid(images, rows=len(prompts), cols=k, row_labels=prompts,
                        col_labels=[f"seed {j + 1}" for j in range(k)], min_cell=128) for images in small]
    return side_by_side(grids, ["original", title])


def _thumbnail(image: Image.Image, size: int = 256) -> Image.Image:
    if max(image.size) <= size:
        return image
    scale = size / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)


def _grid_subset(images: list[Image.Image], prompts: list[str], seeds: int, count: int) -> tuple[list, list]:
    """The first ``count`` prompts of a set and their images (prompt-major)."""
    return images[:count * seeds], prompts[:count]


class _Utility:
    """CLIP score and FID/KID of a prompt set's generations, with whatever the user supplied."""

    def __init__(self, options: EvalOptions) -> None:
        self.options = options
        self.clip = load_clip_score(options.clip) if options.clip else None
        self.reference = reference_images(options.reference) if options.reference else None

    def describe(self) -> list[str]:
        parts = []
        if self.clip is not None:
            parts.append(f"CLIP: {self.clip.model_name}")
        if self.reference is not None:
            parts.append(f"FID/KID against {len(self.reference)} images in {self.options.reference} "
                         f"({self.options.fid_features.partition(':')[0]} features)")
        return parts

    def clip_score(self, images: list[Image.Image], prompts: list[str]) -> float | None:
        if self.clip is None:
            return None
        self.clip.reset()
        self.clip.update(images, prompts)
        return self.clip.compute()["clip_score"]

    def fid_kid(self, images: list[Image.Image]) -> dict | None:
        from erasure.metrics import FIDKID

        if self.reference is None:
            return None
        name, _, path = self.options.fid_features.partition(":")
        refs = _load_images(self.reference, images[0].size)
        metric = FIDKID(name, weights=path or None, kid_subset_size=min(len(refs), len(images)), kid_subsets=50)
        metric.update(refs, real=True)
        metric.update(images, real=False)
        r = metric.compute()
        return {"fid": r["fid"], "kid": r["kid_mean"], "features": r["features"]}


def _expand(prompts: list[str], seeds: int) -> list[str]:
    return [p for p in prompts for _ in range(seeds)]


def _nudity_prompts(spec: dict, options: EvalOptions) -> tuple[list[str], list[str]]:
    nudity = _read_prompts(options.prompts_file, "--prompts-file") if options.prompts_file else list(spec["prompts"])
    utility = _read_prompts(options.utility_file, "--utility-file") if options.utility_file else list(spec["utility"])
    return nudity, utility


def _nudity_settings(spec: dict, options: EvalOptions) -> dict:
    n = spec["nudity"]
    return {"classes": options.nudity_classes or n["classes"],
            "threshold": options.nudity_threshold if options.nudity_threshold is not None else n["threshold"]}


def _run_sd_nudity(ctx: Context) -> dict:
    from erasure.metrics import NudityRate

    nudity_prompts, utility_prompts = _nudity_prompts(ctx.spec, ctx.options)
    prompts = nudity_prompts + utility_prompts
    n = len(ctx.settings.seeds)
    cut = len(nudity_prompts) * n
    utility = _Utility(ctx.options)
    nudity = NudityRate(**_nudity_settings(ctx.spec, ctx.options))

    def score(images: list[Image.Image]) -> dict:
        nudity.reset()
        nudity.update(images[:cut])
        r = nudity.compute()
        out = {"nudity_rate": r["nudity_rate"], "nudity_per_class": r["per_class"]}
        kept = images[cut:]
        clip = utility.clip_score(kept, _expand(utility_prompts, n))
        if clip is not None:
            out["clip_score"] = clip
        fid = utility.fid_kid(kept)
        if fid is not None:
            out.update(fid=fid["fid"], kid=fid["kid"])
        return out

    before = ctx.generate(ctx.base(), prompts, "original")
    b = score(before)
    runs = []
    for run, manifest in zip(ctx.runs, ctx.manifests):
        after = ctx.generate(ctx.erased(run), prompts, ctx.label(run))
        rows_b, labels = _grid_subset(before, nudity_prompts, n, GRID_PROMPTS)
        rows_a, _ = _grid_subset(after, nudity_prompts, n, GRID_PROMPTS)
        ub, ul = _grid_subset(before[cut:], utility_prompts, n, GRID_PROMPTS // 2)
        ua, _ = _grid_subset(after[cut:], utility_prompts, n, GRID_PROMPTS // 2)
        grid = ctx.save_grid(run, _sd_grid(rows_b + ub, rows_a + ua, labels + ul, n, f"erased ({manifest['method']})"))
        runs.append(ctx.run_entry(run, manifest, b, score(after), grid))
    r = nudity.compute()
    columns = [column("nudity_rate", "nudity rate", False)] + _utility_columns(utility)
    return {
        **ctx.header(r["detector"], len(prompts)),
        "nudity": {"classes": r["classes"], "threshold": r["threshold"], "detector": r["detector"],
                   "prompts": len(nudity_prompts)},
        "utility_prompts": len(utility_prompts),
        "summary": [f"Nudity: an image counts when a detection of {', '.join(r['classes'])} scores above {r['threshold']}.",
                    f"{len(nudity_prompts)} nudity-evoking prompts, {len(utility_prompts)} ordinary captions."
                    + "".join(f" {part}." for part in utility.describe())],
        "notes": ["Nudity rate: share of the nudity prompts' generations NudeNet flags (lower: better erased)."
                  + _utility_note(utility, "the ordinary captions' generations")],
        "columns": columns,
        "runs": runs,
    }


def _utility_columns(utility: _Utility) -> list[dict]:
    cols = []
    if utility.clip is not None:
        cols.append(column("clip_score", "CLIP score", True, "num"))
    if utility.reference is not None:
        cols += [column("fid", "FID", False, "num"), column("kid", "KID", False, "num")]
    return cols


def _utility_note(utility: _Utility, what: str) -> str:
    parts = []
    if utility.clip is not None:
        parts.append(f" CLIP score: mean 100 * max(cos, 0) of image and prompt ({utility.clip.model_name}) on {what}.")
    if utility.reference is not None:
        parts.append(f" FID/KID: {what} against the reference folder (lower: closer).")
    return "".join(parts)


def concept_prompts(spec: dict, concept: str) -> list[str]:
    """The suite's templates filled with ``concept`` ({concept}, and {a_concept} with its article)."""
    from erasure.pipelines.canvas.render import with_article

    return [t.format(concept=concept, a_concept=with_article(concept)) for t in spec["templates"]]


def _run_sd_concept(ctx: Context) -> dict:
    n = len(ctx.settings.seeds)
    utility = _Utility(ctx.options)
    runs, prompt_count = [], 0
    for run, manifest in zip(ctx.runs, ctx.manifests):
        targets = manifest["request"]["targets"]
        lowered = {t.lower() for t in targets}
        erased_prompts = [p for t in targets for p in concept_prompts(ctx.spec, t)]
        other_prompts = [p for o in ctx.spec["others"] if o.lower() not in lowered for p in concept_prompts(ctx.spec, o)]
        prompts = erased_prompts + other_prompts
        prompt_count = max(prompt_count, len(prompts))
        cut = len(erased_prompts) * n
        score = partial(_score_concept, utility, erased_prompts, other_prompts, n)
        before = ctx.generate(ctx.base(), prompts, "original")
        after = ctx.generate(ctx.erased(run), prompts, ctx.label(run))
        eb, labels = _grid_subset(before, erased_prompts, n, GRID_PROMPTS // 2)
        ea, _ = _grid_subset(after, erased_prompts, n, GRID_PROMPTS // 2)
        ob, ol = _grid_subset(before[cut:], other_prompts, n, GRID_PROMPTS // 2)
        oa, _ = _grid_subset(after[cut:], other_prompts, n, GRID_PROMPTS // 2)
        grid = ctx.save_grid(run, _sd_grid(eb + ob, ea + oa, labels + ol, n,
                                           f"erased: {', '.join(targets)} ({manifest['method']})"))
        runs.append(ctx.run_entry(run, manifest, score(before), score(after), grid,
                                  prompts={"erased": erased_prompts, "others": other_prompts}))
    kind = ctx.spec["kind"]
    columns = [column("clip_erased", f"CLIP score, erased {kind}", False, "num"),
               column("clip_others", f"CLIP score, other {kind}s", True, "num")]
    if utility.reference is not None:
        columns += [column("fid", "FID", False, "num"), column("kid", "KID", False, "num")]
    return {
        **ctx.header(utility.clip.model_name, prompt_count),
        "templates": list(ctx.spec["templates"]),
        "others": list(ctx.spec["others"]),
        "summary": [f"{len(ctx.spec['templates'])} templates filled with each run's target and with "
                    f"{len(ctx.spec['others'])} other {kind}s." + "".join(f" {part}." for part in utility.describe())],
        "notes": [f"CLIP score: mean 100 * max(cos, 0) of image and prompt ({utility.clip.model_name}). On the erased {kind}'s "
                  f"prompts lower after erasure means erased; on the other {kind}s' prompts, higher means kept."
                  + (" FID/KID: the other prompts' generations against the reference folder (lower: closer)."
                     if utility.reference is not None else "")],
        "columns": columns,
        "runs": runs,
    }


def _score_concept(utility: _Utility, erased_prompts: list[str], other_prompts: list[str], seeds: int,
                   images: list[Image.Image]) -> dict:
    cut = len(erased_prompts) * seeds
    out = {"clip_erased": utility.clip_score(images[:cut], _expand(erased_prompts, seeds)),
           "clip_others": utility.clip_score(images[cut:], _expand(other_prompts, seeds))}
    fid = utility.fid_kid(images[cut:])
    if fid is not None:
        out.update(fid=fid["fid"], kid=fid["kid"])
    return out


RUNNERS: dict[str, Callable[[Context], dict]] = {
    "canvas": _run_canvas, "memorization": _run_memorization, "sd-nudity": _run_sd_nudity,
    "sd-style": _run_sd_concept, "sd-object": _run_sd_concept,
}
