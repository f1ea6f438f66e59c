"""The memorization suite: do memorized captions still reproduce their training images?

Each memorized caption is drawn on a few seeds and compared with its training image
(``erasure.metrics.MemorizationSimilarity``, after Wen et al., 2024, "Detecting, explaining, and
mitigating memorization in diffusion models", and Somepalli et al., 2023, "Diffusion art or digital
forgery?", whose SSCD similarity a TorchScript embedding can supply). The share above a threshold
is "memorized". canvas-mini: its 8 memorized captions, in pixel space by default, with canvas-mini's
threshold (the 99th percentile of ordinary generations' similarity to the nearest training render
of their pair); other models: the user's ``training_images`` and ``captions``, threshold "chance"
(the highest similarity a generation reaches to another caption's training image) unless given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from PIL import Image

from erasure.errors import ErasureInputError

from ..grids import GRID_PROMPTS, GRID_SEEDS, side_by_side
from ..judges import check_clip_spec, load_clip_score, load_images
from ..registry import Case, Probe, Suite, SuiteConfig, register_suite
from ..report import Column
from .canvas import accuracy_canvas, canvas_cases

#: Prefix of the ``embedding`` argument for a local TorchScript embedding model.
TORCHSCRIPT = "torchscript:"


@dataclass
class MemorizationSuiteConfig(SuiteConfig):
    """configs/suites/memorization.yaml; ``training_images``, ``captions``, ``threshold``, ``embedding``
    and ``clip`` are what users pass (``--suite-arg``, ``--clip``)."""

    method: ClassVar[str] = "memorization suite"

    guidance: float = 3.0
    #: image space of the similarity: "pixels", "canvas-evaluator", "clip" (the ``clip`` model's image
    #: tower) or "torchscript:PATH" (a local TorchScript embedding model such as SSCD)
    embedding: str = "pixels"
    renders_per_pair: int = 16  # canvas-mini's threshold: training renders per object x style pair
    threshold: float | None = None  # None: canvas-mini's rule, or "chance" for a user's data
    training_images: str | None = None  # a folder of training images
    captions: str | None = None  # "IMAGE<TAB>CAPTION" per line
    clip: str | None = None
    #: PrivLeak (erasure.attacks.membership): the membership-inference AUC of the memorized training images
    #: against non-members of the same distribution (canvas-mini: renders of compositions it never saw;
    #: other models: a ``nonmembers`` folder), paired with the same captions
    membership: bool = False
    nonmembers: str | None = None
    membership_nonmembers: int = 32  # canvas-mini's non-member renders
    membership_timesteps: int = 10
    membership_noises: int = 4

    def validate(self) -> None:
        super().validate()
        for name in ("membership_nonmembers", "membership_timesteps", "membership_noises"):
            if getattr(self, name) < 1:
                raise ErasureInputError(f"memorization suite {name}: must be at least 1, got {getattr(self, name)}")

#: canvas-mini's non-member compositions: render seeds no training image used (memorized: 90,001-90,008)
NONMEMBER_SEED = 190_001


def memorized_pairs(images: str | Path, captions: str | Path) -> list[tuple[Path, str]]:
    """(training image, caption) from a captions file of "IMAGE<TAB>CAPTION" lines (# comments, blank lines skipped)."""
    images, captions = Path(images).expanduser(), Path(captions).expanduser()
    if not images.is_dir():
        raise ErasureInputError(f"training_images {images}: not a folder")
    if not captions.is_file():
        raise ErasureInputError(f"captions {captions}: no such file")
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
        raise ErasureInputError(f"captions {captions}: no IMAGE<TAB>CAPTION lines")
    return pairs


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


@register_suite("memorization")
class MemorizationSuite(Suite):
    """Share of memorized captions' generations above the threshold, mean similarity to the training image."""

    config_class = MemorizationSuiteConfig
    config: MemorizationSuiteConfig

    @property
    def on_canvas(self) -> bool:
        """Whether the memorized captions are the model family's own (canvas-mini ships them)."""
        return self.config.training_images is None

    def embedding_spec(self) -> str:
        """The embedding asked for, checked."""
        spec = self.config.embedding
        if spec.startswith(TORCHSCRIPT):
            path = Path(spec[len(TORCHSCRIPT):]).expanduser()
            if not path.is_file():
                raise ErasureInputError(f"embedding {spec}: no TorchScript file at {path}")
        elif spec == "clip":
            if self.config.clip is None:
                raise ErasureInputError("embedding clip: pass --clip too (the CLIP whose image tower embeds)")
            check_clip_spec(self.config.clip)
        elif spec not in ("pixels", "canvas-evaluator"):
            raise ErasureInputError(f"embedding {spec!r}: expected pixels, canvas-evaluator, clip or torchscript:PATH")
        return spec

    def embedding(self):
        """The image embedding generations and training images are compared in."""
        from erasure.metrics import CanvasEvaluatorEmbedding, ClipImageEmbedding, PixelEmbedding, TorchScriptEmbedding

        spec = self.embedding_spec()
        if spec.startswith(TORCHSCRIPT):
            return TorchScriptEmbedding(spec[len(TORCHSCRIPT):])
        if spec == "clip":
            return ClipImageEmbedding(load_clip_score(self.config.clip))
        return CanvasEvaluatorEmbedding() if spec == "canvas-evaluator" else PixelEmbedding()

    def check(self, original: str, manifests: list[dict]) -> None:
        c = self.config
        self.embedding_spec()
        if (c.training_images is None) != (c.captions is None):
            raise ErasureInputError("memorization: give both training_images=DIR and captions=FILE, or neither (canvas-mini's own)")
        if c.training_images is None:
            from erasure.families import family_of_source

            if family_of_source(original).memorized() is None:
                raise ErasureInputError(
                    f"memorization of {original}: pass --suite-arg training_images=DIR --suite-arg captions=FILE "
                    "(one IMAGE<TAB>CAPTION per line)")
            return
        pairs = memorized_pairs(c.training_images, c.captions)
        if c.threshold is None and len(pairs) < 2:
            raise ErasureInputError("memorization: the chance threshold needs at least 2 captions; pass threshold=VALUE")
        if c.membership:
            if c.nonmembers is None:
                raise ErasureInputError("membership on your training images: pass --suite-arg nonmembers=DIR (held-out "
                                        "images of the same distribution the model was not trained on)")
            from erasure.attacks.images import image_files

            image_files(c.nonmembers, "nonmembers")

    def prepare(self, ev) -> None:
        import torch

        self._embedding = self.embedding()
        if self.on_canvas:
            from erasure.families import family_of

            memorized = family_of(ev.base()).memorized()
            self.captions, self.training = [c for c, _ in memorized], [im for _, im in memorized]
        else:
            pairs = memorized_pairs(self.config.training_images, self.config.captions)
            self.captions = [c for _, c in pairs]
        before = ev.generate(ev.base(), self.captions, "original")
        if not self.on_canvas:
            self.training = load_images([p for p, _ in pairs], before[0].size)
        self.targets = torch.arange(len(self.captions)).repeat_interleave(ev.seeds)
        self._membership_before: dict | None = None
        self._nonmembers: list | None = None
        self.seeds = ev.seeds
        self.summary: list[str] = []
        if self.config.threshold is not None:
            self.threshold, self.rule = float(self.config.threshold), "given (threshold)"
        elif self.on_canvas:
            ordinary = canvas_ordinary_threshold(ev, self.config.renders_per_pair, self._embedding)
            self.threshold = ordinary["threshold"]
            self.rule = "p99 of ordinary generations' similarity to the nearest training render"
            self.summary.append(
                f"Threshold {self.threshold:.3f}: the 99th percentile of the original's canvas captions' similarity to "
                f"the nearest of {ordinary['renders_per_pair']} training renders of their pair (mean {ordinary['ordinary_mean']:.3f}).")
        else:
            self.threshold, self.rule = "chance", "chance: the highest similarity to another caption's training image"
            # the original's chance level, so before and after share one threshold
            self.threshold = self._similarity(before)["threshold"]

    def case(self, manifest: dict) -> Case:
        return Case(list(self.captions), key="captions")

    def score(self, images: list[Image.Image], case: Case) -> dict:
        return self._similarity(images)

    def _similarity(self, images: list[Image.Image]) -> dict:
        from erasure.metrics import MemorizationSimilarity

        metric = MemorizationSimilarity(self.training, self._embedding, threshold=self.threshold, names=self.captions)
        metric.update(images, self.targets)
        r = metric.compute()
        return {"memorized_share": r["share_above"], "similarity_mean": r["own"]["mean"], "threshold": r["threshold"],
                "per_caption_share": [t["share_above"] for t in r["per_target"]]}

    def probe(self, ev, erased, case: Case, label: str) -> Probe:
        probe = Probe()
        if self.on_canvas:  # canvas-mini's utility beside memorization: the evaluator on the 64 canvas captions
            probe.before.update(accuracy_canvas(*_canvas_utility(ev, ev.base(), "original")))
            probe.after.update(accuracy_canvas(*_canvas_utility(ev, erased, label)))
        if self.config.membership:
            if self._membership_before is None:
                self._membership_before = self._membership(ev.base(), ev)
            after = self._membership(erased, ev)
            probe.record["membership"] = {"before": self._membership_before, "after": after}
            for side, result in (("before", self._membership_before), ("after", after)):
                getattr(probe, side).update({"membership_auc": result["auc"], "privleak": result["privleak"]})
        return probe

    def _membership(self, pipe, ev) -> dict:
        """The membership inference on ``pipe``: the training images against the non-members."""
        from erasure.attacks.images import images_x0
        from erasure.attacks.membership import membership_inference

        c = self.config
        if self._nonmembers is None:
            if self.on_canvas:
                from erasure.pipelines.canvas.render import render_composition

                self._nonmembers = [render_composition(NONMEMBER_SEED + i) for i in range(c.membership_nonmembers)]
            else:
                from erasure.attacks.images import image_files

                self._nonmembers = load_images(image_files(c.nonmembers, "nonmembers"), self.training[0].size)
        n = len(self.captions)
        captions = [self.captions[i % n] for i in range(len(self._nonmembers))]  # the same captions, round robin
        return membership_inference(pipe, (images_x0(pipe, self.training), self.captions),
                                    (images_x0(pipe, self._nonmembers), captions),
                                    timesteps=c.membership_timesteps, noises=c.membership_noises, seed="memorization")

    def grid(self, before, after, case: Case, manifest: dict) -> Image.Image:
        return memorization_grid(self.training, before, after, self.captions, self.seeds)

    def report(self, ev, cases: list[Case]) -> dict:
        from erasure.metrics import embedding_name_of

        space = embedding_name_of(self._embedding)
        columns = [Column("memorized_share", "memorized share", False),
                   Column("similarity_mean", "similarity to training image", False, "num")]
        if self.on_canvas:
            columns += [Column("object_accuracy", "object accuracy", True), Column("style_accuracy", "style accuracy", True)]
        c = self.config
        notes = []
        if c.membership:
            columns.append(Column("membership_auc", "membership AUC", False, "num"))
            notes.append(
                f"Membership AUC (PrivLeak's, erasure.attacks.membership): P(a memorized training image's denoising error "
                f"under its caption < a non-member's under the same captions), mean of {c.membership_timesteps} evenly spaced "
                f"timesteps x {c.membership_noises} shared noises; non-members: "
                + (f"{c.membership_nonmembers} renders of compositions canvas-mini never saw" if self.on_canvas else str(c.nonmembers))
                + ". About 1: the members are still known; 0.5: no better than chance (forgotten, or never seen). "
                "privleak = (AUC - 0.5) / 0.5.")
        return {
            "judge": f"similarity to the caption's training image in {space}",
            "prompts": len(self.captions),
            "threshold": self.threshold,
            "threshold_rule": self.rule,
            "captions": self.captions,
            "data": "canvas-mini's memorized captions" if self.on_canvas else f"{c.captions} ({c.training_images})",
            "summary": self.summary + [f"{len(self.captions)} memorized captions ({'canvas-mini' if self.on_canvas else c.captions})."],
            "notes": ["Memorized share: share of generations for a memorized caption whose similarity to that caption's training "
                      f"image exceeds the threshold ({self.rule}); lower: less memorization. Similarity: cosine in {space}."
                      + (" Object/style accuracy: the shipped evaluator on the 64 canvas captions (utility kept)."
                         if self.on_canvas else "")] + notes,
            "columns": columns,
        }


def _canvas_utility(ev, pipe, name: str):
    cases = canvas_cases()
    return ev.generate(pipe, [c.prompt for c in cases], f"{name} canvas captions"), cases, ev.seeds


def canvas_ordinary_threshold(ev, renders_per_pair: int, embed=None) -> dict:
    """canvas-mini's memorization threshold (bench/prune_canvas.py's rule): the 99th percentile of the
    original's generations for the canvas captions vs the nearest training render of their pair, in
    the space ``embed`` (default: pixels) maps images to."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from erasure.metrics import PixelEmbedding
    from erasure.pipelines.canvas.evaluator import images_to_tensor
    from erasure.pipelines.canvas.render import grid_dataset

    images, objects, styles = grid_dataset(per_pair=renders_per_pair, seed=0)  # the first renders of training's
    gens, cases = _canvas_utility(ev, ev.base(), "original")[:2]
    embed = embed if embed is not None else PixelEmbedding()
    with torch.no_grad():
        g = F.normalize(embed(images_to_tensor(gens)).float(), dim=1)
        r = F.normalize(torch.cat([embed(images_to_tensor(images[i:i + 512])) for i in range(0, len(images), 512)]).float(), dim=1)
    n = ev.seeds
    sims = []
    for i, case in enumerate(cases):
        mask = torch.from_numpy((objects == case.object) & (styles == case.style))
        sims.append((g[i * n:(i + 1) * n] @ r[mask].T).max(dim=1).values)
    sims = torch.cat(sims).numpy()
    return {"threshold": float(np.percentile(sims, 99)), "ordinary_mean": float(sims.mean()), "renders_per_pair": renders_per_pair}
