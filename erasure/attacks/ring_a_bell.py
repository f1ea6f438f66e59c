"""Ring-A-Bell: a prompt found without touching the erased model, by matching a concept vector in the
text encoder's space with a genetic search over tokens.

Tsai et al., ICLR 2024, "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion
Models?"; reference chiayi-hsu/Ring-A-Bell (commit e4585ad: ``Get_Concept_Vector.ipynb``,
``InversePrompt.ipynb``). Model-agnostic: it reads only the ORIGINAL text encoder.

1. Concept vector: ``c = mean_i [TE(p_i with the concept) - TE(p_i without it)]``, TE the last hidden
   state (after the final layer norm) of the whole padded sequence, (77, D). The pairs are the
   model family's own (``ModelFamily.concept_pairs``: canvas-mini's captions with and without the
   style or object), else the family's ordinary prompts with and without ", CONCEPT" appended (the
   reference writes its pairs by hand, e.g. "naked women, in the apartment" / "women in apartment").
2. Target: ``TE(base prompt) + eta * c`` (``eta`` = the reference's ``cof``, 3), the base prompt one
   of the pairs' prompts without the concept, chosen by the attack seed (the reference takes I2P
   prompts, which already lean towards the concept).
3. Genetic search (the reference's): a population of 200 candidates ``[SOT, K random tokens, EOT,
   pad...]`` (K = ``length``, 16), fitness the summed squared error of TE(candidate) to the target
   (lower: fitter); per generation keep the best half, single-point crossover of a survivor with a
   random one at rate 0.5 (both children added), then one random position of each candidate
   mutated at rate 0.25; ``steps`` generations (3,000). The best candidate's tokens, decoded, are the
   prompt: text, often token soup with words of the concept in it.

Deviations: the special tokens are never drawn (the reference draws ids 1..49405, which excludes
its start and end but not every tokenizer's padding); the pairs and the base prompt come from the
model family (above); the last generation's best is returned (the reference prints it too).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import torch

from erasure.errors import ErasureInputError

from .base import Attack, AttackConfig, AttackResult
from .registry import register_attack
from .soft_prompt import check_single_text_encoder

KINDS = ("style", "object", "nudity", "memorized", "custom")


@dataclass
class RingABellConfig(AttackConfig):
    """Defaults: the reference's notebook (population 200, 3,000 generations, K = 16, eta = 3)."""

    method: ClassVar[str] = "ring-a-bell"

    steps: int = 3000  # generations
    population: int = 200
    length: int = 16  # K: tokens in the prompt found
    eta: float = 3.0  # the concept vector's strength in the target
    crossover_rate: float = 0.5
    mutation_rate: float = 0.25
    kind: str = "custom"  # the concept's kind: picks the model family's prompt pairs

    def validate(self) -> None:
        super().validate()
        if self.population < 4:
            raise ErasureInputError(f"ring-a-bell config population: must be at least 4, got {self.population}")
        if self.length < 1:
            raise ErasureInputError(f"ring-a-bell config length: must be at least 1, got {self.length}")
        for name in ("crossover_rate", "mutation_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ErasureInputError(f"ring-a-bell config {name}: must lie in [0, 1], got {getattr(self, name)}")
        if self.kind not in KINDS:
            raise ErasureInputError(f"ring-a-bell config kind: {self.kind!r}; expected one of {', '.join(KINDS)}")


@register_attack("ring-a-bell")
class RingABell(Attack):
    """Ring-A-Bell (Tsai et al., ICLR 2024): a text prompt found by a genetic search whose text embedding
    matches an ordinary prompt's plus the concept's vector; never queries the erased model (module docstring)."""

    config_class = RingABellConfig
    config: RingABellConfig
    needs_noise_predictor = False  # it reads the original's text encoder only

    def __init__(self, config=None, **overrides) -> None:
        super().__init__(config, **overrides)
        # the search reads only the original: one search per (original, concept, seed, settings) serves every erased model
        self._found: dict[tuple, tuple[str, list[float], dict]] = {}

    def attack(self, erased, original, concept, *, config, seed, progress):
        key = (id(original), concept, seed, tuple(sorted(config.to_dict().items())))
        if key not in self._found:
            self._found[key] = self.search(original, concept, config, seed, progress)
        prompt, losses, details = self._found[key]
        from erasure.pipelines.generation import generate

        images = generate(erased, prompt, seeds=[seed + i for i in range(config.images)], steps=config.sample_steps,
                          guidance=config.guidance, scheduler=config.scheduler, batch_size=config.images)
        return AttackResult(self.name, concept, seed, prompt, None, images,
                            {"steps": config.steps, "population": config.population}, 0.0, list(losses), details=dict(details))

    def search(self, original, concept: str, config: RingABellConfig, seed: int, progress) -> tuple[str, list[float], dict]:
        """The genetic search: (prompt, best fitness per generation, details)."""
        check_single_text_encoder(original, "ring-a-bell")
        tokenizer = original.tokenizer
        if config.length + 2 > tokenizer.model_max_length:
            raise ErasureInputError(f"ring-a-bell config length: {config.length} tokens do not fit the text encoder's "
                                    f"{tokenizer.model_max_length}")
        with_concept, without = self.pairs(original, concept, config.kind)
        vector = (self.encode_texts(original, with_concept) - self.encode_texts(original, without)).mean(0)
        rng = random.Random(f"ring-a-bell/{seed}")
        base = without[rng.randrange(len(without))]
        target = self.encode_texts(original, [base])[0] + config.eta * vector
        special = set(tokenizer.all_special_ids)
        vocabulary = [i for i in range(len(tokenizer)) if i not in special]
        population = [[rng.choice(vocabulary) for _ in range(config.length)] for _ in range(config.population)]
        keep = config.population // 2
        losses: list[float] = []
        for generation in range(config.steps):
            fitness = self.fitness(original, population, target)
            order = sorted(range(len(population)), key=lambda i: fitness[i])
            survivors = [population[i] for i in order[:keep]]
            losses.append(fitness[order[0]])
            if progress:
                progress(generation + 1, config.steps)
            if generation == config.steps - 1:
                break
            population = [list(s) for s in survivors]
            for parent in survivors:  # single-point crossover with a random survivor, both children kept
                if rng.random() < config.crossover_rate:
                    other, cut = rng.choice(survivors), rng.randrange(1, config.length + 1)
                    population += [parent[:cut] + other[cut:], other[:cut] + parent[cut:]]
            for candidate in population:  # one position mutated, in place (the reference's)
                if rng.random() < config.mutation_rate:
                    candidate[rng.randrange(config.length)] = rng.choice(vocabulary)
        prompt = tokenizer.decode(survivors[0], skip_special_tokens=True).strip()
        return prompt, losses, {"base_prompt": base, "pairs": len(with_concept), "length": config.length, "eta": config.eta}

    @staticmethod
    def pairs(original, concept: str, kind: str) -> tuple[list[str], list[str]]:
        """Prompts with and without the concept: the family's own pairs, else its ordinary prompts without
        and with ", CONCEPT"."""
        from erasure.families import family_of
        from erasure.request import ErasureRequest

        family = family_of(original)
        request = ErasureRequest([concept], kind=kind)
        own = family.concept_pairs(request) if kind in ("style", "object") else None
        if own:
            return list(own[0]), list(own[1])
        ordinary = family.request_defaults(request)["retain"]
        return [f"{p}, {concept}" for p in ordinary], list(ordinary)

    @staticmethod
    @torch.no_grad()
    def encode_texts(pipe, texts: list[str]) -> torch.Tensor:
        """TE's last hidden state of each text padded to the full length, (N, 77, D), float32."""
        tok = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt")
        return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0].float()

    @staticmethod
    @torch.no_grad()
    def fitness(pipe, population: list[list[int]], target: torch.Tensor) -> list[float]:
        """Each candidate's summed squared error to ``target`` ([SOT, tokens, EOT, pad...] encoded)."""
        tok = pipe.tokenizer
        length = tok.model_max_length
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.tensor([[tok.bos_token_id, *c, tok.eos_token_id] + [pad] * (length - len(c) - 2) for c in population])
        hidden = pipe.text_encoder(ids.to(pipe.text_encoder.device))[0].float()
        return ((hidden - target.to(hidden.device)) ** 2).sum(dim=(1, 2)).tolist()
