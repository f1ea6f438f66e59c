"""Erased pipelines: a run folder (``erasure erase --out RUN``) back into an ordinary diffusers pipeline."""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

from erasure.errors import ErasureInputError

logger = logging.getLogger(__name__)

#: Bounds on what is read of a run folder before it is trusted, so a huge or hostile file cannot stall a reader.
MAX_MANIFEST_BYTES = 4 * 2**20
MAX_SAFETENSORS_HEADER = 100 * 2**20
#: Manifest fields every reader uses, and their types.
MANIFEST_FIELDS = (("method", str), ("config", dict), ("request", dict), ("base", dict), ("edit", dict), ("cost", dict))


def check_run(run_dir: str | os.PathLike) -> dict:
    """The manifest of a finished run folder whose files can be read, checked without loading a weight.

    Refused with ``ErasureInputError`` naming the run: no folder, an unfinished run, a malformed or
    oversized manifest, a missing field, an edit file named outside the run folder, a missing, corrupt
    or truncated edit file. Every command reading runs calls it first, so a bad run fails before any
    model loads or image is drawn.
    """
    from erasure.edit import MANIFEST, read_manifest

    run = Path(run_dir).expanduser()
    if (run / MANIFEST).is_file() and (run / MANIFEST).stat().st_size > MAX_MANIFEST_BYTES:
        raise ErasureInputError(f"{run}: {MANIFEST} is larger than {MAX_MANIFEST_BYTES // 2**20} MB")
    try:
        manifest = read_manifest(run)
    except AttributeError:  # read_manifest trusts valid JSON to be an object ([1, 2] has no .get)
        raise ErasureInputError(f"{run / MANIFEST}: not an erasure run manifest") from None
    for key, kind in MANIFEST_FIELDS:
        if not isinstance(manifest.get(key), kind):
            raise ErasureInputError(f"{run}: {MANIFEST}: field {key!r} missing or malformed")
    request = manifest["request"]
    if not isinstance(request.get("targets"), list) or not isinstance(request.get("kind"), str):
        raise ErasureInputError(f"{run}: {MANIFEST}: field 'request' lacks its targets or kind")
    if not isinstance(manifest["edit"].get("file"), str):
        raise ErasureInputError(f"{run}: {MANIFEST}: no edit file named")
    _check_edit_file(run, manifest)
    return manifest


def edit_file(run: Path, manifest: dict) -> Path:
    """The run's edit file, refused when the manifest names a file outside the run folder."""
    from erasure.edit import MANIFEST

    target = (run / manifest["edit"]["file"]).resolve()
    if target.parent != run.resolve():
        raise ErasureInputError(f"{run}: {MANIFEST}: the edit file {manifest['edit']['file']!r} is outside the run folder")
    return target


def _check_edit_file(run: Path, manifest: dict) -> None:
    """The edit file exists and is a complete safetensors file (header and data all present)."""
    target = edit_file(run, manifest)
    name = f"{run}: {manifest['edit']['file']}"
    if not target.is_file():
        raise ErasureInputError(f"{name} is missing")
    size = target.stat().st_size
    try:
        with target.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > min(MAX_SAFETENSORS_HEADER, size - 8):
                raise ValueError("header length beyond the file")
            header = json.loads(fh.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise ErasureInputError(f"{name} is not a readable safetensors file") from None
    if 8 + header_len + end > size:
        raise ErasureInputError(f"{name} is truncated ({size} bytes, its header needs {8 + header_len + end})")


def load_erased(
    run_dir: str | os.PathLike,
    base=None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attention: str = "auto",
    allow_other_base: bool = False,
):
    """The base pipeline with the run's edit applied: an ordinary diffusers pipeline.

    Args:
        run_dir: a finished run folder (with ``manifest.json`` and ``edit.safetensors``).
        base: the base pipeline to apply the edit to (modified in place and returned). Its weights
            must have the fingerprint recorded in the manifest, else ``ErasureInputError``. ``None``:
            load the base from the source the manifest records (or, when the run has a full export
            and that source is gone, load the export).
        device, dtype, attention: as for ``load_pipeline`` when the base is loaded here.
        allow_other_base: plug-and-play. Accept a ``base`` whose fingerprint differs, when the edit
            changes only components that carry over (``PLUGGABLE``: the text encoder, e.g. AdvUnlearn's)
            and the base's component has the architecture recorded at erasure time (class and shape
            config; parameter names and shapes are checked when applying). If the base's component
            is not the one the edit was trained from (its recorded fingerprint), the edit still
            replaces the tensors it holds and the rest (e.g. token embeddings) stays the base's own;
            a warning says so. Off by default: the fingerprint check protects the ordinary path.
    """
    from erasure.edit import FULL_EXPORT, Edit, fingerprint

    from erasure.pipelines.loading import load_pipeline, source_available
    from erasure.one_step import one_step_pipeline

    run = Path(run_dir).expanduser()
    manifest = check_run(run)  # a broken run folder fails in one line before any weight loads
    edit = Edit.load(run)
    expected = manifest["base"].get("fingerprint")
    if base is None:
        source = manifest["base"].get("source")
        full = run / FULL_EXPORT
        if source is None or not source_available(source):
            if manifest.get("full_export") and full.is_dir():
                return one_step_pipeline(load_pipeline(full, device=device, dtype=dtype, attention=attention),
                                         manifest.get("extra"))
            raise ErasureInputError(
                f"{run}: the base model {source or '(not recorded)'} is not available; pass base=<pipeline> "
                "(erasure.pipelines.load_pipeline) or re-run with a full export"
            )
        base = load_pipeline(source, config=manifest["base"].get("config"), device=device, dtype=dtype,
                             attention=attention)
    actual = fingerprint(base)
    if expected is not None and actual != expected and allow_other_base:
        _check_pluggable(run, edit, base)
    elif expected is not None and actual != expected:
        raise ErasureInputError(
            f"{run}: the base pipeline's weights differ from the model this edit was made for "
            f"(fingerprint {actual[:19]}... != {expected[:19]}...); load {manifest['base'].get('source') or 'that model'}"
            f" (in float32 or bfloat16)"
        )
    edit.apply(base)
    logger.info("applied %s edit (%d tensors, %d pruning masks) from %s", edit.method, len(edit.tensors), len(edit.zeroed), run)
    # A run that made a one-step generator (SFD) samples through it, not through the original sampler.
    return one_step_pipeline(base, manifest.get("extra"))


# ----------------------------------------------------------------------------- plug-and-play
#: Components whose edits can be applied to another base pipeline (``allow_other_base``).
PLUGGABLE = ("text_encoder",)
#: Config keys that fix a component's architecture beyond its parameter shapes.
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "hidden_act", "vocab_size", "max_position_embeddings", "layer_norm_eps", "projection_dim")


def component_record(module) -> dict:
    """What a manifest records about a component for plug-and-play: class, architecture, fingerprint."""
    from types import SimpleNamespace

    from erasure.edit import fingerprint

    config = getattr(module, "config", None)
    architecture = {k: getattr(config, k) for k in ARCHITECTURE_KEYS if config is not None and hasattr(config, k)}
    # fingerprint() hashes a pipeline's components; a one-component stand-in hashes this module alone.
    return {"class": type(module).__name__, "architecture": architecture,
            "fingerprint": fingerprint(SimpleNamespace(components={"component": module}))}


def _check_pluggable(run: Path, edit, base) -> None:
    """Refuse an edit that cannot move to ``base`` (another model); warn where it only partly fits."""
    changed = sorted({key.partition(".")[0] for key in [*edit.tensors, *getattr(edit, "zeroed", {})]})
    other = [c for c in changed if c not in PLUGGABLE]
    if other or not changed:
        raise ErasureInputError(
            f"{run}: the base pipeline's weights differ from the model this edit was made for, and the edit "
            f"changes {', '.join(other or ['nothing'])}: only {', '.join(PLUGGABLE)} edits apply to another base")
    records = (edit.extra or {}).get("components", {})
    for name in changed:
        module = getattr(base, name, None)
        if module is None:
            raise ErasureInputError(f"{run}: the base pipeline ({type(base).__name__}) has no {name}")
        record = records.get(name)
        if record is None:
            continue
        mine = component_record(module)
        if mine["class"] != record["class"] or mine["architecture"] != record["architecture"]:
            diff = sorted(k for k in set(mine["architecture"]) | set(record["architecture"])
                          if mine["architecture"].get(k) != record["architecture"].get(k))
            raise ErasureInputError(
                f"{run}: the base's {name} is a {mine['class']} that differs from the edited {record['class']}"
                f"{' in ' + ', '.join(diff) if diff else ''}; plug-and-play needs the same architecture")
        if mine["fingerprint"] != record["fingerprint"]:
            logger.warning("%s: the base's %s is not the one the edit was trained from; the edit replaces %d of its "
                           "tensors and the others stay the base's own", run, name,
                           sum(k.startswith(name + ".") for k in edit.tensors))
    logger.info("plug-and-play: applying the %s edit of %s to another base (%s)", ", ".join(changed), run,
                type(base).__name__)
