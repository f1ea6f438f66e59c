"""Stable Diffusion pipelines with random weights, built offline from configs: for tests and benchmarks.

Nothing is downloaded: the tokenizer is CLIP's real BPE tokenizer built from open_clip's bundled
vocabulary (``erasure.pipelines.tokenizer``), the models are initialised from configs. ``sd15_*``,
``sd2_*`` and ``sdxl_*`` are the real architectures' values (the published diffusers configs of
runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1 and stabilityai/stable-diffusion-xl-base-1.0);
``tiny_*`` keep SD's and SDXL's block layout at a size that runs in milliseconds on a CPU.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .tokenizer import MODEL_MAX_LENGTH, build_clip_tokenizer

_CLIP_IDS = dict(vocab_size=49408, max_position_embeddings=MODEL_MAX_LENGTH, bos_token_id=49406,
                 eos_token_id=49407, pad_token_id=49407)

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, center_input_sample=False, mid_block_scale_factor=1,
)
SD15_VAE = dict(
    sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu",
)
SD15_TEXT = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768, **_CLIP_IDS,
)
# SD 2.1 (stabilityai/stable-diffusion-2-1, 768 px, v-prediction): linear attention projections,
# per-block head dims, OpenCLIP ViT-H's text tower (the 23 layers SD 2 uses, gelu, width 1024).
SD2_UNET = {**SD15_UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True, "upcast_attention": True}
SD2_VAE = {**SD15_VAE, "sample_size": 768}
SD2_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=512, **_CLIP_IDS)
# SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0, 1024 px): three levels with 1/2/10
# transformer layers, cross-attention on both encoders' features (768 + 1280), text_time conditioning;
# the second encoder is OpenCLIP ViT-bigG's text tower with its projection.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
)
SDXL_VAE = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_TEXT_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=1280, **_CLIP_IDS)
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
)

# SD 1.x block layout (attention in the high-resolution blocks, none in the lowest), 32 px images.
TINY_SD_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
TINY_VAE = dict(
    sample_size=32, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 hidden_act="quick_gelu", projection_dim=32, **_CLIP_IDS)
# SDXL: a second, OpenCLIP-style text encoder (gelu, projection) of a different width, as in the
# real model; the UNet attends to both encoders' features concatenated and takes the pooled
# projection plus size/crop conditioning through add_embedding ("text_time").
TINY_SDXL_TEXT_2 = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                        hidden_act="gelu", projection_dim=32, **_CLIP_IDS)
TINY_SDXL_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
    cross_attention_dim=32 + 48, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=8,
)
SDXL_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
)


@lru_cache(maxsize=1)
def clip_tokenizer() -> CLIPTokenizer:
    """CLIP's tokenizer, built once per process (pipelines save their own copy)."""
    # The tokenizer holds its vocabulary in memory once loaded, so its files need not outlive it.
    with tempfile.TemporaryDirectory(prefix="clip-tokenizer-") as folder:
        return build_clip_tokenizer(folder)


def random_sd_pipeline(unet: dict, vae: dict, text: dict, scheduler: dict, seed: int = 0) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` with seeded random weights from the given configs."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return StableDiffusionPipeline(
            vae=AutoencoderKL(**vae),
            text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
            tokenizer=clip_tokenizer(),
            unet=UNet2DConditionModel(**unet),
            scheduler=PNDMScheduler(**scheduler),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )


def sd15_random_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Stable Diffusion 1.5's architecture (512 px, ~1.07B parameters) with random weights."""
    return random_sd_pipeline(SD15_UNET, SD15_VAE, SD15_TEXT, SD15_SCHEDULER, seed)


def sd2_random_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """Stable Diffusion 2.1's architecture (768 px, v-prediction, ~1.29B parameters) with random weights."""
    return random_sd_pipeline(SD2_UNET, SD2_VAE, SD2_TEXT, {**SD15_SCHEDULER, "prediction_type": "v_prediction"}, seed)


def sdxl_random_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL base 1.0's architecture (1024 px, two text encoders, ~3.5B parameters) with random weights."""
    return random_sdxl_pipeline(SDXL_UNET, SDXL_VAE, SD15_TEXT, SDXL_TEXT_2, seed)


def random_sdxl_pipeline(unet: dict, vae: dict, text: dict, text_2: dict, seed: int = 0) -> StableDiffusionXLPipeline:
    """A ``StableDiffusionXLPipeline`` with seeded random weights from the given configs."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return StableDiffusionXLPipeline(
            vae=AutoencoderKL(**vae),
            text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text_2)),
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(),
            unet=UNet2DConditionModel(**unet),
            scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        )


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """An SD-1.x-layout pipeline small enough for unit tests (32 px images)."""
    return random_sd_pipeline(TINY_SD_UNET, TINY_VAE, TINY_TEXT, SD15_SCHEDULER, seed)


def tiny_sd2_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """An SD-2.x-layout pipeline (OpenCLIP-style text encoder, linear attention projections), 32 px."""
    unet = {**TINY_SD_UNET, "use_linear_projection": True, "attention_head_dim": (2, 4)}
    return random_sd_pipeline(unet, TINY_VAE, {**TINY_TEXT, "hidden_act": "gelu"}, SD15_SCHEDULER, seed)


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """An SDXL-layout pipeline (two text encoders, text_time conditioning) for unit tests (32 px images)."""
    vae = {**TINY_VAE, "scaling_factor": 0.13025, "force_upcast": True}
    return random_sdxl_pipeline(TINY_SDXL_UNET, vae, TINY_TEXT, TINY_SDXL_TEXT_2, seed)
