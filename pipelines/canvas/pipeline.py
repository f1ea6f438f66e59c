"""CanvasMiniPipeline: Stable Diffusion's pipeline on pixels instead of VAE latents.

canvas-mini denoises 32x32 RGB images directly (no VAE), so everything Stable Diffusion's pipeline
does applies unchanged (prompt encoding, classifier-free guidance, schedulers, callbacks) except
the final decode. This subclass sets the latent-to-pixel scale factor to 1 and turns the
denoised sample into images itself. Saved folders name this class in model_index.json, so they
reload through it (``CanvasMiniPipeline.from_pretrained`` or ``erasure.pipelines.load_pipeline``).
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput


class CanvasMiniPipeline(StableDiffusionPipeline):
    """Text-to-image on pixels: text encoder + tokenizer + conditional UNet + scheduler, no VAE."""

    _optional_components: list[str] = []
    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, text_encoder, tokenizer, unet, scheduler):
        DiffusionPipeline.__init__(self)
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        # Attributes Stable Diffusion's __call__ reads; there is no VAE and no safety checker.
        self.vae = None
        self.safety_checker = None
        self.feature_extractor = None
        self.image_encoder = None
        self.vae_scale_factor = 1
        self._is_unet_config_sample_size_int = isinstance(unet.config.sample_size, int)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1)

    @torch.no_grad()
    def __call__(self, *args, output_type: str = "pil", return_dict: bool = True, **kwargs):
        out = super().__call__(*args, output_type="latent", return_dict=True, **kwargs)
        images = out.images
        if output_type != "latent":
            images = self.image_processor.postprocess(images, output_type=output_type)
        if not return_dict:
            return (images, None)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)
