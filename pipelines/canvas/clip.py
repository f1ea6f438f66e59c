"""A tiny CLIP for canvas-mini, loadable through open_clip, so CLIP score is computable on it.

Saved as an open_clip ``local-dir:`` folder (``open_clip_config.json`` + ``open_clip_model.safetensors``):
``open_clip.create_model_and_transforms("local-dir:" + str(CLIP_DIR))`` loads it with no hub, and
``open_clip.get_tokenizer`` gives CLIP's own BPE tokenizer for it.

Trained contrastively on the canvas-mini captions. Captions repeat (64 object x style pairs), so the
target distribution of each row is uniform over the batch entries with the same label (a
supervised-contrastive form of CLIP's loss): same-concept pairs are not pushed apart as negatives.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import CanvasData, training_caption
from .evaluator import augment, images_to_tensor
from .model import MODEL_DIR

CLIP_DIR = MODEL_DIR / "clip"

MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 4, "width": 96, "layers": 3, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
PREPROCESS_CFG = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                  "resize_mode": "shortest"}


@dataclass
class ClipSettings:
    steps: int = 1200
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0


def build_clip():
    from open_clip.model import CLIP

    return CLIP(**MODEL_CFG)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5


def train_clip(data: CanvasData, settings: ClipSettings | None = None,
               progress: Callable[[str, int, int, dict], None] | None = None):
    import open_clip

    s = settings or ClipSettings()
    torch.manual_seed(s.seed)
    model = build_clip()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")  # CLIP's BPE, bundled in open_clip's wheel
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(s.seed)
    x_all = images_to_tensor(data.images)
    # One label per image: its object x style pair, or its memorization target.
    labels = torch.from_numpy(np.where(data.memorized >= 0, 1000 + data.memorized, data.objects * 100 + data.styles))
    start = time.time()
    model.train()
    for step in range(1, s.steps + 1):
        idx = torch.randint(0, len(x_all), (s.batch_size,), generator=g)
        rng = random.Random(f"clip/{s.seed}/{step}")
        captions = [training_caption(int(data.objects[i]), int(data.styles[i]), int(data.memorized[i]), rng) for i in idx]
        img_f, txt_f, scale = model(_normalize(augment(x_all[idx], g)), tokenizer(captions))
        logits = scale * img_f @ txt_f.T
        lab = labels[idx]
        # Captions can be partial ("a star"): an image matches any caption naming its concepts,
        # approximated here by equal labels; partial captions still get their own image as target.
        same = (lab[:, None] == lab[None, :]).float()
        same.fill_diagonal_(1.0)
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T / target.T.sum(1, keepdim=True))) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        if progress:
            progress("clip", step, s.steps, {"loss": loss.item(), "s/step": (time.time() - start) / step})
    return model.eval()


def save_clip(model, directory: str | Path) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "open_clip_model.safetensors")
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}, indent=2))
    return directory


def load_clip(directory: str | Path | None = None):
    """(model, tokenizer) of canvas-mini's CLIP via open_clip's ``local-dir:`` schema."""
    import open_clip

    from erasure.errors import ErasureInputError

    directory = Path(directory) if directory is not None else CLIP_DIR
    if not (directory / "open_clip_config.json").is_file():
        raise ErasureInputError(f"no open_clip model in {directory}: expected open_clip_config.json and weights")
    name = f"local-dir:{directory}"
    model = open_clip.create_model(name, device="cpu")
    return model.eval(), open_clip.get_tokenizer(name)
