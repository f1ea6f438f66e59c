"""Quality bar of the embedded model canvas-mini (issue 3), written to bench/results/.

    python bench/canvas_quality.py [--model canvas-mini] [--seeds 8] [--steps 25] [--guidance 3]

Measures: evaluator accuracy on held-out real renders; evaluator accuracy on generations (every
object x style pair, UnlearnCanvas' caption template, N seeds); memorization of each target
(similarity of generations to its training image vs. how similar ordinary generations are to their
nearest training image); sampling time per image on this machine. Writes canvas_quality.json (into
--out), the objects x styles grid of seed 0 (--grid, default docs/canvas-mini-grid.png) and the
memorization picture beside it (docs/canvas-mini-memorization.png).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from erasure.metrics import CanvasEvaluatorEmbedding, MemorizationSimilarity, PixelEmbedding
from erasure.pipelines import generate, image_grid, load_pipeline
from erasure.pipelines.canvas.evaluator import accuracy, images_to_tensor, load_evaluator
from erasure.pipelines.canvas.render import (
    MEMORIZATION_TARGETS, OBJECTS, STYLES, caption, grid_dataset, to_array,
)

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 4242  # training renders use seed 0


def memorization(embedding, ordinary: np.ndarray, train: np.ndarray, target_gens: np.ndarray,
                 targets: np.ndarray, n_seeds: int) -> dict:
    """Each target's generations (prompt-major, ``n_seeds`` each) vs its training image, against the
    baseline of ordinary generations vs their nearest training render, in one embedding space."""
    nearest = MemorizationSimilarity(images_to_tensor(train), embedding)
    nearest.update(images_to_tensor(ordinary))
    # Threshold "chance": above what another caption's generations reach against this target.
    own = MemorizationSimilarity(images_to_tensor(targets), embedding, names=[t.caption for t in MEMORIZATION_TARGETS])
    own.update(images_to_tensor(target_gens), targets=np.repeat(np.arange(len(targets)), n_seeds))
    r = own.compute()
    return {
        "threshold": r["threshold"],
        "reproduced_share_per_target": [t["share_above"] for t in r["per_target"]],
        "ordinary_nearest_train": nearest.compute()["nearest"],
        "target_vs_own_image": {t["name"]: t["similarities"] for t in r["per_target"]},
        "target_vs_own_image_mean": r["own"]["mean"],
        "target_vs_other_targets": r["other_references"],
        "embedding": r["embedding"],
    }


def memorization_picture(grid: Path) -> Path:
    """Where the memorization picture goes: beside the grid, named after it (canvas-mini-grid.png ->
    canvas-mini-memorization.png), so that scoring another model does not overwrite the shipped one's."""
    stem = grid.stem.replace("grid", "memorization") if "grid" in grid.stem else f"{grid.stem}-memorization"
    return grid.with_name(stem + ".png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="canvas-mini")
    ap.add_argument("--evaluator", default=None, help="evaluator folder (default: the model's)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--train-per-pair", type=int, default=384, help="training renders per pair (nearest-neighbour set)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--grid", default=str(ROOT / "docs" / "canvas-mini-grid.png"))
    args = ap.parse_args()

    pipe = load_pipeline(args.model)
    ev_dir = args.evaluator or (Path(args.model) / "evaluator" if Path(args.model).is_dir() else None)
    evaluator = load_evaluator(ev_dir)
    seeds = list(range(args.seeds))
    result: dict = {"model": args.model, "steps": args.steps, "guidance": args.guidance, "seeds": seeds,
                    "sampler": type(pipe.scheduler).__name__, "machine": f"{platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} threads, torch {torch.__version__}"}

    # 1. The judge on held-out real renders.
    imgs, objs, stys = grid_dataset(25, seed=HELD_OUT_SEED)
    result["evaluator_real"] = dict(zip(("object_acc", "style_acc"), accuracy(evaluator, imgs, objs, stys)))

    # 2. Generations for every pair.
    pairs = [(o, s) for o in OBJECTS for s in STYLES]
    prompts = [caption(o, s) for o, s in pairs]
    t = time.time()
    gens = generate(pipe, prompts, seeds=seeds, steps=args.steps, guidance=args.guidance, batch_size=64)
    result["sampling_s_per_image_batched"] = (time.time() - t) / len(gens)
    t = time.time()
    generate(pipe, prompts[:4], seeds=[0], steps=args.steps, guidance=args.guidance, batch_size=1)
    result["sampling_s_per_image_batch1"] = (time.time() - t) / 4
    gen_arr = to_array(gens)
    g_obj = np.repeat([OBJECTS.index(o) for o, _ in pairs], len(seeds))
    g_sty = np.repeat([STYLES.index(s) for _, s in pairs], len(seeds))
    po, ps = evaluator.classify(images_to_tensor(gen_arr))
    po, ps = po.numpy(), ps.numpy()
    result["generations"] = {
        "object_acc": float((po == g_obj).mean()), "style_acc": float((ps == g_sty).mean()),
        "both_acc": float(((po == g_obj) & (ps == g_sty)).mean()),
        "per_object": {o: float((po[g_obj == i] == i).mean()) for i, o in enumerate(OBJECTS)},
        "per_style": {s: float((ps[g_sty == i] == i).mean()) for i, s in enumerate(STYLES)},
    }
    first = [gens[k * len(seeds)] for k in range(len(pairs))]
    grid = image_grid([im.resize((96, 96), 0) for im in first], rows=len(OBJECTS), cols=len(STYLES),
                      row_labels=list(OBJECTS), col_labels=list(STYLES))
    Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.grid)

    # 3. Memorization: each target's generations vs its training image, against the baseline of
    #    ordinary generations vs their nearest training render.
    train_imgs, _, _ = grid_dataset(args.train_per_pair, seed=0)
    targets = to_array([t.image() for t in MEMORIZATION_TARGETS])
    target_gens = to_array(generate(pipe, [t.caption for t in MEMORIZATION_TARGETS], seeds=seeds, steps=args.steps,
                                    guidance=args.guidance, batch_size=64))
    spaces = {"evaluator": CanvasEvaluatorEmbedding(evaluator), "pixels": PixelEmbedding()}
    result["memorization"] = {name: memorization(embedding, gen_arr, train_imgs, target_gens, targets, len(seeds))
                              for name, embedding in spaces.items()}
    grid = image_grid([im.resize((96, 96), 0) for im in list(Image.fromarray(a) for a in target_gens[::len(seeds)])]
                      + [Image.fromarray(a).resize((96, 96), 0) for a in targets],
                      rows=2, cols=len(targets), row_labels=["generated", "training"],
                      col_labels=[f"target {i}" for i in range(len(targets))])
    grid.save(memorization_picture(Path(args.grid)))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "canvas_quality.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "memorization"}, indent=2))
    for name, m in result["memorization"].items():
        print(name, json.dumps({k: v for k, v in m.items() if k != "target_vs_own_image"}))


if __name__ == "__main__":
    main()
