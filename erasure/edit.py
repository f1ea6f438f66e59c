"""The result of an erasure: ``Edit`` (the changed tensors and what produced them) and its run folder.

A finished run folder holds::

    manifest.json       method, config, request, base model (source, pipeline class, fingerprint of
                        its weights), library versions, seed, cost, edit size
    edit.safetensors    only the tensors the method changed, keyed "component.parameter"
                        (e.g. "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
                        and, for pruning, the flat int32 indices of the entries set to zero, keyed
                        "component.parameter@zeroed" (a sparse mask: its size is the edit's storage)
    full/               optional: the whole erased pipeline as a diffusers folder (save_pretrained)

``manifest.json`` is written last, through a temporary name and a rename, so a folder without it is
never mistaken for a finished run (while a run trains, the folder holds only ``checkpoint/``).
``erasure.load_erased(run_dir)`` turns a run folder back into a pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from erasure.atomic import atomic_path
from erasure.errors import ErasureInputError

FORMAT = "erasure-run"
FORMAT_VERSION = 2  # 2: "@zeroed" index tensors (pruning masks)
MANIFEST = "manifest.json"
EDIT_FILE = "edit.safetensors"
FULL_EXPORT = "full"
CHECKPOINT_DIR = "checkpoint"
ZEROED_SUFFIX = "@zeroed"
#: Base dtypes (as the manifest records them) whose edits are stored in that dtype.
HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def pipeline_modules(pipe) -> dict[str, torch.nn.Module]:
    """The pipeline's torch components by name (unet, text_encoder, vae, ...), sorted."""
    return {name: comp for name, comp in sorted(pipe.components.items()) if isinstance(comp, torch.nn.Module)}


def fingerprint(pipe) -> str:
    """SHA-256 over every component's tensor names, shapes and values rounded to bfloat16.

    Rounding to bfloat16 makes the fingerprint the same for a model loaded in float32 or bfloat16
    (one rounding either way); it still separates any two different trainings. A float16 load of a
    float32 model can round tiny weights differently and then does not match.
    """
    h = hashlib.sha256()
    for comp_name, module in pipeline_modules(pipe).items():
        for name, tensor in module.state_dict().items():
            t = tensor.detach()
            h.update(f"{comp_name}.{name}:{tuple(t.shape)}:".encode())
            if t.is_floating_point():
                t = t.to(torch.bfloat16)
            t = t.contiguous().cpu()
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("erasure", "torch", "diffusers", "transformers", "accelerate", "safetensors"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def base_description(pipe, source: str | None = None, config: str | None = None) -> dict:
    """What the manifest records about the base model (source, class, dtype, fingerprint)."""
    recorded = getattr(pipe, "_erasure_source", None) or {}
    unet = getattr(pipe, "unet", None)
    return {
        "source": source if source is not None else recorded.get("source"),
        "config": config if config is not None else recorded.get("config"),
        "pipeline": type(pipe).__name__,
        "dtype": str(unet.dtype).replace("torch.", "") if unet is not None else None,
        "fingerprint": fingerprint(pipe),
    }


def _split_key(key: str) -> tuple[str, str]:
    comp, _, name = key.partition(".")
    return comp, name


def _parameter(modules: dict[str, torch.nn.Module], key: str) -> torch.nn.Parameter:
    comp, name = _split_key(key)
    if comp not in modules:
        raise ErasureInputError(f"edit tensor {key}: the pipeline has no component {comp!r}")
    try:
        return modules[comp].get_parameter(name)
    except AttributeError:
        raise ErasureInputError(f"edit tensor {key}: no such parameter in {comp}") from None


@dataclass
class Edit:
    """The tensors an erasure changed (float32 in memory, CPU) and the record of how it was made.

    ``tensors``: new values of whole parameters. ``zeroed``: for pruning, the flat (row-major)
    int32 indices of each parameter's entries set to zero; applied after ``tensors``.
    """

    method: str
    config: dict
    request: dict
    tensors: dict[str, torch.Tensor]
    base: dict
    seed: int | None = None
    cost: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    zeroed: dict[str, torch.Tensor] = field(default_factory=dict)
    #: where ``config`` came from: "preset esd/canvas-mini-style", "file PATH", "defaults" or "given"
    config_source: str | None = None
    #: a run started from an erased run (``erasure erase --model RUN``): ``{"origin": the original
    #: base (as ``base`` describes one), "runs": each earlier run, first to last (path, method, kind,
    #: targets, fingerprint of the pipeline it produced)}``; None for a run on a model itself.
    #: ``base`` is then the last earlier run's pipeline (see ``erasure.erased``).
    chain: dict | None = None

    # -- applying
    def apply(self, pipe):
        """Write the edited tensors into ``pipe`` (in place, cast to each parameter's dtype); returns it."""
        modules = pipeline_modules(pipe)
        with torch.no_grad():
            for key, value in self.tensors.items():
                param = _parameter(modules, key)
                if tuple(param.shape) != tuple(value.shape):
                    raise ErasureInputError(f"edit tensor {key}: shape {tuple(value.shape)} != {tuple(param.shape)}")
                param.copy_(value.to(param.device, param.dtype))
            for key, indices in self.zeroed.items():
                param = _parameter(modules, key)
                idx = indices.long()
                if idx.numel() and (idx.min() < 0 or idx.max() >= param.numel()):
                    raise ErasureInputError(f"edit mask {key}: indices outside the parameter's {param.numel()} entries")
                flat = param.detach().reshape(-1).clone()
                flat[idx.to(flat.device)] = 0
                param.copy_(flat.view_as(param))
        return pipe

    def size(self) -> dict:
        """What the edit holds and its bytes as stored (tensors in ``storage_dtype()``, masks as int32)."""
        item = self.storage_dtype().itemsize
        return {
            "tensors": len(self.tensors),
            "parameters": int(sum(t.numel() for t in self.tensors.values())),
            "zeroed_entries": int(sum(t.numel() for t in self.zeroed.values())),
            "bytes": int(sum(t.numel() for t in self.tensors.values()) * item
                         + sum(t.numel() * 4 for t in self.zeroed.values())),
            "components": sorted({_split_key(k)[0] for k in [*self.tensors, *self.zeroed]}),
        }

    def storage_dtype(self) -> torch.dtype:
        """The dtype the tensors are saved in: the base's own when it is half precision, else float32.

        ``apply`` casts every tensor to its parameter's dtype, so on the base the run was made on
        (a float16 or bfloat16 load) a half-precision file gives exactly the same weights as the
        float32 master values, in half the bytes. A float32 base keeps float32.
        """
        return HALF_DTYPES.get(str(self.base.get("dtype")), torch.float32)

    # -- the run folder
    def manifest(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "config": self.config,
            "config_source": self.config_source,
            "request": self.request,
            "base": self.base,
            "seed": self.seed,
            "cost": self.cost,
            "edit": {"file": EDIT_FILE, "dtype": str(self.storage_dtype()).replace("torch.", ""), **self.size()},
            "versions": library_versions(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "extra": self.extra,
            **({"chain": self.chain} if self.chain else {}),
        }

    def save(self, run_dir: str | os.PathLike, *, pipe=None, export_full: bool = False) -> Path:
        """Write the run folder (edit, optional full export, then the manifest) and drop checkpoints."""
        from safetensors.torch import save_file

        run = Path(run_dir)
        run.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        dtype = self.storage_dtype()
        with atomic_path(run / EDIT_FILE) as tmp:
            stored = {k: v.to(dtype).contiguous() for k, v in self.tensors.items()}
            stored |= {k + ZEROED_SUFFIX: v.to(torch.int32).contiguous() for k, v in self.zeroed.items()}
            save_file(stored, str(tmp), metadata={"format": FORMAT, "method": self.method})
        if export_full:
            if pipe is None:
                raise ValueError("export_full needs the erased pipeline")
            with atomic_path(run / FULL_EXPORT) as tmp:
                pipe.save_pretrained(tmp, safe_serialization=True)
        manifest = self.manifest()
        manifest["edit"]["file_bytes"] = (run / EDIT_FILE).stat().st_size
        manifest["edit"]["write_seconds"] = round(time.perf_counter() - start, 3)  # with the full export, if any
        manifest["full_export"] = FULL_EXPORT if export_full else None
        with atomic_path(run / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(run / CHECKPOINT_DIR, ignore_errors=True)
        return run

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "Edit":
        """Read a finished run folder."""
        from safetensors.torch import load_file

        manifest = read_manifest(run_dir)
        edit_path = Path(run_dir) / manifest["edit"]["file"]
        if not edit_path.is_file():
            raise ErasureInputError(f"{run_dir}: {manifest['edit']['file']} is missing")
        stored = load_file(str(edit_path))
        tensors = {k: v for k, v in stored.items() if not k.endswith(ZEROED_SUFFIX)}
        zeroed = {k[: -len(ZEROED_SUFFIX)]: v for k, v in stored.items() if k.endswith(ZEROED_SUFFIX)}
        return cls(
            method=manifest["method"], config=manifest["config"], request=manifest["request"],
            tensors=tensors, base=manifest["base"], seed=manifest.get("seed"),
            cost=manifest.get("cost", {}), extra=manifest.get("extra", {}), zeroed=zeroed,
            config_source=manifest.get("config_source"), chain=manifest.get("chain"),
        )


def read_manifest(run_dir: str | os.PathLike) -> dict:
    """The manifest of a finished run folder, with one-line errors for anything else."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise ErasureInputError(f"run folder not found: {run}")
    path = run / MANIFEST
    if not path.is_file():
        if (run / CHECKPOINT_DIR).exists():
            raise ErasureInputError(f"{run}: unfinished run (no {MANIFEST}); continue it with --resume")
        raise ErasureInputError(f"{run}: not a run folder (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ErasureInputError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ErasureInputError(f"{path}: not an erasure run manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ErasureInputError(f"{path}: format version {manifest['format_version']} is newer than this toolkit's")
    return manifest
