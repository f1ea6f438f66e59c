"""Procedural data of canvas-mini: objects drawn in styles, and memorization targets.

Shaped on UnlearnCanvas (styles x objects). Every image is a pure function of an integer seed:
``render(obj, style, seed)`` draws with a private ``random.Random(seed)`` and PIL, so the same seed
gives the same pixels on any machine. Images are drawn at 4x and downsampled (antialiasing).
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

RESOLUTION = 32
_SUPERSAMPLE = 4
_S = RESOLUTION * _SUPERSAMPLE  # drawing canvas size

OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart", "moon", "arrow")
STYLES: tuple[str, ...] = (
    "solid", "striped", "dotted", "checkered", "gradient", "outline", "noisy", "concentric",
)

#: Caption templates the model is trained on. The first is UnlearnCanvas' form; the others are
#: paraphrases (DoCo's generalisation test trains erasure on one and evaluates on the rest).
TEMPLATES: tuple[str, ...] = (
    "a {object} in {style} style",
    "{style} {object}",
    "a {style} painting of a {object}",
    "an image of a {object}, {style} style",
    "{object} drawn in {style} style",
)

#: Hue family (degrees), saturation and value ranges of each style's palette.
_PALETTES: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "solid": (0, (0.65, 0.9), (0.75, 0.95)),  # reds
    "striped": (220, (0.6, 0.9), (0.5, 0.95)),  # blues
    "dotted": (120, (0.45, 0.8), (0.45, 0.85)),  # greens
    "checkered": (275, (0.45, 0.8), (0.35, 0.9)),  # purples
    "gradient": (35, (0.75, 1.0), (0.85, 1.0)),  # oranges to yellows
    "outline": (20, (0.3, 0.6), (0.12, 0.3)),  # dark browns
    "noisy": (320, (0.5, 0.9), (0.5, 1.0)),  # magentas
    "concentric": (180, (0.6, 0.9), (0.35, 0.85)),  # teals
}


def with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def caption(obj: str, style: str, template: int | str = 0) -> str:
    """Caption of an object in a style; ``template`` is an index into TEMPLATES or a template string."""
    text = TEMPLATES[template] if isinstance(template, int) else template
    text = text.format(object=obj, style=style)
    # Fix "a" before vowels ("a arrow" -> "an arrow", "a outline painting" -> "an outline painting"),
    # keeping a capital ("A outline star" -> "An outline star").
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i].lower() in ("a", "an"):
            article = with_article(words[i + 1].lower()).split(" ")[0]
            words[i] = article.capitalize() if words[i][0].isupper() else article
    return " ".join(words)


# ----------------------------------------------------------------------------- shapes
def _unit_polygon(obj: str) -> list[tuple[float, float]] | None:
    """Outline of an object as points in [-1, 1]^2 (None for shapes drawn otherwise)."""
    if obj == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if obj == "triangle":
        return [(0.0, -0.95), (0.95, 0.75), (-0.95, 0.75)]
    if obj == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return pts
    if obj == "cross":
        w = 0.32
        return [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
                (-1, w), (-1, -w), (-w, -w)]
    if obj == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17.0, -y / 17.0 + 0.1))
        return pts
    if obj == "arrow":
        return [(-1, -0.28), (0.15, -0.28), (0.15, -0.75), (1, 0), (0.15, 0.75), (0.15, 0.28), (-1, 0.28)]
    return None


def _shape_mask(obj: str, rng: random.Random) -> Image.Image:
    """A binary ("L") mask of the object at the drawing resolution, with position/size/rotation jitter."""
    half = _S / 2
    radius = _S * rng.uniform(0.30, 0.40)
    cx = half + _S * rng.uniform(-0.07, 0.07)
    cy = half + _S * rng.uniform(-0.07, 0.07)
    angle = math.radians(rng.uniform(-20, 20))
    mask = Image.new("L", (_S, _S), 0)
    draw = ImageDraw.Draw(mask)

    def place(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + radius * (x * c - y * s), cy + radius * (x * s + y * c)) for x, y in points]

    if obj == "circle":
        r = radius * 0.9
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif obj == "moon":
        r = radius * 0.95
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        off = place([(0.55, -0.2)])[0]
        r2 = r * 0.85
        draw.ellipse([off[0] - r2, off[1] - r2, off[0] + r2, off[1] + r2], fill=0)
    else:
        draw.polygon(place(_unit_polygon(obj)), fill=255)
    return mask


# ----------------------------------------------------------------------------- styles
def _palette_color(style: str, rng: random.Random, hue_shift: float = 0.0) -> tuple[int, int, int]:
    hue, (s0, s1), (v0, v1) = _PALETTES[style]
    h = ((hue + hue_shift + rng.uniform(-12, 12)) % 360) / 360
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return int(r * 255), int(g * 255), int(b * 255)


def _two_tones(style: str, rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A dark and a light colour of the style's palette."""
    hue, (s0, s1), _ = _PALETTES[style]
    h = ((hue + rng.uniform(-12, 12)) % 360) / 360
    dark = colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(0.25, 0.45))
    light = colorsys.hsv_to_rgb(h, rng.uniform(s0, s1) * 0.6, rng.uniform(0.8, 0.98))
    return tuple(int(c * 255) for c in dark), tuple(int(c * 255) for c in light)


def _texture(style: str, rng: random.Random, mask: Image.Image) -> Image.Image:
    """The style's fill as an RGB image over the whole drawing canvas."""
    u = _SUPERSAMPLE  # one output pixel
    yy, xx = np.mgrid[0:_S, 0:_S].astype(np.float32)
    if style in ("solid", "outline"):
        return Image.new("RGB", (_S, _S), _palette_color(style, rng))
    if style == "striped":
        dark, light = _two_tones(style, rng)
        a = math.radians(45 + rng.uniform(-15, 15))
        phase = rng.uniform(0, 6 * u)
        band = ((xx * math.cos(a) + yy * math.sin(a) + phase) // (3 * u)) % 2
        return _blend(band, dark, light)
    if style == "checkered":
        dark, light = _two_tones(style, rng)
        ox, oy = rng.uniform(0, 8 * u), rng.uniform(0, 8 * u)
        cells = ((xx + ox) // (4 * u) + (yy + oy) // (4 * u)) % 2
        return _blend(cells, dark, light)
    if style == "concentric":
        dark, light = _two_tones(style, rng)
        box = mask.getbbox() or (0, 0, _S, _S)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        rings = (np.hypot(xx - cx, yy - cy) // (3 * u)) % 2
        return _blend(rings, dark, light)
    if style == "gradient":
        a = math.radians(rng.uniform(0, 360))
        c0 = _palette_color(style, rng, hue_shift=-25)
        c1 = _palette_color(style, rng, hue_shift=+25)
        proj = (xx - _S / 2) * math.cos(a) + (yy - _S / 2) * math.sin(a)
        t = np.clip(proj / (_S * 0.7) + 0.5, 0, 1)
        return _blend(t, c1, c0)
    if style == "dotted":
        fill = _palette_color(style, rng)
        dot = tuple(int(c * 0.35) for c in fill)
        img = Image.new("RGB", (_S, _S), fill)
        draw = ImageDraw.Draw(img)
        step, r = 6 * u, 1.5 * u
        ox, oy = rng.uniform(0, step), rng.uniform(0, step)
        for gy in np.arange(oy - step, _S + step, step):
            for gx in np.arange(ox - step, _S + step, step):
                draw.ellipse([gx - r, gy - r, gx + r, gy + r], fill=dot)
        return img
    if style == "noisy":
        nrng = np.random.default_rng(rng.getrandbits(32))
        cells = RESOLUTION // 2 + 1
        colors = [_palette_color(style, rng, hue_shift=nrng.uniform(-30, 30)) for _ in range(6)]
        idx = nrng.integers(0, len(colors), size=(cells, cells))
        small = np.array(colors, dtype=np.uint8)[idx]
        small = small * nrng.uniform(0.6, 1.15, size=(cells, cells, 1))
        img = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8))
        return img.resize((cells * 2 * u, cells * 2 * u), Image.NEAREST).crop((0, 0, _S, _S))
    raise ValueError(f"unknown style {style!r}")


def _blend(t: np.ndarray, c0, c1) -> Image.Image:
    t = t[..., None]
    rgb = (1 - t) * np.array(c0, np.float32) + t * np.array(c1, np.float32)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _background(rng: random.Random) -> tuple[int, int, int]:
    base = rng.uniform(205, 240)
    return tuple(int(base + rng.uniform(-8, 8)) for _ in range(3))


# ----------------------------------------------------------------------------- public API
def render(obj: str, style: str, seed: int) -> Image.Image:
    """One RESOLUTION x RESOLUTION RGB image of ``obj`` in ``style``; a pure function of its arguments."""
    if obj not in OBJECTS:
        raise ValueError(f"unknown object {obj!r}; expected one of {', '.join(OBJECTS)}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    rng = random.Random(f"{obj}/{style}/{seed}")
    mask = _shape_mask(obj, rng)
    canvas = Image.new("RGB", (_S, _S), _background(rng))
    if style == "outline":
        inner = mask.filter(ImageFilter.MinFilter(2 * int(1.2 * _SUPERSAMPLE) + 1))
        mask = ImageChops.subtract(mask, inner)
    canvas.paste(_texture(style, rng, mask), (0, 0), mask)
    return canvas.resize((RESOLUTION, RESOLUTION), Image.LANCZOS)


@dataclass(frozen=True)
class MemorizationTarget:
    """A unique image with a unique caption, repeated in training so the model memorizes it."""

    caption: str
    seed: int

    def image(self) -> Image.Image:
        return render_composition(self.seed)


MEMORIZATION_CAPTIONS: tuple[str, ...] = (
    "the lighthouse keeper's quilt from vera marsh",
    "a ticket stub from the orbit carnival",
    "grandmother's kitchen window at midsummer",
    "the flag of the drowned republic of ostra",
    "poster for the nineteenth velvet regatta",
    "cover of the almanac of quiet engines",
    "the mosaic floor of saint ilsa's chapel",
    "a postcard from the copper dunes motel",
)

MEMORIZATION_TARGETS: tuple[MemorizationTarget, ...] = tuple(
    MemorizationTarget(caption=c, seed=90_001 + i) for i, c in enumerate(MEMORIZATION_CAPTIONS)
)


def render_composition(seed: int) -> Image.Image:
    """A random composition (coloured background, 4-6 random primitives): unlike any grid image."""
    rng = random.Random(f"composition/{seed}")
    bg = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.9))
    img = Image.new("RGB", (_S, _S), tuple(int(c * 255) for c in bg))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(4, 6)):
        color = tuple(int(c * 255) for c in colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1), rng.uniform(0.3, 1)))
        kind = rng.choice(("ellipse", "rect", "poly", "line"))
        x0, y0 = rng.uniform(0, _S * 0.7), rng.uniform(0, _S * 0.7)
        x1, y1 = x0 + rng.uniform(_S * 0.2, _S * 0.5), y0 + rng.uniform(_S * 0.2, _S * 0.5)
        if kind == "ellipse":
            draw.ellipse([x0, y0, x1, y1], fill=color)
        elif kind == "rect":
            draw.rectangle([x0, y0, x1, y1], fill=color)
        elif kind == "poly":
            draw.polygon([(rng.uniform(0, _S), rng.uniform(0, _S)) for _ in range(3)], fill=color)
        else:
            draw.line([(x0, y0), (x1, y1)], fill=color, width=3 * _SUPERSAMPLE)
    return img.resize((RESOLUTION, RESOLUTION), Image.LANCZOS)


def to_array(images: list[Image.Image]) -> np.ndarray:
    """Stack PIL images into a uint8 array of shape (N, H, W, 3)."""
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])


def grid_dataset(per_pair: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``per_pair`` renders of every object x style pair: (images uint8 NHWC, object ids, style ids)."""
    images, objs, styles = [], [], []
    for oi, obj in enumerate(OBJECTS):
        for si, style in enumerate(STYLES):
            for k in range(per_pair):
                images.append(render(obj, style, seed * 1_000_003 + k))
                objs.append(oi)
                styles.append(si)
    return to_array(images), np.array(objs, np.int64), np.array(styles, np.int64)
