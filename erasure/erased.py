"""Erased pipelines: a run folder (``erasure erase --out RUN``) back into an ordinary diffusers pipeline,
and chains of runs (a run started from another, ``erasure erase --model RUN``): each run stores only
its own edit, relative to the pipeline the run before produced, and is loaded by applying the chain
from its original model on."""

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
    manifest = read_manifest(run)
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

    A run started from another run (``erasure erase --model RUN``, ``erase(load_erased(RUN), ...)``)
    ends a chain: its manifest's ``chain`` names the original model and every earlier run. The
    original is loaded and each run's edit applied in order (its tensors, then its pruning masks),
    the pipeline's fingerprint checked against what each next run was erased from; an earlier run
    that is missing, or whose folder now holds another run or produces other weights, is refused in
    one line (``chain_links`` checks the folders before any weight loads).

    Args:
        run_dir: a finished run folder (with ``manifest.json`` and ``edit.safetensors``).
        base: the base pipeline to apply the edit to (modified in place and returned). Its weights
            must have the fingerprint recorded in the manifest (for a chain: the original's, or the
            pipeline of any earlier run of the chain, from which the rest is applied), else
            ``ErasureInputError``. ``None``: load the base from the source the manifest records (or,
            when that source is gone, the full export of the run or of the latest earlier run that has one).
        device, dtype, attention: as for ``load_pipeline`` when the base is loaded here.
        allow_other_base: plug-and-play. Accept a ``base`` whose fingerprint differs, when the edit
            changes only components that carry over (``PLUGGABLE``: the text encoder, e.g. AdvUnlearn's)
            and the base's component has the architecture recorded at erasure time (class and shape
            config; parameter names and shapes are checked when applying). If the base's component
            is not the one the edit was trained from (its recorded fingerprint), the edit still
            replaces the tensors it holds and the rest (e.g. token embeddings) stays the base's own;
            a warning says so. Off by default: the fingerprint check protects the ordinary path.
    """
    from erasure.edit import Edit, fingerprint
    from erasure.one_step import one_step_pipeline

    run = Path(run_dir).expanduser()
    # A broken run folder, or a missing or replaced earlier run of its chain, fails in one line
    # before any weight loads.
    links = chain_links(run)
    manifest = links[-1][1]
    plugged = False
    if base is None:
        base, start = _chain_base(run, links, device=device, dtype=dtype, attention=attention)
        if start == len(links):  # the run's own full export: the erased pipeline itself
            return _marked(one_step_pipeline(base, manifest.get("extra")), run, manifest)
        _check_base(run, links[start][1], fingerprint(base))
    else:
        actual = fingerprint(base)
        start = _first_to_apply(links, actual)
        if start is None and allow_other_base and len(links) == 1:
            _check_pluggable(run, Edit.load(run), base)
            start, plugged = 0, True
        elif start is None:
            _check_base(run, links[0][1] if len(links) > 1 else manifest, actual)
    for i in range(start, len(links)):
        path, link = links[i]
        if i > start:  # the earlier run must have produced exactly the model this one was erased from
            _check_link(run, links[i - 1][0], path, link, fingerprint(base))
        edit = Edit.load(path)
        edit.apply(base)
        logger.info("applied %s edit (%d tensors, %d pruning masks) from %s", edit.method, len(edit.tensors),
                    len(edit.zeroed), path)
    # A run that made a one-step generator (SFD) samples through it, not through the original sampler.
    erased = one_step_pipeline(base, manifest.get("extra"))
    return erased if plugged else _marked(erased, run, manifest)


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


# ----------------------------------------------------------------------------- chains of runs
#: The manifest key of a run started from an erased run (``erasure.edit.Edit.chain``).
CHAIN = "chain"
#: What every earlier run's record in a chain holds, and its type.
CHAIN_RECORD_FIELDS = (("path", str), ("method", str), ("kind", str), ("targets", list), ("fingerprint", str))


def is_run_folder(model) -> bool:
    """Whether a ``--model`` value names a run folder (a manifest or checkpoints and no
    ``model_index.json``) rather than a model source. The CLI and the app ask before loading, so
    ``erasure.pipelines.load_pipeline`` knows nothing of runs."""
    from erasure.edit import CHECKPOINT_DIR, MANIFEST

    if not isinstance(model, (str, os.PathLike)):
        return False
    path = Path(model).expanduser()
    return (path.is_dir() and not (path / "model_index.json").exists()
            and ((path / MANIFEST).exists() or (path / CHECKPOINT_DIR).exists()))


def base_run(model, model_config=None) -> tuple[Path | None, str, str | None]:
    """For a ``--model`` that is a run folder: (the run, the source and config of the model its chain
    started from), the run's whole chain checked and refused in one line where it cannot be
    continued, without loading a weight; for a model source: ``(None, model, model_config)``."""
    if not is_run_folder(model):
        return None, model, model_config
    if model_config is not None:
        raise ErasureInputError(f"--model-config: not with a run folder as --model ({model}): the run records its base's configs")
    path, manifest = chain_links(model)[-1]
    check_chain_start(path, manifest)
    first = origin(manifest)
    return path, first.get("source") or str(path), first.get("config")


def origin(manifest: dict) -> dict:
    """The model a run's chain started from, as ``manifest["base"]`` describes a base (a run made on
    a model: its own base)."""
    return (manifest.get(CHAIN) or {}).get("origin") or manifest["base"]


def erased_concepts(manifest: dict, run=None) -> list[dict]:
    """What each run of the chain that ends with ``manifest`` erased, first to last (the run itself
    last): ``{"run", "method", "kind", "targets"}``. A run made on a model: itself only."""
    records = _chain_records(Path("run" if run is None else run), manifest)  # a malformed chain: one line
    earlier = [{"run": r["path"], "method": r["method"], "kind": r["kind"], "targets": list(r["targets"])}
               for r in records]
    own = {"run": None if run is None else str(run), "method": manifest["method"],
           "kind": manifest["request"]["kind"], "targets": list(manifest["request"]["targets"])}
    return earlier + [own]


def check_chain_start(run, manifest: dict) -> None:
    """Refuse to start a new erasure from ``run`` when it cannot be continued: an SFD run's UNet is a
    one-step generator, not a noise predictor, and every method (SFD's own teacher included) trains
    from a noise predictor."""
    from erasure.one_step import SAMPLER

    if (manifest.get("extra") or {}).get("sampler") == SAMPLER:
        raise ErasureInputError(
            f"{run}: an SFD run's UNet is a one-step generator, not the noise predictor any method (SFD's "
            "teacher included) erases from; erase from its base with every target in one request, or run SFD "
            f"on its base with --set generator_init={run}")


def chain_links(run_dir: str | os.PathLike) -> list[tuple[Path, dict]]:
    """Every run of the chain that ends with ``run_dir``, first to last, as (folder, manifest): each
    checked like ``check_run`` and found where the last run recorded it (beside it, by the relative
    path, or at the absolute one) with the method and targets recorded, without loading a weight.
    A run made on a model is a chain of one."""
    run = Path(run_dir).expanduser()
    manifest = check_run(run)
    links = [(_predecessor(run, record), record) for record in _chain_records(run, manifest)]
    out = []
    for path, record in links:
        found = check_run(path)
        if found["method"] != record["method"] or found["request"]["targets"] != record["targets"]:
            raise ErasureInputError(
                f"{run}: it continues the run {path} ({record['method']}: {', '.join(record['targets'])}), but that "
                f"folder now holds another ({found['method']}: {', '.join(map(str, found['request']['targets']))})")
        out.append((path, found))
    return out + [(run, manifest)]


def chain_record(pipe, base: dict, out: str | os.PathLike | None = None) -> dict | None:
    """The chain a run started from ``pipe`` records (``Edit.chain``), or None when ``pipe`` is not an
    erased run's pipeline (``load_erased``, or a pipeline ``erasure.erase`` left holding its run).
    ``base``: the new run's base description (its fingerprint is what the earlier run produced);
    ``out``: the new run's folder, from which the relative paths of the earlier runs are recorded."""
    previous = getattr(pipe, "_erasure_run", None)
    if not previous:
        return None
    path, manifest = Path(previous["path"]), previous["manifest"]
    check_chain_start(path, manifest)
    chain = manifest.get(CHAIN) or {}
    own = {"path": str(path), "method": manifest["method"], "kind": manifest["request"]["kind"],
           "targets": list(manifest["request"]["targets"]), "fingerprint": base["fingerprint"]}
    runs = [{k: r[k] for k, _ in CHAIN_RECORD_FIELDS} for r in chain.get("runs", [])] + [own]
    if out is not None:  # a chain moved as a whole (runs side by side) is still found
        here = Path(out).expanduser().resolve()
        for r in runs:
            r["relative"] = os.path.relpath(r["path"], here)
    return {"origin": dict(origin(manifest)), "runs": runs}


def chain_edit(run_dir: str | os.PathLike):
    """One ``Edit`` equal to applying every run of the chain that ends with ``run_dir`` in order (a run
    made on a model: its own edit), for callers that swap an edit into a loaded original and out again
    (the app). A later run's tensor replaces an earlier one's and drops the earlier pruning masks of
    that tensor (``apply`` writes tensors before masks); masks of tensors no later run replaced are
    united. The last run's record (method, request, extra) is kept."""
    import torch

    from erasure.edit import Edit

    links = chain_links(run_dir)
    merged = Edit.load(links[-1][0])
    tensors: dict = {}
    zeroed: dict = {}
    for path, _ in links:
        edit = merged if path == links[-1][0] else Edit.load(path)
        for key, value in edit.tensors.items():
            tensors[key] = value
            zeroed.pop(key, None)
        for key, idx in edit.zeroed.items():
            zeroed[key] = torch.unique(torch.cat([zeroed[key], idx])) if key in zeroed else idx
    merged.tensors, merged.zeroed = tensors, zeroed
    return merged


def mark_run(pipe, run: str | os.PathLike | None) -> None:
    """Record on ``pipe`` that it now holds run ``run``'s erased pipeline (None: a pipeline changed
    outside any run), so that a later ``erase`` on it continues that run's chain."""
    from erasure.edit import read_manifest

    if run is None:
        pipe._erasure_run = None
    else:
        _marked(pipe, Path(run), read_manifest(run))


def _marked(pipe, run: Path, manifest: dict):
    pipe._erasure_run = {"path": str(run.expanduser().resolve()), "manifest": manifest}
    return pipe


def _chain_records(run: Path, manifest: dict) -> list[dict]:
    from erasure.edit import MANIFEST

    chain = manifest.get(CHAIN)
    if chain is None:
        return []
    records = chain.get("runs") if isinstance(chain, dict) else None
    if (not isinstance(chain.get("origin") if isinstance(chain, dict) else None, dict) or not isinstance(records, list)
            or not all(isinstance(r, dict) and all(isinstance(r.get(k), t) for k, t in CHAIN_RECORD_FIELDS)
                       for r in records)):
        raise ErasureInputError(f"{run}: {MANIFEST}: field 'chain' malformed")
    return records


def _predecessor(run: Path, record: dict) -> Path:
    """Where an earlier run of the chain is: beside ``run`` by its relative path, else at its absolute one."""
    candidates = ([run / record["relative"]] if isinstance(record.get("relative"), str) else []) + [Path(record["path"])]
    for path in candidates:
        if path.is_dir():
            return Path(os.path.normpath(path))
    raise ErasureInputError(
        f"{run}: it continues the run {record['path']} ({record['method']}: {', '.join(map(str, record['targets']))}), "
        "which is missing; a chain loads from its first run on, so restore that run folder")


def _chain_base(run: Path, links: list[tuple[Path, dict]], **load) -> tuple[object, int]:
    """The pipeline a chain is applied to and the index of its first run to apply: the original model
    when its source is here, else the latest run of the chain with a full export (past it)."""
    from erasure.edit import FULL_EXPORT
    from erasure.pipelines.loading import load_pipeline, source_available

    first = links[0][1]["base"]
    source = first.get("source")
    if source is not None and source_available(source):
        return load_pipeline(source, config=first.get("config"), **load), 0
    for i in reversed(range(len(links))):
        path, manifest = links[i]
        if manifest.get("full_export") and (path / FULL_EXPORT).is_dir():
            return load_pipeline(path / FULL_EXPORT, **load), i + 1
    raise ErasureInputError(
        f"{run}: the base model {source or '(not recorded)'} is not available; pass base=<pipeline> "
        "(erasure.pipelines.load_pipeline) or re-run with a full export")


def _first_to_apply(links: list[tuple[Path, dict]], actual: str) -> int | None:
    """The first run of the chain to apply to a base with fingerprint ``actual``: the latest whose base
    it is (a chain's original, or the pipeline an earlier run produced); None when none's is."""
    for i in reversed(range(len(links))):
        expected = links[i][1]["base"].get("fingerprint")
        if expected is None or expected == actual:
            return i
    return None


def _check_base(run: Path, manifest: dict, actual: str) -> None:
    expected = manifest["base"].get("fingerprint")
    if expected is not None and actual != expected:
        raise ErasureInputError(
            f"{run}: the base pipeline's weights differ from the model this edit was made for "
            f"(fingerprint {actual[:19]}... != {expected[:19]}...); load {manifest['base'].get('source') or 'that model'}"
            f" (in float32 or bfloat16)")


def _check_link(run: Path, earlier: Path, path: Path, manifest: dict, actual: str) -> None:
    expected = manifest["base"].get("fingerprint")
    if expected is not None and actual != expected:
        raise ErasureInputError(
            f"{run}: the chain's run {earlier} does not produce the model {path} was erased from (fingerprint "
            f"{actual[:19]}... != {expected[:19]}...); that run folder was changed or replaced")
