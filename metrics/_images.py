"""One input convention for every metric: images as a float tensor (N, 3, H, W) in [0, 1].

Metrics also take a list of PIL images (what ``erasure.pipelines.generate`` returns) and convert it
here, so the checks (shape, dtype, range) and their error messages live in one place.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from PIL import Image

from erasure.errors import ErasureInputError

#: What a metric's ``update`` accepts as images.
Images = Union[torch.Tensor, Sequence[Image.Image]]


def to_image_tensor(images: Images, device: torch.device | str | None = None) -> torch.Tensor:
    """Images -> float32 tensor (N, 3, H, W) in [0, 1] on ``device``.

    Raises ``ErasureInputError`` for anything else: a uint8 tensor (divide by 255 first), a wrong
    shape, values outside [0, 1], PIL images of different sizes.
    """
    if isinstance(images, torch.Tensor):
        x = _check_tensor(images)
    else:
        x = _pil_to_tensor(images)
    return x.to(device=device, dtype=torch.float32) if device is not None else x.float()


def to_uint8_arrays(images: Images) -> list[np.ndarray]:
    """Images -> list of uint8 RGB arrays (H, W, 3), the form image libraries such as NudeNet read."""
    if isinstance(images, torch.Tensor):
        x = _check_tensor(images)
        arr = (x.detach().float().cpu() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return list(arr)
    return [np.asarray(_check_pil(im).convert("RGB"), dtype=np.uint8) for im in images]


def check_count(name: str, values: Sequence | torch.Tensor, expected: int) -> None:
    """A per-image argument (labels, prompts, targets) must have one entry per image."""
    if len(values) != expected:
        raise ErasureInputError(f"{name}: got {len(values)} entries for {expected} images; expected one per image")


def _check_tensor(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ErasureInputError(f"images: expected a tensor of shape (N, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ErasureInputError(f"images: expected a float tensor in [0, 1], got dtype {x.dtype} (divide uint8 by 255)")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ErasureInputError(
            f"images: expected values in [0, 1], got [{x.min().item():.3g}, {x.max().item():.3g}] "
            "(map [-1, 1] outputs with (x + 1) / 2)")
    return x


def _check_pil(im: object) -> Image.Image:
    if not isinstance(im, Image.Image):
        raise ErasureInputError(f"images: expected a tensor or a list of PIL images, got a list holding {type(im).__name__}")
    return im


def _pil_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise ErasureInputError(f"images: expected a tensor or a list of PIL images, got {type(images).__name__}")
    if len(images) == 0:
        return torch.zeros(0, 3, 1, 1)
    sizes = {_check_pil(im).size for im in images}
    if len(sizes) > 1:
        raise ErasureInputError(f"images: all images in one batch must have one size, got {sorted(sizes)}")
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def load_torchscript(path: Union[str, "os.PathLike[str]"], what: str) -> torch.nn.Module:
    """A TorchScript module from a local file, on the CPU, in eval mode; a missing or unreadable file is
    a one-line ``ErasureInputError`` naming ``what`` it was meant to be (e.g. "classifier")."""
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise ErasureInputError(f"{what}: no TorchScript file at {file}")
    try:
        return torch.jit.load(str(file), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise ErasureInputError(f"{what} {file}: not a TorchScript file ({str(exc).splitlines()[0]})") from None
