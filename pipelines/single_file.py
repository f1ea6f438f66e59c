"""Write a Stable Diffusion pipeline as one ``.safetensors`` file in the original (LDM) layout.

This is the inverse of diffusers' ``from_single_file`` conversion (``diffusers.loaders.
single_file_utils``): the layout of CompVis/Stability checkpoints that A1111 and ComfyUI read and
that ``load_pipeline(file, config=folder)`` loads back. The tests and the SD-1.5 bench use it to
produce single-file checkpoints without downloading any; a round trip must reproduce every
tensor exactly.

Supported: ``StableDiffusionPipeline`` (SD 1.x with OpenAI CLIP, SD 2.x with OpenCLIP, told apart
by the text encoder's activation) and ``StableDiffusionXLPipeline``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from erasure.atomic import atomic_path
from erasure.errors import ErasureInputError

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
_VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]
_OPEN_CLIP_LAYER = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                    ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")]


def save_single_file(pipe: DiffusionPipeline, path: str | os.PathLike) -> Path:
    """Save ``pipe``'s weights to ``path`` as one original-layout safetensors file (written atomically)."""
    from safetensors.torch import save_file

    state = original_layout_state_dict(pipe)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    return Path(path)


def original_layout_state_dict(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
    """All weights of ``pipe`` under their original (LDM) checkpoint names."""
    if type(pipe) is StableDiffusionXLPipeline:
        text = {
            **_prefixed(_openai_clip(pipe.text_encoder), "conditioner.embedders.0.transformer."),
            **_prefixed(_open_clip(pipe.text_encoder_2), "conditioner.embedders.1.model."),
        }
    elif type(pipe) is StableDiffusionPipeline:
        # OpenAI CLIP (SD 1.x) uses quick_gelu; OpenCLIP (SD 2.x) uses gelu and its own key layout.
        if pipe.text_encoder.config.hidden_act == "quick_gelu":
            text = _prefixed(_openai_clip(pipe.text_encoder), "cond_stage_model.transformer.")
        else:
            text = _prefixed(_open_clip(pipe.text_encoder), "cond_stage_model.model.")
    else:
        raise ErasureInputError(
            f"single-file export supports StableDiffusionPipeline and StableDiffusionXLPipeline, not {type(pipe).__name__}"
        )
    return {
        **_prefixed(_unet(pipe.unet), "model.diffusion_model."),
        **_prefixed(_vae(pipe.vae), "first_stage_model."),
        **text,
    }


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _rename(state: dict[str, torch.Tensor], prefixes: list[tuple[str, str, list]]) -> dict[str, torch.Tensor]:
    """Rename keys by (diffusers prefix, LDM prefix, renames within the block); every key must match."""
    out = {}
    for key, value in state.items():
        match = max((p for p in prefixes if key.startswith(p[0])), key=lambda p: len(p[0]), default=None)
        if match is None:
            raise ValueError(f"no original-layout name for weight {key!r}")
        old, new, renames = match
        rest = key[len(old):]
        for a, b in renames:
            if rest.startswith(a + "."):
                rest = b + rest[len(a):]
                break
        out[new + rest] = value
    return out


# ----------------------------------------------------------------------------- UNet
def _unet(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return _rename(unet.state_dict(), _unet_prefixes(unet.config))


def _unet_prefixes(config) -> list[tuple[str, str, list]]:
    lpb = config.layers_per_block
    if not isinstance(lpb, int) or config.mid_block_type != "UNetMidBlock2DCrossAttn":
        raise ErasureInputError("single-file export needs a UNet with an int layers_per_block and a cross-attention mid block")
    n = len(config.block_out_channels)
    pairs = [("time_embedding.linear_1.", "time_embed.0.", []), ("time_embedding.linear_2.", "time_embed.2.", []),
             ("add_embedding.linear_1.", "label_emb.0.0.", []), ("add_embedding.linear_2.", "label_emb.0.2.", []),
             ("conv_in.", "input_blocks.0.0.", []), ("conv_norm_out.", "out.0.", []), ("conv_out.", "out.2.", [])]
    for b in range(n):
        for layer in range(lpb):
            i = 1 + b * (lpb + 1) + layer
            pairs += [(f"down_blocks.{b}.resnets.{layer}.", f"input_blocks.{i}.0.", _RESNET),
                      (f"down_blocks.{b}.attentions.{layer}.", f"input_blocks.{i}.1.", [])]
        pairs.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{1 + b * (lpb + 1) + lpb}.0.op.", []))
    pairs += [("mid_block.resnets.0.", "middle_block.0.", _RESNET), ("mid_block.attentions.0.", "middle_block.1.", []),
              ("mid_block.resnets.1.", "middle_block.2.", _RESNET)]
    for b, block_type in enumerate(config.up_block_types):
        for layer in range(lpb + 1):
            i = b * (lpb + 1) + layer
            pairs += [(f"up_blocks.{b}.resnets.{layer}.", f"output_blocks.{i}.0.", _RESNET),
                      (f"up_blocks.{b}.attentions.{layer}.", f"output_blocks.{i}.1.", [])]
        # The upsampler follows the last layer's resnet, and its attention when the block has one.
        slot = 2 if "CrossAttn" in block_type else 1
        pairs.append((f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{b * (lpb + 1) + lpb}.{slot}.conv.", []))
    return pairs


# ----------------------------------------------------------------------------- VAE
def _vae(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = _rename(vae.state_dict(), _vae_prefixes(len(vae.config.block_out_channels)))
    # LDM names resnet shortcuts nin_shortcut, and its VAE attention uses 1x1 convolutions where
    # diffusers uses linear layers.
    state = {k.replace(".conv_shortcut.", ".nin_shortcut."): v for k, v in state.items()}
    return {k: v[:, :, None, None] if ".attn_1." in k and k.endswith("weight") and v.ndim == 2 else v
            for k, v in state.items()}


def _vae_prefixes(n: int) -> list[tuple[str, str, list]]:
    pairs = [("quant_conv.", "quant_conv.", []), ("post_quant_conv.", "post_quant_conv.", [])]
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.conv_in.", f"{part}.conv_in.", []), (f"{part}.conv_out.", f"{part}.conv_out.", []),
                  (f"{part}.conv_norm_out.", f"{part}.norm_out.", []),
                  (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", []),
                  (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", []),
                  (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION)]
    for i in range(n):
        up = n - 1 - i  # the decoder's up blocks are numbered from the lowest resolution in diffusers
        pairs += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", []),
                  (f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", []),
                  (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{up}.block.", []),
                  (f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{up}.upsample.conv.", [])]
    return pairs


# ----------------------------------------------------------------------------- text encoders
def _text_model_keys(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with the ``text_model.`` prefix that transformers >= 5.6 flattened away on CLIPTextModel."""
    return {k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k: v
            for k, v in encoder.state_dict().items()}


def _openai_clip(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    return _text_model_keys(encoder)


def _open_clip(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = _text_model_keys(encoder)
    out = {
        "token_embedding.weight": state.pop("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": state.pop("text_model.final_layer_norm.bias"),
    }
    if "text_projection.weight" in state:
        out["text_projection"] = state.pop("text_projection.weight").T
    for layer in range(encoder.config.num_hidden_layers):
        src, dst = f"text_model.encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            qkv = [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            for a, b in _OPEN_CLIP_LAYER:
                out[f"{dst}{b}.{kind}"] = state.pop(f"{src}{a}.{kind}")
    if state:
        raise ValueError(f"no original-layout name for weights {sorted(state)[:3]}")
    return out
