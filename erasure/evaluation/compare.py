"""``erasure compare``: run folders side by side, with the scores evaluations gave them.

``compare_runs(runs, metrics_files)`` reads run folders (and, when given, evaluations'
``metrics.json``) into one row per run: what was erased, by which method with which settings, what
it cost, and how well it did; ``comparison_table`` puts the rows into the reports' table model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from erasure.errors import ErasureInputError
from erasure.evaluation.report import Column, Row, Score, Table, erased_text, run_label, run_labels


def check_compare_output(out: str | os.PathLike, runs: Sequence[str | os.PathLike],
                         metrics_files: Sequence[str | os.PathLike] = ()) -> Path:
    """Refuse a table file that cannot be written or would overwrite what is compared (a run's
    files, an evaluation's metrics.json); reads and creates nothing else."""
    from erasure.atomic import check_output_file

    target = check_output_file(out, "--out").resolve()
    for run in (Path(r).expanduser().resolve() for r in runs):
        if target == run or run in target.parents:
            raise ErasureInputError(f"--out {out}: inside the compared run folder {run}; write the table elsewhere")
    for path in metrics_files:
        metrics = Path(path).expanduser().resolve()
        if target in (metrics, metrics / "metrics.json"):
            raise ErasureInputError(f"--out {out}: would overwrite the evaluation {path} it compares")
    return target


#: Config keys shown in the comparison when a method has them (the ones that tell runs apart).
_SETTINGS = ("variant", "steps", "lr", "rho", "tau", "attack_steps", "gamma", "eta")


def compare_runs(runs: Sequence[str | os.PathLike], metrics_files: Sequence[str | os.PathLike] = ()) -> list[dict]:
    """One row per run folder: method, targets, settings, cost, edit size, and scores from ``metrics_files``.

    Scores (UA/IRA/CRA after erasure) come from the first evaluation ``metrics.json`` that scored
    the run (matched by the run folder's resolved path); runs no evaluation scored have none.
    """
    from erasure.erased import check_run, erased_concepts

    if not runs:
        raise ErasureInputError("no runs to compare; give one or more run folders")
    scores = _scores_by_run(metrics_files)
    # Every run checked before the table is made: a broken one (malformed manifest, truncated edit)
    # would otherwise show as a healthy row.
    manifests = [check_run(run) for run in runs]
    rows = []
    for run, label, manifest in zip(runs, run_labels(runs), manifests):
        config, cost, edit = manifest["config"], manifest.get("cost", {}), manifest.get("edit", {})
        rows.append({
            "run": str(run),
            "label": label,
            "method": manifest["method"],
            "targets": manifest["request"]["targets"],
            "kind": manifest["request"]["kind"],
            "erased": erased_concepts(manifest, run),  # a chain's end: what every run of it removed
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
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ErasureInputError(f"{p}: not an evaluation's metrics.json ({exc})") from None
    if not isinstance(runs, list) or not all(_is_scored_run(r) for r in runs):
        raise ErasureInputError(f"{p}: not an evaluation's metrics.json (its runs lack 'run' or the 'after' scores)")
    # The table is built from these after every file is read: a bad column must fail here, in one line.
    columns = metrics.get("columns", DEFAULT_COLUMNS)
    if not isinstance(columns, list) or not all(isinstance(c, dict) and _COLUMN_KEYS <= c.keys() for c in columns):
        raise ErasureInputError(f"{p}: not an evaluation's metrics.json (its columns lack {', '.join(sorted(_COLUMN_KEYS))})")
    return metrics


def _is_scored_run(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("run"), str)
            and isinstance(entry.get("after"), dict))


def _scores_by_run(metrics_files: Sequence[str | os.PathLike]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in metrics_files:
        for r in _read_metrics(path)["runs"]:
            out.setdefault(str(Path(r["run"]).expanduser().resolve()), r["after"])
    return out


#: What ``Column.from_dict`` reads from each of a metrics file's columns.
_COLUMN_KEYS = {"key", "label", "higher_is_better"}
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


def comparison_table(rows: list[dict], columns: list[dict] | None = None) -> Table:
    """The comparison in the reports' table model: scores after erasure in ``columns`` (default UA/IRA/CRA)."""
    cols = [Column.from_dict(c) for c in (columns or DEFAULT_COLUMNS)]
    table_rows = []
    for r in rows:
        scores = r["scores"] or {}
        table_rows.append(Row(
            lead=[run_label(r), r["method"], erased_text(r),
                  ", ".join(f"{k} {v}" for k, v in r["settings"].items())],
            scores=[Score(c, None, scores.get(c.key)) for c in cols],
            tail=["n/a" if r["wall_seconds"] is None else f"{r['wall_seconds']:.0f}",
                  "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**30:.2f}",
                  "n/a" if r["edit_bytes"] is None else f"{r['edit_bytes'] / 1e3:.1f}"],
        ))
    return Table(["run", "method", "erased", "settings"], cols, ["time (s)", "peak memory (GiB)", "edit (KB)"], table_rows)


def comparison_markdown(rows: list[dict], columns: list[dict] | None = None) -> str:
    """The comparison as a markdown table (after-erasure scores in ``columns``; default UA/IRA/CRA)."""
    return comparison_table(rows, columns).markdown(split=False)
