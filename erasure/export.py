"""``erasure export``: a finished run in the formats other tools load.

- ``single-file``: one original-layout ``.safetensors`` of the erased pipeline (``erasure.pipelines.
  single_file``), what AUTOMATIC1111, ComfyUI and diffusers' ``from_single_file`` read; SD 1.x, 2.x, XL.
- ``diffusers``: the erased pipeline as a diffusers folder (``save_pretrained``; ``from_pretrained``).
- ``lora``: the edit as a LoRA in diffusers' format (``erasure.lora``: truncated SVD of each changed
  weight's delta; ``pipe.load_lora_weights(FOLDER)`` on the base applies it).
- ``text-encoder``: the erased text encoder as a transformers ``CLIPTextModel`` folder, for edits
  that change the text encoder alone (AdvUnlearn's plug-and-play unlearner).

Every export is written under a temporary name, then checked: it is reloaded with the consumer's
own loader (diffusers' ``from_single_file``/``from_pretrained``/``load_lora_weights``,
transformers' ``CLIPTextModel.from_pretrained``), an image is generated from it and compared
with ``load_erased`` on the same prompt and seed; only then is it renamed into place, with a model
card (``erasure.model_card``) beside it. The lossless formats must reproduce ``load_erased``'s image
(a failure is a bug and leaves nothing behind); a LoRA is an approximation, whose weight and image
errors are reported.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from erasure.atomic import atomic_path, check_output_file, check_output_folder
from erasure.errors import ErasureInputError
from erasure.model_card import CARD_FILE

logger = logging.getLogger(__name__)

FORMATS = ("single-file", "diffusers", "lora", "text-encoder")
#: Pipelines with an original (LDM) single-file layout.
SINGLE_FILE_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
EXPORT_RECORD = "erasure-export.json"
#: Sampling steps of the check image: enough for the image to depend on every layer, few enough
#: that the check costs seconds at canvas-mini's size and about a minute at SD's on a CPU.
CHECK_STEPS = 4
#: The lossless formats must reproduce ``load_erased``'s image to within float reduction order.
LOSSLESS_MAX_DIFF = 2

#: ``progress(stage, done, total, metrics)``, as the CLI's stage bars take it.
Progress = Callable[[str, int, int, dict], None]


@dataclass
class ExportResult:
    """What ``export_run`` wrote and how its check went."""

    format: str
    path: Path
    card: Path
    check: dict
    details: dict = field(default_factory=dict)


def check_export(run: str | os.PathLike, to: str, out: str | os.PathLike, *, rank: int | None = None,
                 energy: float | None = None, lora_bias: bool = True) -> dict:
    """Refuse, in one line and before any weight loads, an export that cannot work; returns the manifest."""
    from erasure.erased import chain_links, check_run
    from erasure.lora import check_lora_options
    from erasure.one_step import SAMPLER

    if to not in FORMATS:
        raise ErasureInputError(f"--to {to!r}: unknown format; expected one of {', '.join(FORMATS)}")
    if to != "lora" and (rank is not None or energy is not None or not lora_bias):
        raise ErasureInputError("--rank, --energy and --no-lora-bias apply to --to lora only")
    check_lora_options(rank, energy)
    manifest = check_run(run)  # a broken or half-written run fails here, not after a model loaded
    base, extra = manifest.get("base", {}), manifest.get("extra") or {}
    one_step = extra.get("sampler") == SAMPLER
    if to == "single-file":
        if base.get("pipeline") not in SINGLE_FILE_PIPELINES:
            raise ErasureInputError(f"--to single-file: {base.get('pipeline')} has no original-layout single-file "
                                    f"format (only {', '.join(SINGLE_FILE_PIPELINES)}); export diffusers or lora")
        if one_step:
            raise ErasureInputError(f"--to single-file: {run} is a one-step generator ({manifest['method']}), which "
                                    "the samplers of single-file tools cannot sample; export diffusers")
        if Path(out).suffix.lower() != ".safetensors":
            raise ErasureInputError(f"--out {out}: a single-file export is a .safetensors file")
        check_output_file(out, "--out")
        if Path(out).expanduser().exists():
            raise ErasureInputError(f"--out {out}: exists; choose a new file name")
    else:
        check_new_folder(out)
    if to == "lora" and one_step:
        raise ErasureInputError(f"--to lora: {run} is a one-step generator ({manifest['method']}), not a weight "
                                "delta of its base; export diffusers")
    links = chain_links(run)  # a run that continues others: every earlier run must be there too
    if to == "text-encoder":
        # every run of the chain, or the UNet changes of earlier runs would be dropped without a word
        changed = sorted({c for _, m in links for c in m.get("edit", {}).get("components", [])})
        if changed != ["text_encoder"]:
            raise ErasureInputError(f"--to text-encoder: the edit{'s of the chain' if len(links) > 1 else ''} "
                                    f"change{'' if len(links) > 1 else 's'} {', '.join(changed) or 'nothing'}, "
                                    "not the text encoder alone")
    _check_base_available(run, manifest, needs_source=to in ("lora", "text-encoder"))
    return manifest


def check_new_folder(out: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse an export folder that exists with something in it, or cannot be created; creates nothing."""
    folder = check_output_folder(out, flag)
    if folder.exists() and any(folder.iterdir()):
        raise ErasureInputError(f"{flag} {folder}: exists and is not empty; choose a new folder")


def _check_base_available(run, manifest: dict, *, needs_source: bool) -> None:
    from erasure.erased import origin
    from erasure.pipelines.loading import source_available

    source = origin(manifest).get("source")
    if source is not None and source_available(source):
        return
    if not needs_source and manifest.get("full_export") and (Path(run) / manifest["full_export"]).is_dir():
        return
    raise ErasureInputError(f"{run}: the base model {source or '(not recorded)'} is not available here; "
                            "the export needs it")


def export_run(run: str | os.PathLike, to: str, out: str | os.PathLike, *, rank: int | None = None,
               energy: float | None = None, lora_bias: bool = True, device: str = "cpu",
               progress: Progress | None = None) -> ExportResult:
    """Export the run folder ``run`` as ``to`` (one of ``FORMATS``) at ``out``; checked, then renamed into place.

    ``rank``/``energy``/``lora_bias``: the LoRA's rank per tensor (fixed, or the smallest holding
    ``energy`` of each delta's squared norm; default energy 0.99) and whether changed biases ride
    along as ``lora_B`` biases (exact, but ``fuse_lora`` then needs every adapted layer to have a bias).
    """
    manifest = check_export(run, to, out, rank=rank, energy=energy, lora_bias=lora_bias)
    run, out = Path(run).expanduser(), Path(out).expanduser()
    report = progress or (lambda *a: None)
    writers = {"single-file": _single_file, "diffusers": _diffusers, "lora": _lora, "text-encoder": _text_encoder}
    prompt, reference = _reference_image(run, manifest, device, report)
    with atomic_path(out) as tmp:
        details, load, loader = writers[to](run, manifest, tmp, device=device, rank=rank, energy=energy,
                                            lora_bias=lora_bias, report=report)
        report("checking", 0, 1, {})
        check = _compare(reference, _image(load(), prompt), loader)
        report("checking", 1, 1, {})
        if to != "lora" and check["max_abs_diff"] > LOSSLESS_MAX_DIFF:
            raise RuntimeError(f"export check failed: {loader} gives an image that differs from load_erased's "
                               f"by up to {check['max_abs_diff']}/255; nothing was written")
        if tmp.is_dir():  # a folder is renamed into place with its record and card already inside
            _write_record(tmp, run, manifest, to, check, details)
            _write_export_card(run, manifest, to, out, check, details, tmp / CARD_FILE)
    card = out / CARD_FILE if out.is_dir() else out.with_suffix(".md")
    if not out.is_dir():  # a single file: its card beside it
        _write_export_card(run, manifest, to, out, check, details, card)
    logger.info("exported %s as %s to %s", run, to, out)
    return ExportResult(to, out, card, check, details)


# ----------------------------------------------------------------------------- the check
def _check_prompt(manifest: dict) -> str:
    request = manifest.get("request", {})
    return (request.get("prompts") or request.get("targets") or ["a photo"])[0]


def _image(pipe, prompt: str):
    from erasure.pipelines import generate

    image = generate(pipe, [prompt], seeds=[0], steps=CHECK_STEPS)[0]
    del pipe
    gc.collect()
    return image


def _reference_image(run: Path, manifest: dict, device: str, report: Progress):
    from erasure.erased import load_erased

    report("reference image", 0, 1, {})
    prompt = _check_prompt(manifest)
    image = _image(_for_check(load_erased(run, device="cpu", dtype=_base_dtype(manifest)), manifest, device), prompt)
    report("reference image", 1, 1, {})
    return prompt, image


def _compare(reference, image, loader: str) -> dict:
    import numpy as np

    a, b = np.asarray(reference, dtype=np.int16), np.asarray(image, dtype=np.int16)
    diff = np.abs(a - b)
    return {"loader": loader, "steps": CHECK_STEPS, "seed": 0,
            "max_abs_diff": int(diff.max()), "mean_abs_diff": round(float(diff.mean()), 4)}


# ----------------------------------------------------------------------------- formats
def _single_file(run: Path, manifest: dict, tmp: Path, *, device: str, report: Progress, **_):
    """The erased pipeline in the original layout; checked through ``from_single_file`` with its configs."""
    import tempfile

    from erasure.erased import load_erased
    from erasure.pipelines.loading import no_safety_checker
    from erasure.pipelines.single_file import save_single_file

    report("writing", 0, 1, {})
    pipe = load_erased(run, device="cpu", dtype=_base_dtype(manifest))
    cls = type(pipe)
    configs = Path(tempfile.mkdtemp(prefix="erasure-configs-"))
    _save_configs(pipe, configs)
    save_single_file(pipe, tmp)
    del pipe
    gc.collect()
    report("writing", 1, 1, {})

    def load():
        try:
            reloaded = cls.from_single_file(str(tmp), config=str(configs), local_files_only=True,
                                            **no_safety_checker(cls))
        finally:
            import shutil

            shutil.rmtree(configs, ignore_errors=True)
        return _for_check(reloaded, manifest, device)

    return {"bytes": tmp.stat().st_size}, load, f"{cls.__name__}.from_single_file"


def _save_configs(pipe, folder: Path) -> None:
    """The pipeline's configs and tokenizers without weights: what ``from_single_file(config=)`` reads."""
    import torch

    pipe.save_config(folder)
    for name, component in pipe.components.items():
        if component is None:
            continue
        if isinstance(component, torch.nn.Module):
            config = component.config
            (folder / name).mkdir()
            if hasattr(config, "save_pretrained"):  # transformers
                config.save_pretrained(folder / name)
            else:
                component.save_config(folder / name)
        else:  # tokenizers, schedulers
            save = getattr(component, "save_pretrained", None) or component.save_config
            save(folder / name)


def _diffusers(run: Path, manifest: dict, tmp: Path, *, device: str, report: Progress, **_):
    from erasure.erased import load_erased
    from erasure.one_step import one_step_pipeline
    from erasure.pipelines.loading import no_safety_checker, pipeline_class

    report("writing", 0, 1, {})
    pipe = load_erased(run, device="cpu", dtype=_base_dtype(manifest))
    pipe.save_pretrained(tmp, safe_serialization=True)
    del pipe
    gc.collect()
    report("writing", 1, 1, {})
    cls = pipeline_class(tmp)

    def load():
        reloaded = _for_check(cls.from_pretrained(tmp, local_files_only=True, **no_safety_checker(cls)), manifest, device)
        return one_step_pipeline(reloaded, manifest.get("extra"))  # SFD's generator samples in one step

    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return {"bytes": size}, load, f"{cls.__name__}.from_pretrained"


def _lora(run: Path, manifest: dict, tmp: Path, *, device: str, rank, energy, lora_bias: bool, report: Progress):
    from erasure.edit import Edit
    from erasure.lora import lora_from_edit

    base = _predecessor(run, manifest)  # a LoRA is this run's delta, on the pipeline it was made from
    edit = Edit.load(run)
    lora = lora_from_edit(edit, base, rank=rank, energy=energy, include_bias=lora_bias,
                          progress=lambda done, total: report("factorising", done, total, {}))
    states = lora.state_dicts(edit.storage_dtype())
    tmp.mkdir()
    layers = {f"{component}_lora_layers": state for component, state in states.items()}
    type(base).save_lora_weights(str(tmp), weight_name=LORA_WEIGHTS, **layers)
    details = {"bytes": (tmp / LORA_WEIGHTS).stat().st_size, "lora": lora.report(), "fusable": lora.fusable(base)}

    def load():
        with warnings.catch_warnings():  # peft warns that a lora_bias cannot be fused into a bias-free layer
            warnings.simplefilter("ignore")
            base.load_lora_weights(str(tmp))
        return _for_check(base, manifest, device)

    return details, load, f"{type(base).__name__}.load_lora_weights"


def _text_encoder(run: Path, manifest: dict, tmp: Path, *, device: str, report: Progress, **_):
    from transformers import CLIPTextModel

    from erasure.erased import load_erased

    report("writing", 0, 1, {})
    pipe = load_erased(run, device="cpu", dtype=_base_dtype(manifest))
    pipe.text_encoder.save_pretrained(tmp, safe_serialization=True)
    del pipe
    gc.collect()
    report("writing", 1, 1, {})

    def load():
        base = _load_base(manifest)
        base.text_encoder = CLIPTextModel.from_pretrained(tmp, local_files_only=True).to(base.text_encoder.dtype)
        return _for_check(base, manifest, device)

    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
    return {"bytes": size}, load, "CLIPTextModel.from_pretrained"


def _load_base(manifest: dict):
    """The model the run's chain started from (its own base, for a run made on a model), float32 on the CPU."""
    from erasure.erased import origin
    from erasure.pipelines import load_pipeline

    base = origin(manifest)
    return load_pipeline(base["source"], config=base.get("config"), device="cpu", dtype="fp32")


def _predecessor(run: Path, manifest: dict):
    """The pipeline ``run`` was made from: its base, or the erased pipeline of the run it continues."""
    from erasure.erased import chain_links, load_erased

    links = chain_links(run)
    if len(links) == 1:
        return _load_base(manifest)
    return load_erased(links[-2][0], device="cpu", dtype="fp32")


def _base_dtype(manifest: dict) -> str:
    """The base's dtype as ``load_pipeline`` names it: an export keeps the base's precision (a float16
    checkpoint stays float16; its edit was stored in float16 too, so nothing is lost)."""
    return {"float16": "fp16", "bfloat16": "bf16"}.get(str(manifest["base"].get("dtype")), "fp32")


def _for_check(pipe, manifest: dict, device: str):
    """``pipe`` on the check's device and dtype, the same for the reference and the export: the base's
    dtype on an accelerator, float32 on the CPU (half-precision weights upcast exactly)."""
    import torch

    from erasure.pipelines.loading import resolve_device, resolve_dtype

    target = resolve_device(device)
    dtype = torch.float32 if target.type == "cpu" else resolve_dtype(_base_dtype(manifest), target)
    return pipe.to(target, dtype)


# ----------------------------------------------------------------------------- records and cards
def _write_record(folder: Path, run: Path, manifest: dict, to: str, check: dict, details: dict) -> None:
    record = {"run": str(run.resolve()), "format": to, "method": manifest["method"], "request": manifest["request"],
              "base": manifest["base"], "check": check, **details}
    (folder / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _write_export_card(run: Path, manifest: dict, to: str, out: Path, check: dict, details: dict, card: Path) -> None:
    from erasure.model_card import card_text, read_evaluations

    export = {"format": to, "written": datetime.now(timezone.utc).isoformat(timespec="seconds"), "check": check,
              "lora": details.get("lora")}
    text = card_text(manifest, run=run, evaluations=read_evaluations(run), usage=_usage(to, out, manifest), export=export)
    with atomic_path(card) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _usage(to: str, out: Path, manifest: dict) -> str:
    pipeline = manifest["base"].get("pipeline") or "DiffusionPipeline"
    source = manifest["base"].get("source") or "BASE"
    if not hasattr(__import__("diffusers"), pipeline):  # canvas-mini's pipeline is the toolkit's own
        load_base = f"from erasure.pipelines import load_pipeline\n\npipe = load_pipeline(\"{source}\")"
        return "```python\n" + {
            "diffusers": f"from erasure.pipelines import load_pipeline\n\npipe = load_pipeline(\"{out}\")",
            "lora": f"{load_base}\npipe.load_lora_weights(\"{out}\")",
            "text-encoder": f"{load_base}\nfrom transformers import CLIPTextModel\n\n"
                            f"pipe.text_encoder = CLIPTextModel.from_pretrained(\"{out}\")",
        }[to] + "\n```"
    snippets = {
        "single-file": f"from diffusers import {pipeline}\n\n"
                       f"pipe = {pipeline}.from_single_file(\"{out}\")  # offline: config=\"BASE_FOLDER\"\n"
                       "# AUTOMATIC1111 / ComfyUI: put the file in models/Stable-diffusion (checkpoints)",
        "diffusers": f"from diffusers import {pipeline}\n\npipe = {pipeline}.from_pretrained(\"{out}\")",
        "lora": f"from diffusers import {pipeline}\n\npipe = {pipeline}.from_pretrained(\"{source}\")\n"
                f"pipe.load_lora_weights(\"{out}\")",
        "text-encoder": f"from diffusers import {pipeline}\nfrom transformers import CLIPTextModel\n\n"
                        f"pipe = {pipeline}.from_pretrained(\"{source}\")\n"
                        f"pipe.text_encoder = CLIPTextModel.from_pretrained(\"{out}\")",
    }
    note = ""
    if to == "lora" and manifest.get("chain"):
        note = ("\n\nThis run continues an earlier one: the LoRA holds this run's change only and applies on top of "
                "the earlier runs' pipeline (`erasure.load_erased(PREVIOUS_RUN)`, or their own LoRAs loaded first).")
    if manifest.get("extra", {}).get("sampler") == "one-step":
        note = ("\n\nThis is a one-step generator: sample it with erasure's one-step sampler, "
                "`erasure.one_step.one_step_pipeline(pipe, manifest[\"extra\"])`, not with the base's schedulers.")
    return f"```python\n{snippets[to]}\n```{note}"
