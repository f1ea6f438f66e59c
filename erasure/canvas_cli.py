"""`erasure canvas ...`: build and inspect the embedded default model (canvas-mini)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

app = typer.Typer(help="The embedded default model canvas-mini: train it, render its data.", no_args_is_help=True)


class _StageBars:
    """One rich progress bar per training stage, fed by the library's progress callback."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int, metrics: dict) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, info="")
        info = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        self.progress.update(self.tasks[stage], completed=done, info=info)


@app.command()
def train(
    out: Path = typer.Option(..., help="Folder for data, checkpoints and the trained model (resumes if present)."),
    steps: int = typer.Option(None, help="Diffusion training steps (default: the shipped model's)."),
    seed: int = typer.Option(0, help="Seed of data, initialisation and every batch."),
    threads: int = typer.Option(0, help="Torch CPU threads (0: torch's default)."),
    install: bool = typer.Option(False, help="Copy the result into the package as the embedded canvas-mini."),
) -> None:
    """Train canvas-mini (text-to-image model and its evaluator) from scratch on the CPU."""
    from erasure.pipelines.canvas.train import TrainSettings, install_weights, train_all

    settings = TrainSettings(out=str(out), seed=seed, threads=threads)
    if steps is not None:
        if steps < 1:
            raise typer.BadParameter("must be at least 1", param_hint="--steps")
        settings.diffusion.steps = steps
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns) as progress:
        model_dir = train_all(settings, _StageBars(progress))
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
    from erasure.atomic import atomic_path
    from erasure.errors import ErasureInputError
    from erasure.pipelines import image_grid
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, RESOLUTION
    from erasure.pipelines.canvas.render import render as draw

    if out.suffix.lower() != ".png":
        raise ErasureInputError(f"--out must be a .png file, got {out}")
    size = RESOLUTION * scale
    cells = [draw(o, s, seed).resize((size, size), 0) for o in OBJECTS for s in STYLES]
    grid = image_grid(cells, rows=len(OBJECTS), cols=len(STYLES), row_labels=list(OBJECTS), col_labels=list(STYLES))
    with atomic_path(out) as tmp:
        grid.save(tmp, format="PNG")
    typer.echo(f"wrote {out}")
