"""An erasure's weight changes as a LoRA: truncated SVD of each changed weight's delta.

A run's edit holds the new values of the tensors it changed (and, for pruning, the entries it set
to zero). Relative to the base, each changed weight ``W`` of a Linear or Conv2d layer moves by
``dW = W_erased - W_base``; its best rank-``r`` approximation (Eckart-Young) is the truncated SVD
``dW ~ U_r S_r V_r^T``, stored as LoRA factors ``lora_B = U_r sqrt(S_r)`` and
``lora_A = sqrt(S_r) V_r^T`` (a Conv2d's delta is flattened to ``(out, in * kh * kw)``; its
``lora_A`` is a convolution with the layer's kernel, its ``lora_B`` a 1x1 convolution, as peft
builds them). A changed bias is stored exactly as ``lora_B``'s bias (peft's ``lora_bias``). The
factors use the convention diffusers and peft load with ``load_lora_weights``: no alphas, so
every module's scale is 1 and ``W_base + lora_B @ lora_A`` is the approximated weight.

The rank of each tensor is ``rank`` (capped at the delta's own rank) or, with ``energy``, the
smallest rank whose singular values hold that share of the delta's squared Frobenius norm. What a
LoRA cannot hold (a changed normalisation or embedding parameter) is left out and reported with
its share of the edit's delta norm; ``erasure.export`` refuses edits that are not weight deltas of
the base at all (SFD's one-step generator samples differently from the base).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from erasure.edit import Edit, pipeline_modules
from erasure.errors import ErasureInputError

logger = logging.getLogger(__name__)

#: Default share of each delta's squared Frobenius norm the kept singular values must hold.
DEFAULT_ENERGY = 0.99


@dataclass
class LoraModule:
    """One layer's LoRA: ``lora_A``/``lora_B`` weights (and ``lora_B`` bias) and how well they fit."""

    component: str
    module: str
    rank: int
    lora_A: torch.Tensor
    lora_B: torch.Tensor
    bias: torch.Tensor | None
    delta_norm: float
    error_norm: float

    @property
    def relative_error(self) -> float:
        """``||dW - B A||_F / ||dW||_F`` (0 for an exact factorisation or an unchanged weight)."""
        return self.error_norm / self.delta_norm if self.delta_norm > 0 else 0.0


@dataclass
class Lora:
    """An edit as LoRA modules, plus the changed tensors a LoRA cannot hold (key -> delta norm)."""

    modules: list[LoraModule]
    left_out: dict[str, float] = field(default_factory=dict)

    def state_dicts(self, dtype: torch.dtype = torch.float32) -> dict[str, dict[str, torch.Tensor]]:
        """Per component, the peft state dict ``save_lora_weights`` takes (``<module>.lora_A.weight``, ...).

        When any module carries a bias delta, every module gets a ``lora_B`` bias (zero where the bias
        did not change): diffusers switches peft's ``lora_bias`` on for the whole model at once.
        """
        with_bias = any(m.bias is not None for m in self.modules)
        out: dict[str, dict[str, torch.Tensor]] = {}
        for m in self.modules:
            state = out.setdefault(m.component, {})
            state[f"{m.module}.lora_A.weight"] = m.lora_A.to(dtype).contiguous()
            state[f"{m.module}.lora_B.weight"] = m.lora_B.to(dtype).contiguous()
            if with_bias:
                bias = m.bias if m.bias is not None else torch.zeros(m.lora_B.shape[0])
                state[f"{m.module}.lora_B.bias"] = bias.to(dtype).contiguous()
        return out

    def fusable(self, base) -> bool:
        """Whether ``fuse_lora`` can merge it: no ``lora_B`` biases, or a bias in every adapted layer."""
        if not any(m.bias is not None for m in self.modules):
            return True
        modules = pipeline_modules(base)
        return all(modules[m.component].get_submodule(m.module).bias is not None for m in self.modules)

    def applied(self, base) -> dict[str, torch.Tensor]:
        """The weights ``load_lora_weights`` gives ``base``'s adapted layers: ``W + B A`` and ``b + bias``
        (float32, keyed like an edit's tensors), e.g. to score a LoRA as an ``Edit``."""
        modules = pipeline_modules(base)
        out = {}
        for m in self.modules:
            layer = modules[m.component].get_submodule(m.module)
            product = m.lora_B.reshape(m.lora_B.shape[0], -1) @ m.lora_A.reshape(m.rank, -1)
            out[f"{m.component}.{m.module}.weight"] = layer.weight.detach().float().cpu() + product.view_as(layer.weight)
            if m.bias is not None:
                out[f"{m.component}.{m.module}.bias"] = layer.bias.detach().float().cpu() + m.bias
        return out

    def report(self) -> dict:
        """Ranks, parameters and approximation errors, per tensor and in total (JSON-ready)."""
        delta_sq = sum(m.delta_norm ** 2 for m in self.modules) + sum(v ** 2 for v in self.left_out.values())
        error_sq = sum(m.error_norm ** 2 for m in self.modules) + sum(v ** 2 for v in self.left_out.values())
        return {
            "modules": len(self.modules),
            "parameters": int(sum(m.lora_A.numel() + m.lora_B.numel() + (m.bias.numel() if m.bias is not None else 0)
                                  for m in self.modules)),
            "max_rank": max((m.rank for m in self.modules), default=0),
            "relative_error": math.sqrt(error_sq / delta_sq) if delta_sq > 0 else 0.0,
            "left_out": {k: round(v, 6) for k, v in sorted(self.left_out.items())},
            "tensors": {f"{m.component}.{m.module}": {"rank": m.rank, "relative_error": round(m.relative_error, 6)}
                        for m in self.modules},
        }


def weight_deltas(edit: Edit, base) -> dict[str, torch.Tensor]:
    """``edit`` minus ``base``'s weights, float32 on the CPU, for every tensor the edit changes
    (a pruning mask becomes minus the base's value at the zeroed entries: exact)."""
    modules = pipeline_modules(base)
    deltas: dict[str, torch.Tensor] = {}
    for key, value in edit.tensors.items():
        deltas[key] = value.float() - _base_tensor(modules, key)
    for key, indices in edit.zeroed.items():
        current = deltas.get(key, torch.zeros_like(_base_tensor(modules, key)))
        flat = (_base_tensor(modules, key) + current).reshape(-1)
        step = torch.zeros_like(flat)
        step[indices.long()] = -flat[indices.long()]
        deltas[key] = current + step.view_as(current)
    return {k: v for k, v in deltas.items() if bool(v.abs().max() > 0)}


def _base_tensor(modules: dict[str, torch.nn.Module], key: str) -> torch.Tensor:
    component, _, name = key.partition(".")
    try:
        return modules[component].get_parameter(name).detach().float().cpu()
    except (KeyError, AttributeError):
        raise ErasureInputError(f"edit tensor {key}: the base pipeline has no such parameter") from None


def check_lora_options(rank: int | None, energy: float | None) -> None:
    """Refuse a rank below 1 or an energy outside (0, 1], in one line."""
    if rank is not None and rank < 1:
        raise ErasureInputError(f"--rank must be at least 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise ErasureInputError(f"--energy must lie in (0, 1], got {energy}")


def lora_from_edit(edit: Edit, base, *, rank: int | None = None, energy: float | None = None,
                   include_bias: bool = True, progress: Callable[[int, int], None] | None = None) -> Lora:
    """The LoRA of ``edit`` relative to ``base`` (the pipeline it was made from, unmodified).

    ``include_bias``: carry changed biases as ``lora_B`` biases (exact); off, they are left out, and
    ``fuse_lora`` works on every layer (peft cannot fuse a ``lora_B`` bias into a layer without one).
    """
    check_lora_options(rank, energy)
    if rank is None and energy is None:
        energy = DEFAULT_ENERGY
    deltas = weight_deltas(edit, base)
    modules = pipeline_modules(base)
    by_layer: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    left_out: dict[str, float] = {}
    for key, delta in deltas.items():
        component, _, name = key.partition(".")
        layer, _, kind = name.rpartition(".")
        module = modules[component].get_submodule(layer) if layer else None
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and (kind == "weight" or kind == "bias" and include_bias):
            by_layer.setdefault((component, layer), {})[kind] = delta
        else:  # normalisation and embedding parameters have no LoRA form in diffusers' format
            left_out[key] = float(delta.norm())
    out = []
    for i, ((component, layer), parts) in enumerate(sorted(by_layer.items())):
        module = modules[component].get_submodule(layer)
        out.append(_factorise(component, layer, module, parts, rank, energy))
        if progress is not None:
            progress(i + 1, len(by_layer))
    if left_out:
        logger.warning("a LoRA cannot hold %d changed tensors (normalisation or embedding parameters): %s",
                       len(left_out), ", ".join(sorted(left_out)[:3]) + (", ..." if len(left_out) > 3 else ""))
    return Lora(out, left_out)


def _factorise(component: str, layer: str, module: torch.nn.Module, parts: dict[str, torch.Tensor],
               rank: int | None, energy: float | None) -> LoraModule:
    weight = module.weight
    delta = parts.get("weight", torch.zeros(weight.shape))
    matrix = delta.reshape(delta.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = _rank(s, rank, energy)
    root = s[:r].sqrt()
    lora_b = u[:, :r] * root
    lora_a = root[:, None] * vh[:r]
    error = float((s[r:] ** 2).sum().sqrt())
    if isinstance(module, torch.nn.Conv2d):
        lora_a = lora_a.reshape(r, *delta.shape[1:])
        lora_b = lora_b.reshape(delta.shape[0], r, 1, 1)
    return LoraModule(component, layer, r, lora_a, lora_b, parts.get("bias"),
                      delta_norm=float(delta.norm()), error_norm=error)


def _rank(singular_values: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """The kept rank: ``rank`` capped at the delta's, or the smallest holding ``energy`` of ``sum(s^2)``;
    at least 1, so that a layer whose bias alone changed still has factors to carry the bias."""
    nonzero = int((singular_values > singular_values.max() * 1e-7).sum()) if singular_values.numel() else 0
    if rank is not None:
        return max(1, min(rank, nonzero))
    squares = singular_values.double() ** 2
    total = float(squares.sum())
    if total == 0:
        return 1
    kept = int(torch.searchsorted(torch.cumsum(squares, 0) / total, torch.tensor(energy, dtype=torch.float64)) + 1)
    return max(1, min(kept, nonzero))
