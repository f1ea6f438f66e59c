"""The judges and data a user points evaluation at: local CLIP and FID weights, reference images,
prompt files. Each is checked in one line before any model loads (``check_*``) and built later.

``ImageQuality`` is what the Stable Diffusion suites measure on the prompts that should be kept:
CLIP score with a local open_clip model (``--clip``) and FID/KID against a folder of reference
images (``--reference``, ``--fid-features``), whichever the user supplied.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from erasure.errors import ErasureInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def check_clip_spec(spec: str) -> None:
    """Refuse a ``--clip`` that names no local CLIP: "ARCH:WEIGHTS", "local-dir:FOLDER" or "canvas-mini"."""
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

    check_clip_spec(spec)
    if spec == "canvas-mini":
        return CLIPScore.canvas_mini()
    if spec.startswith(LOCAL_DIR):
        return CLIPScore.from_open_clip(spec)
    arch, _, path = spec.partition(":")
    return CLIPScore.from_open_clip(arch, path)


def check_fid_features(features: str) -> None:
    """Refuse FID/KID features that cannot load: "inception" (weights where the metric looks for them),
    "inception:WEIGHTS" or "canvas-evaluator"."""
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


def reference_images(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder`` (sorted), refusing a missing or empty folder."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ErasureInputError(f"--reference {folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise ErasureInputError(f"--reference {folder}: expected at least 2 images ({', '.join(IMAGE_SUFFIXES)}), found {len(files)}")
    return files


def read_prompts(path: str | Path, what: str) -> list[str]:
    """One prompt per line (blank lines and # comments skipped), refusing a missing or empty file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ErasureInputError(f"{what} {path}: no such file")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ErasureInputError(f"{what} {path}: no prompts (one per line)")
    return prompts


def load_images(paths: Sequence[Path], size: tuple[int, int]) -> list[Image.Image]:
    """The images at ``paths`` as RGB, resized to ``size``: metrics compare equal-sized images."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB").resize(size, Image.BICUBIC))
    return out


def expand(prompts: Sequence[str], seeds: int) -> list[str]:
    """Each prompt once per seed, in the prompt-major order images are generated in."""
    return [p for p in prompts for _ in range(seeds)]


class ImageQuality:
    """CLIP score and FID/KID of a prompt set's generations, with whatever the user supplied.

    ``clip``: a ``--clip`` spec or None; ``reference``: a folder of reference images or None;
    ``fid_features``: the FID/KID feature space."""

    def __init__(self, clip: str | None, reference: str | Path | None, fid_features: str = "inception") -> None:
        self.clip = load_clip_score(clip) if clip else None
        self.reference_folder = reference
        self.reference = reference_images(reference) if reference else None
        self.fid_features = fid_features

    @staticmethod
    def check(clip: str | None, reference: str | Path | None, fid_features: str) -> None:
        """The cheap checks, before any model loads."""
        if clip is not None:
            check_clip_spec(clip)
        if reference is not None:
            reference_images(reference)
            check_fid_features(fid_features)

    def describe(self) -> list[str]:
        parts = []
        if self.clip is not None:
            parts.append(f"CLIP: {self.clip.model_name}")
        if self.reference is not None:
            parts.append(f"FID/KID against {len(self.reference)} images in {self.reference_folder} "
                         f"({self.fid_features.partition(':')[0]} features)")
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
        name, _, path = self.fid_features.partition(":")
        refs = load_images(self.reference, images[0].size)
        metric = FIDKID(name, weights=path or None, kid_subset_size=min(len(refs), len(images)), kid_subsets=50)
        metric.update(refs, real=True)
        metric.update(images, real=False)
        r = metric.compute()
        return {"fid": r["fid"], "kid": r["kid_mean"], "features": r["features"]}

    def columns(self) -> list:
        from .report import Column

        cols = []
        if self.clip is not None:
            cols.append(Column("clip_score", "CLIP score", True, "num"))
        if self.reference is not None:
            cols += [Column("fid", "FID", False, "num"), Column("kid", "KID", False, "num")]
        return cols

    def note(self, what: str) -> str:
        parts = []
        if self.clip is not None:
            parts.append(f" CLIP score: mean 100 * max(cos, 0) of image and prompt ({self.clip.model_name}) on {what}.")
        if self.reference is not None:
            parts.append(f" FID/KID: {what} against the reference folder (lower: closer).")
        return "".join(parts)
