"""``erasure attack RUN --attack NAME``: one registered attack on one erased run, its findings written out.

For each seed the attack runs on the run's erased model (with the model the chain started from as
the original), and its adversarial prompt (text, ``seedN.txt``) or embeddings (``seedN.safetensors``)
and images are saved with a record (``seedN.json``). Where the model's family ships a judge
(canvas-mini's evaluator), each image is judged and the attack success rate is reported beside the
unattacked prompt's rate on the same seeds; elsewhere the images are the result. ``attack.json``
holds everything, ``report.md`` a table and ``grid.png`` the unattacked and attacked images per seed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from erasure.errors import ErasureInputError

ATTACK_FILE = "attack.json"
REPORT_FILE = "report.md"
GRID_FILE = "grid.png"


def check_attack_run(run: str | os.PathLike, name: str, settings: dict, out: str | os.PathLike,
                     concept: str | None = None):
    """The run's manifest and the configured attack (guidance: the model family's unless ``settings`` has
    it), refusing in one line before any
    model loads: a broken or unfinished run, an unknown attack or setting, an ``out`` that is not a new
    or empty folder, a run with several targets and no ``concept``."""
    from erasure.atomic import check_output_folder
    from erasure.attacks import load_attack
    from erasure.erased import chain_links

    from erasure.erased import origin
    from erasure.families import family_of_source

    manifest = chain_links(run)[-1][1]
    family = family_of_source(origin(manifest).get("source") or "")
    attack = load_attack(name, {**run_defaults(name, family, manifest["request"]["kind"]), **settings})
    from erasure.one_step import SAMPLER

    if attack.needs_noise_predictor and (manifest.get("extra") or {}).get("sampler") == SAMPLER:
        raise ErasureInputError(f"{run}: an SFD run's one-step generator is not a noise predictor, which {name}'s loss "
                                "needs; attack it with --attack ring-a-bell or concept-inversion")
    folder = check_output_folder(out, "--out")
    if folder.is_dir() and any(folder.iterdir()):
        raise ErasureInputError(f"--out {folder}: not empty; give a new folder")
    if concept is not None and not concept.strip():
        raise ErasureInputError("--concept: empty")
    return manifest, attack


def run_defaults(name: str, family, kind: str) -> dict:
    """Settings an attack takes from the model and the erasure unless given: the family's guidance, and for
    attacks that learn a word of a kind (concept inversion) or look up prompts by kind (Ring-A-Bell) the
    erased concept's kind."""
    import dataclasses

    from erasure.attacks import get_attack

    fields = {f.name for f in dataclasses.fields(get_attack(name).config_class)}
    defaults = {"guidance": family.guidance}
    if "learnable_property" in fields:
        defaults["learnable_property"] = "style" if kind == "style" else "object"
    if "kind" in fields:
        defaults["kind"] = kind
    return defaults


def run_prompt(manifest: dict) -> tuple[str, str, str]:
    """(kind, concept name, concept prompt) of a run's first target, as its erasure resolved them."""
    from erasure.erased import origin
    from erasure.families import family_of_source
    from erasure.request import ErasureRequest

    kind, target = manifest["request"]["kind"], manifest["request"]["targets"][0]
    family = family_of_source(origin(manifest).get("source") or "")
    return kind, family.concept(target, kind), ErasureRequest([target], kind=kind).resolve(family).prompts[0]


def attack_run(run: str | os.PathLike, attack, *, seeds: Sequence[int], out: str | os.PathLike,
               concept: str | None = None, original: str | None = None, device: str = "auto",
               progress: Callable[[str, int, int, dict], None] | None = None) -> dict:
    """Attack the erased model of ``run`` with ``attack`` (an ``erasure.attacks.Attack``) once per seed;
    write the findings into ``out`` and return the record written to ``out/attack.json``."""
    from erasure.erased import chain_links, load_erased, origin
    from erasure.families import family_of
    from erasure.pipelines import generate, load_pipeline

    manifest = chain_links(run)[-1][1]
    kind, name, prompt = run_prompt(manifest)
    prompt = concept.strip() if concept else prompt
    source = original or origin(manifest).get("source")
    if not source:
        raise ErasureInputError(f"{run}: the manifest does not say which model it was erased from; pass --original")
    base = load_pipeline(source, device=device)
    erased = load_erased(run, base=load_pipeline(source, device=device))
    try:
        judge = family_of(base).judge(kind, name)
    except ErasureInputError:  # a family without a judge (Stable Diffusion): the images are the result
        judge = None
    c = attack.config
    clean = generate(erased, prompt, seeds=list(seeds), steps=c.sample_steps, guidance=c.guidance, scheduler=c.scheduler,
                     batch_size=len(seeds))
    clean_judged = judge(clean).tolist() if judge is not None else [None] * len(seeds)
    out = Path(out)
    per_seed: list[dict[str, Any]] = []
    attacked = []
    for n, seed in enumerate(seeds):
        step = (lambda done, total, s=seed: progress(f"{attack.name} seed {s}", done, total, {})) if progress else None
        result = attack(erased, base, prompt, seed=int(seed), progress=step)
        record = result.save(out, f"seed{seed}")
        record["recognised"] = bool(judge(result.images[:1])[0]) if judge is not None else None
        record["clean_recognised"] = clean_judged[n]
        per_seed.append(record)
        attacked.append(result.images[0])
    summary = {
        "run": str(run), "attack": attack.name, "config": c.to_dict(), "concept": name, "kind": kind, "prompt": prompt,
        "original": str(source), "seeds": [int(s) for s in seeds],
        "judge": "the model family's judge" if judge is not None else None,
        "asr": _rate([r["recognised"] for r in per_seed]), "clean_rate": _rate(clean_judged),
        "seconds": sum(r["seconds"] for r in per_seed), "per_seed": per_seed,
    }
    _write_grid(out, clean, attacked, seeds)
    (out / ATTACK_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / REPORT_FILE).write_text(report_markdown(summary), encoding="utf-8")
    return summary


def _rate(flags: list) -> float | None:
    return None if not flags or flags[0] is None else sum(map(bool, flags)) / len(flags)


def _write_grid(out: Path, clean: list, attacked: list, seeds: Sequence[int]) -> None:
    from erasure.pipelines.generation import image_grid

    from .grids import side_by_side

    labels = [f"seed {s}" for s in seeds]
    cell = max(128, clean[0].width)  # room for the column titles
    grids = [image_grid(images, rows=len(images), cols=1, row_labels=labels, min_cell=cell) for images in (clean, attacked)]
    side_by_side(grids, ["concept prompt", "attacked"]).save(out / GRID_FILE)


def report_markdown(summary: dict) -> str:
    """The attack's page: what was attacked, its budget, and per seed the prompt found and the verdicts."""
    def verdict(flag) -> str:
        return "n/a" if flag is None else ("yes" if flag else "no")

    rate = (f"Attack success: {summary['asr']:.0%} of {len(summary['seeds'])} seeds (the unattacked prompt: "
            f"{summary['clean_rate']:.0%}), judged by {summary['judge']}."
            if summary["asr"] is not None else "No judge ships with this model: look at the images.")
    lines = [f"# {summary['attack']} on {summary['run']}", "",
             f"Concept prompt: `{summary['prompt']}` ({summary['kind']} {summary['concept']!r}); original: "
             f"{summary['original']}; budget {summary['config']['steps']} steps per seed, "
             f"{summary['seconds']:.0f} s in all.", "", rate, "", f"![unattacked and attacked images]({GRID_FILE})", "",
             "| seed | adversarial prompt | recognised | unattacked recognised | loss first -> last | images |",
             "|---|---|---|---|---|---|"]
    for r in summary["per_seed"]:
        found = f"`{r['prompt']}`" if r["prompt"] is not None else f"embeddings: `{r['files'].get('prompt_embeds')}`"
        loss = "n/a" if r["loss_first"] is None else f"{r['loss_first']:.4f} -> {r['loss_last']:.4f}"
        images = ", ".join(f"[{i}]({f})" for i, f in enumerate(r["files"]["images"]))
        lines.append(f"| {r['seed']} | {found} | {verdict(r['recognised'])} | {verdict(r['clean_recognised'])} | "
                     f"{loss} | {images} |")
    return "\n".join(lines) + "\n"
