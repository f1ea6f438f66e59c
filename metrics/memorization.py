"""Memorization similarity: how close generations come to given training (reference) images.

Similarity is the cosine of two images in an image-embedding space: canvas-mini's evaluator
feature map by default (``CanvasEvaluatorEmbedding``), mean-centred pixels (``PixelEmbedding``,
the Pearson correlation of two images), a local TorchScript model such as SSCD
(``TorchScriptEmbedding``), an open_clip image tower (``ClipImageEmbedding``), or any module or
callable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from erasure.errors import ErasureInputError

from ._images import Images, check_count, load_torchscript, to_image_tensor

logger = logging.getLogger(__name__)

#: An embedding: images (N, 3, H, W) in [0, 1] -> (N, D); normalised by the metric.
Embedding = Callable[[Tensor], Tensor]


class CanvasEvaluatorEmbedding(nn.Module):
    """canvas-mini evaluator's ``embed``: its L2-normalised spatial feature map (position-sensitive)."""

    name = "canvas-mini evaluator spatial feature map (L2-normalised, position-sensitive)"

    def __init__(self, evaluator: Optional[nn.Module] = None) -> None:
        super().__init__()
        if evaluator is None:
            from erasure.pipelines.canvas.evaluator import load_evaluator

            evaluator = load_evaluator()
        self.evaluator = evaluator.eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.evaluator.embed(images)


class PixelEmbedding(nn.Module):
    """Mean-centred, L2-normalised pixels: the cosine of two images is their Pearson correlation.

    Computed on 8-bit values in (H, W, C) order, the numbers images are stored as, so the result is
    the same as on the uint8 arrays themselves (the correlation does not depend on scale or order;
    the last float bits do).
    """

    name = "mean-centred pixels (Pearson correlation)"

    def forward(self, images: Tensor) -> Tensor:
        x = (images.float() * 255).round().permute(0, 2, 3, 1).flatten(1)
        return F.normalize(x - x.mean(dim=1, keepdim=True), dim=1)


#: ImageNet's normalisation, SSCD's preprocessing (and most image-copy-detection models').
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchScriptEmbedding(nn.Module):
    """Any TorchScript image-embedding model from a local file, e.g. SSCD (whose released models are
    TorchScript files): images resized to ``size`` x ``size`` and normalised with ``mean``/``std``
    (SSCD's preprocessing by default), then the module's output, flattened to (N, D)."""

    def __init__(self, path: Union[str, Path], size: int = 288, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        path = Path(path).expanduser()
        self.model = load_torchscript(path, "embedding model")
        self.size = size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.name = f"TorchScript {path.name} at {size} px (ImageNet-normalised)"

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float(), size=(self.size, self.size), mode="bicubic", antialias=True,
                          align_corners=False).clamp(0, 1)
        return self.model((x - self.mean) / self.std).flatten(1)


class ClipImageEmbedding(nn.Module):
    """The image tower of an open_clip model (a ``CLIPScore``'s, with its preprocessing)."""

    def __init__(self, clip_score: nn.Module) -> None:
        super().__init__()
        self.clip = clip_score
        self.name = f"CLIP image embedding ({clip_score.model_name})"

    def forward(self, images: Tensor) -> Tensor:
        return self.clip.model.encode_image(self.clip._preprocess(images)).float()


class MemorizationSimilarity(Metric):
    """Max cosine similarity of each generation to reference images, and the share above a threshold.

    Per generation the metric keeps its **nearest** similarity (max over all references) and, when
    the generation was made for a known target (``update(..., targets=...)``: index of the reference
    image its prompt should reproduce, e.g. a memorized caption's training image), its similarity to
    that **own** reference and the highest similarity to any **other** reference.

    A generation's similarity is its own-target similarity when it has a target, else its nearest
    similarity; ``share_above`` is the share of generations whose similarity exceeds ``threshold``.

    Args:
        references: the training/reference images (tensor (R, 3, H, W) in [0, 1] or PIL list),
            embedded once at construction.
        embedding: module or callable images -> (N, D) features (L2-normalised here unless they
            already are unit vectors; cosine = dot product). Default: ``CanvasEvaluatorEmbedding()``
            (the shipped evaluator). References are embedded on a module's device.
        threshold: a fixed similarity, or "chance" (default): the highest similarity any targeted
            generation reaches to a reference other than its own, i.e. what a non-memorizing model
            reaches by chance (needs targeted generations and at least two references).
        names: a name per reference (e.g. its caption) for per-target results.
        embedding_name: the space's name in results (default: the embedding's ``name`` attribute).
        batch_size: images per embedding call.
        **kwargs: torchmetrics ``Metric`` options.

    ``compute()`` returns ``{"embedding", "references", "count", "threshold", "threshold_rule",
    "share_above", "nearest": {"mean", "p99", "max"}, "own": {"mean"}, "other_references": {"mean",
    "max"}, "per_target": [{"name", "count", "mean", "max", "share_above", "similarities"}]}``;
    entries with nothing to measure are ``None`` (per-target ``similarities`` in arrival order).
    States are per-generation values concatenated across processes.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, references: Images, embedding: Optional[Union[nn.Module, Embedding]] = None, *,
                 threshold: Union[float, str] = "chance", names: Optional[Sequence[str]] = None,
                 embedding_name: Optional[str] = None, batch_size: int = 512, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (threshold == "chance" or (isinstance(threshold, (int, float)) and not isinstance(threshold, bool))):
            raise ErasureInputError(f"threshold: expected a similarity or 'chance', got {threshold!r}")
        self.threshold = threshold
        self.batch_size = batch_size
        embedding = embedding if embedding is not None else CanvasEvaluatorEmbedding()
        if isinstance(embedding, nn.Module):
            self.embedding = embedding.eval()  # a submodule: moves with metric.to(device)
        else:
            self._embedding_fn = embedding
        self.embedding_name = embedding_name or embedding_name_of(embedding)
        params = next(embedding.parameters(), None) if isinstance(embedding, nn.Module) else None
        ref = self.embed(to_image_tensor(references, params.device if params is not None else None))
        if ref.shape[0] == 0:
            raise ErasureInputError("references: expected at least one reference image")
        self.register_buffer("reference_embeddings", ref, persistent=False)
        self.names = list(names) if names is not None else [f"reference {i}" for i in range(ref.shape[0])]
        check_count("names", self.names, ref.shape[0])
        for state in ("nearest", "own", "other_max", "other_sum", "target"):
            self.add_state(state, [], dist_reduce_fx="cat")

    def embed(self, images: Tensor) -> Tensor:
        """L2-normalised embeddings of images (N, 3, H, W) in [0, 1], computed in batches."""
        fn = self.embedding if hasattr(self, "embedding") else self._embedding_fn
        with torch.no_grad():
            parts = [fn(images[i:i + self.batch_size]) for i in range(0, images.shape[0], self.batch_size)]
        if not parts:
            return torch.zeros(0, 0)
        emb = torch.cat(parts).flatten(1).float()
        # Unit vectors are kept as they are (normalising again would only move their last bits).
        norm = emb.norm(dim=1, keepdim=True)
        return torch.where((norm - 1).abs() > 1e-5, emb / norm.clamp_min(1e-12), emb)

    def update(self, images: Images, targets: Optional[Union[Sequence[int], Tensor]] = None) -> None:
        """Add generations; ``targets`` (optional) gives each one's own reference index (-1: none)."""
        ref = self.reference_embeddings
        x = to_image_tensor(images, ref.device)
        n, r = x.shape[0], ref.shape[0]
        target = torch.full((n,), -1, dtype=torch.long, device=ref.device)
        if targets is not None:
            check_count("targets", targets, n)
            target = torch.as_tensor(targets, dtype=torch.long, device=ref.device).reshape(n)
            if ((target < -1) | (target >= r)).any():
                raise ErasureInputError(f"targets: expected reference indices in [0, {r}) or -1, got {target.tolist()}")
        if n == 0:
            return
        emb = self.embed(x)
        sims = emb @ ref.T
        has = target >= 0
        own = torch.full((n,), float("nan"), device=ref.device)
        own[has] = (emb[has] * ref[target[has]]).sum(-1)
        own_mask = torch.zeros_like(sims, dtype=torch.bool)
        own_mask[has.nonzero().squeeze(1), target[has]] = True
        self.nearest.append(sims.max(dim=1).values)
        self.own.append(own)
        self.other_max.append(sims.masked_fill(own_mask, float("-inf")).max(dim=1).values)
        self.other_sum.append(sims.double().masked_fill(own_mask, 0).sum(dim=1))
        self.target.append(target)

    def compute(self) -> dict[str, Any]:
        """Summaries over every generation seen, overall and per target."""
        if isinstance(self.nearest, list) and not self.nearest:  # nothing was added (on any process)
            return self._result(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.double),
                                torch.zeros(0, dtype=torch.long))
        return self._result(*(dim_zero_cat(s) for s in (self.nearest, self.own, self.other_max, self.other_sum,
                                                         self.target)))

    def _result(self, nearest: Tensor, own: Tensor, other_max: Tensor, other_sum: Tensor, target: Tensor) -> dict[str, Any]:
        r = self.reference_embeddings.shape[0]
        has = target >= 0
        threshold = self._threshold(other_max[has])
        sim = torch.where(has, own, nearest)
        n_other = int(has.sum()) * (r - 1)
        return {
            "embedding": self.embedding_name,
            "references": r,
            "count": int(nearest.numel()),
            "threshold": threshold,
            "threshold_rule": "chance" if self.threshold == "chance" else "fixed",
            "share_above": _share(sim, threshold),
            "nearest": _stats(nearest, p99=True),
            "own": {"mean": float(own[has].mean()) if has.any() else None},
            "other_references": {"mean": float(other_sum[has].sum() / n_other) if n_other else None,
                                 "max": _max(other_max[has])},
            "per_target": [self._per_target(i, own[target == i], threshold) for i in range(r)] if has.any() else [],
        }

    def _threshold(self, other_max: Tensor) -> Optional[float]:
        if self.threshold != "chance":
            return float(self.threshold)
        return _max(other_max)

    def _per_target(self, i: int, sims: Tensor, threshold: Optional[float]) -> dict[str, Any]:
        return {"name": self.names[i], "count": int(sims.numel()), **_stats(sims),
                "share_above": _share(sims, threshold), "similarities": sims.tolist()}


def embedding_name_of(fn: object) -> str:
    """A readable name for results: a ``name`` attribute, a function's name, or the class name."""
    return getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _stats(values: Tensor, p99: bool = False) -> dict[str, Optional[float]]:
    if values.numel() == 0:
        return {"mean": None, **({"p99": None} if p99 else {}), "max": None}
    out = {"mean": float(values.mean())}
    if p99:
        out["p99"] = float(values.quantile(0.99))
    out["max"] = float(values.max())
    return out


def _max(values: Tensor) -> Optional[float]:
    finite = values[torch.isfinite(values)]
    return float(finite.max()) if finite.numel() else None


def _share(values: Tensor, threshold: Optional[float]) -> Optional[float]:
    if threshold is None or values.numel() == 0:
        return None
    return float((values > threshold).float().mean())
