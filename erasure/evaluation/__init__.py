"""Evaluation of erased models against their original: suites, the driver, cached generation, reports.

``evaluate_runs(original, runs, suite=NAME, out=DIR)`` (CLI: ``erasure evaluate``) draws a suite's
prompts with the original model and with every erased run on the same seeds, scores both sides and
writes ``metrics.json``, ``report.md``, ``report.html`` and a before/after grid per run.

| module | what |
|---|---|
| ``registry`` | ``Suite``, ``SuiteConfig``, ``register_suite``, ``get_suite``, ``load_suite`` |
| ``suites/`` | one module per suite: canvas, memorization, sd_nudity, sd_style, sd_object |
| ``driver`` | ``evaluate_runs`` and ``Evaluation``: the original-versus-erased loop, written once |
| ``cache`` | ``SamplingSettings``, ``GenerationCache``, ``generate_cached``, ``shard`` |
| ``report`` | ``Column`` and the table model, ``markdown_report``, ``html_report`` |
| ``compare`` | ``compare_runs`` (``erasure compare``) |
| ``judges`` | local CLIP / FID weights, reference images, prompt files; ``ImageQuality`` |
| ``grids`` | the before/after pictures |
"""

from .cache import GenerationCache, SamplingSettings, generate_cached, shard
from .driver import HTML_REPORT_FILE, METRICS_FILE, REPORT_FILE, Evaluation, ProgressFn, check_runs, evaluate_runs
from .registry import Case, Probe, Suite, SuiteConfig, register_suite
from .suites import available_suites, get_suite, load_suite
from .report import Column, format_score, html_report, markdown_report, run_label, run_labels

__all__ = [
    "HTML_REPORT_FILE",
    "METRICS_FILE",
    "REPORT_FILE",
    "Case",
    "Column",
    "Evaluation",
    "GenerationCache",
    "Probe",
    "ProgressFn",
    "SamplingSettings",
    "Suite",
    "SuiteConfig",
    "available_suites",
    "check_runs",
    "evaluate_runs",
    "format_score",
    "generate_cached",
    "get_suite",
    "html_report",
    "load_suite",
    "markdown_report",
    "register_suite",
    "run_label",
    "run_labels",
    "shard",
]
