"""The ``erasure`` command line: a thin layer over the library.

Bad input (click usage errors and ``ErasureInputError``) becomes one line on stderr and exit code
2, with no traceback; any other exception is a bug and keeps its traceback. Heavy imports (torch,
diffusers) happen inside commands so ``erasure --help`` stays quick.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

try:  # recent typer vendors click as typer._click, and its commands raise those exception classes
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # older typer runs on click itself
    from click.exceptions import ClickException, NoArgsIsHelpError

from erasure import canvas_cli
from erasure.config import DEFAULTS
from erasure.errors import ErasureInputError
from erasure.progress import ProgressBar, StageBars

app = typer.Typer(
    name="erasure",
    help="Remove concepts from text-to-image diffusion models, measure the removal, compare before and after.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(canvas_cli.app, name="canvas")


@app.callback()
def _options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the toolkit does (to stderr).")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _quiet_libraries() -> None:
    # diffusers and transformers print loading bars and advisory warnings on their own; the CLI
    # reports progress itself and keeps stderr for real problems.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()

# Options shared by the commands that load a model.
ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Diffusers folder, single .safetensors checkpoint (with --config), or 'canvas-mini'."),
]
ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="For a single-file checkpoint: local diffusers folder with the component configs."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps. Under accelerate launch / torchrun, "
                                                       "auto and cuda mean each process's own GPU (cuda:LOCAL_RANK).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (half on GPU, fp32 on CPU), fp32, fp16 or bf16.")]
AttentionOpt = Annotated[str, typer.Option("--attention", help="auto, sdpa or xformers.")]


@app.command()
def generate(
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt; repeat for more rows.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Grid image to write (.png, .jpg or .webp).")],
    model: ModelOpt = "canvas-mini",
    seeds: Annotated[str, typer.Option("--seeds", "-s", help="Seeds: ranges and lists, e.g. 0-7 or 0,3,5.")] = "0-3",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Denoising steps.")] = 25,
    guidance: Annotated[float, typer.Option("--guidance", min=0.0, help="Classifier-free guidance scale.")] = 7.5,
    negative_prompt: Annotated[Optional[str], typer.Option("--negative-prompt", help="Negative prompt for every image.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per pipeline call.")] = 4,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Sampler: ddim, pndm, euler, euler-a, dpm++, ...")] = None,
    config: ConfigOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    attention: AttentionOpt = "auto",
) -> None:
    """Generate a grid of images: one row per prompt, one column per seed, labelled."""
    from erasure.atomic import check_output_file
    from erasure.pipelines import generate as run_generation
    from erasure.pipelines import check_scheduler, image_grid, load_pipeline, parse_seeds

    # Validate everything cheap before loading weights, so mistakes fail in a second.
    seed_list = parse_seeds(seeds)
    image_format = _image_format(out)
    check_output_file(out, "--out")  # an unwritable --out fails now, not after the generation
    if scheduler is not None:
        check_scheduler(scheduler)
    _quiet_libraries()
    pipe = load_pipeline(model, config=config, device=device, dtype=dtype, attention=attention)
    with ProgressBar("generating") as report:
        images = run_generation(
            pipe, prompt, seeds=seed_list, steps=steps, guidance=guidance, batch_size=batch_size,
            negative_prompt=negative_prompt, scheduler=scheduler, progress=report,
        )
    grid = image_grid(images, len(prompt), len(seed_list), row_labels=prompt,
                      col_labels=[f"seed {s}" for s in seed_list], min_cell=128)
    _save_image(grid, out, image_format)
    typer.echo(f"wrote {out} ({_count(len(prompt), 'prompt')} x {_count(len(seed_list), 'seed')})")


@app.command()
def info(
    model: ModelOpt = "canvas-mini",
    config: ConfigOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    attention: AttentionOpt = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Describe a model: components, parameter counts, scheduler, attention backend, device, dtype."""
    from erasure.pipelines import describe, load_pipeline

    _quiet_libraries()
    summary = describe(load_pipeline(model, config=config, device=device, dtype=dtype, attention=attention))
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    typer.echo(f"model:      {model}")
    typer.echo(f"pipeline:   {summary.pipeline}")
    typer.echo(f"scheduler:  {summary.scheduler}")
    typer.echo(f"attention:  {summary.attention}")
    typer.echo(f"device:     {summary.device}")
    typer.echo(f"dtype:      {summary.dtype}")
    typer.echo("components:")
    for c in summary.components:
        count = f"{c.parameters:>15,} params" if c.parameters is not None else ""
        typer.echo(f"  {c.name:<18} {c.class_name:<30} {count}".rstrip())
    typer.echo(f"  {'total':<18} {'':<30} {summary.total_parameters:>15,} params")


@app.command()
def erase(
    concept: Annotated[list[str], typer.Option("--concept", "-c", help="Concept to erase; repeat for several.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write (checkpoints, edit.safetensors, manifest.json).")],
    method: Annotated[str, typer.Option("--method", help="Erasure method (esd, ...).")] = "esd",
    model: Annotated[str, typer.Option("--model", "-m", help="Diffusers folder, single .safetensors checkpoint (with --model-config), 'canvas-mini', or a finished run folder to continue (sequential erasure: the new run starts from that run's erased model and records the chain).")] = "canvas-mini",
    kind: Annotated[str, typer.Option("--kind", help="style, object, nudity, memorized or custom.")] = "custom",
    anchor: Annotated[Optional[str], typer.Option("--anchor", help="What the concept should become (methods that use one).")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="Prompt that evokes the concept (default per kind); repeat for several.")] = None,
    retain: Annotated[Optional[list[str]], typer.Option("--retain", help="Prompt whose images must not change (default per kind, e.g. \"a photo of a {COCO class}\" on Stable Diffusion); repeat for several.")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Method config file (.yaml or .json), e.g. configs/esd/canvas-mini-style.yaml, or 'defaults' for the method's own. Default: the preset shipped for the method, model and --kind, if any.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Training steps (overrides the config).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (overrides the config).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed (overrides the config).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any config value, KEY=VALUE (YAML value); repeatable.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the unfinished run in --out from its last checkpoint.")] = False,
    export_full: Annotated[bool, typer.Option("--export-full", help="Also save the whole erased pipeline under OUT/full.")] = False,
    export_text_encoder: Annotated[Optional[Path], typer.Option("--export-text-encoder", help="Also write the erased text encoder (text-encoder methods: advunlearn) as a transformers CLIPTextModel folder here, to plug into other pipelines.")] = None,
    model_config: Annotated[Optional[Path], typer.Option("--model-config", help="For a single-file checkpoint: local diffusers folder with the component configs.")] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    attention: AttentionOpt = "auto",
) -> None:
    """Erase concepts from a model (or from an erased run: --model RUN); writes a run folder that `load_erased` and the other commands read."""
    from erasure.api import check_output, choose_config
    from erasure.config import parse_assignments
    from erasure.erased import base_run
    from erasure.request import ErasureRequest

    # Everything that costs nothing is checked before the model loads and before OUT is created.
    request = ErasureRequest(targets=concept, kind=kind, anchor=anchor, prompts=prompt, retain=retain)
    # A run folder as --model: its chain is checked now, and presets, family and model checks go by
    # the model the chain started from (its source and configs).
    previous, model, model_config = base_run(model, model_config)
    overrides = parse_assignments(set_ or [])
    overrides.update({k: v for k, v in (("steps", steps), ("lr", lr), ("seed", seed)) if v is not None})
    config_arg = str(config) if config is not None and str(config) == DEFAULTS else config
    _, config_source = choose_config(method, config_arg, model, kind, model_config=model_config, overrides=overrides)
    check_output(out, resume)
    if export_text_encoder is not None:
        from erasure.export import check_new_folder
        from erasure.methods.advunlearn import TEXT_ENCODER_METHODS

        if method not in TEXT_ENCODER_METHODS:
            raise ErasureInputError(f"--export-text-encoder: {method} does not train the text encoder alone "
                                    f"(methods that do: {', '.join(TEXT_ENCODER_METHODS)})")
        check_new_folder(export_text_encoder, "--export-text-encoder")
    from erasure.families import family_of_source

    request.resolve(family_of_source(model))  # e.g. a style canvas-mini does not have fails here, before loading
    from erasure.methods import get_method

    get_method(method).check_model(model, model_config)  # e.g. advunlearn refuses SDXL from model_index.json
    _quiet_libraries()
    from erasure.api import erase as run_erase
    from erasure.pipelines import load_pipeline

    if previous is not None:
        from erasure.erased import load_erased

        pipe = load_erased(previous, device=device, dtype=dtype, attention=attention)
    else:
        pipe = load_pipeline(model, config=model_config, device=device, dtype=dtype, attention=attention)
    typer.echo(f"config: {_config_line(method, config_source)}")  # after the load: a bad model is one line alone
    if previous is not None:
        typer.echo(f"base: the erased model of run {previous} (the new run records the chain)")
    with StageBars() as bars:
        edit = run_erase(pipe, request, method, config=config_arg, out=out, resume=resume, export_full=export_full,
                         progress=bars, **overrides)
    from erasure.training import process_state

    if not process_state().is_main_process:
        return  # under `accelerate launch` the main process reports
    size = edit.size()
    cost = edit.cost
    typer.echo(
        f"wrote {out}: {method} edit of {_count(size['tensors'], 'tensor')} ({size['parameters']:,} parameters, "
        f"{size['bytes'] / 1e6:.1f} MB) in {cost.get('wall_seconds', 0):.1f} s, peak memory "
        f"{cost.get('peak_memory_bytes', 0) / 2**30:.2f} GiB"
    )
    if export_text_encoder is not None:
        _export(out, "text-encoder", export_text_encoder)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Finished run folder (erasure erase --out).")],
    to: Annotated[str, typer.Option("--to", help="single-file (one original-layout .safetensors: AUTOMATIC1111, ComfyUI, from_single_file), diffusers (a from_pretrained folder), lora (load_lora_weights folder) or text-encoder (a CLIPTextModel folder, text-encoder edits).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File (single-file: .safetensors) or new folder (the other formats) to write.")],
    rank: Annotated[Optional[int], typer.Option("--rank", min=1, help="lora: the rank of every tensor's LoRA (capped at its delta's rank).")] = None,
    energy: Annotated[Optional[float], typer.Option("--energy", min=0.0, max=1.0, help="lora: per tensor, the smallest rank holding this share of the delta's squared norm (default 0.99 when --rank is not given).")] = None,
    lora_bias: Annotated[bool, typer.Option("--lora-bias/--no-lora-bias", help="lora: carry changed biases exactly as lora_B biases (--no-lora-bias leaves them out so that fuse_lora works on every layer).")] = True,
    device: DeviceOpt = "cpu",
) -> None:
    """Export a run for other tools; reloads the export with their loader and checks it against load_erased."""
    _export(run, to, out, rank=rank, energy=energy, lora_bias=lora_bias, device=device)


def _export(run: Path, to: str, out: Path, **options) -> None:
    from erasure.export import export_run

    _quiet_libraries()
    with StageBars() as bars:
        result = export_run(run, to, out, progress=bars, **options)
    check = result.check
    typer.echo(f"wrote {result.path} ({to}, {result.details.get('bytes', 0) / 1e6:.1f} MB) and {result.card.name}; "
               f"check: {check['loader']} vs load_erased, max pixel difference {check['max_abs_diff']}/255")
    lora = result.details.get("lora")
    if lora:
        typer.echo(f"lora: {lora['modules']} modules, max rank {lora['max_rank']}, relative weight error "
                   f"{100 * lora['relative_error']:.2f}%" + ("" if result.details.get("fusable") else
                                                            "; lora_B biases: fuse_lora cannot merge it (--no-lora-bias can)")
                   + (f"; {len(lora['left_out'])} tensors a LoRA cannot hold left out" if lora["left_out"] else ""))


def _config_line(method: str, source: str) -> str:
    """One line saying which config an erasure runs with, and how to choose another."""
    if source.startswith("preset "):
        name = source.removeprefix("preset ")
        return f"the shipped preset configs/{name}.yaml (--config FILE for another, --config {DEFAULTS} for {method}'s own)"
    if source == DEFAULTS:
        return f"{method}'s own defaults, its paper's (no preset for this model and kind; --config FILE for another)"
    return source.removeprefix("file ")


SeedsOpt = Annotated[str, typer.Option("--seeds", help="Seeds per prompt, e.g. 0-1 or 0,3,5.")]


@app.command()
def evaluate(
    erased: Annotated[list[Path], typer.Option("--erased", "-e", help="Run folder of an erased model; repeat for several.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.json, report.md, grids and the image cache.")],
    original: Annotated[str, typer.Option("--original", help="The model the runs were erased from.")] = "canvas-mini",
    suite: Annotated[str, typer.Option("--suite", help="Evaluation suite by name (`erasure suites` lists them with their settings).")] = "canvas",
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Seeds per prompt, e.g. 0-1 or 0,3,5 (default: the suite's).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Sampling steps (default: the suite's).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", min=0.0, help="Classifier-free guidance scale (default: the suite's).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per pipeline call.")] = 32,
    clip: Annotated[Optional[str], typer.Option("--clip", help="CLIP for CLIP scores (SD suites, memorization's clip embedding): ARCH:WEIGHTS (open_clip architecture, local checkpoint), local-dir:FOLDER or canvas-mini.")] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="Folder of reference images: adds FID/KID (SD suites).")] = None,
    fid_features: Annotated[Optional[str], typer.Option("--fid-features", help="FID/KID features: inception (weights in torch hub's cache; the default), inception:WEIGHTS or canvas-evaluator.")] = None,
    suite_arg: Annotated[Optional[list[str]], typer.Option("--suite-arg", "-a", help="A suite setting, KEY=VALUE (YAML value), e.g. attack=true (canvas), nudity_threshold=0.5 (sd-nudity), training_images=DIR (memorization); repeatable. `erasure suites` lists them.")] = None,
    attack: Annotated[Optional[str], typer.Option("--attack", help="Attacks to run per run, comma-separated (`erasure attacks` lists them), e.g. soft-prompt,unlearndiffatk: their success rates before and after (canvas).")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Score erased runs against the original on a suite; writes metrics.json, report.md and report.html."""
    from erasure.config import parse_assignments
    from erasure.evaluation import check_runs, evaluate_runs, get_suite, load_suite, shard
    from erasure.evaluation.registry import suite_args
    from erasure.evaluation.report import score_table
    from erasure.pipelines.generation import parse_seeds

    args = parse_assignments(suite_arg or [], "--suite-arg")
    takes = suite_args(get_suite(suite))
    for flag, key, value in (("--clip", "clip", clip), ("--reference", "reference", reference),
                             ("--fid-features", "fid_features", fid_features)):
        if value is not None:
            if key not in takes:
                raise ErasureInputError(f"{flag}: the {suite} suite does not use it")
            args[key] = str(value)
    args.update({k: v for k, v in (("steps", steps), ("guidance", guidance)) if v is not None})
    if seeds:
        args["seeds"] = parse_seeds(seeds)
    if attack is not None:
        if "attacks" not in takes:
            raise ErasureInputError(f"--attack: the {suite} suite runs no attacks")
        args["attacks"] = [a.strip() for a in attack.split(",") if a.strip()]
        if not args["attacks"]:
            raise ErasureInputError("--attack: no attack named")
    configured = load_suite(suite, **args)
    check_runs(original, erased, configured, out)  # bad input, --out included, fails in one line before any model loads
    _quiet_libraries()
    with StageBars() as bars:
        metrics = evaluate_runs(original, erased, suite=configured, out=out,
                                settings=configured.config.sampling(batch_size), device=device, progress=bars)
    if shard()[0] != 0:  # under a launcher every process holds the same scores: the main one prints them
        return
    _print_table(f"{metrics['suite']} suite: original -> erased", score_table(metrics, target_width=40))
    typer.echo(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and {out / 'report.html'}")


@app.command()
def attack(
    run: Annotated[Path, typer.Argument(help="Run folder of an erased model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder for the adversarial prompts or embeddings, images, attack.json, report.md and grid.png.")],
    attack_name: Annotated[str, typer.Option("--attack", help="Attack by name (`erasure attacks` lists them).")] = "unlearndiffatk",
    concept: Annotated[Optional[str], typer.Option("--concept", "-c", help="Concept prompt to attack (default: the prompt the run erased its first target with).")] = None,
    original: Annotated[Optional[str], typer.Option("--original", help="The model before erasure (default: the one the run's chain started from).")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Attack seeds, e.g. 0-3 or 0,5: one attack and one image each.")] = "0-3",
    budget: Annotated[Optional[int], typer.Option("--budget", min=1, help="Optimisation steps per seed (default: the attack's).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any attack setting, KEY=VALUE (YAML value); repeatable.")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Attack an erased run: can the concept still be brought back? Writes what the attack found and a report."""
    from erasure.config import parse_assignments
    from erasure.evaluation.attack_run import attack_run, check_attack_run
    from erasure.pipelines.generation import parse_seeds

    settings = parse_assignments(set_ or [])
    if budget is not None:
        settings["steps"] = budget
    seed_list = parse_seeds(seeds)
    _, configured = check_attack_run(run, attack_name, settings, out, concept)  # one line, nothing written, before any model loads
    _quiet_libraries()
    with StageBars() as bars:
        summary = attack_run(run, configured, seeds=seed_list, out=out, concept=concept,
                             original=original, device=device, progress=bars)
    for r in summary["per_seed"]:
        found = r["prompt"] if r["prompt"] is not None else r["files"]["prompt_embeds"]
        verdict = "" if r["recognised"] is None else (" (recognised)" if r["recognised"] else " (not recognised)")
        typer.echo(f"seed {r['seed']}: {found}{verdict}")
    if summary["asr"] is not None:
        typer.echo(f"attack success {summary['asr']:.0%} of {len(seed_list)} seeds; the unattacked prompt {summary['clean_rate']:.0%}")
    typer.echo(f"wrote {out}: attack.json, report.md, grid.png and each seed's findings")


@app.command()
def attacks() -> None:
    """List the attacks and the settings each takes (`erasure attack --set KEY=VALUE`)."""
    from rich.console import Console
    from rich.table import Table

    from erasure.attacks import available_attacks, get_attack

    table = Table(title="attacks on erased models")
    for head in ("attack", "what it finds", "--set KEY (default)"):
        table.add_column(head, overflow="fold")
    for name in available_attacks():
        cls = get_attack(name)
        config = cls.config_class()
        args = ", ".join(f"{k} ({_short(v)})" for k, v in config.to_dict().items())
        table.add_row(name, (cls.__doc__ or "").strip().splitlines()[0], args)
    Console().print(table)


@app.command()
def suites() -> None:
    """List the evaluation suites and the settings each takes (`erasure evaluate --suite-arg KEY=VALUE`)."""
    from rich.console import Console
    from rich.table import Table

    from erasure.evaluation import available_suites, get_suite, load_suite
    from erasure.evaluation.registry import suite_args

    table = Table(title="evaluation suites (defaults from configs/suites/NAME.yaml)")
    for head in ("suite", "what it measures", "--suite-arg KEY (default)"):
        table.add_column(head, overflow="fold")
    for name in available_suites():
        config = load_suite(name).config
        args = ", ".join(f"{k} ({_short(getattr(config, k))})" for k in suite_args(get_suite(name)))
        table.add_row(name, config.description, args)
    Console().print(table)


def _short(value, width: int = 24) -> str:
    text = str(value)
    return text if len(text) <= width else f"{len(value)} items" if isinstance(value, list) else text[:width - 3] + "..."


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to compare.")],
    metrics: Annotated[Optional[list[Path]], typer.Option("--metrics", "-m", help="An evaluation's metrics.json (or its folder) with scores for these runs; repeatable.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also write the table as markdown to this file.")] = None,
) -> None:
    """Tabulate several runs side by side: method, settings, cost, edit size and, given evaluations,
    every score they report after erasure (UA/IRA/CRA, nudity rate, memorized share, FID, ...)."""
    from erasure.evaluation.compare import check_compare_output, compare_runs, comparison_columns, comparison_table

    if out is not None:
        check_compare_output(out, runs, metrics or [])  # before reading anything: a bad --out fails first
    rows = compare_runs(runs, metrics or [])
    table = comparison_table(rows, comparison_columns(metrics or []))
    _print_table("runs compared (scores after erasure)", table)
    if out is not None:
        from erasure.atomic import atomic_path

        with atomic_path(out) as tmp:
            Path(tmp).write_text(table.markdown(split=False), encoding="utf-8")
        typer.echo(f"wrote {out}")


def _print_table(title: str, table) -> None:
    """A report table (``erasure.evaluation.report.Table``) on the console, one column per run."""
    from rich.console import Console
    from rich.table import Table

    names, rows = table.transposed()
    console_table = Table(title=title)
    console_table.add_column("")
    for name in names:
        console_table.add_column(name, overflow="fold")
    for row in rows:
        console_table.add_row(*row)
    Console().print(console_table)


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run, metrics.json, report.md and the grid.")] = Path("runs/quickstart"),
    concept: Annotated[str, typer.Option("--concept", "-c", help="canvas-mini style to erase.")] = "dotted",
    method: Annotated[str, typer.Option("--method", help="Erasure method.")] = "esd",
    steps: Annotated[Optional[int], typer.Option("--steps", help="Training steps (default: the method's canvas-mini preset).")] = None,
    seeds: SeedsOpt = "0-1",
) -> None:
    """Erase one style from the embedded canvas-mini, then compare before and after (a few minutes on a CPU)."""
    from erasure.evaluation.report import score_table
    from erasure.pipelines.generation import parse_seeds
    from erasure.quickstart import check_quickstart
    from erasure.quickstart import quickstart as run_quickstart

    seed_list = parse_seeds(seeds)
    check_quickstart(out, concept, method, steps)
    _quiet_libraries()
    with StageBars() as bars:
        metrics = run_quickstart(out, concept=concept, method=method, steps=steps, seeds=seed_list, progress=bars)
    headline = {**metrics, "columns": [c for c in metrics["columns"] if c["key"] in ("UA", "IRA", "CRA")]}
    _print_table(f"{metrics['suite']} suite: before -> after", score_table(headline, target_width=40))
    typer.echo("UA: the erased style is no longer recognised; IRA / CRA: the other styles and the objects still are")
    typer.echo(f"wrote {out}: run/, metrics.json, report.md, {metrics['runs'][0]['grid']}")


@app.command("app")
def app_command(
    runs: Annotated[Path, typer.Option("--runs", help="Folder of run folders to show; the app reads nothing outside it and writes new runs into it.")] = Path("runs"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on; the default is this machine only.")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option("--port", min=1, max=65535, help="Port (default: 7860 or the next free one).")] = None,
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="Base model (diffusers folder) to offer besides canvas-mini; repeatable; the first is the default.")] = None,
    share: Annotated[bool, typer.Option("--share", help="Also open a public gradio.live link (anyone with it can use the app).")] = False,
) -> None:
    """Launch the comparison app (Gradio): original and erased models on the same prompt and seeds."""
    from erasure.app import launch

    _quiet_libraries()
    running = launch(runs, [*(model or []), "canvas-mini"], host=host, port=port, share=share)
    public = f", public link {running.share_url}" if running.share_url else ""
    typer.echo(f"erasure app: {running.url} (runs: {runs}{public}); Ctrl+C stops it")
    running.block()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _image_format(out: Path) -> str:
    from PIL import Image

    image_format = Image.registered_extensions().get(out.suffix.lower())
    if image_format not in ("PNG", "JPEG", "WEBP"):
        raise ErasureInputError(f"--out {out}: unsupported image type {out.suffix or '(none)'!r}; use .png, .jpg or .webp")
    return image_format


def _save_image(image, out: Path, image_format: str) -> None:
    from erasure.atomic import atomic_path

    with atomic_path(out) as tmp:
        image.save(tmp, format=image_format)


def _fail(message: str, code: int = 2) -> None:
    # One line: multi-line messages (diffusers errors, click's) are folded.
    typer.echo("erasure: error: " + " ".join(message.split()), err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``erasure``)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="erasure", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help())
        sys.exit(0)
    except ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except ErasureInputError as exc:
        _fail(str(exc))
    sys.exit(code if isinstance(code, int) else 0)
