"""Model cards: a ``README.md`` in every run folder and export, in Hugging Face's model-card style.

A card says what a reader of a shared erasure needs before using it: the base model (source and
fingerprint), the method and its paper, the request, the config and where it came from, the cost,
the evaluations that scored the run (with their numbers), how to load it, and what an erasure
does not promise. It is written from the run's manifest when the run finishes, rewritten when an
evaluation scores the run (``record_evaluation``; the scores are kept in ``evaluations.json``), and
copied, with the export's own loading snippet, beside every ``erasure export``.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import yaml

from erasure.atomic import atomic_path

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
EVALUATIONS_FILE = "evaluations.json"

#: What each method's erasure leaves behind, beyond the limits every erasure shares.
METHOD_LIMITS = {
    "esd": "ESD fine-tunes the UNet (ESD-x: cross-attention, ESD-u: the rest); prompts that do not name the "
           "concept but evoke it, and optimised prompts (soft-prompt or discrete attacks), can bring it back.",
    "advunlearn": "AdvUnlearn changes the text encoder only, trained against soft-prompt attacks; the UNet still "
                  "holds the concept, so an attack on the UNet's inputs other than text (e.g. image-to-image) is not "
                  "covered.",
    "doco": "DoCo aligns the concept's cross-attention outputs with its anchor's; it was trained on a fixed set of "
            "prompt templates, and retention of other concepts can drop under phrasings far from them.",
    "sfd": "SFD distils the model into a one-step generator: it samples with erasure's one-step sampler "
           "(`load_erased`), not with the base's multi-step schedulers, and it cannot be exported as a LoRA or a "
           "single-file checkpoint.",
    "prune": "Pruning zeroes feed-forward weights found by Wanda scores; it removes what those neurons carry and "
             "can be bypassed by prompts that reach the concept through other neurons.",
}


def card_text(manifest: dict, *, run: str | os.PathLike | None = None, evaluations: list[dict] | None = None,
              usage: str | None = None, export: dict | None = None) -> str:
    """The model card of a run (its ``manifest``) or of an export of it (``export``: format and check)."""
    from erasure.methods import get_method

    method = manifest.get("method", "?")
    try:
        cls = get_method(method)
        paper, code = cls.paper, cls.reference_code
    except Exception:  # a run made by a method this install no longer has: the card still describes it
        paper, code = "", ""
    request, base = manifest.get("request", {}), manifest.get("base", {})
    targets = ", ".join(f'"{t}"' for t in request.get("targets", []))
    lines = [_front_matter(manifest, base), f"# {method} erasure of {targets} ({request.get('kind', 'custom')})", ""]
    lines += [f"{base.get('source') or 'A model'} with {targets} erased by {method}"
              + (f" ({paper})" if paper else "") + ", made with the erasure toolkit"
              + (f"; exported as {export['format']}" if export else "") + ".", ""]
    lines += _section("Base model" + (" (the pipeline of the run this one continues)" if manifest.get("chain") else ""), [
        f"- source: `{base.get('source')}`" + (f" (configs: `{base['config']}`)" if base.get("config") else ""),
        f"- pipeline: {base.get('pipeline')}, dtype {base.get('dtype')}",
        f"- fingerprint of its weights: `{base.get('fingerprint')}` (an edit applies only to these weights)",
    ])
    if manifest.get("chain"):
        lines += _section("Chain", _chain_lines(manifest["chain"]))
    lines += _section("Method", [
        f"- {method}" + (f": {paper}" if paper else ""),
        *([f"- reference code: https://github.com/{code}"] if code else []),
        f"- config: {_config_source(manifest.get('config_source'))}",
        "", "```yaml", yaml.safe_dump(manifest.get("config", {}), sort_keys=False).rstrip(), "```",
    ])
    lines += _section("Request", _request_lines(request))
    lines += _section("Cost", _cost_lines(manifest))
    lines += _section("Evaluations", _evaluation_lines(evaluations or [], run, base.get("source")))
    if export:
        lines += _section("Export", _export_lines(export))
    lines += _section("How to use", [usage or _run_usage(run)])
    lines += _section("Intended use and limitations", _limit_lines(method))
    return "\n".join(lines).rstrip() + "\n"


def write_card(run: str | os.PathLike) -> Path:
    """Write (or rewrite) ``README.md`` in a finished run folder from its manifest and evaluations."""
    from erasure.edit import read_manifest

    folder = Path(run)
    text = card_text(read_manifest(folder), run=folder, evaluations=read_evaluations(folder))
    with atomic_path(folder / CARD_FILE) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return folder / CARD_FILE


def read_evaluations(run: str | os.PathLike) -> list[dict]:
    """The evaluations recorded in a run folder (``evaluations.json``); [] when none or unreadable."""
    path = Path(run) / EVALUATIONS_FILE
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return records if isinstance(records, list) else []


def record_evaluation(run: str | os.PathLike, record: dict) -> None:
    """Add an evaluation's scores of this run to ``evaluations.json`` and rewrite the card.

    ``record``: ``suite``, ``metrics`` (the metrics.json path) and ``scores`` (a list of ``{"label",
    "before", "after", "shown"}``, ``shown`` the two values as reports print them). An evaluation of the same suite written to the same metrics file
    replaces the earlier one. A run folder that cannot be written (shared read-only) is left as it is.
    """
    folder = Path(run)
    record = {**record, "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    kept = [r for r in read_evaluations(folder) if (r.get("suite"), r.get("metrics")) != (record["suite"], record["metrics"])]
    try:
        with atomic_path(folder / EVALUATIONS_FILE) as tmp:
            tmp.write_text(json.dumps([*kept, record], indent=2) + "\n", encoding="utf-8")
        write_card(folder)
    except OSError as exc:
        logger.warning("%s: could not record the evaluation in the run folder (%s)", folder, exc.strerror or exc)


# ----------------------------------------------------------------------------- sections
def _front_matter(manifest: dict, base: dict) -> str:
    tags = ["concept-erasure", "erasure", manifest.get("method", ""), "text-to-image"]
    meta = {"library_name": "diffusers", "tags": [t for t in tags if t]}
    if base.get("source"):
        meta["base_model"] = str(base["source"])
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _section(title: str, body: list[str]) -> list[str]:
    return [f"## {title}", "", *body, ""]


def _config_source(source: str | None) -> str:
    if not source:
        return "as recorded below"
    if source.startswith("preset "):
        return f"the shipped preset `configs/{source.removeprefix('preset ')}.yaml`"
    if source == "defaults":
        return "the method's own defaults (its paper's)"
    return source.replace("file ", "file `", 1) + "`" if source.startswith("file ") else source


def _chain_lines(chain: dict) -> list[str]:
    """A run that continues others: where the chain started and what each earlier run erased."""
    start = chain.get("origin") or {}
    out = [f"This run continues earlier erasures; its edit holds only its own change. The chain started from "
           f"`{start.get('source')}` (fingerprint `{start.get('fingerprint')}`), then:", ""]
    for i, record in enumerate(chain.get("runs", []), 1):
        out.append(f"{i}. {record.get('method')}: {', '.join(map(str, record.get('targets', [])))} ({record.get('kind')}), "
                   f"run `{record.get('relative') or record.get('path')}`")
    return [*out, "", "`load_erased` applies the chain in order and checks every run's fingerprint."]


def _request_lines(request: dict) -> list[str]:
    out = [f"- concepts: {', '.join(request.get('targets', []))} (kind: {request.get('kind', 'custom')})"]
    if request.get("anchor"):
        out.append(f"- anchor: {request['anchor']}")
    for key, what in (("prompts", "prompts that evoke the concept"), ("retain", "prompts kept unchanged")):
        values = request.get(key) or []
        if values:
            shown = "; ".join(f'"{p}"' for p in values[:3]) + (f"; ... ({len(values)} in all)" if len(values) > 3 else "")
            out.append(f"- {what}: {shown}")
    return out


def _cost_lines(manifest: dict) -> list[str]:
    cost, edit = manifest.get("cost", {}), manifest.get("edit", {})
    out = [f"- wall time: {cost.get('wall_seconds', 0):.1f} s on {cost.get('device', 'an unrecorded device')}"
           f" ({cost.get('num_processes', 1)} process{'es' if cost.get('num_processes', 1) != 1 else ''})",
           f"- peak memory: {cost.get('peak_memory_bytes', 0) / 2**30:.2f} GiB ({cost.get('peak_memory_kind', 'unrecorded')})"]
    if edit:
        out.append(f"- edit: {edit.get('tensors', 0)} tensors, {edit.get('parameters', 0):,} parameters"
                   + (f", {edit['zeroed_entries']:,} zeroed entries" if edit.get("zeroed_entries") else "")
                   + f", {edit.get('file_bytes', edit.get('bytes', 0)) / 1e6:.1f} MB ({edit.get('dtype', 'float32')});"
                   f" components: {', '.join(edit.get('components', [])) or 'none'}")
    return out


def _evaluation_lines(evaluations: list[dict], run, base: str | None) -> list[str]:
    if not evaluations:
        suite = "canvas" if base == "canvas-mini" else "SUITE"
        return [f"Not evaluated yet. Score it with `erasure evaluate --erased {run or 'RUN'} --original {base or 'BASE'} "
                f"--suite {suite} --out DIR`; the scores then appear here."]
    out = []
    for record in evaluations:
        out += [f"**{record.get('suite')}** suite ({record.get('evaluated', '')}, `{record.get('metrics')}`):", "",
                "| score | original | erased |", "|---|---|---|"]
        for score in record.get("scores", []):
            before, after = score.get("shown") or ("n/a", "n/a")
            out.append(f"| {score.get('label')} | {before} | {after} |")
        out.append("")
    return out


def _export_lines(export: dict) -> list[str]:
    out = [f"- format: {export['format']}, written {export.get('written', '')}"]
    check = export.get("check")
    if check:
        out.append(f"- check: reloaded with `{check['loader']}` and compared with `load_erased` on the same prompt and "
                   f"seed ({check['steps']} steps): mean absolute pixel difference {check['mean_abs_diff']:.3f}, "
                   f"max {check['max_abs_diff']} (of 255)")
    lora = export.get("lora")
    if lora:
        out.append(f"- LoRA: {lora['modules']} modules, max rank {lora['max_rank']}, {lora['parameters']:,} parameters; "
                   f"relative error of the weight deltas {100 * lora['relative_error']:.2f}%"
                   + (f"; {len(lora['left_out'])} changed tensors a LoRA cannot hold are left out" if lora["left_out"] else ""))
    return out


def _run_usage(run) -> str:
    return ("```python\nfrom erasure import load_erased\n\n"
            f"pipe = load_erased(\"{run or 'RUN'}\")  # the base model with this edit applied\n"
            "image = pipe(\"a prompt\").images[0]\n```")


def _limit_lines(method: str) -> list[str]:
    return [
        "- Meant for removing a concept from a text-to-image model that is shipped or studied, and for measuring "
        "how well that worked. It lowers how often the concept appears; it does not prove it can never appear.",
        "- The scores above hold for the suite's prompts, seeds and judges. Other phrasings, other seeds and "
        "adversarial prompts can do better at bringing the concept back (`erasure attack RUN` and "
        "`erasure evaluate --attack soft-prompt,unlearndiffatk` measure it).",
        "- Other concepts can change too: read the retention scores (IRA/CRA, FID/CLIP) before shipping.",
        *([f"- {METHOD_LIMITS[method]}"] if method in METHOD_LIMITS else []),
    ]
