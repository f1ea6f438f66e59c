"""Stable Diffusion 1.5 at full size, random weights: save, load back two ways, describe.

Builds the real SD-1.5 architecture (512 px; UNet 320/640/1280/1280 with cross-attention 768, CLIP
ViT-L/14 text tower, SD's VAE, PNDM) from configs with random weights, saves it as a diffusers
folder and as one original-layout .safetensors file, loads both back through ``load_pipeline``,
checks that every weight survived (SHA-256 per component), and runs ``erasure info`` on each.
Nothing is downloaded; the weights are written under out/ (ignored by git) and deleted at the end
unless --keep. Heavy: about 4.3 GB per copy in memory and 8.6 GB on disk while it runs.

    python bench/sd15_random.py [--out out/sd15-random] [--keep]

Writes OUT/result.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

# What SD 1.5's published checkpoint has (diffusers' component parameter counts).
EXPECTED_PARAMETERS = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}


def fingerprints(pipe) -> dict[str, str]:
    """SHA-256 of every model component's tensors, in key order: equal iff the weights are equal."""
    out = {}
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            digest = hashlib.sha256()
            for key, tensor in sorted(module.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
            out[name] = digest.hexdigest()
    return out


def erasure_info(*args: str) -> dict:
    """Run the real CLI, as a user would, and parse its JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "erasure", "info", "--device", "cpu", "--json", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout)


def check_info(info: dict) -> list[str]:
    """Problems with an `erasure info` report of SD 1.5 (empty when it is right)."""
    counts = {c["name"]: c["parameters"] for c in info["components"]}
    problems = [f"{name}: {counts.get(name)} parameters, expected {want}"
                for name, want in EXPECTED_PARAMETERS.items() if counts.get(name) != want]
    expected = {"pipeline": "StableDiffusionPipeline", "scheduler": "PNDMScheduler", "attention": "sdpa",
                "device": "cpu", "dtype": "float32"}
    problems += [f"{k}: {info[k]!r}, expected {v!r}" for k, v in expected.items() if info[k] != v]
    return problems


def timed(label: str, timings: dict, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    timings[label] = round(time.perf_counter() - start, 1)
    print(f"{label}: {timings[label]} s", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/sd15-random"))
    parser.add_argument("--keep", action="store_true", help="keep the saved weights")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from erasure.pipelines import load_pipeline, save_single_file
    from erasure.pipelines.testing import sd15_random_pipeline

    folder, single = args.out / "diffusers", args.out / "sd15-random.safetensors"
    timings: dict[str, float] = {}
    pipe = timed("build", timings, sd15_random_pipeline)
    original = fingerprints(pipe)
    timed("save_pretrained", timings, pipe.save_pretrained, folder)
    timed("save_single_file", timings, save_single_file, pipe, single)
    del pipe
    loaded = {
        "folder": fingerprints(timed("load_folder", timings, load_pipeline, folder, device="cpu")),
        "single_file": fingerprints(timed("load_single_file", timings, load_pipeline, single, config=folder, device="cpu")),
    }
    infos = {
        "folder": timed("info_folder", timings, erasure_info, "--model", str(folder)),
        "single_file": timed("info_single_file", timings, erasure_info, "--model", str(single), "--config", str(folder)),
    }
    problems = [f"{how}: weights differ from the saved pipeline" for how, fp in loaded.items() if fp != original]
    problems += [f"{how}: {p}" for how, info in infos.items() for p in check_info(info)]
    result = {
        "info": infos["folder"],
        "weights_identical": {how: fp == original for how, fp in loaded.items()},
        "sizes_bytes": {"folder": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
                        "single_file": single.stat().st_size},
        "seconds": timings,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "torch_threads": torch.get_num_threads(),
        "problems": problems,
    }
    if not args.keep:
        shutil.rmtree(folder)
        single.unlink()
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "info"}, indent=2))
    print("OK" if not problems else "PROBLEMS:\n" + "\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
