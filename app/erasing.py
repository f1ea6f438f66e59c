"""The app's erase tab: a new erasure on the embedded model, written as a run into the runs folder.

The same path as ``erasure erase --model canvas-mini``: an ``ErasureRequest``, the method's config
(a preset from ``erasure.configs`` plus overrides), ``erasure.erase`` writing the run
folder. What the browser sends is bounded: the run name is one plain folder name inside the runs
folder, the settings are a few KEY=VALUE lines, and the sizes that set the cost are capped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


from erasure.api import check_output, method_config
from erasure.config import parse_assignments
from erasure.configs import PRESETS_DIR
from erasure.errors import ErasureInputError
from erasure.methods import available_methods
from erasure.pipelines.canvas.model import EMBEDDED_MODEL_NAME
from erasure.request import ErasureRequest

from .compare import whole_number
from .runs import RUN_NAME

logger = logging.getLogger(__name__)

DEFAULTS = "method defaults"
KINDS = ("style", "object", "memorized", "custom")
MAX_SETTINGS = 16
MAX_SETTINGS_CHARS = 2000
#: Config values the browser may not raise beyond these (they set the time and memory a run takes).
CAPS = {"ddim_steps": 1000, "batch_size": 64, "precompute_batch": 256, "resolution": 1024}

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


def parse_settings(text: str) -> dict:
    """KEY=VALUE lines (values read as YAML, as ``erasure erase --set``) into config overrides."""
    text = text or ""
    if len(text) > MAX_SETTINGS_CHARS:
        raise ErasureInputError(f"settings: more than {MAX_SETTINGS_CHARS} characters")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if len(lines) > MAX_SETTINGS:
        raise ErasureInputError(f"settings: more than {MAX_SETTINGS} lines")
    return parse_assignments(lines, "settings line")


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


def check_job(runs_dir: Path, *, method: str, kind: str, concept: str, preset: str, steps, name: str,
              settings: str, max_steps: int) -> EraseJob:
    """An ``EraseJob`` from the form's values; ``ErasureInputError`` naming the first bad one."""
    if method not in available_methods():
        raise ErasureInputError(f"unknown method {method!r}; expected one of {', '.join(available_methods())}")
    if kind not in KINDS:
        raise ErasureInputError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    concept = (concept or "").strip()
    if not concept or len(concept) > 200:
        raise ErasureInputError("enter the concept to erase (at most 200 characters)")
    request = ErasureRequest(targets=[concept], kind=kind)
    request.resolve(EMBEDDED_MODEL_NAME)  # an unknown canvas-mini style or object fails here, in a second
    files = presets(method)
    if preset not in files:
        raise ErasureInputError(f"unknown preset {preset!r}; expected one of {', '.join(files)}")
    overrides = parse_settings(settings)
    if steps not in (None, ""):
        overrides["steps"] = whole_number(steps, "steps")
    config = method_config(method, files[preset], **overrides)
    _check_caps(config, max_steps)
    name = (name or "").strip() or new_run_name(runs_dir, concept, method)
    if not RUN_NAME.fullmatch(name):
        raise ErasureInputError(f"run name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    out = runs_dir / name
    if out.exists():
        raise ErasureInputError(f"a run named {name!r} already exists; choose another name")
    check_output(out)
    return EraseJob(method, request, config, out)


def _check_caps(config, max_steps: int) -> None:
    caps = {"steps": max_steps, **CAPS}
    for key, cap in caps.items():
        value = getattr(config, key, None)
        if isinstance(value, int) and value > cap:
            raise ErasureInputError(f"{key} {value} is more than this app allows ({cap}); run larger erasures with `erasure erase`")


def run_job(job: EraseJob, progress: StageProgress | None = None, *, device: str = "auto") -> dict:
    """Run the erasure on a freshly loaded embedded model; returns the written manifest's summary."""
    from erasure.api import erase
    from erasure.pipelines import load_pipeline

    pipe = load_pipeline(EMBEDDED_MODEL_NAME, device=device)
    logger.info("app: erasing %s (%s) with %s into %s", job.request.targets, job.request.kind, job.method, job.out)
    edit = erase(pipe, job.request, job.method, config=job.config, out=job.out, progress=progress)
    return {"run": job.out.name, "size": edit.size(), "cost": edit.cost}
