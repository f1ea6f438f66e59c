"""Reports people read: the evaluation's HTML page and the table that compares run folders.

``html_report(metrics)`` renders an evaluation's ``metrics.json`` content as one self-contained
HTML page (inline CSS, no scripts, images referenced next to it); ``evaluate_runs`` writes it as
``report.html`` beside ``report.md``. ``compare_runs(runs)`` (CLI: ``erasure compare``) reads run
folders (and, when given, evaluations' ``metrics.json``) into one row per run: what was erased, by
which method with which settings, what it cost, and how well it did.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

from erasure.errors import ErasureInputError

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
th { background: #f3f3f3; }
td.good { color: #176f2c; } td.bad { color: #a61b1b; }
img.grid { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
.note { color: #555; font-size: .9rem; }
"""


def run_labels(runs: Sequence[str | os.PathLike]) -> list[str]:
    """Each run's name in reports, grid files and progress: its folder name, with as many parent folders
    as make it unique among ``runs`` (two methods' runs are often both called "style-dotted")."""
    paths = [Path(r).expanduser().resolve().parts for r in runs]
    labels = []
    for parts in paths:
        others = [o for o in paths if o != parts]
        k = next((k for k in range(1, len(parts) + 1) if all(o[-k:] != parts[-k:] for o in others)), len(parts) - 1)
        labels.append("-".join(parts[-k:]))
    return labels


def run_label(entry: dict) -> str:
    """The name a metrics.json or comparison row gives its run (older files: the folder name)."""
    return entry.get("label") or Path(entry["run"]).name


def _cell(before: float | None, after: float | None, higher_is_better: bool, fmt: str = "pct") -> str:
    from erasure.evaluation import format_score

    cls = ""
    if before is not None and after is not None:
        better = after > before if higher_is_better else after < before
        worse = after < before if higher_is_better else after > before
        cls = "good" if better else "bad" if worse else ""
    return f'<td class="{cls}">{format_score(before, fmt)} &rarr; {format_score(after, fmt)}</td>'


def html_report(metrics: dict) -> str:
    """The evaluation as an HTML page: settings, the before/after table (the suite's ``columns``), each run's grid."""
    e = html.escape
    s, cols = metrics["sampling"], metrics["columns"]
    rows = []
    for r in metrics["runs"]:
        b, a, c = r["before"], r["after"], r["cost"]
        rows.append(
            f"<tr><td>{e(run_label(r))}</td><td class=\"text\">{e(r['method'])}</td>"
            f"<td class=\"text\">{e(', '.join(r['targets']))} ({e(r['kind'])})</td>"
            + "".join(_cell(b.get(k["key"]), a.get(k["key"]), k["higher_is_better"], k["format"]) for k in cols)
            + f"<td>{c.get('wall_seconds', float('nan')):.0f}</td>"
            f"<td>{c.get('peak_memory_bytes', float('nan')) / 2**30:.2f}</td></tr>"
        )
    grids = "".join(
        f"<h2>{e(run_label(r))}: {e(', '.join(r['targets']))} erased by {e(r['method'])}</h2>"
        f"<p class=\"note\">Left: original; right: erased; same prompts and seeds.</p>"
        f"<img class=\"grid\" src=\"{e(r['grid'])}\" alt=\"original and erased generations for {e(run_label(r))}\">"
        for r in metrics["runs"]
    )
    summary = " ".join(e(line) for line in metrics.get("summary", []))
    notes = "".join(f"<p class=\"note\">{e(note)}</p>" for note in metrics.get("notes", []))
    heads = "".join(f"<th>{e(k['label'])}</th>" for k in cols)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation: {e(metrics['suite'])} suite</title>
<style>{_CSS}</style></head><body>
<h1>Evaluation: {e(metrics['suite'])} suite</h1>
<p>Original model: <code>{e(str(metrics['original']))}</code>. Judge: {e(metrics['judge'])}.
{metrics['prompts']} prompts &times; {len(s['seeds'])} seeds, {e(str(s['scheduler']))} {s['steps']} steps, guidance {s['guidance']}.
{summary}</p>
{notes}<p class="note">Each cell: original &rarr; erased. Green: better after erasure, red: worse.</p>
<table><thead><tr><th>run</th><th>method</th><th>erased</th>{heads}
<th>time (s)</th><th>peak memory (GiB)</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
{grids}
</body></html>
"""


# ----------------------------------------------------------------------------- compare
#: Config keys shown in the comparison when a method has them (the ones that tell runs apart).
_SETTINGS = ("variant", "steps", "lr", "rho", "tau", "attack_steps", "gamma", "eta")


def compare_runs(runs: Sequence[str | os.PathLike], metrics_files: Sequence[str | os.PathLike] = ()) -> list[dict]:
    """One row per run folder: method, targets, settings, cost, edit size, and scores from ``metrics_files``.

    Scores (UA/IRA/CRA after erasure) come from the first evaluation ``metrics.json`` that scored
    the run (matched by the run folder's resolved path); runs no evaluation scored have none.
    """
    from erasure.edit import read_manifest

    if not runs:
        raise ErasureInputError("no runs to compare; give one or more run folders")
    scores = _scores_by_run(metrics_files)
    rows = []
    for run, label in zip(runs, run_labels(runs)):
        manifest = read_manifest(run)
        config, cost, edit = manifest["config"], manifest.get("cost", {}), manifest.get("edit", {})
        rows.append({
            "run": str(run),
            "label": label,
            "method": manifest["method"],
            "targets": manifest["request"]["targets"],
            "kind": manifest["request"]["kind"],
            "settings": {k: config[k] for k in _SETTINGS if k in config},
            "wall_seconds": cost.get("wall_seconds"),
            "peak_memory_bytes": cost.get("peak_memory_bytes"),
            "edit_bytes": edit.get("bytes"),
            "scores": scores.get(str(Path(run).expanduser().resolve())),
        })
    return rows


def _read_metrics(path: str | os.PathLike) -> dict:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "metrics.json"
    if not p.is_file():
        raise ErasureInputError(f"evaluation metrics not found: {p}")
    try:
        metrics = json.loads(p.read_text(encoding="utf-8"))
        runs = metrics["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ErasureInputError(f"{p}: not an evaluation's metrics.json ({exc})") from None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and {"run", "after"} <= r.keys() for r in runs):
        raise ErasureInputError(f"{p}: not an evaluation's metrics.json (its runs lack 'run' or 'after')")
    return metrics


def _scores_by_run(metrics_files: Sequence[str | os.PathLike]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in metrics_files:
        for r in _read_metrics(path)["runs"]:
            out.setdefault(str(Path(r["run"]).expanduser().resolve()), r["after"])
    return out


#: The columns of a comparison without evaluations, and of metrics files older than ``columns``.
DEFAULT_COLUMNS = [{"key": k, "label": k, "higher_is_better": True, "format": "pct"} for k in ("UA", "IRA", "CRA")]


def comparison_columns(metrics_files: Sequence[str | os.PathLike] = ()) -> list[dict]:
    """The score columns of a comparison: every column the evaluations report (first seen first),
    so runs scored by different suites (canvas, nudity, memorization...) share one table."""
    columns: dict[str, dict] = {}
    for path in metrics_files:
        for c in _read_metrics(path).get("columns", DEFAULT_COLUMNS):
            columns.setdefault(c["key"], c)
    return list(columns.values()) or DEFAULT_COLUMNS


def comparison_markdown(rows: list[dict], columns: list[dict] | None = None) -> str:
    """The comparison as a markdown table (after-erasure scores in ``columns``; default UA/IRA/CRA)."""
    from erasure.evaluation import format_score

    columns = columns or DEFAULT_COLUMNS
    lines = ["| run | method | erased | settings | " + " | ".join(c["label"] for c in columns)
             + " | time (s) | peak memory (GiB) | edit (KB) |",
             "|---|---|---|---|" + "---|" * len(columns) + "---|---|---|"]
    for r in rows:
        sc = r["scores"] or {}
        settings = ", ".join(f"{k} {v}" for k, v in r["settings"].items())
        scores = " | ".join(format_score(sc.get(c["key"]), c["format"]) for c in columns)
        wall = "n/a" if r["wall_seconds"] is None else f"{r['wall_seconds']:.0f}"
        mem = "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**30:.2f}"
        size = "n/a" if r["edit_bytes"] is None else f"{r['edit_bytes'] / 1e3:.1f}"
        lines.append(f"| {run_label(r)} | {r['method']} | {', '.join(r['targets'])} ({r['kind']}) | {settings} "
                     f"| {scores} | {wall} | {mem} | {size} |")
    return "\n".join(lines) + "\n"
