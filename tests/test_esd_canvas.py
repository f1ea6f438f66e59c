"""ESD really erases on the embedded model: the erased style stops being drawn, the others stay.

A short ESD-x run on canvas-mini (fewer steps and a larger learning rate than the preset, so it
fits in a test), judged by the shipped evaluator on the same prompts and seeds before and after.
"""

from __future__ import annotations

import pytest
import torch

from erasure import ErasureRequest, erase
from erasure.evaluation import SamplingSettings, generate_cached
from erasure.pipelines import load_pipeline
from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator
from erasure.pipelines.canvas.render import OBJECTS, STYLES, caption

TARGET = "striped"
OTHERS = ["solid", "checkered", "outline"]
SAMPLING = SamplingSettings(steps=15, guidance=3.0, seeds=[0, 1], batch_size=64)
SHORT_ESD = dict(variant="esd-x", steps=60, lr=5e-4, ddim_steps=20, precompute_batch=32, checkpoint_every=0)


def style_accuracy(pipe, style: str, evaluator) -> float:
    prompts = [caption(o, style) for o in OBJECTS]
    images = generate_cached(pipe, prompts, SAMPLING)
    _, predicted = evaluator.classify(images_to_tensor(images))
    return float((predicted == STYLES.index(style)).float().mean())


@pytest.fixture(scope="module")
def before_after():
    evaluator = load_evaluator()
    original = load_pipeline("canvas-mini")
    before = {s: style_accuracy(original, s, evaluator) for s in [TARGET, *OTHERS]}
    torch.manual_seed(0)
    erase(original, ErasureRequest([TARGET], kind="style"), "esd", **SHORT_ESD)
    after = {s: style_accuracy(original, s, evaluator) for s in [TARGET, *OTHERS]}
    return before, after


def test_erased_style_is_no_longer_drawn(before_after):
    before, after = before_after
    assert before[TARGET] >= 0.75, f"canvas-mini should draw {TARGET} before erasure: {before}"
    assert after[TARGET] <= before[TARGET] - 0.5, f"{TARGET} recognised {before[TARGET]:.0%} -> {after[TARGET]:.0%}"


def test_other_styles_are_kept(before_after):
    before, after = before_after
    kept = sum(after[s] for s in OTHERS) / len(OTHERS)
    was = sum(before[s] for s in OTHERS) / len(OTHERS)
    assert kept >= was - 0.25, f"other styles {was:.0%} -> {kept:.0%}: {before} -> {after}"
