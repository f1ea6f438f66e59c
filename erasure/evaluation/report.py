"""What people read of an evaluation: one table model, rendered as markdown, HTML and on the console.

A suite declares the before/after scores it reports as ``Column``s (recorded in metrics.json as
``columns``). ``score_table(metrics)`` turns an evaluation's metrics into a ``Table``: one row per
run, a cell per column holding the original's and the erased model's score, plus the run's cost.
``markdown_report`` and ``html_report`` render the whole report around that table (``report.md``
and ``report.html``); the CLI prints the same table through ``Table.transposed``. The comparison of
run folders (``erasure.evaluation.compare``) uses the same model.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Column:
    """A score the reports tabulate; ``format``: "pct" (a share) or "num" (e.g. CLIP score, FID)."""

    key: str
    label: str
    higher_is_better: bool
    format: str = "pct"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Column":
        return cls(data["key"], data["label"], bool(data["higher_is_better"]), data.get("format", "pct"))


def format_score(value, fmt: str) -> str:
    """A score as reports print it: a share as a percentage, anything else with 4 significant digits."""
    if value is None:
        return "n/a"
    return f"{value:.1%}" if fmt == "pct" else f"{value:.4g}"


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


# ----------------------------------------------------------------------------- the table model
@dataclass
class Score:
    """One cell of a score column: the original's value and the erased model's (either may be None)."""

    column: Column
    before: float | None
    after: float | None

    def tone(self) -> str:
        """"good" when erasure moved the score the column's better way, "bad" the other way, else ""."""
        if self.before is None or self.after is None or self.after == self.before:
            return ""
        better = self.after > self.before if self.column.higher_is_better else self.after < self.before
        return "good" if better else "bad"

    def text(self, arrow: str = "->") -> str:
        if self.before is None:  # a comparison shows scores after erasure only
            return format_score(self.after, self.column.format)
        return f"{format_score(self.before, self.column.format)} {arrow} {format_score(self.after, self.column.format)}"


@dataclass
class Row:
    """A run: text cells (its name, method, what it erased...), its scores, then more text cells (cost)."""

    lead: list[str]
    scores: list[Score]
    tail: list[str] = field(default_factory=list)


@dataclass
class Table:
    """Runs as rows; ``lead``/``tail`` headers name the text cells around the score columns."""

    lead: list[str]
    columns: list[Column]
    tail: list[str]
    rows: list[Row]

    def markdown(self, split: bool = True) -> str:
        """As a markdown table; ``split``: each score as two columns, "X before" and "X after"."""
        if split:
            score_heads = [f"{c.label} {side}" for c in self.columns for side in ("before", "after")]
        else:
            score_heads = [c.label for c in self.columns]
        heads = [*self.lead, *score_heads, *self.tail]
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for r in self.rows:
            if split:
                scores = [format_score(v, s.column.format) for s in r.scores for v in (s.before, s.after)]
            else:
                scores = [s.text() for s in r.scores]
            lines.append("| " + " | ".join([*r.lead, *scores, *r.tail]) + " |")
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """As an HTML table: one cell per score, "before → after", green when better and red when worse."""
        e = html.escape
        heads = "".join(f"<th>{e(h)}</th>" for h in [*self.lead, *(c.label for c in self.columns), *self.tail])
        body = []
        for r in self.rows:
            cells = [f"<td>{e(r.lead[0])}</td>", *(f'<td class="text">{e(t)}</td>' for t in r.lead[1:])]
            cells += [f'<td class="{s.tone()}">{e(s.text("→"))}</td>' for s in r.scores]
            cells += [f"<td>{e(t)}</td>" for t in r.tail]
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f"<table><thead><tr>{heads}</tr></thead>\n<tbody>{''.join(body)}</tbody></table>"

    def transposed(self) -> tuple[list[str], list[list[str]]]:
        """(one header per run, rows of (field, cell per run)): the console's layout, where runs are few
        and scores many (a dozen per suite) and a terminal is wider than it is tall only by so much."""
        names = [r.lead[0] for r in self.rows]
        fields = [*self.lead[1:], *(c.label for c in self.columns), *self.tail]
        cells = [[*r.lead[1:], *(s.text() for s in r.scores), *r.tail] for r in self.rows]
        return names, [[name, *(row[i] for row in cells)] for i, name in enumerate(fields)]


def _targets(entry: dict, width: int | None) -> str:
    """A run's erased concepts; with ``width``, a memorization run's eight captions become "8 prompts"."""
    text = ", ".join(entry["targets"])
    if width is not None and len(text) > width and len(entry["targets"]) > 1:
        return f"{len(entry['targets'])} prompts"
    return text


def erased_text(entry: dict, width: int | None = None) -> str:
    """What a run removed, as the tables show it: its own targets and kind, then, for a run that ends
    a chain, what the earlier runs removed ("striped (style); before: dotted by esd")."""
    return f"{_targets(entry, width)} ({entry['kind']})" + _earlier(entry)


def _earlier(entry: dict) -> str:
    """"; before: dotted by esd" for a run that ends a chain, "" for any other (and older metrics files)."""
    earlier = (entry.get("erased") or [])[:-1]
    if not earlier:
        return ""
    return "; before: " + "; ".join(f"{', '.join(map(str, e['targets']))} by {e['method']}" for e in earlier)


def per_target_line(entry: dict) -> str | None:
    """UA per erased concept, before and after, for a run scored on several ("UA per erased concept:
    dotted 3.1% -> 100.0%, ..."); None for one concept or a suite without it."""
    after, before = entry.get("after", {}).get("per_target_UA"), entry.get("before", {}).get("per_target_UA") or {}
    if not isinstance(after, dict) or len(after) < 2:
        return None
    shown = [f"{name} {format_score(before.get(name), 'pct')} -> {format_score(value, 'pct')}" for name, value in after.items()]
    return "UA per erased concept (original -> erased): " + ", ".join(shown) + "."


def score_table(metrics: dict, *, target_width: int | None = None) -> Table:
    """An evaluation's table: per run its name, method, erased concepts, every column before and after, cost."""
    columns = [Column.from_dict(c) for c in metrics["columns"]]
    rows = []
    for r in metrics["runs"]:
        cost = r["cost"]
        rows.append(Row(
            lead=[run_label(r), r["method"], erased_text(r, target_width)],
            scores=[Score(c, r["before"].get(c.key), r["after"].get(c.key)) for c in columns],
            tail=[f"{cost.get('wall_seconds', float('nan')):.0f}", f"{cost.get('peak_memory_bytes', float('nan')) / 2**30:.2f}"],
        ))
    return Table(["run", "method", "erased"], columns, ["time (s)", "peak memory (GiB)"], rows)


# ----------------------------------------------------------------------------- the report pages
def _sampling_line(metrics: dict) -> str:
    s = metrics["sampling"]
    return (f"{metrics['prompts']} prompts x {len(s['seeds'])} seeds, {s['scheduler']} {s['steps']} steps, "
            f"guidance {s['guidance']}.")


def markdown_report(metrics: dict) -> str:
    """report.md: what was measured, how, and the before/after table with each run's grid."""
    lines = [
        f"# Evaluation: {metrics['suite']} suite",
        "",
        f"Original model: `{metrics['original']}`. Judge: {metrics['judge']}. {_sampling_line(metrics)}",
        *metrics.get("summary", []),
        "",
        *[line for note in metrics.get("notes", []) for line in (note, "")],
        score_table(metrics).markdown().rstrip("\n"),
    ]
    for r in metrics["runs"]:
        per_target = per_target_line(r)
        lines += ["", f"## {run_label(r)}", "", *([per_target, ""] if per_target else []),
                  f"![original vs erased]({r['grid']})"]
    return "\n".join(lines) + "\n"


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


def html_report(metrics: dict) -> str:
    """report.html: the same report as one self-contained page (inline CSS, no scripts, grids beside it)."""
    e = html.escape
    grids = "".join(
        f"<h2>{e(run_label(r))}: {e(', '.join(r['targets']))} erased by {e(r['method'])}{e(_earlier(r))}</h2>"
        + (f"<p class=\"note\">{e(per_target_line(r))}</p>" if per_target_line(r) else "") +
        f"<p class=\"note\">Left: original; right: erased; same prompts and seeds.</p>"
        f"<img class=\"grid\" src=\"{e(r['grid'])}\" alt=\"original and erased generations for {e(run_label(r))}\">"
        for r in metrics["runs"]
    )
    summary = " ".join(e(line) for line in metrics.get("summary", []))
    notes = "".join(f"<p class=\"note\">{e(note)}</p>" for note in metrics.get("notes", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation: {e(metrics['suite'])} suite</title>
<style>{_CSS}</style></head><body>
<h1>Evaluation: {e(metrics['suite'])} suite</h1>
<p>Original model: <code>{e(str(metrics['original']))}</code>. Judge: {e(metrics['judge'])}.
{e(_sampling_line(metrics)).replace(' x ', ' &times; ')}
{summary}</p>
{notes}<p class="note">Each cell: original &rarr; erased. Green: better after erasure, red: worse.</p>
{score_table(metrics).html()}
{grids}
</body></html>
"""
