"""Architecture of canvas-mini and where the shipped weights live."""

from __future__ import annotations

from pathlib import Path

from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..tokenizer import build_clip_tokenizer
from .pipeline import CanvasMiniPipeline
from .render import RESOLUTION

#: Folder of the shipped, trained model and its evaluator/CLIP (package data).
WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_DIR = WEIGHTS_DIR / "canvas-mini"
EMBEDDED_MODEL_NAME = "canvas-mini"

TEXT_HIDDEN = 128


def text_encoder_config() -> CLIPTextConfig:
    # The real CLIP vocabulary (49,408 tokens) so any English prompt tokenizes as on Stable
    # Diffusion; a small width and depth so it trains on a CPU.
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=TEXT_HIDDEN,
    )


def unet_config() -> dict:
    # Stable Diffusion's block layout at pixel scale: 32 -> 16 -> 8 -> 4, with transformer
    # blocks (self-attention attn1, cross-attention attn2, feed-forward ff.net) at 8 px, 4 px and
    # in the mid block. Attention at 16 px too would double the step time on a CPU.
    return dict(
        sample_size=RESOLUTION,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 96, 96),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=32,
        norm_num_groups=16,
    )


def scheduler() -> DDIMScheduler:
    # Cosine schedule (suits small pixel models); trailing spacing so sampling starts from pure
    # noise. No x0 clipping: DDIM clips x0 but keeps the unclipped noise estimate, and the mismatch
    # cost the shipped model 5 points of object accuracy and most of its memorization (with
    # clipping: objects 70%, memorized captions reproduced in 38% of seeds; without: 76%, 100%).
    # v-prediction, because with epsilon prediction the first sampling step (alpha_bar ~ 2e-9 at
    # t=999) divides the x0 estimate by sqrt(alpha_bar): any error is amplified ~20,000x and then
    # clipped, which drew saturated, tinted backgrounds in the first trained model.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    )


def build_untrained(tokenizer_dir: str | Path | None = None) -> CanvasMiniPipeline:
    """A freshly initialised canvas-mini pipeline (what training starts from)."""
    return CanvasMiniPipeline(
        text_encoder=CLIPTextModel(text_encoder_config()),
        tokenizer=build_clip_tokenizer(tokenizer_dir),
        unet=UNet2DConditionModel(**unet_config()),
        scheduler=scheduler(),
    )
