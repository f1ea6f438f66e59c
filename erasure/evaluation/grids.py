"""The pictures of an evaluation: the original's and the erased model's images side by side."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

#: Prompts shown per set in a Stable Diffusion suite's before/after grid, and seeds per prompt.
GRID_PROMPTS, GRID_SEEDS = 6, 4


def side_by_side(images: Sequence[Image.Image], titles: Sequence[str], gap: int = 24) -> Image.Image:
    """``images`` in a row on white, each under its title."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=22)
    head = 40
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, head + max(im.height for im in images)), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for im, title in zip(images, titles):
        canvas.paste(im, (x, head))
        draw.text((x + 8, 8), title, fill="black", font=font)
        x += im.width + gap
    return canvas


def thumbnail(image: Image.Image, size: int = 256) -> Image.Image:
    """Stable Diffusion's 512+ px images shrunk so a report page stays light; small ones unchanged."""
    if max(image.size) <= size:
        return image
    scale = size / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)


def first(images: list[Image.Image], prompts: list[str], seeds: int, count: int) -> tuple[list, list]:
    """The first ``count`` prompts of a set and their images (prompt-major)."""
    return images[:count * seeds], prompts[:count]


def prompt_grid(before: list[Image.Image], after: list[Image.Image], prompts: list[str], seeds: int,
                title: str) -> Image.Image:
    """A row per prompt and a column per seed (at most ``GRID_SEEDS``), original left, erased right."""
    from erasure.pipelines.generation import image_grid

    k = min(seeds, GRID_SEEDS)
    idx = [i * seeds + j for i in range(len(prompts)) for j in range(k)]
    small = [[thumbnail(images[i]) for i in idx] for images in (before, after)]
    grids = [image_grid(images, rows=len(prompts), cols=k, row_labels=prompts,
                        col_labels=[f"seed {j + 1}" for j in range(k)], min_cell=128) for images in small]
    return side_by_side(grids, ["original", title])
