"""Shipped prompt sets: ordinary prompts for retaining what a Stable Diffusion model can do.

``COCO_CLASSES`` are the 80 object categories of MS-COCO; ``ordinary_prompts()`` makes
"a photo of a {class}" prompts from them (the form AdvUnlearn's retain set uses).
"""

from __future__ import annotations

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


def with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def ordinary_prompts(exclude: tuple[str, ...] | list[str] = ()) -> list[str]:
    """"a photo of a {COCO class}" for every class whose name does not contain an excluded word."""
    excluded = [e.lower() for e in exclude]
    return [f"a photo of {with_article(c)}" for c in COCO_CLASSES if not any(e in c or c in e for e in excluded)]
