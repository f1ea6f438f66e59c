"""`erasure evaluate` / `erasure quickstart` mechanics on canvas-mini, with tiny settings.

The scores' meaning (that ESD lowers UA's concept and keeps the rest) is asserted in test_esd.py
and measured by bench/esd_canvas.py; here: files, caching, targets, the CLI's errors.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from erasure import ErasureRequest, erase
from erasure.cli import main
from erasure.errors import ErasureInputError
from erasure.evaluation import GenerationCache, SamplingSettings, evaluate_runs, generate_cached
from erasure.evaluation.suites.canvas import canvas_cases, canvas_targets
from erasure.pipelines import load_pipeline

TINY = SamplingSettings(steps=3, guidance=5.0, seeds=[0], batch_size=64)
TINY_ESD = dict(steps=2, ddim_steps=6, precompute_batch=8, checkpoint_every=0)


@pytest.fixture(scope="module")
def style_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "dotted"
    erase(load_pipeline("canvas-mini"), ErasureRequest(["dotted"], kind="style"), "esd", out=run, **TINY_ESD)
    return run


@pytest.fixture(scope="module")
def evaluated(style_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return out, evaluate_runs("canvas-mini", [style_run], out=out, settings=TINY, suite_args={"paraphrases": True})


def test_cases_cover_every_pair_once():
    cases = canvas_cases()
    assert len(cases) == 64
    assert len({(c.object, c.style) for c in cases}) == 64
    assert cases[0].prompt == "a circle in solid style" and (cases[0].object, cases[0].style) == (0, 0)


def test_targets_from_request():
    assert canvas_targets({"targets": ["dotted"], "kind": "style"}) == ("style", [2])
    assert canvas_targets({"targets": ["a star", "moon"], "kind": "object"})[0] == "object"
    with pytest.raises(ErasureInputError, match="style and object"):
        canvas_targets({"targets": ["nudity"], "kind": "nudity"})


def test_evaluate_writes_metrics_report_and_grid(evaluated, style_run):
    out, metrics = evaluated
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    (run,) = metrics["runs"]
    assert run["kind"] == "style" and run["targets"] == ["dotted"] and run["method"] == "esd"
    for scores in (run["before"], run["after"]):
        assert set(scores) >= {"UA", "IRA", "CRA", "clip_erased", "clip_others", "fid", "kid"}
        assert all(0.0 <= scores[k] <= 1.0 for k in ("UA", "IRA", "CRA"))
        assert 0 < scores["clip_erased"] <= 100 and 0 < scores["clip_others"] <= 100 and scores["fid"] > 0
    assert run["cost"]["wall_seconds"] > 0
    assert metrics["sampling"]["steps"] == TINY.steps and metrics["sampling"]["seeds"] == TINY.seeds
    grid = Image.open(out / run["grid"])
    assert grid.width > 2 * 8 * 64 and grid.height > 8 * 64  # two 8 x 8 grids of >= 64 px cells
    report = (out / "report.md").read_text()
    assert "dotted" in report and run["grid"] in report and "UA" in report and "FID" in report
    # the cheap robustness check (--paraphrases): dotted in canvas-mini's 4 paraphrase templates x 8 objects
    para = run["robustness"]["paraphrase"]
    assert para["templates"] == [1, 2, 3, 4] and para["prompts"] == 32
    for side in ("before", "after"):
        assert run[side]["paraphrase_recognition"] == para[side]["recognised"] and 0.0 <= para[side]["recognised"] <= 1.0
    assert "attack" not in run["robustness"] and "paraphrases recognised before" in report


def test_generation_cache_hits_and_keys(tmp_path, monkeypatch):
    pipe = load_pipeline("canvas-mini")
    cache = GenerationCache(tmp_path)
    prompts = ["a star in dotted style", "a moon in solid style"]
    first = generate_cached(pipe, prompts, TINY, cache)
    assert len(list(tmp_path.rglob("*.png"))) == 2

    def no_generation(*args, **kwargs):
        raise AssertionError("generated although cached")

    monkeypatch.setattr("erasure.pipelines.generation.generate", no_generation)
    again = generate_cached(pipe, prompts, TINY, cache)
    assert [a.tobytes() for a in again] == [f.tobytes() for f in first]
    other = SamplingSettings(steps=TINY.steps + 1, guidance=TINY.guidance, seeds=TINY.seeds)
    with pytest.raises(AssertionError, match="generated although cached"):
        generate_cached(pipe, prompts, other, cache)  # other settings: other key


def test_evaluate_refuses_bad_input(tmp_path, style_run):
    with pytest.raises(ErasureInputError, match="unknown suite"):
        evaluate_runs("canvas-mini", [style_run], suite="coco", out=tmp_path / "e")
    with pytest.raises(ErasureInputError, match="no erased run"):
        evaluate_runs("canvas-mini", [], out=tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_cli_quickstart_end_to_end(tmp_path, capsys, monkeypatch):
    import functools

    import erasure.quickstart

    # 5 sampling steps instead of the suite's 25: the command's mechanics, not its images, are tested
    # here (and the suite took 105 s of it); README's quickstart numbers come from the real command
    monkeypatch.setattr(erasure.quickstart, "SamplingSettings", functools.partial(SamplingSettings, steps=5))
    out = tmp_path / "q"
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--out", str(out), "--steps", "2", "--seeds", "0"])
    assert exc.value.code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "UA" in printed and "dotted" in printed
    # stderr is no terminal here: a plain line per stage as it starts, and its end (issue 29: a
    # redirected quickstart used to print nothing for 20 minutes)
    lines = captured.err.splitlines()
    for stage in ("sampling x_t", "training", "generate original", "generate run"):
        mine = [line for line in lines if line.startswith(f"{stage} ")]
        assert mine and mine[0].startswith(f"{stage} 0/") and "(100%)" in mine[-1], (stage, lines)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sampling"]["steps"] == 5 and metrics["sampling"]["seeds"] == [0]
    assert (out / "run" / "manifest.json").is_file()
    assert (out / metrics["runs"][0]["grid"]).is_file()
    assert (out / "report.md").is_file()
    assert "paraphrase_recognition" not in metrics["runs"][0]["after"]  # robustness checks are opt-in


def test_html_report_shows_the_table_and_grid_in_a_browser(evaluated):
    out, metrics = evaluated
    page = (out / "report.html").read_text()
    run = metrics["runs"][0]
    assert page.startswith("<!doctype html>") and run["grid"] in page and "dotted" in page
    playwright = pytest.importorskip("playwright.sync_api")
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            tab = browser.new_page()
            tab.goto((out / "report.html").as_uri())
            cells = tab.locator("tbody tr td").all_inner_texts()
            loaded = tab.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth)")
        finally:
            browser.close()
    assert cells[0] == "dotted" and any("→" in c for c in cells)
    grid = Image.open(out / run["grid"])
    assert loaded == [grid.width]  # the grid image file loads, at its own size


def test_compare_runs_table_and_cli(evaluated, style_run, tmp_path, capsys):
    from erasure.evaluation.compare import compare_runs, comparison_markdown

    out, metrics = evaluated
    (row,) = compare_runs([style_run], [out])
    assert row["method"] == "esd" and row["targets"] == ["dotted"] and row["settings"]["steps"] == TINY_ESD["steps"]
    assert row["scores"] == metrics["runs"][0]["after"]
    assert compare_runs([style_run])[0]["scores"] is None  # not evaluated: no scores, not made-up ones
    assert "| dotted | esd | dotted (style) |" in comparison_markdown([row])
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(style_run), "--metrics", str(out / "metrics.json"), "--out", str(tmp_path / "t.md")])
    assert exc.value.code == 0
    assert "dotted" in capsys.readouterr().out and (tmp_path / "t.md").read_text().startswith("| run |")
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tmp_path / "missing")])
    assert exc.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_compare_tabulates_every_suites_columns(evaluated, style_run, tmp_path):
    """Runs scored by different suites share one table: each suite's columns, n/a where a run lacks one."""
    from erasure.evaluation.compare import compare_runs, comparison_columns, comparison_markdown

    out, metrics = evaluated
    memo = tmp_path / "memo.json"
    memo.write_text(json.dumps({"columns": [{"key": "memorized_share", "label": "memorized share",
                                             "higher_is_better": False, "format": "pct"}],
                                "runs": [{"run": str(style_run), "after": {"memorized_share": 0.125}}]}))
    columns = comparison_columns([memo, out])
    assert [c["key"] for c in columns][:2] == ["memorized_share", "UA"] and "CRA" in [c["key"] for c in columns]
    rows = compare_runs([style_run], [memo, out])
    assert rows[0]["scores"] == {"memorized_share": 0.125}  # the first evaluation that scored the run
    table = comparison_markdown(rows, columns)
    assert "| memorized share | UA |" in table and "| 12.5% | n/a |" in table
    (tmp_path / "bad.json").write_text(json.dumps({"runs": [{"run": "x"}]}))
    with pytest.raises(ErasureInputError, match="lack"):
        comparison_columns([tmp_path / "bad.json"])


def test_evaluate_with_the_attack_records_both_sides(evaluated, style_run, tmp_path, capsys):
    out, _ = evaluated
    args = dict(attack=True, attack_seeds=[5], attack_steps=2, attack_lr=0.01, attack_teacher_samples=2)
    # the plain evaluation's images are reused (same cache): only the attack runs
    metrics = evaluate_runs("canvas-mini", [style_run], out=tmp_path, settings=TINY, suite_args=args, cache_dir=out / "cache")
    (run,) = metrics["runs"]
    attack = run["robustness"]["attack"]
    assert attack["concept"] == "dotted" and attack["prompt"] == "dotted style"
    for side in ("before", "after"):
        result = attack[side]
        assert result["seeds"] == [5] and result["attack"]["steps"] == 2 and result["attack"]["lr"] == 0.01
        assert result["teacher_samples"] == 2 and len(result["per_seed"]) == 1
        assert run[side]["attack_success_rate"] == result["asr"] in (0.0, 1.0)
        assert run[side]["attack_clean_rate"] == result["clean_rate"]
    assert [c["key"] for c in metrics["columns"]][-1] == "attack_success_rate"
    assert "attack success before" in (tmp_path / "report.md").read_text()
    assert "attack success" in (tmp_path / "report.html").read_text()
    with pytest.raises(ErasureInputError, match="lr: must be positive"):
        evaluate_runs("canvas-mini", [style_run], out=tmp_path / "bad", suite_args=dict(attack=True, attack_lr=-1.0))
    assert not (tmp_path / "bad").exists()


def test_shipped_phrasings_are_ones_canvas_mini_never_saw():
    """Issue 25: at least eight held-out phrasings and a separate tuning split, none of whose captions
    is one canvas-mini was trained on (its training templates, and "a {object}" alone)."""
    from erasure.evaluation import load_suite
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, TEMPLATES, caption

    config = load_suite("canvas").config
    assert len(config.unseen_phrasings) >= 8 and len(config.tuning_phrasings) >= 2
    assert not set(config.unseen_phrasings) & set(config.tuning_phrasings)
    trained = {caption(o, s, t) for o in OBJECTS for s in STYLES for t in [*TEMPLATES, "a {object}"]}
    for template in config.unseen_phrasings + config.tuning_phrasings:
        captions = {caption(o, s, template) for o in OBJECTS for s in STYLES}
        assert len(captions) == 64 and not captions & trained, template
    assert caption("arrow", "outline", config.unseen_phrasings[0]).startswith("An outline arrow")  # the article fits


def test_phrasings_score_every_pair_in_each_set(evaluated, style_run, tmp_path):
    """UA / IRA / CRA on the trained paraphrases and on a phrasing split, in metrics.json, the report and
    compare. Scored like the main captions: the trained template 0 as the "paraphrase" set, drawn with
    the evaluation's seed, gives the main table's UA / IRA / CRA exactly (same images, same judge)."""
    from erasure.evaluation.compare import compare_runs, comparison_columns, comparison_markdown

    out, plain = evaluated
    args = dict(phrasings=True, paraphrase_templates=[0], phrasing_seeds=TINY.seeds,
                unseen_phrasings=["{style}-patterned {object}", "a {object} rendered in a {style} look"])
    metrics = evaluate_runs("canvas-mini", [style_run], out=tmp_path, settings=TINY, suite_args=args, cache_dir=out / "cache")
    (run,) = metrics["runs"]
    for side in ("before", "after"):
        assert {k: run[side][f"{k}_paraphrased"] for k in ("UA", "IRA", "CRA")} == \
            {k: plain["runs"][0][side][k] for k in ("UA", "IRA", "CRA")}
        assert all(0.0 <= run[side][f"{k}_unseen"] <= 1.0 for k in ("UA", "IRA", "CRA"))
    unseen = run["phrasings"]["unseen"]
    assert unseen["templates"] == args["unseen_phrasings"] and unseen["prompts"] == 128 and unseen["seeds"] == TINY.seeds
    assert unseen["after"]["counts"]["UA"] == 16  # dotted x 8 objects x 2 phrasings x 1 seed
    keys = [c["key"] for c in metrics["columns"]]
    assert keys[keys.index("CRA_paraphrased") + 1:][:3] == ["UA_unseen", "IRA_unseen", "CRA_unseen"]
    assert "UA, unseen phrasings before" in (tmp_path / "report.md").read_text()
    table = comparison_markdown(compare_runs([style_run], [tmp_path]), comparison_columns([tmp_path]))
    assert "UA, unseen phrasings" in table
    with pytest.raises(ErasureInputError, match="phrasing_split: expected one of tuning, unseen"):
        evaluate_runs("canvas-mini", [style_run], out=tmp_path / "bad", suite_args=dict(phrasings=True, phrasing_split="x"))
    with pytest.raises(ErasureInputError, match="needs both"):
        evaluate_runs("canvas-mini", [style_run], out=tmp_path / "bad", suite_args=dict(phrasings=True, unseen_phrasings=["a {object}"]))
    with pytest.raises(ErasureInputError, match="training templates"):
        evaluate_runs("canvas-mini", [style_run], out=tmp_path / "bad",
                      suite_args=dict(phrasings=True, phrasing_split="tuning", tuning_phrasings=["{style} {object}"]))
    assert not (tmp_path / "bad").exists()


def test_the_attack_brings_back_a_weakly_erased_style(tmp_path):
    """A known direction on a tiny run: after a short ESD-x run canvas-mini rarely draws striped from
    its concept prompt, and the suite's soft-prompt attack (a stronger budget than the default, to
    fit a test) makes it draw striped again on more seeds (measured on the previous canvas-mini: 3 of 6
    seeds vs 0 of 6; with weaker budgets 1-2 of 8, never below the unattacked rate). lr 1e-3: the
    fine-tuned canvas-mini still drew striped on 6 of 6 seeds after 20 steps at 5e-4. Per-step
    trajectories, as measured (the style preset's shared ones erased striped on 3 of 6 seeds only
    in 20 steps)."""
    import torch

    from erasure.evaluation import Evaluation, GenerationCache, load_suite

    erased = load_pipeline("canvas-mini")
    torch.manual_seed(0)
    erase(erased, ErasureRequest(["striped"], kind="style"), "esd", variant="esd-x", steps=20, lr=1e-3, ddim_steps=20,
          precompute_batch=32, checkpoint_every=0, trajectories="per-step")
    suite = load_suite("canvas", attack=True, attack_seeds=list(range(1000, 1006)), attack_steps=30, attack_lr=0.1,
                       attack_teacher_samples=16)
    ev = Evaluation(original="canvas-mini", runs=[], manifests=[], suite=suite,
                    settings=SamplingSettings(steps=15, guidance=3.0, seeds=[0]), out=tmp_path, cache=GenerationCache(tmp_path))
    result = suite.attack_success(ev, erased, {"request": {"targets": ["striped"], "kind": "style"}})
    before, after = result["before"], result["after"]
    assert result["prompt"] == "striped style" and after["attack"]["lr"] == 0.1
    assert before["clean_rate"] >= 0.5, f"the original should draw striped: {before['clean_rate']:.0%}"
    assert after["clean_rate"] <= 0.25, f"the short ESD-x run should erase striped: {after['clean_rate']:.0%}"
    assert after["asr"] >= after["clean_rate"] + 0.3, f"attack {after['asr']:.0%} vs unattacked {after['clean_rate']:.0%}"


def test_canvas_fidelity_separates_the_erased_captions_from_the_others():
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, render
    from erasure.evaluation.suites.canvas import CanvasFidelity

    cases = canvas_cases()
    fidelity = CanvasFidelity(cases, 1, renders_per_caption=2, reference_seed=4242)
    dotted = STYLES.index("dotted")
    shifted = lambda c: render(OBJECTS[c.object], STYLES[(c.style + 1) % len(STYLES)], 7)  # noqa: E731
    right = [render(OBJECTS[c.object], STYLES[c.style], 7) for c in cases]
    erased_gone = [shifted(c) if c.style == dotted else img for c, img in zip(cases, right)]
    all_wrong = [shifted(c) for c in cases]

    ok, gone, wrong = (fidelity.score(images, "style", [dotted]) for images in (right, erased_gone, all_wrong))
    # another style drawn for the erased captions: their CLIP score falls, the others' scores stay exactly
    assert gone["clip_erased"] < ok["clip_erased"] - 5
    assert (gone["clip_others"], gone["fid"], gone["kid"]) == (ok["clip_others"], ok["fid"], ok["kid"])
    # every other caption drawn in the wrong style: further from the real renders, worse aligned
    assert wrong["fid"] > ok["fid"] + 1 and wrong["kid"] > ok["kid"]
    assert wrong["clip_others"] < ok["clip_others"] - 5


def test_runs_with_the_same_folder_name_get_distinct_grid_names(tmp_path):
    from erasure.evaluation import Evaluation, load_suite

    runs = [str(tmp_path / "esd" / "style-dotted"), str(tmp_path / "advunlearn" / "style-dotted"), str(tmp_path / "striped")]
    ctx = Evaluation("canvas-mini", runs, [], load_suite("canvas"), TINY, tmp_path, None)
    assert [ctx.label(r) for r in runs] == ["esd-style-dotted", "advunlearn-style-dotted", "striped"]


def test_an_sfd_run_is_evaluated_through_its_one_step_generator(tmp_path, monkeypatch):
    """Evaluation samples an SFD run with the one-step sampler its manifest names, not the original's."""
    from erasure.one_step import OneStepPipeline

    run = tmp_path / "sfd-dotted"
    erase(load_pipeline("canvas-mini"), ErasureRequest(["dotted"], kind="style"), "sfd", out=run,
          steps=2, batch_size=1, guidance=1.0, checkpoint_every=0)
    prompts: list[str] = []
    one_step_call = OneStepPipeline.__call__

    def counted(self, prompt, *args, **kwargs):
        prompts.extend([prompt] if isinstance(prompt, str) else prompt)
        return one_step_call(self, prompt, *args, **kwargs)

    monkeypatch.setattr(OneStepPipeline, "__call__", counted)
    metrics = evaluate_runs("canvas-mini", [run], out=tmp_path / "eval", settings=TINY)
    (result,) = metrics["runs"]
    assert result["method"] == "sfd" and 0.0 <= result["after"]["UA"] <= 1.0
    assert len(prompts) == len(canvas_cases()) * len(TINY.seeds)  # every "after" image, none of the "before" ones


def test_shard_joins_processes_for_the_pipelines_device_not_for_cudas_presence(tmp_path, monkeypatch):
    """Under a launcher on a GPU machine with `--device cpu`, the process group must be gloo's: what
    ``process_state`` receives follows the device used (the pipeline's, or evaluate_runs' --device,
    joined before any model loads), not ``torch.cuda.is_available()``."""
    from types import SimpleNamespace

    import torch

    from erasure import evaluation, training
    from erasure.evaluation import driver

    received: list[bool] = []

    def fake_process_state(cpu: bool = False):
        received.append(cpu)
        return SimpleNamespace(process_index=0, num_processes=1)  # one process: nothing to gather

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(training, "process_state", fake_process_state)

    assert generate_cached(SimpleNamespace(device=torch.device("cpu")), [], TINY) == []
    assert evaluation.shard("cpu") == (0, 1) and evaluation.shard("auto") == (0, 1)
    assert received == [True, True, False]  # the CPU pipeline, --device cpu; "auto" is CUDA here

    def stop(ev):
        raise KeyboardInterrupt  # the suite itself is not the point: only what was joined before it

    received.clear()
    monkeypatch.setattr(driver, "check_runs", lambda *args: [])
    monkeypatch.setattr(driver.Evaluation, "run", stop)
    with pytest.raises(KeyboardInterrupt):
        evaluate_runs("canvas-mini", [], out=tmp_path, settings=TINY, device="cpu")
    assert received == [True]
