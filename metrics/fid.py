"""FID and KID of generated images against a reference set, through torchmetrics.

Features come from one of:

- ``"canvas-evaluator"``: canvas-mini's shipped evaluator, its globally average-pooled last
  convolutional features (96 numbers, the input of its classification heads: the same layer role
  as Inception's pool3 in the usual FID). Reported as ``canvas-evaluator-features``: these are NOT
  Inception FIDs and compare only with each other.
- ``"inception"``: the FID Inception v3 (TensorFlow weights as converted by torch-fidelity, 2048-d
  pool3), loaded from a local file; needs the ``torch-fidelity`` package, as torchmetrics does.
- any ``nn.Module`` mapping images (N, 3, H, W) in [0, 1] to features (N, D).

Features are extracted once per batch and fed to torchmetrics' ``FrechetInceptionDistance`` and
``KernelInceptionDistance`` (each given an identity feature module), so both metrics keep their own
states and distributed sync.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.wrappers.abstract import WrapperMetric

from erasure.errors import ErasureInputError

from ._images import Images, to_image_tensor

logger = logging.getLogger(__name__)

CANVAS_FEATURES = "canvas-evaluator-features"
INCEPTION_FEATURES = "inception-v3-pool3-2048"
#: The FID Inception weights as torch-fidelity publishes them (what torchmetrics downloads by default).
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


def default_inception_weights() -> Path:
    """Where torch hub (and so torchmetrics/torch-fidelity, when online) keeps the FID Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


class CanvasEvaluatorFeatures(nn.Module):
    """canvas-mini evaluator features for FID/KID: pooled last-layer activations, (N, 96).

    The pooled vector is captured on its way into the evaluator's object head, so the evaluator's
    own forward (with its input normalisation) defines it. Always in eval mode (BatchNorm statistics
    must not move).
    """

    name = CANVAS_FEATURES

    def __init__(self, evaluator: Optional[nn.Module] = None) -> None:
        super().__init__()
        if evaluator is None:
            from erasure.pipelines.canvas.evaluator import load_evaluator

            evaluator = load_evaluator()
        self.evaluator = evaluator.eval()
        self.num_features = int(evaluator.object_head.in_features)

    def train(self, mode: bool = True) -> "CanvasEvaluatorFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        captured: list[Tensor] = []
        hook = self.evaluator.object_head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.evaluator(images)
        finally:
            hook.remove()
        return captured[0]


class InceptionFeatures(nn.Module):
    """The FID Inception v3 pool3 features (N, 2048) from a local weights file; input in [0, 1].

    Wraps torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's TensorFlow-compatible network,
    which resizes to 299 px itself) and feeds it uint8 images as it expects.
    """

    name = INCEPTION_FEATURES
    num_features = 2048

    def __init__(self, weights: Union[str, Path, None] = None) -> None:
        super().__init__()
        path = Path(weights).expanduser() if weights is not None else default_inception_weights()
        if not path.is_file():
            raise ErasureInputError(
                f"no FID Inception weights at {path}: put torch-fidelity's {INCEPTION_WEIGHTS_FILE} there "
                "(or pass its path as the Inception weights)")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.inception = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path))
        except ModuleNotFoundError as err:
            raise ErasureInputError(f"Inception FID needs torch-fidelity: pip install torch-fidelity ({err})") from err

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.inception((images * 255).round().to(torch.uint8))


class _Precomputed(nn.Module):
    """Identity 'feature extractor': the wrapper hands torchmetrics features it already extracted."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class _FID(FrechetInceptionDistance):
    """FID that refuses too few images with an input error and records the (synced) image counts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts = (0, 0)

    def compute(self) -> Tensor:
        # States are synced across processes here; after compute they are local again.
        self.counts = (int(self.real_features_num_samples), int(self.fake_features_num_samples))
        if min(self.counts) < 2:
            raise ErasureInputError(
                f"FID needs at least 2 reference and 2 generated images, got {self.counts[0]} and {self.counts[1]}")
        return super().compute()


class _KID(KernelInceptionDistance):
    """KID with the subset size capped by the sample counts and a seeded subset draw (reproducible)."""

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.used_subset_size = 0

    def compute(self) -> tuple[Tensor, Tensor]:
        n = min(len(dim_zero_cat(self.real_features)), len(dim_zero_cat(self.fake_features)))
        if n < 2:
            raise ErasureInputError(f"KID needs at least 2 reference and 2 generated images, got {n} of the rarer")
        configured = self.subset_size
        self.used_subset_size = self.subset_size = min(configured, n)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                return super().compute()
        finally:
            self.subset_size = configured


class FIDKID(WrapperMetric):
    """FID and KID of generated images against reference images, on one shared feature extractor.

    Args:
        features: "canvas-evaluator" (default), "inception", or an ``nn.Module`` mapping images
            (N, 3, H, W) in [0, 1] to (N, D) features.
        weights: for "canvas-evaluator", an evaluator folder (default: the shipped one); for
            "inception", the weights file (default: ``default_inception_weights()``, torch hub's
            checkpoint folder). A missing file is an ``ErasureInputError`` naming where to put it.
        name: the feature space's name in results (default: the extractor's ``name`` attribute or
            class name).
        kid_subsets, kid_subset_size: KID's subset count and size (the size is capped by the number
            of images at compute time, and the used size is reported).
        kid_seed: seed of KID's subset draw, so reports repeat.
        reset_real_features: as torchmetrics: ``False`` keeps the reference features across ``reset()``
            (one reference set, several models).

    ``update(images, real)``: images are a float tensor (N, 3, H, W) in [0, 1] or a list of PIL
    images; ``real=True`` for reference images, ``False`` for generations. ``compute()`` returns
    ``{"fid", "kid_mean", "kid_std", "kid_subset_size", "kid_subsets", "features", "num_features",
    "real_count", "fake_count"}``. ``forward`` is not supported (use update/compute).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, features: Union[str, nn.Module] = "canvas-evaluator", *,
                 weights: Union[str, Path, None] = None, name: Optional[str] = None,
                 kid_subsets: int = 100, kid_subset_size: int = 1000, kid_seed: int = 0,
                 reset_real_features: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extractor = _build_extractor(features, weights)
        self.features_name = name or getattr(self.extractor, "name", None) or type(self.extractor).__name__
        num = getattr(self.extractor, "num_features", None)
        if not isinstance(num, int):
            raise ErasureInputError("features: a custom feature module needs an int attribute num_features")
        self.fid = _FID(feature=_Precomputed(num), reset_real_features=reset_real_features, **kwargs)
        with warnings.catch_warnings():  # KID warns that it buffers all features: expected here
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self.kid = _KID(feature=_Precomputed(num), subsets=kid_subsets, subset_size=kid_subset_size,
                            seed=kid_seed, reset_real_features=reset_real_features, **kwargs)

    def update(self, images: Images, real: bool) -> None:
        """Extract features of ``images`` once and add them to the reference (real) or generated side."""
        if not isinstance(real, bool):
            raise ErasureInputError(f"real: expected True (reference images) or False (generations), got {real!r}")
        x = to_image_tensor(images, self.fid.real_features_sum.device)
        if x.shape[0] == 0:
            return
        with torch.no_grad():
            feats = self.extractor(x).float()
        self.fid.update(feats, real=real)
        self.kid.update(feats, real=real)

    def compute(self) -> dict[str, Any]:
        """FID, KID mean/std and what they were computed on."""
        fid = self.fid.compute()
        kid_mean, kid_std = self.kid.compute()
        return {
            "fid": float(fid), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "kid_subset_size": self.kid.used_subset_size, "kid_subsets": self.kid.subsets,
            "features": self.features_name, "num_features": self.fid.real_features_sum.shape[0],
            "real_count": self.fid.counts[0], "fake_count": self.fid.counts[1],
        }

    def reset(self) -> None:
        self.fid.reset()
        self.kid.reset()


def _build_extractor(features: Union[str, nn.Module], weights: Union[str, Path, None]) -> nn.Module:
    if isinstance(features, nn.Module):
        if weights is not None:
            raise ErasureInputError("weights: only for the named feature extractors, not a given module")
        return features.eval()
    if features == "canvas-evaluator":
        from erasure.pipelines.canvas.evaluator import load_evaluator

        return CanvasEvaluatorFeatures(load_evaluator(weights))
    if features == "inception":
        return InceptionFeatures(weights)
    raise ErasureInputError(f"features: expected 'canvas-evaluator', 'inception' or an nn.Module, got {features!r}")
