"""Concept inversion: a new word, learned on images of the concept against the erased model.

Pham et al., ICLR 2024, "Circumventing Concept Erasure Methods for Text-to-Image Generative Models";
reference NYU-DICE-Lab/circumventing-concept-erasure (commit bb7034b: ``esd/concept_inversion.py``
and ``train.sh``, a fork of diffusers' textual-inversion example). For erasures that edit weights
(ESD, UCE, FMN, ...) the attack is plain textual inversion on the ERASED model: one new token,
initialised with the embedding of ``initializer`` ("art"), is the only thing trained, with the
standard denoising loss ``|| eps - eps_theta(sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, t, TE(template with
the token)) ||^2`` (t uniform over the training schedule, one noise per image, prompt templates drawn
at random from textual inversion's object or style lists, images flipped horizontally at random),
AdamW (betas 0.9 / 0.999, weight decay 1e-2) at a constant learning rate. The images of the concept
are drawn by the ORIGINAL model from the concept prompt (the reference's ``generate_images.py
--mode train``: 25 images) or are a user's (``concept_images``). Generation then uses the first
template with the learned token, e.g. "a painting in the style of <concept>". A model family may
give its own templates (``ModelFamily.word_templates``): canvas-mini's are its captions with the
word in the concept's place ("a circle in <concept> style", ...), since it knows no "painting in the
style of"; ``templates`` overrides both.

The result is the learned token: its embedding is saved in diffusers' textual-inversion format
(``NAME-learned.safetensors``, ``{"<concept>": (1, D)}``), so ``pipe.load_textual_inversion(FILE,
token="<concept>")`` loads it into any pipeline of the same text encoder, and the prompt embeddings
of the generation prompt are saved beside it.

Deviations from the reference: the learning rate is its effective one (5e-3 scaled by batch 4 x
gradient accumulation 4 = 0.08 at ``batch_size`` 4 and ``accumulation`` 4) and stays the same if
those change; weight decay reaches the new token only (the reference decays the whole embedding
table and then restores every other row, which leaves the same result); the token is a placeholder
whose embedding row is replaced inside the text encoder (``erasure.attacks.soft_tokens``), so the
tokenizer and text encoder are never resized; images are kept as the UNet's input (latents) rather
than written to files and re-encoded; the flip is of the latents. Refused: pipelines with two text encoders (SDXL).

SFD's one-step generators (an SFD run loaded as ``erasure.one_step.OneStepPipeline``; Pham et al. attack
none, this variant is ours): the generator is the UNet applied as a denoiser at the timesteps its own
sampler visits (``t*`` for one step, ``t* (1 - i / steps)`` for few-step sampling), so the word is learned
through that map: the concept's images noised to one of those timesteps, and the loss the squared
error of the generator's clean estimate against the image (``|| x0 - x0_G(sqrt(ab_t) x0 + sqrt(1 - ab_t)
eps, t, TE(template with the token)) ||^2``; at one timestep the same loss as the noise-prediction one up
to a constant factor). The word is then drawn with the generator's own sampler. Everything else
(templates, initialiser, optimiser, images, flips) is as above.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from erasure.diffusion import Conditions, add_noise, alphas_cumprod, eps_from_output, prediction_type, unet_output, x0_from_output
from erasure.errors import ErasureInputError
from erasure.one_step import OneStepPipeline, sampler_timesteps

from .base import Attack, AttackConfig, AttackResult
from .images import drawn_x0, encoded_x0, image_files
from .registry import register_attack
from .soft_prompt import SoftPrompt, check_single_text_encoder, encode_soft_prompt, generate_from_embeddings

#: textual inversion's prompt lists (diffusers' examples/textual_inversion, the reference's fork of it), first ones
TEMPLATES = {
    "object": ("a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
               "a photo of a clean {}", "a close-up photo of a {}", "a bright photo of the {}", "a good photo of a {}"),
    "style": ("a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
              "the painting in the style of {}", "a clean painting in the style of {}", "a picture in the style of {}",
              "a good painting in the style of {}", "a close-up painting in the style of {}"),
}
TOKEN = "<concept>"


@dataclass
class ConceptInversionConfig(AttackConfig):
    """Defaults: the reference's ``train.sh`` (5,000 steps of batch 4 x accumulation 4, 25 images)."""

    method: ClassVar[str] = "concept-inversion"

    steps: int = 5000  # optimiser steps
    batch_size: int = 4
    accumulation: int = 4
    lr: float = 0.08  # the reference's 5e-3 x 4 x 4 (--scale_lr)
    weight_decay: float = 0.01
    learnable_property: str = "style"  # object | style: which template list
    templates: list[str] = field(default_factory=list)  # prompts with one {}; empty: the model family's, else the property's list
    initializer: str = "art"  # one token whose embedding the new one starts from
    images_count: int = 25  # the original's images of the concept (when concept_images is not given)
    image_steps: int = 25  # their DDIM steps
    concept_images: str | None = None  # a folder of the concept's images instead

    def validate(self) -> None:
        super().validate()
        self.check_bounds(at_least_one=("batch_size", "accumulation", "images_count", "image_steps"),
                          positive=("lr",), non_negative=("weight_decay",))
        if self.learnable_property not in TEMPLATES:
            raise ErasureInputError(f"concept-inversion config learnable_property: {self.learnable_property!r}; "
                                    f"expected one of {', '.join(TEMPLATES)}")
        if not self.initializer.strip():
            raise ErasureInputError("concept-inversion config initializer: empty")
        if self.concept_images is not None:
            image_files(self.concept_images, "concept_images")
        for t in self.templates:
            if t.count("{}") != 1:
                raise ErasureInputError(f"concept-inversion config templates: {t!r} needs exactly one {{}} for the word")


@register_attack("concept-inversion")
class ConceptInversion(Attack):
    """Concept inversion (Pham et al., ICLR 2024): a new word learned by textual inversion on images of the
    concept against the erased model; the result is the word's embedding (module docstring)."""

    config_class = ConceptInversionConfig
    config: ConceptInversionConfig
    needs_noise_predictor = False  # an SFD generator is attacked through its own sampler's map

    def attack(self, erased, original, concept, *, config, seed, progress):
        check_single_text_encoder(erased, "concept-inversion")
        tokenizer, te, unet = erased.tokenizer, erased.text_encoder, erased.unet
        device = unet.device
        table = te.get_input_embeddings().weight
        init_ids = tokenizer(config.initializer).input_ids[1:-1]
        if len(init_ids) != 1:
            raise ErasureInputError(f"concept-inversion config initializer: {config.initializer!r} is {len(init_ids)} "
                                    "tokens; give a word that is one token (e.g. art, object)")
        templates = self.templates(erased, config)
        prompts = [SoftPrompt.in_template(tokenizer, t) for t in templates]
        x0, source = self.images(original, concept, config, seed)
        x0 = x0.to(device, unet.dtype)
        rng = random.Random(f"concept-inversion/{seed}")
        g = torch.Generator().manual_seed(rng.getrandbits(63))
        token = table.detach()[init_ids].float().clone().to(device).requires_grad_(True)
        opt = torch.optim.AdamW([token], lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay, eps=1e-8)
        ac, kind = alphas_cumprod(erased.scheduler, device), prediction_type(erased.scheduler)
        # a one-step generator is trained at the timesteps its sampler applies it at, in x0 space
        generator_t = torch.tensor(sampler_timesteps(erased.t_star, erased.steps)) if isinstance(erased, OneStepPipeline) else None
        total_t = erased.scheduler.config.num_train_timesteps
        losses: list[float] = []
        for step in range(config.steps):
            step_loss = 0.0
            for _ in range(config.accumulation):
                rows = [rng.randrange(len(x0)) for _ in range(config.batch_size)]
                batch = x0[rows]
                flip = torch.rand(len(rows), generator=g) < 0.5
                batch = torch.where(flip.to(device)[:, None, None, None], batch.flip(-1), batch)
                soft = prompts[rng.randrange(len(prompts))]
                if generator_t is None:
                    t = torch.randint(0, total_t, (len(rows),), generator=g).to(device)
                else:
                    t = generator_t[torch.randint(0, len(generator_t), (len(rows),), generator=g)].to(device)
                noise = torch.randn(batch.shape, generator=g).to(device, batch.dtype)
                x_t = add_noise(ac, batch, noise, t)
                with torch.enable_grad():
                    hidden = encode_soft_prompt(te, soft, token).expand(len(rows), -1, -1)
                    out = unet_output(unet, x_t, t, Conditions(hidden))
                    if generator_t is None:
                        loss = F.mse_loss(eps_from_output(ac, out, x_t, t, kind).float(), noise.float())
                    else:
                        loss = F.mse_loss(x0_from_output(ac, out, x_t, t, kind).float(), batch.float())
                    loss = loss / config.accumulation
                    (grad,) = torch.autograd.grad(loss, [token])
                token.grad = grad if token.grad is None else token.grad + grad
                step_loss += float(loss.detach())
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(step_loss)
            if progress:
                progress(step + 1, config.steps)
        learned = token.detach()
        generation = prompts[0]
        with torch.no_grad():
            embeds = encode_soft_prompt(te, generation, learned)
        images = generate_from_embeddings(erased, embeds, seeds=[seed + i for i in range(config.images)],
                                          steps=config.sample_steps, guidance=config.guidance, scheduler=config.scheduler)
        return AttackResult(self.name, concept, seed, None, embeds.detach().cpu(), images,
                            {"steps": config.steps, "images_seen": config.steps * config.accumulation * config.batch_size},
                            0.0, losses,
                            details={"token": TOKEN, "generation_prompt": templates[0].format(TOKEN),
                                     "images": source, "initializer": config.initializer,
                                     "loss": "noise prediction" if generator_t is None else
                                             f"one-step generator's x0 at t = {generator_t.tolist()}"},
                            learned={TOKEN: learned.cpu()})

    @staticmethod
    def templates(erased, config: ConceptInversionConfig) -> list[str]:
        """The config's templates, else the model family's own captions for the kind, else textual inversion's list."""
        from erasure.families import family_of

        if config.templates:
            return list(config.templates)
        return family_of(erased).word_templates(config.learnable_property) or list(TEMPLATES[config.learnable_property])

    @staticmethod
    def images(original, concept: str, config: ConceptInversionConfig, seed: int) -> tuple[torch.Tensor, str]:
        """``x0`` of the concept's training images: a user's folder, or the original's, drawn from seeds
        derived from the attack seed."""
        if config.concept_images is not None:
            files = image_files(config.concept_images, "concept_images")
            return encoded_x0(original, files), f"{len(files)} images from {config.concept_images}"
        base = random.Random(f"concept-inversion-images/{seed}").randrange(2**31 - config.images_count)
        seeds = list(range(base, base + config.images_count))
        x0 = torch.cat([drawn_x0(original, concept, seeds[i:i + 8], steps=config.image_steps, guidance=config.guidance)
                        for i in range(0, len(seeds), 8)])
        return x0, f"the original's {len(seeds)} images of {concept!r}"
