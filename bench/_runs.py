"""What the benches share: run an erasure once and reuse it while it is still valid, and write results.

The benches run as scripts (``python bench/NAME.py``), so this module is imported as ``_runs``.

- ``erase_once``: a canvas-mini run (or the next run of a chain), reused while it was made for the
  same request, method, config and weights (an unfinished one resumes).
- ``results_options``, ``parse``, ``write_results``, ``report_only``: every bench's ``--results DIR``
  (where ``NAME.json`` and ``NAME.md`` go; default bench/results) and ``--report-only`` (measure
  nothing: rewrite ``NAME.md`` from ``NAME.json``).
- ``canvas_options``, ``canvas_argv``, ``sampling``: the canvas-suite benches' common command line.
- ``machine``, ``page``, ``table``, ``row``, ``canvas_cells``, ``cost_cells``, ``yes_no``: the pieces of the
  results' markdown that the canvas benches write alike.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from erasure import ErasureRequest, erase
from erasure.api import method_config
from erasure.edit import CHECKPOINT_DIR, fingerprint, read_manifest
from erasure.erased import load_erased
from erasure.errors import ErasureInputError
from erasure.pipelines import load_pipeline
from erasure.progress import StageBars

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def erase_once(run: Path, request: ErasureRequest, method: str, config, start: Path | None = None, **overrides) -> Path:
    """Erase ``request`` from the shipped canvas-mini (or, with ``start``, from that run's pipeline: a
    chain) into ``run`` unless a finished run is there.

    A finished run is reused only while it was made for the same request by the same method and
    config from the same weights (a retrained model, a changed preset, another anchor or another
    predecessor invalidates it); an unfinished one resumes from its checkpoint.
    """
    pipe = load_erased(start) if start is not None else load_pipeline("canvas-mini")
    manifest = run / "manifest.json"
    if manifest.exists() and _made_by(read_manifest(run), request, method, config, pipe, overrides):
        return run
    start = time.time()
    resume = not manifest.exists() and (run / CHECKPOINT_DIR).is_dir()
    with StageBars() as bars:  # a bench's runs take minutes to hours: show them alive, also in a log
        if resume:
            try:
                erase(pipe, request, method, config=config, out=run, resume=True, progress=bars, **overrides)
            except ErasureInputError:  # made from other weights or settings: start again
                resume = False
        if not resume:
            shutil.rmtree(run, ignore_errors=True)
            erase(pipe, request, method, config=config, out=run, progress=bars, **overrides)
    print(f"{method}: erased {request.kind} {', '.join(map(repr, request.targets))} in {time.time() - start:.0f} s -> {run}", flush=True)
    return run


def method_overrides(bench: str, sets: list[str], methods: list[str]) -> dict[str, dict]:
    """``--set METHOD.KEY=VALUE`` (benches that run several methods) as {method: {key: value}}, every
    method present; a malformed one, or one naming a method the bench does not run, ends it with one line."""
    from erasure.config import parse_assignments

    out: dict[str, list[str]] = {m: [] for m in methods}
    for item in sets:
        method, _, assignment = item.partition(".")
        if method not in out or not assignment:
            raise SystemExit(f"{bench}: --set {item!r}: expected METHOD.KEY=VALUE with METHOD one of {', '.join(methods)}")
        out[method].append(assignment)
    try:
        return {m: parse_assignments(a, f"--set {m}.") for m, a in out.items()}
    except ErasureInputError as e:
        raise SystemExit(f"{bench}: {e}") from None


def _made_by(manifest: dict, request: ErasureRequest, method: str, config, pipe, overrides: dict) -> bool:
    wanted = method_config(method, config, **overrides).to_dict()
    return (manifest["method"] == method and manifest["config"] == wanted
            and manifest["request"] == request.resolve(pipe).to_dict()
            and manifest["base"]["fingerprint"] == fingerprint(pipe))


def shown(path: Path) -> str:
    """A path as results files show it: relative to the repository when inside it (no machine's folders)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if ROOT in path.parents else str(path)


# ----------------------------------------------------------------------------- results files
Markdown = Callable[[dict], str]


def results_options(ap: argparse.ArgumentParser, name: str) -> None:
    """``--results DIR`` and ``--report-only`` for the bench whose results are ``NAME.json``/``NAME.md``."""
    ap.add_argument("--results", type=Path, default=RESULTS, help=f"where {name}.json and {name}.md go (default bench/results)")
    ap.add_argument("--report-only", action="store_true",
                    help=f"measure nothing: rewrite RESULTS/{name}.md from RESULTS/{name}.json")


def canvas_options(ap: argparse.ArgumentParser, name: str, out: str, styles: Sequence[str] = ("dotted", "striped"),
                   objects: Sequence[str] = ("star",)) -> None:
    """The command line of a canvas-suite bench: the concepts, the suite's seeds and DDIM steps, ``--out``
    (runs, the suite's report and grids, the image cache) and the results options."""
    ap.add_argument("--styles", nargs="*", default=list(styles))
    ap.add_argument("--objects", nargs="*", default=list(objects))
    ap.add_argument("--seeds", default="0-1", help="seeds of the canvas suite (UA/IRA/CRA)")
    ap.add_argument("--sampling-steps", type=int, default=25, help="DDIM steps of the evaluation's images")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / out,
                    help="runs, the suite's report and grids, the image cache")
    results_options(ap, name)


def canvas_argv(args: argparse.Namespace) -> list[str]:
    """``canvas_options``' part of the command line the results record."""
    return ([f"--styles {' '.join(args.styles)}".strip(), f"--objects {' '.join(args.objects)}".strip(), f"--seeds {args.seeds}"]
            + ([f"--sampling-steps {args.sampling_steps}"] if args.sampling_steps != 25 else []))


def sampling(args: argparse.Namespace):
    """The suite's sampling settings from ``--seeds`` and ``--sampling-steps`` (guidance 3, DDIM)."""
    from erasure.evaluation import SamplingSettings
    from erasure.pipelines.generation import parse_seeds

    return SamplingSettings(steps=args.sampling_steps, seeds=parse_seeds(args.seeds))


def parse(ap: argparse.ArgumentParser, name: str, markdown: Markdown) -> argparse.Namespace | None:
    """The command line, with torch's seed set; None once ``--report-only`` has rewritten the markdown."""
    import torch

    args = ap.parse_args()
    if args.report_only:
        report_only(args.results, name, markdown)
        return None
    torch.manual_seed(0)
    return args


def write_results(results: Path, name: str, result: dict, markdown: Markdown) -> None:
    """``RESULTS/NAME.json`` and ``RESULTS/NAME.md``; the markdown is printed too."""
    results.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    (results / f"{name}.json").write_text(json.dumps(result, indent=2))
    (results / f"{name}.md").write_text(text)
    print(text)


def report_only(results: Path, name: str, markdown: Markdown) -> None:
    """Rewrite ``RESULTS/NAME.md`` from ``RESULTS/NAME.json`` (the numbers as measured; the text as the bench writes it now)."""
    path = results / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (run the bench first, or pass --results DIR)")
    (results / f"{name}.md").write_text(markdown(json.loads(path.read_text())))


# ----------------------------------------------------------------------------- markdown pieces
def machine() -> str:
    """What ran the bench: the CPU, torch's threads and the GPU where there is one."""
    import platform

    import torch

    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads" + (
        f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")


def page(title: str, *blocks: str | list[str]) -> str:
    """A results page: the title, then each block (a line, or a list of lines such as a ``table``), blank lines between."""
    lines = [title]
    for block in blocks:
        lines += ["", *([block] if isinstance(block, str) else block)]
    return "\n".join(lines) + "\n"


def row(cells: Iterable) -> str:
    """A markdown table row."""
    return "| " + " | ".join(map(str, cells)) + " |"


def table(heads: Sequence[str], rows: Iterable[Sequence | str]) -> list[str]:
    """A markdown table's lines: the header, its rule, then each row (a list of cells, or a line as written)."""
    return [row(heads), "|" + "---|" * len(heads), *(r if isinstance(r, str) else row(r) for r in rows)]


def canvas_cells(scores: dict) -> str:
    """UA | IRA | CRA of one side of a canvas-suite run."""
    return f"{scores['UA']:.1%} | {scores['IRA']:.1%} | {scores['CRA']:.1%}"


def cost_cells(run: dict, edit_digits: int = 2, wall_note: str = "") -> str:
    """time (s) | peak memory (GiB) | edit (MB) of a run's record (its manifest's ``cost``, ``edit_bytes``)."""
    cost = run["cost"]
    return (f"{cost.get('wall_seconds', 0):.0f}{wall_note} | {cost.get('peak_memory_bytes', 0) / 2**30:.2f} "
            f"| {run['edit_bytes'] / 1e6:.{edit_digits}f}")


def yes_no(flag: bool | None) -> str:
    """A bar's cell: yes, no, or blank where it was not asked."""
    return "" if flag is None else ("yes" if flag else "no")
