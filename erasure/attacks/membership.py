"""Membership inference on memorized training images: does the model still know which images it was trained on?

MUSE's privacy-leakage measure (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for
Language Models": PrivLeak, the AUC of a loss-based membership inference on the forget set against
held-out data), adapted to diffusion models as in loss-threshold attacks on them (Carlini et al.
2023, "Extracting Training Data from Diffusion Models"; Matsumoto et al. 2023): a training image is
scored by its denoising error under its caption, ``|| eps - eps_theta(sqrt(ab_t) x0 + sqrt(1 - ab_t)
eps, t, caption) ||^2``, at fixed timesteps and noises; members (the memorized training images) should
have lower errors than non-members drawn from the same distribution, paired with the same captions.
AUC = P(a member's error < a non-member's): about 1 for a model that memorized its members, about 0.5
for one that never saw them (or forgot them). PrivLeak, as MUSE defines it, is (AUC - AUC of a model
retrained without the members) / that AUC; with no retrained model at hand the reference here is 0.5,
the AUC of a model that never saw the members: ``privleak = (AUC - 0.5) / 0.5`` (0: no leak).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from erasure.diffusion import Conditions, TextConditioner, add_noise, alphas_cumprod, eps_from_output, native_resolution, prediction_type, unet_output
from erasure.errors import ErasureInputError


@torch.no_grad()
def denoising_errors(pipe, x0: torch.Tensor, captions: Sequence[str], *, timesteps: int = 10, noises: int = 4,
                     seed: int | str = 0, batch_size: int = 16) -> torch.Tensor:
    """(N, timesteps) mean squared denoising error of each ``x0`` under its caption, at ``timesteps`` evenly
    spaced timesteps (centres of equal parts of the schedule), averaged over ``noises`` noise draws that
    are the same for every image (so images are compared on equal terms)."""
    if len(x0) != len(captions):
        raise ErasureInputError(f"membership: {len(x0)} images but {len(captions)} captions")
    if timesteps < 1 or noises < 1:
        raise ErasureInputError("membership: timesteps and noises must be at least 1")
    device = pipe.unet.device
    total = pipe.scheduler.config.num_train_timesteps
    ts = [min(total - 1, int((j + 0.5) * total / timesteps)) for j in range(timesteps)]
    g = torch.Generator().manual_seed(random.Random(f"membership/{seed}").getrandbits(63))
    eps = torch.randn((noises, *x0.shape[1:]), generator=g)
    ac, kind = alphas_cumprod(pipe.scheduler, device), prediction_type(pipe.scheduler)
    hidden = TextConditioner(pipe, native_resolution(pipe))(list(captions)).hidden
    out = torch.zeros(len(x0), timesteps)
    # one row per (image, noise) at a time step; batched over rows
    rows = [(i, k) for i in range(len(x0)) for k in range(noises)]
    for j, t in enumerate(ts):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            idx = torch.tensor([i for i, _ in chunk])
            noise = eps[[k for _, k in chunk]].to(device, x0.dtype)
            x = x0[idx].to(device)
            t_b = torch.full((len(chunk),), t, device=device)
            x_t = add_noise(ac, x, noise, t_b)
            pred = eps_from_output(ac, unet_output(pipe.unet, x_t, t_b, Conditions(hidden[idx.to(hidden.device)])), x_t, t_b, kind)
            err = ((pred.float() - noise.float()) ** 2).flatten(1).mean(1).cpu()
            out[:, j].index_add_(0, idx, err / noises)
    return out


def auc_lower_is_member(members: torch.Tensor, nonmembers: torch.Tensor) -> float:
    """P(member's value < non-member's) + 0.5 P(tie): the ROC AUC of "lower error: member" (Mann-Whitney)."""
    m, n = members.reshape(-1, 1).float(), nonmembers.reshape(1, -1).float()
    return float(((m < n).float() + 0.5 * (m == n).float()).mean())


def membership_inference(pipe, members: tuple[torch.Tensor, Sequence[str]], nonmembers: tuple[torch.Tensor, Sequence[str]],
                         *, timesteps: int = 10, noises: int = 4, seed: int | str = 0) -> dict:
    """The AUC of the loss-based membership inference (members: lower mean error), per timestep too, and
    PrivLeak against 0.5 (module docstring). ``members``/``nonmembers``: (x0, captions)."""
    em = denoising_errors(pipe, members[0], members[1], timesteps=timesteps, noises=noises, seed=seed)
    en = denoising_errors(pipe, nonmembers[0], nonmembers[1], timesteps=timesteps, noises=noises, seed=seed)
    auc = auc_lower_is_member(em.mean(1), en.mean(1))
    return {"auc": auc, "privleak": (auc - 0.5) / 0.5,
            "per_timestep_auc": [auc_lower_is_member(em[:, j], en[:, j]) for j in range(em.shape[1])],
            "member_error": float(em.mean()), "nonmember_error": float(en.mean()),
            "members": len(em), "nonmembers": len(en), "timesteps": timesteps, "noises": noises}
