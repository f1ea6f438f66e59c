"""The evaluation driver: the original-versus-erased loop every suite shares, written once.

``evaluate_runs(original, runs, suite=NAME, out=DIR)`` (CLI: ``erasure evaluate``) checks the input,
then for each erased run draws the suite's prompts with the original model and with the erased one
on the same seeds (cached on disk, ``erasure.evaluation.cache``), scores both sides with the suite,
and writes ``metrics.json``, ``report.md``, ``report.html`` and a before/after grid per run into
``DIR``, each atomically. What is generated and how it is scored is the suite's
(``erasure.evaluation.suites``); each run's erased concept comes from its manifest, so the original
is scored against the same targets ("before") as the erased model ("after").
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from erasure.atomic import atomic_path
from erasure.errors import ErasureInputError

from .cache import GenerationCache, SamplingSettings, generate_cached, shard
from .registry import Suite
from .suites import load_suite
from .report import format_score, html_report, markdown_report, run_labels

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
HTML_REPORT_FILE = "report.html"

#: progress(stage, done, total, metrics), as for training.
ProgressFn = Callable[[str, int, int, dict], None]


@dataclass
class Evaluation:
    """One evaluation in progress: its inputs, where images are cached and grids written, how models load.

    Suites receive it in ``prepare``, ``probe`` and ``report`` to generate (``generate``) with the
    original (``base()``) or an erased run (``erased(run)``)."""

    original: str
    runs: list[str]
    manifests: list[dict]
    suite: Suite
    settings: SamplingSettings
    out: Path
    cache: GenerationCache
    device: str = "auto"
    progress: ProgressFn | None = None
    _base: Any = field(default=None, repr=False)
    _base_images: dict = field(default_factory=dict, repr=False)  # the original's, per (prompts, seeds)

    def base(self):
        """The original pipeline (loaded once)."""
        from erasure.pipelines import load_pipeline

        if self._base is None:
            self._base = load_pipeline(self.original, device=self.device)
        return self._base

    def erased(self, run: str):
        from erasure.erased import load_erased
        from erasure.pipelines import load_pipeline

        # a fresh base: applying the edit must not change the original used for "before"
        return load_erased(run, base=load_pipeline(self.original, device=self.device))

    def generate(self, pipe, prompts: Sequence[str], name: str, seeds: Sequence[int] | None = None) -> list[Image.Image]:
        """Every (prompt, seed) image of ``pipe``, prompt-major, through the cache; progress as "generate NAME".
        ``seeds``: other seeds than the evaluation's (e.g. one seed for a large prompt set).

        The original's images are also kept in memory: every run is scored against them, and reading
        them back would fingerprint the whole model again each time."""
        settings = self.settings if seeds is None else replace(self.settings, seeds=list(seeds))
        key = (tuple(prompts), tuple(settings.seeds))
        original = pipe is self._base
        if original and key in self._base_images:
            return self._base_images[key]
        images = generate_cached(pipe, prompts, settings, self.cache, self.stage(f"generate {name}"))
        if original:
            self._base_images[key] = images
        return images

    def stage(self, name: str) -> Callable[[int, int], None] | None:
        """A progress callback for a suite's own long step (e.g. an attack), shown as stage ``name``."""
        if self.progress is None:
            return None
        progress = self.progress
        return lambda done, total: progress(name, done, total, {})

    @property
    def seeds(self) -> int:
        return len(self.settings.seeds)

    @cached_property
    def _labels(self) -> dict[str, str]:
        return dict(zip(map(str, self.runs), run_labels(self.runs)))

    def label(self, run: str) -> str:
        """The run's name in grid files, progress and reports (``report.run_labels``)."""
        return self._labels[str(run)]

    def save_grid(self, run: str, image: Image.Image) -> str:
        name = f"grid-{self.label(run)}.png"
        if shard()[0] != 0:  # only the main process writes files
            return name
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / name) as tmp:
            image.save(tmp, format="PNG")
        return name

    # -- the loop
    def run(self) -> dict:
        """The suite over every run: the content of metrics.json."""
        suite = self.suite
        self.check_bases()
        suite.prepare(self)
        scored_before: dict = {}
        entries, cases = [], []
        for run, manifest in zip(self.runs, self.manifests):
            case = suite.case(manifest)
            cases.append(case)
            label = self.label(run)
            before = self.generate(self.base(), case.prompts, "original")
            if case.key not in scored_before or case.key is None:
                scored_before[case.key] = suite.score(before, case)
            erased = self.erased(run)
            after = self.generate(erased, case.prompts, label)
            scores = {"before": dict(scored_before[case.key]), "after": suite.score(after, case)}
            probe = suite.probe(self, erased, case, label)
            scores["before"].update(probe.before)
            scores["after"].update(probe.after)
            grid = self.save_grid(run, suite.grid(before, after, case, manifest))
            entries.append(self._entry(run, manifest, scores, grid, probe.record))
        described = suite.report(self, cases)
        columns = [c.to_dict() for c in described.pop("columns")]
        summary, notes = described.pop("summary", []), described.pop("notes", [])
        return {**self._header(described.pop("judge"), described.pop("prompts")), **described,
                "summary": summary, "notes": notes, "columns": columns, "runs": entries}

    def check_bases(self) -> None:
        """Refuse a run erased from another model than the original before any image is drawn
        (``load_erased`` would refuse it too, but only after the original's images were made and cached).
        A run that ends a chain is compared by the model its chain started from."""
        from erasure.edit import fingerprint
        from erasure.erased import origin

        actual = fingerprint(self.base())
        for run, manifest in zip(self.runs, self.manifests):
            expected = origin(manifest).get("fingerprint")
            if expected is not None and expected != actual:
                raise ErasureInputError(
                    f"--erased {run}: erased from another model than {self.original} (weights fingerprint "
                    f"{str(expected)[:19]}... != {actual[:19]}...); evaluate it against "
                    f"{origin(manifest).get('source') or 'the model it was erased from'} with --original")

    def _entry(self, run: str, manifest: dict, scores: dict, grid: str, record: dict) -> dict:
        """One run's record in metrics.json (``before``: the original on the same prompts; ``erased``:
        what each run of its chain removed, first to last, the run itself last)."""
        from erasure.erased import erased_concepts

        return {"run": str(run), "label": self.label(run), "method": manifest["method"],
                "kind": manifest["request"]["kind"], "targets": manifest["request"]["targets"],
                "erased": erased_concepts(manifest, run),
                "before": scores["before"], "after": scores["after"], "cost": manifest.get("cost", {}),
                "grid": grid, **record}

    def _header(self, judge: str, prompts: int) -> dict:
        return {"suite": self.suite.name, "original": self.original, "description": self.suite.config.description,
                "judge": judge, "sampling": asdict(self.settings), "prompts": prompts}


def check_runs(original: str, runs: Sequence[str | os.PathLike], suite: Suite,
               out: str | os.PathLike | None = None) -> list[dict]:
    """The runs' manifests, refusing in one line, before any model loads: no runs, a broken or
    unfinished run folder, a run the suite cannot score, a local file the suite needs that is
    missing, an ``out`` folder that cannot be written or is a run's."""
    from erasure.erased import chain_links

    if not runs:
        raise ErasureInputError("no erased run to evaluate; give at least one --erased RUN")
    manifests = [chain_links(r)[-1][1] for r in runs]  # a run and every earlier run of its chain
    if out is not None:
        check_evaluation_output(out, runs)
    suite.check(original, manifests)
    return manifests


def check_evaluation_output(out: str | os.PathLike, runs: Sequence[str | os.PathLike]) -> Path:
    """Refuse an evaluation folder that cannot be written, or that is (or is inside) a run folder,
    whose files the report and the image cache would mix with; creates nothing."""
    from erasure.atomic import check_output_folder
    from erasure.edit import MANIFEST

    folder = check_output_folder(out, "--out")
    given = {Path(r).expanduser().resolve() for r in runs}
    resolved = folder.resolve()
    for place in (resolved, *resolved.parents):
        if place in given or (place / MANIFEST).is_file():
            raise ErasureInputError(f"--out {out}: inside the run folder {place}; write the evaluation elsewhere")
    return folder


def evaluate_runs(
    original: str,
    runs: Sequence[str | os.PathLike],
    *,
    suite: str | Suite = "canvas",
    out: str | os.PathLike,
    settings: SamplingSettings | None = None,
    suite_args: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> dict:
    """Score every erased run against ``original`` on ``suite``; write metrics.json, report.md, report.html
    and a before/after grid per run to ``out``.

    ``suite``: a registered name (configured from its YAML and ``suite_args``, the suite config's
    fields, e.g. ``{"nudity_threshold": 0.5}``) or a ``Suite``; ``settings``: sampling (default: the
    suite's). Returns the content of ``metrics.json``.
    """
    if isinstance(suite, str):
        suite = load_suite(suite, **(suite_args or {}))
    elif suite_args:
        raise ErasureInputError("suite_args apply to a suite given by name; configure a Suite object directly")
    manifests = check_runs(original, runs, suite, out)
    out = Path(out)
    ev = Evaluation(original=original, runs=[str(r) for r in runs], manifests=manifests, suite=suite,
                    settings=settings or suite.config.sampling(), out=out,
                    cache=GenerationCache(cache_dir if cache_dir is not None else out / "cache"),
                    device=device, progress=progress)
    # Join the process group before any model loads, with the backend for the device they load on,
    # so no later call (a suite's own, the CLI's) can pick it from a guess.
    shard(device)
    metrics = ev.run()
    rank, world = shard()
    if rank == 0:  # every process holds the same images and scores; one writes them
        _write_text(out / METRICS_FILE, json.dumps(metrics, indent=2))
        _write_text(out / REPORT_FILE, markdown_report(metrics))
        _write_text(out / HTML_REPORT_FILE, html_report(metrics))
        _record_in_runs(metrics, out / METRICS_FILE)
    if world > 1:
        from erasure.training import process_state

        process_state().wait_for_everyone()
    return metrics


def _record_in_runs(metrics: dict, metrics_path: Path) -> None:
    """Each run's scores into its folder (``evaluations.json``) and its model card (``erasure.model_card``)."""
    from erasure.model_card import record_evaluation

    columns = [c for c in metrics.get("columns", []) if "key" in c]
    for entry in metrics.get("runs", []):
        before, after = entry.get("before") or {}, entry.get("after") or {}
        scores = [{"label": c.get("label", c["key"]), "before": before.get(c["key"]), "after": after.get(c["key"]),
                   "shown": [format_score(before.get(c["key"]), c.get("format")),
                             format_score(after.get(c["key"]), c.get("format"))]} for c in columns]
        record_evaluation(entry["run"], {"suite": metrics.get("suite"), "metrics": str(metrics_path.resolve()),
                                         "scores": scores})


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
