"""``erasure.erase``: the one entry point the CLI, the app and users share.

    from erasure import ErasureRequest, erase
    edit = erase(pipe, ErasureRequest(["dotted"], kind="style"), method="esd", out="runs/dotted", steps=200)

The pipeline is modified in place (it is the erased pipeline afterwards) and the ``Edit`` is
returned; with ``out=`` the run folder is written (checkpoints while training, then
``edit.safetensors`` and ``manifest.json``; see ``erasure.edit``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from erasure.atomic import atomic_path
from erasure.edit import CHECKPOINT_DIR, MANIFEST, Edit, base_description
from erasure.errors import ErasureInputError
from erasure.methods import MethodConfig, get_method, read_config_file
from erasure.request import ErasureRequest

logger = logging.getLogger(__name__)

RUN_STATE = "run.json"


def as_request(request, kind: str | None = None) -> ErasureRequest:
    """An ``ErasureRequest`` from a request, a concept text, a list of texts or a dict."""
    if isinstance(request, ErasureRequest):
        return request
    if isinstance(request, dict):
        return ErasureRequest.from_dict(request)
    if isinstance(request, (str, list, tuple)):
        return ErasureRequest(targets=list(request) if not isinstance(request, str) else [request], kind=kind or "custom")
    raise ErasureInputError(f"request: expected an ErasureRequest, a concept text or a list of texts, got {type(request).__name__}")


def method_config(method: str, config=None, **overrides) -> MethodConfig:
    """The method's config from a config object, a dict or a JSON/YAML file, with overrides on top."""
    cls = get_method(method)
    if config is None:
        cfg = cls.config_class()
    elif isinstance(config, MethodConfig):
        if not isinstance(config, cls.config_class):
            raise ErasureInputError(f"config is a {type(config).__name__}, method {method!r} takes {cls.config_class.__name__}")
        cfg = config
    elif isinstance(config, dict):
        cfg = cls.config_class.from_dict(config)
    elif isinstance(config, (str, os.PathLike)):
        cfg = cls.config_class.from_dict(read_config_file(config))
    else:
        raise ErasureInputError(f"config: expected a {cls.config_class.__name__}, a dict or a file path")
    return cfg.with_overrides(**overrides) if overrides else cfg


def check_output(out: str | os.PathLike, resume: bool = False) -> Path:
    """Refuse an output folder that cannot be used, before any work starts (nothing is created)."""
    run = Path(out).expanduser()
    if run.exists():
        if not run.is_dir():
            raise ErasureInputError(f"--out {run}: exists and is not a folder")
        if (run / MANIFEST).exists():
            raise ErasureInputError(f"--out {run}: holds a finished run; choose another folder or delete it")
        entries = [p.name for p in run.iterdir()]
        if CHECKPOINT_DIR in entries and not resume:
            raise ErasureInputError(f"--out {run}: holds an unfinished run; pass --resume to continue it, or choose another folder")
        if entries and CHECKPOINT_DIR not in entries and not all(e.startswith(".") for e in entries):
            raise ErasureInputError(f"--out {run}: exists and is not empty; choose a new folder")
    parent = run if run.exists() else run.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ErasureInputError(f"--out {run}: cannot write there ({parent} is not a writable folder)")
    return run


def _start_run(run: Path, identity: dict, resume: bool) -> None:
    state_path = run / CHECKPOINT_DIR / RUN_STATE
    if resume and state_path.is_file():
        saved = json.loads(state_path.read_text(encoding="utf-8"))
        for key in identity:
            if saved.get(key) != identity[key]:
                raise ErasureInputError(
                    f"--resume {run}: the unfinished run has a different {key}; resume with the same model, "
                    "method, config and request, or start a new run"
                )
        return
    if resume:
        logger.info("nothing to resume in %s; starting a new run", run)
    try:
        (run / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ErasureInputError(f"--out {run}: cannot create it ({exc.strerror})") from None
    with atomic_path(state_path) as tmp:
        tmp.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")


def _remove_empty_run(run: Path) -> None:
    import shutil

    shutil.rmtree(run / CHECKPOINT_DIR, ignore_errors=True)
    try:
        run.rmdir()  # only if nothing else is in it
    except OSError:
        pass


def erase(
    pipe,
    request,
    method: str = "esd",
    *,
    config=None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    export_full: bool = False,
    progress=None,
    source: str | None = None,
    **overrides,
) -> Edit:
    """Erase ``request`` from ``pipe`` (in place) with ``method``; returns the ``Edit``.

    Args:
        pipe: a diffusers pipeline (``erasure.pipelines.load_pipeline``).
        request: an ``ErasureRequest``, a concept text or a list of concept texts (kind "custom").
        method: a registered method name (``erasure.methods.available_methods()``).
        config: the method's config (object, dict, or a .yaml/.json file); ``overrides`` (keyword
            arguments named like config fields, e.g. ``steps=200``) are applied on top.
        out: run folder to write (checkpoints during training, then the edit and its manifest).
        resume: continue the unfinished run in ``out`` from its last checkpoint.
        export_full: also save the whole erased pipeline under ``out/full``.
        progress: ``progress(stage, done, total, metrics)`` callback.
        source: the base model's source to record (default: what ``load_pipeline`` recorded).
    """
    req = as_request(request)
    cfg = method_config(method, config, **overrides)
    cls = get_method(method)
    run = check_output(out, resume) if out is not None else None
    if resume and run is None:
        raise ErasureInputError("resume needs an output folder (out=...)")
    req.resolve(pipe)  # defaults and names checked now, before the run folder is created
    base = base_description(pipe, source=source)
    fresh = False
    if run is not None:
        identity = {"method": method, "config": cfg.to_dict(), "request": req.to_dict(),
                    "base_fingerprint": base["fingerprint"]}
        fresh = not (run / CHECKPOINT_DIR / RUN_STATE).is_file()
        _start_run(run, identity, resume)
    try:
        edit = cls(cfg)(pipe, req, run_dir=run, resume=resume, progress=progress)
    except ErasureInputError:
        # Bad input found by the method before it saved anything: leave no unfinished run behind.
        if run is not None and fresh and not (run / CHECKPOINT_DIR / "checkpoint.pt").exists():
            _remove_empty_run(run)
        raise
    edit.base = base
    from erasure.pipelines.attention import active_attention

    edit.extra.setdefault("attention", active_attention(pipe))
    if run is not None:
        edit.save(run, pipe=pipe, export_full=export_full)
    return edit
