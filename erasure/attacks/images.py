"""Images of the concept that attacks learn from: drawn by the original model, or a user's folder,
as the UNet's ``x0`` (VAE latent means times the scaling factor; pixels for a pixel-space model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from erasure.diffusion import native_resolution
from erasure.errors import ErasureInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_files(folder: str, key: str = "target_images") -> list[Path]:
    """The image files of a folder, sorted; refused in one line (naming the setting ``key``) when there are none."""
    path = Path(folder)
    if not path.is_dir():
        raise ErasureInputError(f"{key}: {folder} is not a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ErasureInputError(f"{key}: no {'/'.join(IMAGE_SUFFIXES)} image in {folder}")
    return files


@torch.no_grad()
def drawn_x0(original, prompt: str, seeds: Sequence[int], *, steps: int, guidance: float) -> torch.Tensor:
    """``x0`` (N, C, H, W) of the original's images of ``prompt``, one per seed (DDIM, each its own noise),
    kept in the UNet's input space (no decode and re-encode)."""
    from erasure.pipelines.generation import scheduler_swapped

    original.set_progress_bar_config(disable=True)
    with scheduler_swapped(original, "ddim"):
        out = original(prompt=[prompt] * len(seeds), generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
                       num_inference_steps=steps, guidance_scale=guidance, output_type="latent")
    return out.images


def encoded_x0(pipe, paths: Sequence[Path]) -> torch.Tensor:
    """A user's image files as ``x0`` (``images_x0``)."""
    from PIL import Image

    return images_x0(pipe, [Image.open(p) for p in paths])


@torch.no_grad()
def images_x0(pipe, images: Sequence) -> torch.Tensor:
    """PIL images as ``x0`` (N, C, H, W): resized to the pipeline's native resolution, in [-1, 1], through
    the VAE's latent mean times its scaling factor, or as pixels for a pixel-space model (canvas-mini)."""
    import numpy as np
    from PIL import Image

    size = native_resolution(pipe)
    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC),
                                                 dtype=np.float32) / 127.5 - 1).permute(2, 0, 1) for im in images])
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return x.to(pipe.unet.device, pipe.unet.dtype)
    x = x.to(vae.device, vae.dtype)
    return (vae.encode(x).latent_dist.mean * vae.config.scaling_factor).to(pipe.unet.dtype)
