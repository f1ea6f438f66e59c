"""The Gradio Blocks app: compare, runs, metrics and erase tabs over ``compare``, ``runs`` and ``erasing``.

Every handler validates what the browser sent (bounded sizes, base models from the start-up list
only, runs by name through ``runs.resolve_run``), turns bad input into a ``gr.Error`` the user
reads, and leaves the work to the library functions the CLI uses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from erasure.errors import ErasureInputError
from erasure.evaluation import SamplingSettings
from erasure.methods import available_methods
from erasure.pipelines.canvas.model import EMBEDDED_MODEL_NAME

from . import erasing
from .compare import Limits, ModelStore, check_request, compare, for_display, load_edits, run_names
from .runs import COST_COLUMNS, RUNS_HEADERS, RunEntry, adversarial_prompts, metrics_rows, runs_rows, scan_runs

logger = logging.getLogger(__name__)

#: Sampling defaults per base model: canvas-mini's are the evaluation's (where its quality was
#: measured), Stable Diffusion's the usual 7.5.
DEFAULT_STEPS = SamplingSettings().steps
GUIDANCE = {EMBEDDED_MODEL_NAME: SamplingSettings().guidance}
DEFAULT_GUIDANCE = 7.5
#: Small models' images are enlarged with nearest-neighbour; the browser should not blur them again.
APP_CSS = "#slider img, #gallery img { image-rendering: pixelated; }"
#: Cost columns in the order the plot offers them.
PLOT_COSTS = ("wall time (s)", "peak memory (GiB)", "edit size (MB)", "edited parameters", "steps")


@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input becomes a message in the browser; anything else is a bug, logged with its traceback.

    A bug still answers the request with a one-line message (Gradio's own, with ``show_error``
    off, tells the user to change the app's launch code); the details stay in the server's log.
    """
    try:
        yield
    except ErasureInputError as exc:
        logger.info("app: refused: %s", exc)
        raise gr.Error(" ".join(str(exc).split()), title="Cannot do that", print_exception=False) from None
    except gr.Error:
        raise
    except Exception as exc:
        logger.exception("app: request failed")
        raise gr.Error(f"the app failed on this request ({type(exc).__name__}); the details are in the server's log",
                       title="Failed", print_exception=False) from None


def _guidance(source: str) -> float:
    return GUIDANCE.get(source, DEFAULT_GUIDANCE)


@dataclass
class ComparisonApp:
    """The state behind the page: the runs folder, the base models, the limits."""

    runs_dir: Path
    store: ModelStore
    limits: Limits
    device: str = "auto"

    # -- runs, metrics
    def entries(self) -> list[RunEntry]:
        return scan_runs(self.runs_dir)

    def run_choices(self, entries: list[RunEntry]) -> list[tuple[str, str]]:
        return [(e.label(), e.name) for e in entries if e.ok]

    def refresh(self, selected: Sequence[str] | None = None):
        """Run menu, runs table, metrics table and plot, re-read from the runs folder."""
        with _user_errors():
            return self._refreshed(self.entries(), run_names(selected))

    def first_view(self, selected: Sequence[str] | None = None):
        """As ``refresh``, with the newest run made for the default model chosen when none is."""
        with _user_errors():
            selected = run_names(selected)
            entries = self.entries()
            if not selected:
                default = self.store.sources[0]
                finished = sorted((e for e in entries if e.ok), key=lambda e: str(e.manifest.get("created", "")))
                matching = [e for e in finished if e.base_source == default] or finished
                selected = [matching[-1].name] if matching else []
            return self._refreshed(entries, selected)

    def _refreshed(self, entries: list[RunEntry], selected: list[str]):
        names = {e.name for e in entries if e.ok}
        keep = [n for n in selected if n in names]  # a run deleted meanwhile (or never there) drops out
        headers, rows = metrics_rows(entries)
        measures, measure = _measures(headers, rows)
        return (
            gr.update(choices=self.run_choices(entries), value=keep),
            gr.update(value=runs_rows(entries), headers=RUNS_HEADERS),
            gr.update(value=rows, headers=headers),
            gr.update(choices=measures, value=measure),
            self.plot(measure, entries),
            gr.update(choices=adversarial_prompts(entries), value=None),
        )

    def plot(self, measure: str | None, entries: list[RunEntry] | None = None):
        """A bar per finished run for one measure; shown when at least two runs have it."""
        headers, rows = metrics_rows(entries if entries is not None else self.entries())
        if measure not in headers:
            return gr.update(visible=False)
        i = headers.index(measure)
        points = [(r[0], r[i]) for r in rows if r[i] is not None]
        frame = pd.DataFrame(points, columns=["run", measure])
        return gr.update(value=frame, x="run", y=measure, title=measure, visible=len(points) >= 2)

    # -- compare
    def generate(self, model: str, runs: list[str] | None, prompt: str, negative: str, seeds: str, steps, guidance,
                 progress=gr.Progress()):
        with _user_errors():
            request = check_request(prompt, negative, seeds, steps, guidance, runs, self.limits)
            started = time.perf_counter()
            progress(0, desc=f"waiting for {model}")

            def waiting() -> None:
                progress(0, desc=f"{Path(model).name} is busy with another request; queued")

            def report(done: float, total: int, what: str) -> None:
                progress((done, total), desc=f"generating: {what}", unit="images")

            with self.store.use(model, on_wait=waiting) as loaded:
                edits = load_edits(self.runs_dir, request.runs, loaded)
                images = compare(loaded, request, edits, report)
        logger.info("app: %d images for %r in %.1f s", sum(len(im) for _, im in images), request.prompt,
                    time.perf_counter() - started)
        return self._outputs(request, images, time.perf_counter() - started)

    def _outputs(self, request, images: list[tuple[str, list]], seconds: float):
        names = [name for name, _ in images]
        slider = gr.update(visible=False, value=None)
        if len(images) > 1:
            (_, original), (first_run, erased) = images[:2]
            slider = gr.update(
                value=(for_display(original[0]), for_display(erased[0])), visible=True,
                label=f"seed {request.seeds[0]}: original (left) | {first_run} (right); drag to compare",
            )
        # One row per model, one column per seed: the same seed lines up down a column.
        gallery_items = [(for_display(image), f"{name}, seed {seed}")
                         for name, row in images for image, seed in zip(row, request.seeds)]
        several = len(request.seeds) > 1 or len(names) != 2
        gallery = gr.update(value=gallery_items, columns=len(request.seeds), visible=several)
        count = len(gallery_items)
        seeds = ", ".join(map(str, request.seeds))
        status = (f"{count} images: {', '.join(names)} on seed{'s' if len(request.seeds) > 1 else ''} {seeds}; "
                  f"{request.steps} steps, guidance {request.guidance:g}; {seconds:.1f} s")
        return slider, gallery, status

    # -- erase
    def erase(self, method: str, kind: str, concept: str, preset: str, steps, name: str, settings: str,
              base: str = EMBEDDED_MODEL_NAME, progress=gr.Progress()):
        with _user_errors():
            job = erasing.check_job(self.runs_dir, method=method, kind=kind, concept=concept, preset=preset,
                                    steps=steps, name=name, settings=settings, max_steps=self.limits.max_erase_steps,
                                    base=base)
            progress(0, desc=f"loading {EMBEDDED_MODEL_NAME if job.base_run is None else base}")

            def report(stage: str, done: int, total: int, metrics: dict) -> None:
                extra = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                progress((done, total), desc=f"{stage} {extra}".strip(), unit="steps")

            summary = erasing.run_job(job, report, device=self.device)
        size, cost = summary["size"], summary["cost"]
        return (f"Finished **{summary['run']}**: {size['tensors']} tensors ({size['parameters']:,} parameters, "
                f"{size['bytes'] / 1e6:.1f} MB) in {cost.get('wall_seconds', 0):.1f} s. It is now in the run list.")


def _measures(headers: list[str], rows: list[list]) -> tuple[list[str], str | None]:
    """The plottable columns, and the one the plot starts on: the first that the most runs have.

    What erasure achieved (metrics.json) comes before what it cost (the manifest).
    """
    counts = {h: sum(r[headers.index(h)] is not None for r in rows) for h in headers[3:]}
    measures = [h for h in headers[3:] if h not in COST_COLUMNS and counts[h]]
    measures += [h for h in PLOT_COSTS if counts.get(h)]
    return measures, (max(measures, key=lambda h: counts[h]) if measures else None)


def build_app(runs_dir: str | Path, models: Sequence[str] = (EMBEDDED_MODEL_NAME,), *,
              limits: Limits | None = None, device: str = "auto") -> gr.Blocks:
    """The comparison app for the runs in ``runs_dir`` and the base ``models`` (the first is the default)."""
    state = ComparisonApp(Path(runs_dir).expanduser(), ModelStore(models, device=device), limits or Limits(), device)
    with gr.Blocks(title="erasure: compare", analytics_enabled=False) as demo:
        gr.Markdown("## erasure: original and erased models, same prompt, same seeds")
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                compare_tab = _compare_tab(state)
            with gr.Tab("Runs", id="runs"):
                runs_table = gr.Dataframe(headers=RUNS_HEADERS, interactive=False, wrap=True, label="run folders",
                                          elem_id="runs-table")
                refresh_runs = gr.Button("Re-read the runs folder", size="sm")
            with gr.Tab("Metrics", id="metrics"):
                metrics_table, measure, plot = _metrics_tab(state)
            with gr.Tab("Erase", id="erase"):
                erase_done = _erase_tab(state)
        refresh_outputs = [compare_tab["runs"], runs_table, metrics_table, measure, plot, compare_tab["attack_prompt"]]
        demo.load(state.first_view, inputs=compare_tab["runs"], outputs=refresh_outputs, api_name="runs")
        for trigger in (compare_tab["refresh"], refresh_runs):
            trigger.click(state.refresh, inputs=compare_tab["runs"], outputs=refresh_outputs, api_visibility="private")
        erase_done.then(state.refresh, inputs=compare_tab["runs"], outputs=refresh_outputs, api_visibility="private")
        measure.change(state.plot, inputs=measure, outputs=plot, api_visibility="private")
    return demo


def _compare_tab(state: ComparisonApp) -> dict:
    default_model = state.store.sources[0]
    limits = state.limits
    with gr.Row():
        model = gr.Dropdown([(state.store.label(s), s) for s in state.store.sources], value=default_model,
                            label="base model", elem_id="base-model")
        # Custom values allowed: a run finished after this page was built is still accepted;
        # resolve_run is what decides which names can be opened.
        runs = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, max_choices=limits.max_runs,
                           label=f"erased runs (up to {limits.max_runs})", elem_id="runs", scale=2)
        refresh = gr.Button("Refresh runs", size="sm", scale=0)
    with gr.Row():
        prompt = gr.Textbox(label="prompt", placeholder="a star in dotted style", max_length=limits.max_prompt_chars,
                            elem_id="prompt", scale=2)
        negative = gr.Textbox(label="negative prompt", max_length=limits.max_prompt_chars, elem_id="negative")
    # the text prompts `erasure attack` found, from attack folders in the runs folder: one pick fills the prompt
    attack_prompt = gr.Dropdown([], value=None, label="saved adversarial prompt (erasure attack)", elem_id="attack-prompt")
    attack_prompt.change(lambda picked: gr.update(value=picked) if picked else gr.update(), inputs=attack_prompt,
                         outputs=prompt, api_visibility="private")
    with gr.Row():
        seeds = gr.Textbox("0", label=f"seeds (e.g. 0, 0-3, 1,5; up to {limits.max_seeds})", elem_id="seeds")
        steps = gr.Slider(1, limits.max_steps, DEFAULT_STEPS, step=1, label="steps", elem_id="steps")
        guidance = gr.Slider(0, limits.max_guidance, _guidance(default_model), step=0.5, label="guidance",
                             elem_id="guidance")
    button = gr.Button("Generate", variant="primary", elem_id="generate")
    status = gr.Markdown(elem_id="status")
    slider = gr.ImageSlider(type="pil", format="png", interactive=False, visible=False, elem_id="slider",
                            label="original | erased", max_height=512)
    gallery = gr.Gallery(format="png", visible=False, elem_id="gallery", label="same seeds, side by side",
                         object_fit="contain", height="fit-content")  # Gradio's "auto" caps it at 55vh
    model.change(lambda s: gr.update(value=_guidance(s)), inputs=model, outputs=guidance, api_visibility="private")
    # preprocess=False (here and on the erase button): the handlers get the values as sent and check
    # every one themselves (check_request, check_job). Gradio's slider and number preprocessing
    # compares a text or a list with its bounds and fails with a bare TypeError, which a client sees
    # as an unexplained error and the server logs as a traceback.
    button.click(state.generate, inputs=[model, runs, prompt, negative, seeds, steps, guidance],
                 outputs=[slider, gallery, status], api_name="compare", preprocess=False,
                 # Up to one request per model at a time; ModelStore's per-model lock orders the rest.
                 concurrency_limit=len(state.store.sources), concurrency_id="generate")
    return {"runs": runs, "refresh": refresh, "attack_prompt": attack_prompt}


def _metrics_tab(state: ComparisonApp):
    gr.Markdown("Costs come from each run's manifest, metrics from its `metrics.json` (when there is one).")
    table = gr.Dataframe(interactive=False, wrap=True, label="runs: cost and metrics", elem_id="metrics-table")
    measure = gr.Dropdown([], label="plot", elem_id="measure")
    plot = gr.BarPlot(pd.DataFrame({"run": [], "value": []}), x="run", y="value", y_lim=[0, None], visible=False,
                      elem_id="plot")
    return table, measure, plot


def _erase_tab(state: ComparisonApp):
    gr.Markdown(f"Start a new erasure on the embedded model ({EMBEDDED_MODEL_NAME}), or on a finished run of the "
                "runs folder (sequential erasure: the new run continues that run's chain). The run is written into "
                "the runs folder and appears in the run list when it is done.")
    methods = available_methods()
    method = methods[0] if "esd" not in methods else "esd"
    with gr.Row():
        method_box = gr.Dropdown(methods, value=method, label="method", elem_id="erase-method")
        kind = gr.Dropdown(list(erasing.KINDS), value="style", label="kind", elem_id="erase-kind")
        concept = gr.Dropdown(erasing.concept_choices("style"), value="dotted", allow_custom_value=True,
                              label="concept", elem_id="erase-concept")
        preset = gr.Dropdown(list(erasing.presets(method)), value=erasing.default_preset(method, "style"),
                             label="preset", elem_id="erase-preset")
    with gr.Row():
        first_preset = erasing.default_preset(method, "style")
        steps = gr.Number(erasing.preset_steps(method, first_preset), precision=0, minimum=1,
                          label=f"training steps (the preset's; at most {state.limits.max_erase_steps})",
                          maximum=state.limits.max_erase_steps, elem_id="erase-steps")
        name = gr.Textbox(label="run name (empty: automatic)", max_length=64, elem_id="erase-name")
        settings = gr.Textbox(label="other settings, KEY=VALUE per line (as `erasure erase --set`)", lines=2,
                              max_length=erasing.MAX_SETTINGS_CHARS, elem_id="erase-settings")
        # Custom values allowed (a run finished after the page was built); check_job decides.
        base = gr.Dropdown(erasing.base_choices(state.runs_dir), value=EMBEDDED_MODEL_NAME, allow_custom_value=True,
                           label="start from (the embedded model, or a run to continue)", elem_id="erase-base")
    start = gr.Button("Start erasure", variant="primary", elem_id="erase-start")
    status = gr.Markdown(elem_id="erase-status")

    def on_base_focus():
        return gr.update(choices=erasing.base_choices(state.runs_dir))

    def on_kind(method_name: str, kind_name: str):
        choices = erasing.concept_choices(kind_name)
        return (gr.update(choices=choices, value=choices[0] if choices else ""),
                gr.update(value=erasing.default_preset(method_name, kind_name)))

    def on_method(method_name: str, kind_name: str):
        return gr.update(choices=list(erasing.presets(method_name)), value=erasing.default_preset(method_name, kind_name))

    def on_preset(method_name: str, preset_name: str):
        return gr.update(value=erasing.preset_steps(method_name, preset_name))

    kind.change(on_kind, inputs=[method_box, kind], outputs=[concept, preset], api_visibility="private")
    method_box.change(on_method, inputs=[method_box, kind], outputs=preset, api_visibility="private")
    preset.change(on_preset, inputs=[method_box, preset], outputs=steps, api_visibility="private")
    base.focus(on_base_focus, outputs=base, api_visibility="private")  # runs finished since the page was built
    done = start.click(state.erase, inputs=[method_box, kind, concept, preset, steps, name, settings, base],
                       outputs=status, api_name="erase", preprocess=False, concurrency_limit=1, concurrency_id="erase")
    done.then(on_base_focus, outputs=base, api_visibility="private")
    return done
