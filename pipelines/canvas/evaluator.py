"""The canvas-mini evaluator: a small CNN that names an image's object and style.

It is the UnlearnCanvas judge on the embedded model (UA/IRA/CRA are computed with it) and its
spatial feature map is the image embedding for memorization similarity. It is trained on real
renders only, never on generations, with augmentation (noise, blur, colour, background and shift
jitter) so that it judges generated images, whose colours and backgrounds drift, robustly.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .render import OBJECTS, STYLES

logger = logging.getLogger(__name__)


@dataclass
class EvaluatorConfig:
    objects: tuple[str, ...] = OBJECTS
    styles: tuple[str, ...] = STYLES
    widths: tuple[int, ...] = (24, 48, 96)
    resolution: int = 32


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CanvasEvaluator(nn.Module):
    """Object and style classifier on 32x32 images in [0, 1]."""

    def __init__(self, config: EvaluatorConfig | None = None):
        super().__init__()
        self.config = config or EvaluatorConfig()
        w = self.config.widths
        self.features = nn.Sequential(_block(3, w[0]), _block(w[0], w[1]), _block(w[1], w[2]))
        self.object_head = nn.Linear(w[2], len(self.config.objects))
        self.style_head = nn.Linear(w[2], len(self.config.styles))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (objects, styles) for a float batch (N, 3, H, W) in [0, 1]."""
        pooled = self.features(_normalize(images)).mean(dim=(2, 3))
        return self.object_head(pooled), self.style_head(pooled)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised spatial feature map (position-sensitive): the memorization embedding."""
        fmap = self.features(_normalize(images))
        return F.normalize(fmap.flatten(1), dim=1)

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted (object index, style index) per image."""
        obj, sty = self(images)
        return obj.argmax(1), sty.argmax(1)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "evaluator.safetensors")
        (directory / "evaluator.json").write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CanvasEvaluator":
        directory = Path(directory)
        cfg = json.loads((directory / "evaluator.json").read_text())
        model = cls(EvaluatorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}))
        model.load_state_dict(load_file(directory / "evaluator.safetensors"))
        return model.eval()


def _normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - 0.5) / 0.25


def images_to_tensor(images) -> torch.Tensor:
    """PIL images or uint8 NHWC array -> float (N, 3, H, W) in [0, 1]."""
    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


# ----------------------------------------------------------------------------- augmentation
def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Jitter a batch in [0, 1] the way generations drift from renders."""
    n = x.shape[0]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

    # Background: pixels matching the border colour get a random tint (generated backgrounds drift).
    border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], dim=2)
    bg_color = border.median(dim=2).values[:, :, None, None]
    bg = ((x - bg_color).abs().amax(dim=1, keepdim=True) < 0.06).float()
    new_bg = (u(0.65, 0.97, 1, 1, 1) + u(-0.12, 0.12, 3, 1, 1)).clamp(0, 1)
    swap = (torch.rand(n, 1, 1, 1, generator=g) < 0.7).float()
    x = x * (1 - bg * swap) + new_bg * bg * swap
    # Colour: brightness, contrast, per-channel gain (mild: styles own palette families).
    x = x * u(0.8, 1.2, 1, 1, 1) * u(0.92, 1.08, 3, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.75, 1.25, 1, 1, 1) + mean
    # Shift by up to 3 px (edge padding) and a random blur.
    shift = torch.randint(-3, 4, (2,), generator=g).tolist()
    x = torch.roll(F.pad(x, (3, 3, 3, 3), mode="replicate"), shifts=shift, dims=(2, 3))[:, :, 3:-3, 3:-3]
    if torch.rand(1, generator=g).item() < 0.5:
        k = torch.tensor([0.25, 0.5, 0.25])
        k2 = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3)
        mix = u(0, 1, 1, 1, 1)
        x = mix * blurred + (1 - mix) * x
    x = x + torch.randn(x.shape, generator=g) * u(0, 0.08, 1, 1, 1)
    return x.clamp(0, 1)


@dataclass
class EvaluatorSettings:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


def train_evaluator(images: np.ndarray, objects: np.ndarray, styles: np.ndarray,
                    settings: EvaluatorSettings | None = None,
                    progress: Callable[[str, int, int, dict], None] | None = None) -> CanvasEvaluator:
    """Train on real renders (uint8 NHWC with labels), augmented every step."""
    s = settings or EvaluatorSettings()
    torch.manual_seed(s.seed)
    model = CanvasEvaluator()
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(s.seed)
    x_all = images_to_tensor(images)
    obj_t, sty_t = torch.from_numpy(objects), torch.from_numpy(styles)
    start = time.time()
    model.train()
    for step in range(1, s.steps + 1):
        idx = torch.randint(0, len(x_all), (s.batch_size,), generator=g)
        lo, ls = model(augment(x_all[idx], g))
        loss = F.cross_entropy(lo, obj_t[idx]) + F.cross_entropy(ls, sty_t[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress("evaluator", step, s.steps, {"loss": loss.item(), "s/step": (time.time() - start) / step})
    return model.eval()


@torch.no_grad()
def accuracy(model: CanvasEvaluator, images: np.ndarray, objects: np.ndarray, styles: np.ndarray,
             batch_size: int = 512) -> tuple[float, float]:
    """(object accuracy, style accuracy) on uint8 NHWC images."""
    hits_o = hits_s = 0
    for i in range(0, len(images), batch_size):
        po, ps = model.classify(images_to_tensor(images[i:i + batch_size]))
        hits_o += int((po.numpy() == objects[i:i + batch_size]).sum())
        hits_s += int((ps.numpy() == styles[i:i + batch_size]).sum())
    return hits_o / len(images), hits_s / len(images)


def load_evaluator(directory: str | os.PathLike | None = None) -> CanvasEvaluator:
    """The shipped evaluator (beside the embedded model) or one saved in ``directory``."""
    from erasure.errors import ErasureInputError

    from .model import MODEL_DIR

    directory = Path(directory) if directory is not None else MODEL_DIR / "evaluator"
    if not (directory / "evaluator.safetensors").is_file():
        raise ErasureInputError(
            f"no canvas-mini evaluator in {directory}: expected evaluator.safetensors and evaluator.json "
            "(`erasure canvas train --out DIR` builds one)"
        )
    return CanvasEvaluator.load(directory)
