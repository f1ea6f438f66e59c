"""Where canvas-mini keeps its memorized images: whole layer groups zeroed, scored as the prune benches score.

    python bench/prune_ceiling.py [--seeds 0-3] [--sampling-steps 25] [--out bench/runs/prune-ceiling]
                                  [--results bench/results] [--report-only]

Pruning may only zero ``ff.net.2`` weights, so zeroing *every* ``ff.net.2`` weight bounds what any
pruning mask can do to memorization (up to the interaction of partial masks). For comparison it
zeroes other groups of the transformer blocks: the up or down blocks' ``ff.net.2`` only, the
cross-attention value and output projections (``attn2.to_v``, ``attn2.to_out``) and the
self-attention output (``attn1.to_out``). Each row, scored by bench/prune_canvas.py's ``score``
(through bench/prune_sweep.py's loop): share of the 8 memorized captions' (caption, seed)
generations above the memorization threshold (RESULTS/prune_canvas.json, so run that bench first),
their mean similarity to the training image, and evaluator accuracy on the 64 ordinary captions
(seeds 0-1). Writes RESULTS/prune_ceiling.json and .md; the image cache goes under ``--out``.
``--report-only`` rewrites the markdown from the JSON.
"""

from __future__ import annotations

import argparse
import re

import torch

from _runs import parse, write_results
from erasure.evaluation import Evaluation
from erasure.pipelines import load_pipeline
from prune_canvas import score_cells
from prune_sweep import SCORE_HEADS, measure, sweep_options, sweep_page

NAME = "prune_ceiling"

#: (name, pattern of the zeroed parameters)
GROUPS = (
    ("every ff.net.2 (pruning's ceiling)", r"ff\.net\.2\.weight$"),
    ("up blocks' ff.net.2", r"up_blocks.*ff\.net\.2\.weight$"),
    ("down blocks' ff.net.2", r"down_blocks.*ff\.net\.2\.weight$"),
    ("mid block's ff.net.2", r"mid_block.*ff\.net\.2\.weight$"),
    ("every attn2.to_v", r"attn2\.to_v\.weight$"),
    ("every attn2.to_out", r"attn2\.to_out\.0\.weight$"),
    ("every attn1.to_out", r"attn1\.to_out\.0\.weight$"),
)


def zero(unet: torch.nn.Module, pattern: str) -> int:
    """Zero the parameters whose names match ``pattern``; returns how many weights that was."""
    count = 0
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if re.search(pattern, name):
                p.zero_()
                count += p.numel()
    return count


def groups(ev: Evaluation):
    """canvas-mini with each group zeroed in turn (one pipeline, its weights restored between groups)."""
    pipe = load_pipeline("canvas-mini")
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    unet_weights = sum(p.numel() for p in pipe.unet.parameters())
    for name, pattern in GROUPS:
        pipe.unet.load_state_dict(weights)
        zeroed = zero(pipe.unet, pattern)
        yield name, {"name": name, "pattern": pattern, "fraction_of_unet": zeroed / unet_weights}, pipe


def markdown(r: dict) -> str:
    return sweep_page("# Memorization on canvas-mini: which layers carry it", r,
                      ["zeroed", "weights (% of UNet)", *SCORE_HEADS],
                      [["nothing (original)", 0, score_cells(r["original"])],
                       *([g["name"], f"{g['fraction_of_unet']:.2%}", score_cells(g)] for g in r["groups"])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sweep_options(ap, NAME, "prune-ceiling")
    args = parse(ap, NAME, markdown)
    if args is None:
        return
    result = measure(args, f"python bench/prune_ceiling.py --seeds {args.seeds}", "groups", groups)
    write_results(args.results, NAME, result, markdown)


if __name__ == "__main__":
    main()
