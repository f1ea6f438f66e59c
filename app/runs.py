"""The runs folder as the app sees it.

The app shows the run folders inside one configured folder (``erasure app --runs DIR``): its
direct children, and the children of a child that is not itself a run (``erasure quickstart``
writes ``OUT/run``; ``erasure evaluate --out`` folders sit beside runs). A name from the browser
becomes a path only through ``resolve_run``: one or two plain folder names joined by "/", no
``..``, no hidden names, and no symbolic link that leads outside the runs folder.

Every folder is inspected without loading weights: a malformed manifest, a missing or truncated
edit file, an edit file named outside its run folder, or an unreadable ``metrics.json`` marks that
one run and the app goes on.

Folders that ``erasure attack --out`` wrote (``attack.json``) are listed as attacks, not runs; their
text prompts are offered in the compare tab (``adversarial_prompts``).

Metrics come from ``metrics.json`` files: a run's own (any JSON object; numeric values, nested
objects flattened to dotted names, become columns), and the reports ``erasure evaluate`` and
``erasure quickstart`` write (``{"runs": [{"run": PATH, "before": {...}, "after": {...}}]}``) in
the runs folder or in any folder directly inside it, matched to runs by path.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from erasure.edit import CHECKPOINT_DIR, MANIFEST
from erasure.erased import check_run
from erasure.errors import ErasureInputError

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
#: Names the app gives new runs.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Folder levels below the runs folder where runs are looked for.
MAX_DEPTH = 2
#: Bounds on what the app reads, so a huge or hostile file cannot stall it (a run's own files:
#: ``erasure.erased.check_run``).
MAX_METRICS_BYTES = 4 * 2**20
MAX_RUNS_LISTED = 1000
MAX_METRIC_DEPTH = 3

OK, BROKEN, UNFINISHED, REPORT, ATTACK = "ok", "broken", "unfinished", "evaluation", "attack"
#: What ``erasure attack --out`` writes: its findings, whose text prompts the compare tab offers.
ATTACK_FILE = "attack.json"
MAX_ATTACK_BYTES = 4 * 2**20


@dataclass(frozen=True)
class RunEntry:
    """One folder of the runs folder: its status and, for a finished run, its manifest and metrics."""

    name: str
    path: Path
    status: str
    problem: str = ""
    manifest: dict = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def concept(self) -> str:
        return ", ".join(map(str, self.manifest.get("request", {}).get("targets") or []))

    @property
    def base_source(self) -> str:
        return str(self.manifest.get("base", {}).get("source") or "")

    def label(self) -> str:
        """What the run is called in the app's menus: "dotted-esd: esd, dotted (style)"."""
        kind = self.manifest.get("request", {}).get("kind", "")
        return f"{self.name}: {self.manifest.get('method', '?')}, {self.concept} ({kind})"


def scan_runs(runs_dir: Path) -> list[RunEntry]:
    """Every run-like folder in ``runs_dir`` (see the module doc), sorted by name, with its status and metrics."""
    if not runs_dir.is_dir():
        return []
    entries: list[RunEntry] = []
    for name in _candidate_names(runs_dir):
        if len(entries) == MAX_RUNS_LISTED:
            logger.warning("%s holds more than %d folders; listing the first %d", runs_dir, MAX_RUNS_LISTED, MAX_RUNS_LISTED)
            break
        entries.append(inspect_run(runs_dir, name))
    reports = _report_metrics(runs_dir, entries)
    return [replace(e, metrics={**e.metrics, **reports.get(e.name, {})}) if e.ok else e for e in entries]


def _visible_dirs(folder: Path) -> list[Path]:
    # Hidden names are the temporary outputs of erasure.atomic (and dotfiles): never runs.
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())
    except OSError:
        return []


def _candidate_names(runs_dir: Path) -> list[str]:
    names = []
    for child in _visible_dirs(runs_dir):
        if _looks_like_run(child):
            names.append(child.name)
            continue
        nested = [g for g in _visible_dirs(child) if _looks_like_run(g)]
        # A folder holding runs (quickstart's OUT, a group of runs) is a container, not a broken run.
        names += [f"{child.name}/{g.name}" for g in nested] if nested else [child.name]
    return names


def _looks_like_run(folder: Path) -> bool:
    return (folder / MANIFEST).exists() or (folder / CHECKPOINT_DIR).exists()


def quoted(value) -> str:
    """``repr(value)``, shortened: messages quote what was sent, and a hostile value can be megabytes long."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def resolve_run(runs_dir: Path, name: str) -> Path:
    """The folder of run ``name`` inside ``runs_dir``; ``ErasureInputError`` for any other path."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise ErasureInputError(f"run {quoted(name)}: not a run name")
    parts = name.split("/")
    if len(parts) > MAX_DEPTH or any(not p or p != p.strip() or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
        raise ErasureInputError(f"run {quoted(name)}: not a run name (only run folders inside the runs folder can be opened)")
    root = runs_dir.resolve()
    path = root.joinpath(*parts).resolve()
    # A symbolic link inside the runs folder must not lead the app to files outside it.
    if root not in path.parents or len(path.relative_to(root).parts) > MAX_DEPTH:
        raise ErasureInputError(f"run {quoted(name)}: leads outside the runs folder; refused")
    if not path.is_dir():
        raise ErasureInputError(f"run {quoted(name)}: no such run in the runs folder")
    return path


def inspect_run(runs_dir: Path, name: str) -> RunEntry:
    """The status of one run folder; never raises for a bad folder (it is reported as broken)."""
    try:
        path = resolve_run(runs_dir, name)
    except ErasureInputError as exc:
        return RunEntry(name, runs_dir / name, BROKEN, str(exc))
    if not (path / MANIFEST).is_file():
        if (path / CHECKPOINT_DIR).is_dir():
            return RunEntry(name, path, UNFINISHED, f"no {MANIFEST} yet: training, or interrupted (resume it with --resume)")
        if (path / METRICS_FILE).is_file():
            return RunEntry(name, path, REPORT, f"an evaluation report ({METRICS_FILE}), not a run")
        if (path / ATTACK_FILE).is_file():
            return RunEntry(name, path, ATTACK, f"an attack's findings ({ATTACK_FILE}, erasure attack), not a run")
        return RunEntry(name, path, BROKEN, f"not a run folder: no {MANIFEST}")
    try:
        manifest = check_run(path)
    except ErasureInputError as exc:
        return RunEntry(name, path, BROKEN, relative_message(str(exc), runs_dir))
    metrics, problem = own_metrics(path)
    return RunEntry(name, path, OK, problem, manifest, metrics)


def relative_message(message: str, runs_dir: Path) -> str:
    """``message`` with the runs folder's location cut from the paths it names."""
    # The browser needs the run's name, not where the runs folder lives on the server's disk.
    for prefix in (str(runs_dir.resolve()), str(runs_dir)):
        message = message.replace(prefix + os.sep, "")
    return message


def _read_json(file: Path) -> tuple[object, str]:
    if file.stat().st_size > MAX_METRICS_BYTES:
        return None, f"{METRICS_FILE} is larger than {MAX_METRICS_BYTES // 2**20} MB; not read"
    try:
        return json.loads(file.read_text(encoding="utf-8")), ""
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"{METRICS_FILE} is malformed ({exc.__class__.__name__}); metrics not shown"


def own_metrics(path: Path) -> tuple[dict[str, float], str]:
    """The run's numeric metrics from its own ``metrics.json`` (flattened), and a problem text or ""."""
    file = path / METRICS_FILE
    if not file.is_file():
        return {}, ""
    data, problem = _read_json(file)
    if problem:
        return {}, problem
    if not isinstance(data, dict):
        return {}, f"{METRICS_FILE} is not a JSON object; metrics not shown"
    if isinstance(data.get("runs"), list):
        return {}, ""  # an evaluation report written into the run folder: read with the others
    return _flatten(data), ""


def _flatten(data: dict, prefix: str = "", depth: int = 0) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
        elif isinstance(value, dict) and depth < MAX_METRIC_DEPTH:
            out.update(_flatten(value, f"{name}.", depth + 1))
    return out


def _report_metrics(runs_dir: Path, entries: list[RunEntry]) -> dict[str, dict[str, float]]:
    """Per run name, the scores evaluation reports give it (the newest report wins)."""
    files = [runs_dir / METRICS_FILE] + [d / METRICS_FILE for d in _visible_dirs(runs_dir)]
    files += [e.path / METRICS_FILE for e in entries if e.ok and "/" in e.name]
    files = sorted({f for f in files if f.is_file()}, key=lambda f: f.stat().st_mtime)
    runs = {e.path.resolve(): e.name for e in entries if e.ok}
    found: dict[str, dict[str, float]] = {}
    for file in files:
        data, _ = _read_json(file)
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
            continue
        for item in data["runs"]:
            name = _match_run(item.get("run") if isinstance(item, dict) else None, file.parent, runs)
            if name is not None:
                found.setdefault(name, {}).update(_report_scores(item))
    return found


def _match_run(recorded, report_dir: Path, runs: dict[Path, str]) -> str | None:
    """The listed run a report's "run" path names (relative paths: to the working directory or the report)."""
    if not isinstance(recorded, str) or not recorded:
        return None
    path = Path(recorded)
    for candidate in ([path] if path.is_absolute() else [Path.cwd() / path, report_dir / path]):
        resolved = candidate.resolve()
        if resolved in runs:
            return runs[resolved]
    return None


def _report_scores(item: dict) -> dict[str, float]:
    after = item.get("after") if isinstance(item.get("after"), dict) else {}
    before = item.get("before") if isinstance(item.get("before"), dict) else {}
    return {**_flatten(after), **{f"{k} (original)": v for k, v in _flatten(before).items()}}


RUNS_HEADERS = ["run", "status", "method", "concept", "kind", "base model", "created", "problem"]


def adversarial_prompts(entries: list[RunEntry]) -> list[tuple[str, str]]:
    """(label, prompt) of every text prompt an ``erasure attack`` folder in the runs folder holds, e.g.
    ("attack-dotted seed 0 (unlearndiffatk, recognised): wolves tapestry dotted style", "wolves tapestry dotted style");
    a folder whose attack.json is unreadable or too large is skipped (it is listed in the runs table)."""
    found = []
    for e in entries:
        if e.status != ATTACK:
            continue
        file = e.path / ATTACK_FILE
        try:
            if file.stat().st_size > MAX_ATTACK_BYTES:
                continue
            record = json.loads(file.read_text(encoding="utf-8"))
            seeds = [r for r in record.get("per_seed", []) if isinstance(r, dict) and isinstance(r.get("prompt"), str)]
        except (OSError, ValueError, AttributeError):
            logger.warning("%s: unreadable attack record", file)
            continue
        for r in seeds:
            verdict = {True: ", recognised", False: ", not recognised"}.get(r.get("recognised"), "")
            found.append((f"{e.name} seed {r.get('seed')} ({record.get('attack', '?')}{verdict}): {r['prompt'][:80]}", r["prompt"]))
    return found


def runs_rows(entries: list[RunEntry]) -> list[list[str]]:
    """The runs table: every folder, broken and unfinished ones included, with what is wrong."""
    rows = []
    for e in entries:
        m = e.manifest
        base = Path(e.base_source).name if e.base_source else ""
        rows.append([e.name, e.status, m.get("method", ""), e.concept, m.get("request", {}).get("kind", ""),
                     base, str(m.get("created", "")), e.problem])
    return rows


COST_COLUMNS = ["steps", "wall time (s)", "peak memory (GiB)", "edit size (MB)", "edited parameters"]


def metrics_rows(entries: list[RunEntry]) -> tuple[list[str], list[list]]:
    """Headers and rows of the metrics table: one row per finished run; costs from the manifest, then metrics."""
    finished = [e for e in entries if e.ok]
    columns = COST_COLUMNS + sorted({k for e in finished for k in e.metrics})
    rows = []
    for e in finished:
        cost, edit, config = e.manifest["cost"], e.manifest["edit"], e.manifest.get("config") or {}
        values = {
            "steps": config.get("steps"),
            "wall time (s)": _rounded(cost.get("wall_seconds"), 1),
            "peak memory (GiB)": _rounded(_scaled(cost.get("peak_memory_bytes"), 2**30), 3),
            "edit size (MB)": _rounded(_scaled(edit.get("bytes"), 1e6), 2),
            "edited parameters": edit.get("parameters"),
            **{k: _rounded(v, 4) for k, v in e.metrics.items()},
        }
        rows.append([e.name, e.manifest["method"], e.concept] + [values.get(c) for c in columns])
    return ["run", "method", "concept"] + columns, rows


def _scaled(value, divisor: float):
    return value / divisor if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rounded(value, digits: int):
    return round(value, digits) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
