"""Where each method's memory goes at Stable Diffusion 1.5's size, and which fit a 24 GB GPU in bf16.

    python bench/sd_memory.py [--out bench/results/sd_memory] [--skip-measure]

Two parts:

1. Measured on this CPU: the activation memory of one SD-1.5 UNet call at 512 px (64x64 latents,
   77-token prompts) that back-propagates to its input, per batch row, in float32 and under bf16
   autocast, with and without gradient checkpointing. Each configuration runs in a fresh process
   (batch 1 and batch 2: the difference is the per-row cost, free of the process's fixed part);
   memory is the growth of the process's peak RSS over the forward and backward pass.
2. Derived per method for a GPU run of its SD-1.5 preset in bf16 (the pipeline loaded in bf16, the
   trained tensors as float32 master copies, as the methods do): frozen weights, trained weights,
   gradients, optimiser state, frozen copies of the trained tensors, and activations (the UNet rows
   that carry gradients per step x the measured per-row cost). Parameter counts come from the real
   architecture (meta tensors, no weights); the rows from each preset.

Writes OUT.json and OUT.md. Part 1 needs about 6 GB of RAM and 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
GPU_BYTES = 24 * GB  # a 24 GB card (about 23.6 GB usable after the CUDA context is a fair allowance)

MEASURE = r"""
import json, resource, sys, torch
from diffusers import UNet2DConditionModel
from erasure.pipelines.testing import SD15_UNET
torch.manual_seed(0)
unet = UNet2DConditionModel(**SD15_UNET).eval().requires_grad_(False)
rows, checkpointing, autocast = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"
if checkpointing:
    unet.enable_gradient_checkpointing()
x = torch.randn(rows, 4, 64, 64, requires_grad=True)
text = torch.randn(rows, 77, 768)
t = torch.full((rows,), 500)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
    out = unet(x, t, encoder_hidden_states=text, return_dict=False)[0]
out.float().pow(2).mean().backward()
print(json.dumps({"rows": rows, "checkpointing": checkpointing, "autocast_bf16": autocast,
                  "peak_growth_bytes": peak() - before}))
"""


def measure(rows: int, checkpointing: bool, autocast: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(rows), str(int(checkpointing)), str(int(autocast))],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def per_row_costs() -> list[dict]:
    """Bytes per UNet row that carries gradients, for each (checkpointing, autocast) setting."""
    out = []
    for checkpointing in (False, True):
        for autocast in (False, True):
            one, two = measure(1, checkpointing, autocast), measure(2, checkpointing, autocast)
            out.append({"checkpointing": checkpointing, "autocast_bf16": autocast,
                        "batch1_bytes": one["peak_growth_bytes"], "batch2_bytes": two["peak_growth_bytes"],
                        "per_row_bytes": two["peak_growth_bytes"] - one["peak_growth_bytes"]})
            print(json.dumps(out[-1]), flush=True)
    return out


# ----------------------------------------------------------------------------- derived breakdown
def parameter_counts() -> dict[str, int]:
    """Parameters of SD 1.5's components and of each method's trained set (meta tensors: no weights)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from erasure.methods.advunlearn import AdvUnlearnConfig, text_encoder_parameters
    from erasure.pipelines.testing import SD15_TEXT, SD15_UNET, SD15_VAE
    from erasure.training import select_parameters

    with init_empty_weights():
        unet, vae = UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    count = lambda params: sum(p.numel() for p in params.values())  # noqa: E731
    return {
        "unet": sum(p.numel() for p in unet.parameters()),
        "text_encoder": sum(p.numel() for p in text.parameters()),
        "vae": sum(p.numel() for p in vae.parameters()),
        "esd-x": count(select_parameters(unet, "attn2")),
        "esd-u": count(select_parameters(unet, "non-attn2")),
        "doco": count(select_parameters(unet, "attn2-kv")),
        "advunlearn": count(text_encoder_parameters(text, AdvUnlearnConfig())),
    }


def breakdown(n: dict[str, int], row_bytes: float) -> list[dict]:
    """Bytes per part for each method's SD-1.5 preset on a GPU in bf16 (gradient checkpointing on)."""
    half, full = 2, 4
    frozen_other = (n["text_encoder"] + n["vae"]) * half

    def plan(name: str, preset: str, trained: int, frozen_unet: int, adam_buffers: int, copies: int,
             rows: int, notes: str, extra: int = 0, trained_text: int = 0, grads: int | None = None) -> dict:
        parts = {
            "frozen weights (bf16)": frozen_unet * half + frozen_other - trained_text * half,
            "trained weights (fp32 master)": trained * full,
            "gradients (fp32)": grads if grads is not None else trained * full,
            "optimiser state (fp32)": trained * full * adam_buffers,
            "frozen copies of trained tensors": copies,
            "other networks": extra,
            "activations": int(rows * row_bytes),
        }
        total = sum(parts.values())
        return {"method": name, "preset": preset, "parts": parts, "total_bytes": total,
                "fits_24gb": total <= GPU_BYTES, "rows_with_gradients": rows, "notes": notes}

    unet = n["unet"]
    sfd_preset = _preset("sfd/sd15-nudity")
    sfd_batch, sfd_micro = sfd_preset["batch_size"], sfd_preset.get("micro_batch_size") or 2 * sfd_preset["batch_size"]
    sfd_notes = ("teacher bf16 (the pipeline's own UNet, not copied); generator and fake score as fp32 masters; "
                 "Adam without its first moment (beta1 0) = 1 buffer each")
    return [
        plan("esd-x", "esd/sd15-style", n["esd-x"], unet - n["esd-x"], 2, n["esd-x"] * half, 1,
             "batch 1; x_t precomputed; the frozen values of attn2 kept in bf16"),
        plan("esd-u", "esd/sd15-nudity", n["esd-u"], unet - n["esd-u"], 2, 0, 1,
             "batch 1; the frozen values of the trained tensors live on the CPU while precomputing"),
        plan("advunlearn", "advunlearn/sd15-nudity", n["advunlearn"], unet, 2, n["advunlearn"] * half, 1 + 5,
             "text encoder trained; 1 erase row + retain batch 5 back-propagate through the UNet "
             "(the attack's rows come and go before the training step)", trained_text=n["advunlearn"]),
        plan("doco", "doco/sd15-object", n["doco"], unet - n["doco"], 2, n["doco"] * half, 8 + 8,
             "batch 8 + 8 prior rows; PatchGAN discriminator (a few MB) not counted"),
        plan("sfd", "sfd/sd15-nudity", 2 * unet, unet, 1, 0, 5 * sfd_micro, sfd_notes
             + f"; micro_batch_size {sfd_micro} (the preset's): a part's G {sfd_micro} rows + fake score and "
             f"teacher 2x{sfd_micro} each; one UNet's gradients held for the accumulation", grads=unet * full),
        plan("sfd", "sfd/sd15-nudity, micro_batch_size null", 2 * unet, unet, 1, 0, 5 * 2 * sfd_batch, sfd_notes
             + f"; all rows at once: G 2x{sfd_batch}, fake score and teacher 2x2x{sfd_batch}; gradients fused "
             "into backward (none held)", grads=0),
    ]


def _preset(name: str) -> dict:
    from erasure.configs import preset_path
    from erasure.methods import read_config_file

    return read_config_file(preset_path(name))


def markdown(result: dict) -> str:
    lines = ["# Memory at Stable Diffusion 1.5's size", "",
             "## Measured: activations of one UNet call that back-propagates (512 px, CPU)", "",
             "| gradient checkpointing | bf16 autocast | batch 1 (GB) | batch 2 (GB) | per row (GB) |", "|---|---|---|---|---|"]
    for m in result["measured"]:
        lines.append(f"| {'yes' if m['checkpointing'] else 'no'} | {'yes' if m['autocast_bf16'] else 'no'} "
                     f"| {m['batch1_bytes'] / GB:.2f} | {m['batch2_bytes'] / GB:.2f} | {m['per_row_bytes'] / GB:.2f} |")
    parts = list(result["breakdown"][0]["parts"])
    lines += ["", f"## Derived: each SD-1.5 preset on a GPU in bf16 with gradient checkpointing "
              f"({result['row_bytes'] / GB:.2f} GB per row with gradients)", "",
              "| preset | " + " | ".join(parts) + " | total (GB) | fits 24 GB | notes |",
              "|---|" + "---|" * len(parts) + "---|---|---|"]
    for b in result["breakdown"]:
        cells = " | ".join(f"{b['parts'][p] / GB:.2f}" for p in parts)
        lines.append(f"| {b['preset']} | {cells} | {b['total_bytes'] / GB:.1f} | {'yes' if b['fits_24gb'] else 'no'} | {b['notes']} |")
    lines += ["", f"Parameters: {json.dumps(result['parameters'])}.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sd_memory")
    ap.add_argument("--skip-measure", action="store_true", help="reuse the measured part of OUT.json")
    args = ap.parse_args()
    path = args.out.with_suffix(".json")
    if args.skip_measure:
        measured = json.loads(path.read_text())["measured"]
    else:
        measured = per_row_costs()
    row = next(m for m in measured if m["checkpointing"] and m["autocast_bf16"])["per_row_bytes"]
    counts = parameter_counts()
    result = {"measured": measured, "row_bytes": row, "parameters": counts, "breakdown": breakdown(counts, row),
              "machine": f"{os.cpu_count()} cores, CPU, activations under CPU autocast as the GPU stand-in"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
