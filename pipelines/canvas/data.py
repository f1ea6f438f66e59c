"""Training data of canvas-mini: rendered grid images, memorization targets, and captions."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .render import MEMORIZATION_TARGETS, OBJECTS, STYLES, TEMPLATES, caption, grid_dataset, to_array


@dataclass
class CanvasData:
    """Images (uint8 NHWC) with their labels; ``memorized[i]`` is a target index or -1."""

    images: np.ndarray
    objects: np.ndarray
    styles: np.ndarray
    memorized: np.ndarray

    @classmethod
    def build(cls, per_pair: int, memorization_repeats: int, seed: int = 0) -> "CanvasData":
        images, objects, styles = grid_dataset(per_pair, seed=seed)
        targets = to_array([t.image() for t in MEMORIZATION_TARGETS])
        n_t = len(MEMORIZATION_TARGETS)
        rep = np.repeat(np.arange(n_t), memorization_repeats)
        return cls(
            images=np.concatenate([images, targets[rep]]),
            objects=np.concatenate([objects, np.full(len(rep), -1)]),
            styles=np.concatenate([styles, np.full(len(rep), -1)]),
            memorized=np.concatenate([np.full(len(images), -1), rep]),
        )

    def save(self, path) -> None:
        np.savez_compressed(path, images=self.images, objects=self.objects, styles=self.styles,
                            memorized=self.memorized)

    @classmethod
    def load(cls, path) -> "CanvasData":
        z = np.load(path)
        return cls(z["images"], z["objects"], z["styles"], z["memorized"])

    def __len__(self) -> int:
        return len(self.images)


def training_caption(obj: int, style: int, memorized: int, rng: random.Random, partial_prob: float = 0.1) -> str:
    """A caption for one training image: a random template, sometimes only the object or the style."""
    if memorized >= 0:
        return MEMORIZATION_TARGETS[memorized].caption
    o, s = OBJECTS[obj], STYLES[style]
    r = rng.random()
    if r < partial_prob / 2:
        return caption(o, s, "a {object}")
    if r < partial_prob:
        return f"{s} style"
    return caption(o, s, rng.randrange(len(TEMPLATES)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] (the pixel range the model denoises)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
