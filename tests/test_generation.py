"""generate(), parse_seeds(), schedulers and image_grid()."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from erasure.errors import ErasureInputError
from erasure.pipelines import SCHEDULERS, generate, image_grid, make_scheduler, parse_seeds


def _max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


@pytest.mark.parametrize(
    "text, seeds",
    [("0-7", list(range(8))), ("0,3,5", [0, 3, 5]), ("0-2, 10 ,12-13", [0, 1, 2, 10, 12, 13]), ("42", [42])],
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text, message",
    [("", "is not N or N-M"), ("a-b", "is not N or N-M"), ("-1", "is not N or N-M"), ("1,,2", "is not N or N-M"),
     ("5-2", "runs backwards"), ("0-3,2", "repeated seed"), ("0-20000", "more than"), (str(2**63), "below 2\\*\\*63")],
)
def test_parse_seeds_rejects(text, message):
    with pytest.raises(ErasureInputError, match=message):
        parse_seeds(text)


def test_same_seed_same_image_at_any_batch_size(tiny_sd_loaded):
    prompts, seeds = ["a red square", "a blue circle"], [0, 1, 2]
    batched = generate(tiny_sd_loaded, prompts, seeds=seeds, steps=2, batch_size=3, scheduler="ddim")
    single = generate(tiny_sd_loaded, prompts, seeds=seeds, steps=2, batch_size=1, scheduler="ddim")
    alone = generate(tiny_sd_loaded, "a blue circle", seeds=[2], steps=2, scheduler="ddim")
    assert len(batched) == len(single) == 6 and batched[0].size == (32, 32)
    # Same (prompt, seed): equal up to float reduction order across batch shapes (<= 1 level of 255).
    assert max(_max_diff(a, b) for a, b in zip(batched, single)) <= 1
    assert _max_diff(alone[0], batched[5]) <= 1
    # Different seeds give different images.
    assert _max_diff(batched[0], batched[1]) > 20


def test_sdxl_generates(tiny_sdxl):
    images = generate(tiny_sdxl.pipe, ["a cat"], seeds=[0, 1], steps=2, batch_size=2, guidance=5.0)
    assert [im.size for im in images] == [(32, 32)] * 2


def test_scheduler_is_swapped_for_the_call_only(tiny_sd_loaded):
    before = tiny_sd_loaded.scheduler
    seen = []
    generate(tiny_sd_loaded, "x", seeds=[0], steps=2, scheduler="euler-a",
             progress=lambda done, total: seen.append(type(tiny_sd_loaded.scheduler).__name__))
    assert set(seen) == {"EulerAncestralDiscreteScheduler"}
    assert tiny_sd_loaded.scheduler is before


def test_progress_reaches_total(tiny_sd_loaded):
    calls = []
    generate(tiny_sd_loaded, ["a", "b"], seeds=[0, 1, 2], steps=2, batch_size=2, scheduler="ddim",
             progress=lambda done, total: calls.append((done, total)))
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == pytest.approx(6) and {t for _, t in calls} == {6}


def test_every_scheduler_name_builds(tiny_sd_loaded):
    for name in SCHEDULERS:
        scheduler = make_scheduler(name, tiny_sd_loaded.scheduler.config)
        # The model's noise schedule is kept.
        assert scheduler.config.beta_schedule == "scaled_linear"


@pytest.mark.parametrize(
    "kwargs, message",
    [({"seeds": []}, "seeds must not be empty"), ({"seeds": [0], "steps": 0}, "steps must be at least 1"),
     ({"seeds": [0], "batch_size": 0}, "batch size"), ({"seeds": [0], "guidance": float("nan")}, "guidance"),
     ({"seeds": [0], "scheduler": "nope"}, "unknown scheduler 'nope'")],
)
def test_generate_rejects_bad_arguments(tiny_sd_loaded, kwargs, message):
    with pytest.raises(ErasureInputError, match=message):
        generate(tiny_sd_loaded, "x", **kwargs)


def test_image_grid_layout_and_labels():
    colors = ["red", "green", "blue", "yellow", "purple", "orange"]
    images = [Image.new("RGB", (32, 32), c) for c in colors]
    plain = image_grid(images, 2, 3)
    assert plain.size == (96, 64)
    assert plain.getpixel((40, 40)) == images[4].getpixel((0, 0))  # row 1, column 1

    labelled = image_grid(images, 2, 3, row_labels=["a star in dotted style", "b"],
                          col_labels=["seed 0", "seed 1", "seed 2"], min_cell=128)
    # Cells enlarged 4x; labels add a margin on the left and on top, drawn in black.
    left, top = labelled.width - 3 * 128, labelled.height - 2 * 128
    assert left > 0 and top > 0
    assert labelled.getpixel((left + 128 + 5, top + 128 + 5)) == images[4].getpixel((0, 0))
    assert np.asarray(labelled.crop((0, top, left, top + 128)).convert("L")).min() < 100


def test_image_grid_rejects_wrong_counts():
    images = [Image.new("RGB", (8, 8))] * 3
    with pytest.raises(ErasureInputError, match="needs 4 images"):
        image_grid(images, 2, 2)
    with pytest.raises(ErasureInputError, match="row labels"):
        image_grid(images, 3, 1, row_labels=["a"])
