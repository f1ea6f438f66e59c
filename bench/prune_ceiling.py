"""Where canvas-mini keeps its memorized images: whole layer groups zeroed, scored as the prune benches score.

    python bench/prune_ceiling.py [--seeds 0-3]

Pruning may only zero ``ff.net.2`` weights, so zeroing *every* ``ff.net.2`` weight bounds what any
pruning mask can do to memorization (up to the interaction of partial masks). For comparison it
zeroes other groups of the transformer blocks: the up or down blocks' ``ff.net.2`` only, the
cross-attention value and output projections (``attn2.to_v``, ``attn2.to_out``) and the
self-attention output (``attn1.to_out``). Each row: share of the 8 memorized captions' (caption,
seed) generations above the memorization threshold (bench/results/prune_canvas.json, so run that
bench first), their mean similarity to the training image, and evaluator accuracy on the 64
ordinary captions (seeds 0-1). Writes bench/results/prune_ceiling.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import re

import torch

from erasure.pipelines import load_pipeline
from erasure.pipelines.canvas.render import MEMORIZATION_TARGETS
from erasure.pipelines.generation import parse_seeds
from prune_canvas import RESULTS
from prune_sweep import protocol_line, saved_threshold, score, score_cells

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


def markdown(r: dict) -> str:
    lines = [
        "# Memorization on canvas-mini: which layers carry it",
        "",
        protocol_line(r),
        "",
        "| zeroed | weights (% of UNet) | memorized share | mean similarity | style acc. | object acc. |",
        "|---|---|---|---|---|---|",
        f"| nothing (original) | 0 | {score_cells(r['original'])} |",
    ]
    for g in r["groups"]:
        lines.append(f"| {g['name']} | {g['fraction_of_unet']:.2%} | {score_cells(g)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-3")
    args = ap.parse_args()
    threshold = saved_threshold()
    seeds = parse_seeds(args.seeds)
    captions = [m.caption for m in MEMORIZATION_TARGETS]
    pipe = load_pipeline("canvas-mini")
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    unet_weights = sum(p.numel() for p in pipe.unet.parameters())
    original = score(pipe, captions, seeds, threshold)
    groups = []
    for name, pattern in GROUPS:
        pipe.unet.load_state_dict(weights)
        zeroed = zero(pipe.unet, pattern)
        groups.append({"name": name, "pattern": pattern, "fraction_of_unet": zeroed / unet_weights,
                       **score(pipe, captions, seeds, threshold)})
        print(json.dumps(groups[-1]), flush=True)
    result = {
        "command": f"python bench/prune_ceiling.py --seeds {args.seeds}",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "threshold": threshold, "seeds": seeds, "original": original, "groups": groups,
    }
    (RESULTS / "prune_ceiling.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "prune_ceiling.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
