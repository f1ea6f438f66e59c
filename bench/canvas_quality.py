"""Quality bar of the embedded model canvas-mini (issue 3), written to bench/results/.

    python bench/canvas_quality.py [--model canvas-mini] [--seeds 8] [--steps 25] [--guidance 5]

Measures: evaluator accuracy on held-out real renders; evaluator accuracy on generations (every
object x style pair, UnlearnCanvas' caption template, N seeds); memorization of each target
(similarity of generations to its training image vs. how similar ordinary generations are to their
nearest training image); sampling time per image on this machine. Writes canvas_quality.json and
.md, and docs/canvas-mini-grid.png (objects x styles, seed 0).
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

from erasure.pipelines import generate, image_grid, load_pipeline
from erasure.pipelines.canvas.evaluator import accuracy, images_to_tensor, load_evaluator
from erasure.pipelines.canvas.render import (
    MEMORIZATION_TARGETS, OBJECTS, STYLES, caption, grid_dataset, to_array,
)

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 4242  # training renders use seed 0


def embed_all(evaluator, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    return torch.cat([evaluator.embed(images_to_tensor(images[i:i + batch])) for i in range(0, len(images), batch)])


def pixel_embed(images: np.ndarray) -> torch.Tensor:
    """Mean-centred, L2-normalised pixels: cosine = Pearson correlation of two images."""
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32))
    return torch.nn.functional.normalize(x - x.mean(dim=1, keepdim=True), dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="canvas-mini")
    ap.add_argument("--evaluator", default=None, help="evaluator folder (default: the model's)")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=5.0)
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
    spaces = {"evaluator": lambda a: embed_all(evaluator, a), "pixels": pixel_embed}
    result["memorization"] = {}
    for name, embed in spaces.items():
        ordinary_nn = (embed(gen_arr) @ embed(train_imgs).T).max(dim=1).values
        gen_emb, target_emb = embed(target_gens), embed(targets)
        sim = (gen_emb.view(len(targets), len(seeds), -1) * target_emb[:, None]).sum(-1)
        # How similar other captions' generations are to each target: what chance similarity looks like.
        cross = (gen_emb @ target_emb.T).view(len(targets), len(seeds), len(targets))
        off_diag = cross[~torch.eye(len(targets), dtype=torch.bool)[:, None, :].expand_as(cross)]
        # Threshold: above what chance reaches (another caption's generations vs this target).
        threshold = float(off_diag.max())
        result["memorization"][name] = {
            "threshold": threshold,
            "reproduced_share_per_target": (sim > threshold).float().mean(dim=1).tolist(),
            "ordinary_nearest_train": {"mean": float(ordinary_nn.mean()), "p99": float(ordinary_nn.quantile(0.99)),
                                       "max": float(ordinary_nn.max())},
            "target_vs_own_image": {t.caption: sim[i].tolist() for i, t in enumerate(MEMORIZATION_TARGETS)},
            "target_vs_own_image_mean": float(sim.mean()),
            "target_vs_other_targets": {"mean": float(off_diag.mean()), "max": float(off_diag.max())},
        }
    result["memorization"]["evaluator"]["embedding"] = (
        "canvas-mini evaluator spatial feature map (L2-normalised, position-sensitive)")
    result["memorization"]["pixels"]["embedding"] = "mean-centred pixels (Pearson correlation)"
    grid = image_grid([im.resize((96, 96), 0) for im in list(Image.fromarray(a) for a in target_gens[::len(seeds)])]
                      + [Image.fromarray(a).resize((96, 96), 0) for a in targets],
                      rows=2, cols=len(targets), row_labels=["generated", "training"],
                      col_labels=[f"target {i}" for i in range(len(targets))])
    grid.save(Path(args.grid).with_name("canvas-mini-memorization.png"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "canvas_quality.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "memorization"}, indent=2))
    for name, m in result["memorization"].items():
        print(name, json.dumps({k: v for k, v in m.items() if k != "target_vs_own_image"}))


if __name__ == "__main__":
    main()
