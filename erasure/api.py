"""``erasure.erase``: the one entry point the CLI, the app and users share.

    from erasure import ErasureRequest, erase
    edit = erase(pipe, ErasureRequest(["dotted"], kind="style"), method="esd", out="runs/dotted", steps=200)

Sequential erasure: ``erase(load_erased("runs/dotted"), ErasureRequest(["striped"], kind="style"),
out="runs/striped")`` continues the chain of ``runs/dotted`` (the new manifest's ``chain``; see
``erasure.erased``); so does a second ``erase`` of the same pipeline after one with ``out=``.

The pipeline is modified in place (it is the erased pipeline afterwards) and the ``Edit`` is
returned; with ``out=`` the run folder is written (checkpoints while training, then
``edit.safetensors`` and ``manifest.json``; see ``erasure.edit``).

Under ``accelerate launch`` with several processes every process calls ``erase`` with the same
arguments (the CLI does); the method trains data-parallel, only the main process writes the run
folder and reports progress, and every process returns the same ``Edit`` once the folder is
complete. The run folder must be on a filesystem every process sees.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from erasure.atomic import atomic_path, check_output_folder
from erasure.config import DEFAULTS
from erasure.edit import CHECKPOINT_DIR, MANIFEST, Edit, base_description
from erasure.erased import chain_record, mark_run
from erasure.errors import ErasureInputError
from erasure.methods import MethodConfig, get_method, read_config_file
from erasure.request import ErasureRequest
from erasure.training import StageClock

logger = logging.getLogger(__name__)

RUN_STATE = "run.json"
#: Values of run-identity keys added after runs were first recorded (older runs had one process).
IDENTITY_DEFAULTS = {"num_processes": 1}


def as_request(request, kind: str | None = None) -> ErasureRequest:
    """An ``ErasureRequest`` from a request, a concept text, a list of texts or a dict."""
    if isinstance(request, ErasureRequest):
        return request
    if isinstance(request, dict):
        return ErasureRequest.from_dict(request)
    if isinstance(request, (str, list, tuple)):
        return ErasureRequest(targets=list(request) if not isinstance(request, str) else [request], kind=kind or "custom")
    raise ErasureInputError(f"request: expected an ErasureRequest, a concept text or a list of texts, got {type(request).__name__}")


def method_config(method: str, config=None, /, **overrides) -> MethodConfig:
    """The method's config from a config object, a dict or a JSON/YAML file, with overrides on top.

    (Positional-only parameters: an override named ``method`` or ``config`` is refused as an unknown
    config key, not mistaken for an argument.)"""
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


def choose_config(method: str, config, model, kind: str, *, model_config: str | os.PathLike | None = None,
                  overrides: dict | None = None) -> tuple[MethodConfig, str]:
    """The config an erasure runs with, and where it came from (as the manifest records it).

    ``config=None`` picks the preset shipped for the method, the model and the request's kind
    (``configs/esd/canvas-mini-style.yaml``, ``configs/esd/sd15-style.yaml``) when there is one, since
    the paper's defaults are tuned for Stable Diffusion 1.4 and do nothing on canvas-mini; without one,
    the method's defaults. ``model``: a loaded pipeline or a ``--model`` source (``model_config``: the
    config folder of a single-file checkpoint). Returns ``(config, source)``, source one of
    "preset <method>/<name>", "file <path>", "defaults" or "given" (a config object or dict).
    ``overrides``: config values applied on top (unknown keys refused in one line).
    """
    overrides = overrides or {}
    from erasure.configs import PRESETS_DIR, shipped_preset

    if config is None:
        from erasure.families import family_of, family_of_source

        is_source = isinstance(model, (str, os.PathLike))
        family = family_of_source(model) if is_source else family_of(model)
        config = shipped_preset(method, family.preset_prefix(_unet_config(model, model_config)), kind)
        if config is None:
            return method_config(method, None, **overrides), DEFAULTS
    if isinstance(config, str) and config == DEFAULTS:
        return method_config(method, None, **overrides), DEFAULTS
    if isinstance(config, (str, os.PathLike)):
        path = Path(config).expanduser()
        inside = path.resolve().parent.parent == PRESETS_DIR
        source = f"preset {path.parent.name}/{path.stem}" if inside else f"file {path}"
        return method_config(method, path, **overrides), source
    return method_config(method, config, **overrides), "given"


def _unet_config(model, model_config: str | os.PathLike | None) -> dict | None:
    """The UNet config of a pipeline or of a model source on disk (None where there is none to read)."""
    unet = getattr(model, "unet", None)
    if unet is not None:
        return dict(unet.config)
    if not isinstance(model, (str, os.PathLike)):
        return None
    folders = [Path(model), *([Path(model_config)] if model_config else [])]  # a single file: its config folder
    for path in (folder.expanduser() / "unet" / "config.json" for folder in folders):
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
    return None


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
    check_output_folder(run, "--out")  # creatable and writable, tested by the filesystem (os.access is fooled by /proc)
    return run


def _check_resume(run: Path, identity: dict, resume: bool) -> bool:
    """Whether ``run`` holds an unfinished run to continue; refuses one made differently (reads only)."""
    state_path = run / CHECKPOINT_DIR / RUN_STATE
    if not (resume and state_path.is_file()):
        if resume:
            logger.info("nothing to resume in %s; starting a new run", run)
        return False
    saved = json.loads(state_path.read_text(encoding="utf-8"))
    for key in identity:
        if saved.get(key, IDENTITY_DEFAULTS.get(key)) != identity[key]:
            raise ErasureInputError(
                f"--resume {run}: the unfinished run has a different {key}; resume with the same model, "
                "method, config, request and number of processes, or start a new run"
            )
    return True


def _start_run(run: Path, identity: dict) -> None:
    state_path = run / CHECKPOINT_DIR / RUN_STATE
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
        config: the method's config (object, dict, or a .yaml/.json file); ``None``: the preset shipped
            for this method, model and kind if there is one, else the method's defaults; ``"defaults"``:
            the method's defaults (``choose_config``). ``overrides`` (keyword arguments named like
            config fields, e.g. ``steps=200``) are applied on top.
        out: run folder to write (checkpoints during training, then the edit and its manifest).
        resume: continue the unfinished run in ``out`` from its last checkpoint.
        export_full: also save the whole erased pipeline under ``out/full``.
        progress: ``progress(stage, done, total, metrics)`` callback.
        source: the base model's source to record (default: what ``load_pipeline`` recorded).
    """
    req = as_request(request)
    cfg, config_source = choose_config(method, config, pipe, req.kind, overrides=overrides)
    cls = get_method(method)
    run = check_output(out, resume) if out is not None else None
    if resume and run is None:
        raise ErasureInputError("resume needs an output folder (out=...)")
    req.resolve(pipe)  # defaults and names checked now, before the run folder is created
    state = _join_processes(pipe)
    main = state.is_main_process
    base = base_description(pipe, source=source)
    # A pipeline holding an erased run (load_erased, or an earlier erase with out=) continues its
    # chain: this run stores only its own edit, on top of that run's pipeline.
    chain = chain_record(pipe, base, run)
    fresh = False
    if run is not None:
        identity = {"method": method, "config": cfg.to_dict(), "request": req.to_dict(),
                    "base_fingerprint": base["fingerprint"], "num_processes": state.num_processes}
        fresh = not _check_resume(run, identity, resume)
        state.wait_for_everyone()  # every process has checked OUT before the main one writes there
        if fresh and main:
            _start_run(run, identity)
        state.wait_for_everyone()
    clock = StageClock(progress if main else None)
    try:
        edit = cls(cfg)(pipe, req, run_dir=run, resume=resume, progress=clock)
    except ErasureInputError:
        # Bad input found by the method before it saved anything: leave no unfinished run behind.
        if run is not None and fresh and main and not (run / CHECKPOINT_DIR / "checkpoint.pt").exists():
            _remove_empty_run(run)
        raise
    edit.base = base
    edit.chain = chain
    edit.config_source = config_source
    edit.cost.setdefault("num_processes", state.num_processes)
    edit.cost["stages"] = clock.summary()
    from erasure.pipelines.attention import active_attention

    edit.extra.setdefault("attention", active_attention(pipe))
    if run is not None:
        if main:
            from erasure.model_card import write_card

            edit.save(run, pipe=pipe, export_full=export_full)
            write_card(run)
        state.wait_for_everyone()  # no process returns before the run folder is complete
    mark_run(pipe, run)  # the pipeline now holds this run: erasing it again continues the chain
    return edit


def _join_processes(pipe):
    """accelerate's process state for this run; under several GPUs, the pipeline on this process's GPU."""
    from erasure.training import process_state

    state = process_state(cpu=pipe.device.type == "cpu")
    if state.num_processes > 1 and state.device.type == pipe.device.type and pipe.device != state.device:
        # load_pipeline already puts each process on its own GPU; a pipeline built or moved by the
        # caller (e.g. .to("cuda"), GPU 0 in every process) is moved here.
        logger.info("process %d: moving the pipeline to %s", state.process_index, state.device)
        pipe.to(state.device)
    return state
