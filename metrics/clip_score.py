"""CLIP score through open_clip, from local weights (any open_clip architecture, or canvas-mini's CLIP).

torchmetrics' own CLIPScore is not used: in torchmetrics 1.9 it goes through transformers' CLIP and
crashes with transformers 5.
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

from erasure.errors import ErasureInputError

from ._images import Images, check_count, to_image_tensor

logger = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"


class CLIPScore(Metric):
    """Mean CLIP score of (image, prompt) pairs: ``100 * max(cos(image, text), 0)``, the usual definition
    (Hessel et al. 2021 with w = 100, as torchmetrics computes it).

    Build it from a loaded open_clip model and its tokenizer, or with ``from_open_clip`` (local
    weights for any open_clip architecture) or ``canvas_mini`` (the embedded model's tiny CLIP).

    Args:
        model: an open_clip ``CLIP``-like module with ``encode_image`` and ``encode_text``.
        tokenizer: callable list of prompts -> token tensor (``open_clip.get_tokenizer(...)``).
        preprocess: image preprocessing as open_clip records it (``size``, ``mean``, ``std``,
            ``resize_mode``); default: ``model.visual.preprocess_cfg`` (set by open_clip's factory).
        name: the model's name in results.
        **kwargs: torchmetrics ``Metric`` options.

    ``update(images, prompts)``: images are a float tensor (N, 3, H, W) in [0, 1] or a list of PIL
    images, one prompt per image. Tensors are resized (bicubic, shortest side, centre crop, or
    squashed per ``resize_mode``) and normalised as open_clip's transform does. ``compute()`` returns
    ``{"clip_score", "count", "model"}``. States: score sum and count, summed across processes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    score_sum: Tensor
    count: Tensor

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], Tensor], *,
                 preprocess: Optional[dict[str, Any]] = None, name: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model.eval()
        self.tokenizer = tokenizer
        cfg = preprocess or getattr(getattr(model, "visual", model), "preprocess_cfg", None)
        if not cfg or not {"size", "mean", "std"} <= set(cfg):
            raise ErasureInputError("preprocess: the CLIP model records no preprocessing; pass size, mean and std")
        self.size = _pair(cfg["size"])
        self.resize_mode = cfg.get("resize_mode", "shortest")
        if self.resize_mode not in ("shortest", "squash"):
            raise ErasureInputError(f"preprocess: resize_mode {self.resize_mode!r} is not supported; expected shortest or squash")
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.model_name = name or type(model).__name__
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @classmethod
    def from_open_clip(cls, architecture: str, weights: Union[str, Path, None] = None, **kwargs: Any) -> "CLIPScore":
        """Load any open_clip model offline.

        ``architecture`` is an open_clip model name (``"ViT-L-14"``, ...) with ``weights`` a local
        checkpoint file (.safetensors / .pt / .bin), or ``"local-dir:FOLDER"`` (a folder holding
        ``open_clip_config.json`` and the weights, as open_clip's hub repos are laid out; ``weights``
        unused). Nothing is downloaded: a name with no local file is refused.
        """
        import open_clip

        if architecture.startswith(LOCAL_DIR):
            folder = Path(architecture[len(LOCAL_DIR):]).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise ErasureInputError(f"no open_clip model in {folder}: expected open_clip_config.json and weights")
            name = LOCAL_DIR + str(folder)
            model = open_clip.create_model(name, device="cpu")
            return cls(model, open_clip.get_tokenizer(name), name=architecture, **kwargs)
        if architecture not in open_clip.list_models():
            raise ErasureInputError(f"unknown open_clip architecture {architecture!r} (see open_clip.list_models())")
        if weights is None or not Path(weights).expanduser().is_file():
            raise ErasureInputError(f"CLIP weights for {architecture}: expected a local checkpoint file, got {weights}")
        model = open_clip.create_model(architecture, pretrained=str(Path(weights).expanduser()), device="cpu")
        return cls(model, open_clip.get_tokenizer(architecture), name=f"{architecture} ({Path(weights).name})", **kwargs)

    @classmethod
    def canvas_mini(cls, directory: Union[str, Path, None] = None, **kwargs: Any) -> "CLIPScore":
        """canvas-mini's tiny CLIP: the shipped one, or one saved in ``directory``."""
        from erasure.pipelines.canvas.clip import load_clip

        model, tokenizer = load_clip(directory)
        return cls(model, tokenizer, name="canvas-mini CLIP", **kwargs)

    def update(self, images: Images, prompts: Sequence[str]) -> None:
        """Score each image against its prompt."""
        x = to_image_tensor(images, self.score_sum.device)
        if isinstance(prompts, str):
            raise ErasureInputError("prompts: expected one prompt per image (a list), got a single string")
        check_count("prompts", prompts, x.shape[0])
        if x.shape[0] == 0:
            return
        with torch.no_grad():
            img = F.normalize(self.model.encode_image(self._preprocess(x)).float(), dim=-1)
            tokens = self.tokenizer(list(prompts)).to(x.device)
            txt = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        scores = 100 * (img * txt).sum(-1).clamp(min=0)
        self.score_sum += scores.double().sum()
        self.count += scores.numel()

    def compute(self) -> dict[str, Any]:
        """The mean score over every pair seen (``None`` before any)."""
        n = int(self.count)
        return {"clip_score": float(self.score_sum / n) if n else None, "count": n, "model": self.model_name}

    def _preprocess(self, x: Tensor) -> Tensor:
        h, w = self.size
        if self.resize_mode == "squash":
            x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        else:
            scale = max(h / x.shape[2], w / x.shape[3])
            new = (max(h, round(x.shape[2] * scale)), max(w, round(x.shape[3] * scale)))
            if new != tuple(x.shape[2:]):
                x = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False)
            top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
            x = x[:, :, top:top + h, left:left + w]
        x = x.clamp(0, 1)  # bicubic overshoots
        dtype = next(self.model.parameters()).dtype
        return ((x - self.mean) / self.std).to(dtype)


def _pair(size: Union[int, Sequence[int]]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
