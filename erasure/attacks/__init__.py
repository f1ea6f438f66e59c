"""Attacks on erased models: one interface (``Attack``: ``attack(erased, original, concept, *, seed,
budget, progress) -> AttackResult``), configs that round-trip to YAML, a lazy registry.

Registered attacks (``available_attacks()``; choosing one imports only its module):

- ``soft-prompt``: adversarial token embeddings matching the original's predictions for the concept
  (AdvUnlearn's attack; ``soft_prompt.py``, whose optimiser AdvUnlearn's inner loop also runs);
- ``unlearndiffatk``: a readable text prefix chosen with the erased model's denoising loss on an
  image of the concept (Zhang et al., ECCV 2024; ``unlearndiffatk.py``);
- ``concept-inversion``: a new word learned by textual inversion on images of the concept against
  the erased model (Pham et al., ICLR 2024; ``concept_inversion.py``);
- ``ring-a-bell``: a text prompt found by a genetic search in the ORIGINAL text encoder's space,
  an ordinary prompt plus the concept's vector; never queries the erased model (Tsai et al., ICLR
  2024; ``ring_a_bell.py``).

``attack_success`` (``success.py``) turns any of them and a judge into an attack success rate.
"""

from .base import Attack, AttackConfig, AttackProgress, AttackResult
from .registry import available_attacks, get_attack, load_attack, register_attack, register_attack_lazy
from .soft_prompt import (
    SoftPrompt,
    SoftPromptAdversary,
    SoftPromptAttack,
    SoftPromptAttackConfig,
    SoftPromptConfig,
    SoftPromptResult,
    TeacherSamples,
    check_attack_settings,
    check_single_text_encoder,
    encode_soft_prompt,
    generate_from_embeddings,
    random_token_embeddings,
    soft_tokens,
    teacher_samples,
)
from .success import Judge, attack_success

register_attack_lazy("concept-inversion", "erasure.attacks.concept_inversion:ConceptInversion")
register_attack_lazy("ring-a-bell", "erasure.attacks.ring_a_bell:RingABell")
register_attack_lazy("unlearndiffatk", "erasure.attacks.unlearndiffatk:UnlearnDiffAtk")

__all__ = [
    "Attack",
    "AttackConfig",
    "AttackProgress",
    "AttackResult",
    "Judge",
    "SoftPrompt",
    "SoftPromptAdversary",
    "SoftPromptAttack",
    "SoftPromptAttackConfig",
    "SoftPromptConfig",
    "SoftPromptResult",
    "TeacherSamples",
    "attack_success",
    "available_attacks",
    "check_attack_settings",
    "check_single_text_encoder",
    "encode_soft_prompt",
    "generate_from_embeddings",
    "get_attack",
    "load_attack",
    "random_token_embeddings",
    "register_attack",
    "register_attack_lazy",
    "soft_tokens",
    "teacher_samples",
]
