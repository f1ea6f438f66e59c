"""`erasure canvas ...`: build and inspect the embedded default model (canvas-mini)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from erasure.progress import StageBars

app = typer.Typer(help="The embedded default model canvas-mini: train it, render its data.", no_args_is_help=True)


@app.command()
def train(
    out: Path = typer.Option(..., help="Folder for data, checkpoints and the trained model (resumes if present)."),
    steps: int = typer.Option(None, help="Diffusion training steps (default: the shipped model's)."),
    seed: int = typer.Option(0, min=0, help="Seed of data, initialisation and every batch."),
    threads: int = typer.Option(0, min=0, help="Torch CPU threads (0: torch's default)."),
    init_from: str = typer.Option(None, help="Fine-tune from 'canvas-mini' (the shipped model) or an earlier training's --out folder, instead of training from scratch."),
    lr: float = typer.Option(None, help="UNet learning rate (default 1e-3)."),
    text_lr: float = typer.Option(None, help="Text-encoder learning rate (default 5e-4)."),
    min_snr_gamma: float = typer.Option(None, help="Min-SNR-gamma loss weighting (default 5; 0: none, the plain v-prediction loss)."),
    finetune_steps: int = typer.Option(None, help="Steps of the second stage, a plain v-loss fine-tune from the first stage's EMA weights (default 1200 from scratch, 0 with --init-from; 0: none)."),
    finetune_lr: float = typer.Option(None, help="The fine-tune's UNet learning rate (default 3e-4)."),
    install: bool = typer.Option(False, help="Copy the result into the package as the embedded canvas-mini."),
) -> None:
    """Train canvas-mini (text-to-image model, evaluator, CLIP) from scratch on the CPU, or fine-tune it.

    The defaults are the shipped model's recipe: 2,750 steps with Min-SNR-5 weighting at lr 1e-3,
    then 1,200 fine-tune steps with the plain v-loss at lr 3e-4. Run again with the same options to
    resume after an interruption.
    """
    from erasure.pipelines.canvas.train import DiffusionSettings, TrainSettings, init_source, install_weights, train_all

    if steps is not None and steps < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--steps")
    if finetune_steps is not None and finetune_steps < 0:
        raise typer.BadParameter("must be >= 0 (0: no fine-tune)", param_hint="--finetune-steps")
    for flag, value in (("--lr", lr), ("--text-lr", text_lr), ("--finetune-lr", finetune_lr)):
        if value is not None and value <= 0:
            raise typer.BadParameter("must be positive", param_hint=flag)
    if min_snr_gamma is not None and min_snr_gamma < 0:
        raise typer.BadParameter("must be >= 0 (0: no weighting)", param_hint="--min-snr-gamma")
    if init_from is not None:
        init_source(init_from)  # a missing starting point fails now, before any work
    chosen = {"steps": steps, "lr": lr, "text_lr": text_lr, "min_snr_gamma": min_snr_gamma}
    diffusion = replace(DiffusionSettings(), **{k: v for k, v in chosen.items() if v is not None})
    settings = TrainSettings(out=str(out), seed=seed, threads=threads, init_from=init_from, diffusion=diffusion)
    if finetune_steps is None:
        finetune_steps = 0 if init_from is not None else settings.finetune.steps  # --init-from is a fine-tune already
    if finetune_steps == 0 and finetune_lr is not None:
        raise typer.BadParameter("needs a fine-tune stage (--finetune-steps N)", param_hint="--finetune-lr")
    settings.finetune = None if finetune_steps == 0 else replace(
        settings.finetune, steps=finetune_steps, **({"lr": finetune_lr} if finetune_lr is not None else {}))
    # Rich bars on a terminal, throttled lines when stderr is a log file (a training runs for hours,
    # often as `... > log 2>&1`, where rich would draw nothing).
    with StageBars() as bars:
        model_dir = train_all(settings, bars)
    typer.echo(f"canvas-mini written to {model_dir}")
    if install:
        typer.echo(f"installed as the embedded model: {install_weights(out)}")


@app.command()
def render(
    out: Path = typer.Option(..., help="PNG file for the grid of real renders (objects x styles)."),
    seed: int = typer.Option(0, help="Render seed."),
    scale: int = typer.Option(3, min=1, max=16, help="Pixel upscale of each 32x32 cell."),
) -> None:
    """Draw the training data's objects x styles grid: what each concept looks like."""
    from erasure.atomic import atomic_path, check_output_file
    from erasure.errors import ErasureInputError
    from erasure.pipelines import image_grid
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, RESOLUTION
    from erasure.pipelines.canvas.render import render as draw

    if out.suffix.lower() != ".png":
        raise ErasureInputError(f"--out must be a .png file, got {out}")
    check_output_file(out, "--out")
    size = RESOLUTION * scale
    cells = [draw(o, s, seed).resize((size, size), 0) for o in OBJECTS for s in STYLES]
    grid = image_grid(cells, rows=len(OBJECTS), cols=len(STYLES), row_labels=list(OBJECTS), col_labels=list(STYLES))
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG")
    typer.echo(f"wrote {out}")
