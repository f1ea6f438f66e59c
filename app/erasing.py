"""The app's erase tab: a new erasure on the embedded model, written as a run into the runs folder.

The same path as ``erasure erase --model canvas-mini`` (or ``--model RUN``: the base may be a finished
run of the runs folder made on the embedded model, whose chain the new run continues): an
``ErasureRequest``, the method's config
(a preset from ``erasure.configs`` plus overrides), ``erasure.erase`` writing the run
folder. What the browser sends is bounded: the run name is one plain folder name inside the runs
folder, the settings are a few KEY=VALUE lines, and the sizes that set the cost are capped.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from erasure.api import check_output, method_config
from erasure.config import DEFAULTS as METHOD_DEFAULTS
from erasure.config import MethodConfig, parse_assignments
from erasure.configs import PRESETS_DIR
from erasure.errors import ErasureInputError
from erasure.methods import available_methods
from erasure.pipelines.canvas.model import EMBEDDED_MODEL_NAME
from erasure.request import ErasureRequest

from .compare import text, whole_number
from .runs import RUN_NAME, quoted

logger = logging.getLogger(__name__)

DEFAULTS = "method defaults"
KINDS = ("style", "object", "memorized", "custom")
MAX_SETTINGS = 16
MAX_SETTINGS_CHARS = 2000
#: Config values the browser may not raise beyond these (they set the time and memory a run takes):
#: sampling grids and batches, and the sample counts DoCo (anchor images), AdvUnlearn (attack,
#: retain set, sample pool) and pruning (seeds per prompt) multiply their work by.
CAPS = {"ddim_steps": 1000, "batch_size": 64, "precompute_batch": 256, "resolution": 1024,
        "anchor_images": 5000, "anchor_steps": 1000, "anchor_batch": 256, "attack_steps": 1000,
        "attack_batch": 64, "attack_tokens": 64, "retain_batch": 64, "sample_pool": 10000, "seeds": 64}

#: ``progress(stage, done, total, metrics)``, as ``erasure.erase`` reports it.
StageProgress = Callable[[str, int, int, dict], None]


def concept_choices(kind: str) -> list[str]:
    """The embedded model's concepts of ``kind`` (its styles, objects or memorized captions)."""
    from erasure.pipelines.canvas.render import MEMORIZATION_TARGETS, OBJECTS, STYLES

    return {"style": list(STYLES), "object": list(OBJECTS),
            "memorized": [m.caption for m in MEMORIZATION_TARGETS]}.get(kind, [])


def presets(method: str) -> dict[str, Path | None]:
    """Preset label -> config file for the embedded model (``configs/<method>/canvas-mini-*.yaml``)."""
    found = sorted((PRESETS_DIR / method).glob(f"{EMBEDDED_MODEL_NAME}-*.yaml"))
    return {DEFAULTS: None, **{p.stem: p for p in found}}


def default_preset(method: str, kind: str) -> str:
    """The preset made for ``kind`` if there is one ("canvas-mini-style"), else the method's defaults."""
    name = f"{EMBEDDED_MODEL_NAME}-{kind}"
    return name if name in presets(method) else DEFAULTS


def preset_steps(method: str, preset: str) -> int | None:
    """The training steps preset ``preset`` sets (the form's starting value); ``None`` if it has none."""
    files = presets(method)
    if preset not in files:
        return None
    return getattr(method_config(method, files[preset]), "steps", None)


def parse_settings(value) -> dict:
    """KEY=VALUE lines (values read as YAML, as ``erasure erase --set``) into config overrides."""
    settings = text(value, "settings")
    if len(settings) > MAX_SETTINGS_CHARS:
        raise ErasureInputError(f"settings: more than {MAX_SETTINGS_CHARS} characters")
    lines = [line.strip() for line in settings.splitlines() if line.strip() and not line.strip().startswith("#")]
    if len(lines) > MAX_SETTINGS:
        raise ErasureInputError(f"settings: more than {MAX_SETTINGS} lines")
    overrides = parse_assignments(lines, "settings line")
    keys = [line.partition("=")[0].strip() for line in lines]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:  # the last would win unseen
        raise ErasureInputError(f"settings: {', '.join(repeated)} given more than once")
    for key, v in overrides.items():
        # The config would ignore an empty value and keep its default: say so instead.
        if v is None:
            raise ErasureInputError(f"settings: {key}= has no value")
        # YAML reads .inf, .nan and 1e999 as floats that pass "positive" checks and train NaNs.
        if isinstance(v, float) and not math.isfinite(v):
            raise ErasureInputError(f"settings: {key} must be a finite number, got {v}")
    return overrides


def new_run_name(runs_dir: Path, concept: str, method: str) -> str:
    """A free run name such as "dotted-esd", "dotted-esd-2"."""
    slug = re.sub(r"[^a-z0-9]+", "-", concept.lower()).strip("-")[:40] or "run"
    stem = f"{slug}-{method}"
    name, n = stem, 1
    while (runs_dir / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name


@dataclass(frozen=True)
class EraseJob:
    """A validated erasure: what to run and where its run folder goes."""

    method: str
    request: ErasureRequest
    config: object  # the method's MethodConfig
    out: Path
    #: the preset file the config starts from (None: the method's defaults) and the form's values on top;
    #: ``erase`` gets these, so the run's manifest names the preset (``config_source``)
    preset: Path | None = None
    overrides: dict | None = None
    #: a run of the runs folder to start from (sequential erasure), or None for the embedded model
    base_run: Path | None = None


def base_choices(runs_dir: Path) -> list[str]:
    """What the erase tab can start from: the embedded model, then every finished run of the runs
    folder whose chain started from it and that can be continued (not an SFD one-step generator)."""
    from erasure.erased import origin
    from erasure.one_step import SAMPLER

    from .runs import scan_runs

    return [EMBEDDED_MODEL_NAME] + [
        e.name for e in scan_runs(runs_dir)
        if e.ok and origin(e.manifest).get("source") == EMBEDDED_MODEL_NAME
        and (e.manifest.get("extra") or {}).get("sampler") != SAMPLER]


def check_base(runs_dir: Path, base) -> Path | None:
    """The run folder the erasure starts from (None: the embedded model itself): only a finished run
    inside the runs folder, made on the embedded model, whose chain is whole and can be continued."""
    from erasure.erased import chain_links, check_chain_start, origin

    from .runs import inspect_run, relative_message, resolve_run

    if base in (None, "", EMBEDDED_MODEL_NAME):
        return None
    if not isinstance(base, str):
        raise ErasureInputError(f"base {quoted(base)}: expected {EMBEDDED_MODEL_NAME} or a run name")
    path = resolve_run(runs_dir, base)  # only a run inside the runs folder, by name
    entry = inspect_run(runs_dir, base)
    if not entry.ok:
        raise ErasureInputError(f"base run {base!r} cannot be used ({entry.status}): {entry.problem}")
    if origin(entry.manifest).get("source") != EMBEDDED_MODEL_NAME:
        raise ErasureInputError(f"base run {base!r} was not made on {EMBEDDED_MODEL_NAME}; this tab erases from it only")
    try:
        chain_links(path)
        check_chain_start(base, entry.manifest)
    except ErasureInputError as exc:
        raise ErasureInputError(relative_message(str(exc), runs_dir)) from None
    return path


def check_job(runs_dir: Path, *, method, kind, concept, preset, steps, name, settings, max_steps: int,
              base=EMBEDDED_MODEL_NAME) -> EraseJob:
    """An ``EraseJob`` from the form's values; ``ErasureInputError`` naming the first bad one.

    The values arrive as the client sent them (the app turns Gradio's preprocessing off): the
    choices are checked against the app's lists and the types here.
    """
    method = _choice(method, available_methods(), "method")
    kind = _choice(kind, KINDS, "kind")
    concept = text(concept, "concept")
    if not concept or len(concept) > 200:
        raise ErasureInputError("enter the concept to erase (at most 200 characters)")
    request = ErasureRequest(targets=[concept], kind=kind)
    request.resolve(EMBEDDED_MODEL_NAME)  # an unknown canvas-mini style or object fails here, in a second
    base_run = check_base(runs_dir, base)
    files = presets(method)
    preset = _choice(preset, list(files), "preset")
    overrides = parse_settings(settings)
    config = _configured(method, files[preset], overrides, steps, max_steps)
    name = text(name, "run name") or new_run_name(runs_dir, concept, method)
    if not RUN_NAME.fullmatch(name):
        raise ErasureInputError(f"run name {quoted(name)}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    out = runs_dir / name
    if out.exists():
        raise ErasureInputError(f"a run named {name!r} already exists; choose another name")
    check_output(out)
    return EraseJob(method, request, config, out, files[preset], overrides, base_run)


def _choice(value, options, what: str) -> str:
    if not isinstance(value, str) or value not in options:
        raise ErasureInputError(f"unknown {what} {quoted(value)}; expected one of {', '.join(options)}")
    return value


def _configured(method: str, preset: Path | None, overrides: dict, steps, max_steps: int) -> MethodConfig:
    """The preset's config with the settings and the steps field on top, checked against the caps."""
    config = method_config(method, preset)
    # Unknown keys are refused here rather than passed on as keyword arguments, where "method" or
    # "self" would collide with method_config's and with_overrides' own parameters (a TypeError).
    known = config.to_dict()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ErasureInputError(f"settings: unknown {method} setting(s) {', '.join(unknown)}; "
                                f"expected some of {', '.join(known)}")
    if steps not in (None, ""):  # the steps field left empty: the preset's (or the settings')
        if "steps" in overrides:  # one of the two would be ignored
            raise ErasureInputError("steps: given both in the training steps field and in the settings; "
                                    "leave one of them empty")
        overrides["steps"] = whole_number(steps, "steps")
        if not 1 <= overrides["steps"] <= max_steps:
            raise ErasureInputError(f"training steps must be between 1 and {max_steps}, got {overrides['steps']}; "
                                    "run larger erasures with `erasure erase`")
    config = config.with_overrides(**overrides)
    _check_caps(config, max_steps)
    return config


def _check_caps(config, max_steps: int) -> None:
    caps = {"steps": max_steps, **CAPS}
    for key, cap in caps.items():
        value = getattr(config, key, None)
        if isinstance(value, int) and value > cap:
            raise ErasureInputError(f"{key} {value} is more than this app allows ({cap}); run larger erasures with `erasure erase`")


def run_job(job: EraseJob, progress: StageProgress | None = None, *, device: str = "auto") -> dict:
    """Run the erasure on a freshly loaded embedded model (or the erased model of the job's base run,
    whose chain the new run continues); returns the written manifest's summary."""
    from erasure.api import erase
    from erasure.erased import load_erased
    from erasure.pipelines import load_pipeline

    if job.base_run is not None:
        pipe = load_erased(job.base_run, device=device)
    else:
        pipe = load_pipeline(EMBEDDED_MODEL_NAME, device=device)
    logger.info("app: erasing %s (%s) with %s into %s", job.request.targets, job.request.kind, job.method, job.out)
    start = job.preset if job.preset is not None else METHOD_DEFAULTS
    edit = erase(pipe, job.request, job.method, config=start, out=job.out, progress=progress, **(job.overrides or {}))
    return {"run": job.out.name, "size": edit.size(), "cost": edit.cost}
