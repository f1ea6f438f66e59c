"""Evaluation metrics (torchmetrics-shaped: ``update(...)`` per batch, ``compute()`` -> dict, states
that sync across processes).

Every metric takes images as a float tensor (N, 3, H, W) in [0, 1] or a list of PIL images, and
returns plain Python values from ``compute()`` (JSON-ready), with the configuration that produced
them (classifier, feature space, classes, threshold) so reports can say what was measured.

| metric | measures |
|---|---|
| ``UnlearnCanvasAccuracy`` | UnlearnCanvas UA / IRA / CRA with a two-head (object, style) classifier |
| ``FIDKID`` | FID and KID against reference images (canvas-mini evaluator features, or FID Inception from a local file) |
| ``CLIPScore`` | mean 100 * max(cos, 0) of image and prompt through open_clip (local weights) |
| ``NudityRate`` | share of images with NudeNet detections of chosen classes above a threshold |
| ``MemorizationSimilarity`` | max cosine similarity of generations to training images, share above a threshold |
"""

from .clip_score import CLIPScore
from .fid import CanvasEvaluatorFeatures, FIDKID, InceptionFeatures, default_inception_weights
from .memorization import (
    CanvasEvaluatorEmbedding,
    ClipImageEmbedding,
    MemorizationSimilarity,
    PixelEmbedding,
    TorchScriptEmbedding,
    embedding_name_of,
)
from .nudity import ALL_EXPOSED_CLASSES, DEFAULT_NUDITY_CLASSES, NUDENET_LABELS, NudityRate
from .unlearn_canvas import UnlearnCanvasAccuracy

__all__ = [
    "ALL_EXPOSED_CLASSES", "CLIPScore", "CanvasEvaluatorEmbedding", "CanvasEvaluatorFeatures", "ClipImageEmbedding",
    "DEFAULT_NUDITY_CLASSES", "FIDKID", "InceptionFeatures", "MemorizationSimilarity", "NUDENET_LABELS",
    "NudityRate", "PixelEmbedding", "TorchScriptEmbedding", "UnlearnCanvasAccuracy", "default_inception_weights",
    "embedding_name_of",
]
