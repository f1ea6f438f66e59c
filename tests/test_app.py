"""The comparison app: runs folder safety, generation through gradio_client, the erase tab, a real browser.

The app runs in-process on a free port (tests/conftest.py: ``runs_dir``, ``app_url``, ``client``),
over the tiny random SD pipeline (fast on a CPU) and a runs folder holding two small ESD runs, an
SFD run, a corrupt run, a truncated one, an unfinished one and an evaluation report. Images are
compared with direct library calls, not with stored pictures, so the tests hold whatever the
shipped models look like.
"""

from __future__ import annotations

import json
import re
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from erasure.errors import ErasureInputError
from erasure.erased import load_erased
from erasure.pipelines import generate, load_pipeline

gradio_client = pytest.importorskip("gradio_client")

SAMPLING = dict(steps=3, guidance=5.0)
BROWSER_TIMEOUT_MS = 180_000


def _open(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _same_render(a: np.ndarray, b: np.ndarray) -> bool:
    """The same generation, up to one intensity level: the app's worker thread and this process may
    take different CPU kernels (threads, memory alignment), whose last-bit float differences can
    flip a pixel by one level (seen once in 4,096 pixels)."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def _shown(image: Image.Image) -> np.ndarray:
    from erasure.app.compare import for_display

    return np.asarray(for_display(image).convert("RGB"))


def _value(output):
    # Handlers return gr.update(...) (value plus visibility, labels); the client hands back the dict.
    return output["value"] if isinstance(output, dict) and output.get("__type__") == "update" else output


def _compare(client, tiny_sd, runs, seeds="0", prompt="a cat", **kw):
    values = {**SAMPLING, **kw}
    outputs = client.predict(str(tiny_sd.folder.resolve()), runs, prompt, "", seeds, values["steps"],
                             values["guidance"], api_name="/compare")
    return tuple(_value(o) for o in outputs)


# -- the runs folder, without a server


def test_runs_are_listed_with_their_status_and_metrics(runs_dir, app_runs):
    from erasure.app.runs import metrics_rows, scan_runs

    entries = {e.name: e for e in scan_runs(runs_dir)}
    status = {name: e.status for name, e in entries.items()}
    assert status == {"cat": "ok", "dog": "ok", "one-step": "ok", "corrupt": "broken", "truncated": "broken",
                      "unfinished": "unfinished", "eval": "evaluation", "attack-cat": "attack"}
    assert "malformed JSON" in entries["corrupt"].problem and str(runs_dir) not in entries["corrupt"].problem
    assert "truncated" in entries["truncated"].problem
    assert entries["cat"].metrics == {"ua": 0.75, "fid.value": 12.5}
    assert entries["dog"].metrics == {"UA": 0.9, "IRA": 0.8, "UA (original)": 0.1}  # from the evaluation report
    headers, rows = metrics_rows(list(entries.values()))
    assert [r[0] for r in rows] == ["cat", "dog", "one-step"]
    cat = dict(zip(headers, rows[0]))
    assert cat["method"] == "esd" and cat["concept"] == "a cat" and cat["steps"] == app_runs.settings["cat"]["steps"]
    assert cat["ua"] == 0.75 and cat["edit size (MB)"] > 0 and cat["wall time (s)"] >= 0 and cat["UA"] is None


def test_run_names_outside_the_runs_folder_are_refused(runs_dir, tmp_path):
    from erasure.app.runs import resolve_run, scan_runs

    outside = tmp_path / "outside"
    shutil.copytree(runs_dir / "cat", outside)
    (runs_dir / "link").symlink_to(outside, target_is_directory=True)
    try:
        assert resolve_run(runs_dir, "cat") == (runs_dir / "cat").resolve()
        for name in ["../outside", "..", ".", "/etc", str(outside), "cat/../../outside", "cat/../dog", "a\\b",
                     ".hidden", "link", "cat/edit.safetensors/x", "a/b/c", "", " cat", "missing"]:
            with pytest.raises(ErasureInputError):
                resolve_run(runs_dir, name)
        listed = {e.name: e for e in scan_runs(runs_dir)}
        assert listed["link"].status == "broken" and "outside" in listed["link"].problem
    finally:
        (runs_dir / "link").unlink()


def test_a_manifest_naming_an_edit_file_outside_its_run_is_broken(runs_dir, tmp_path):
    from erasure.app.runs import inspect_run

    shutil.copytree(runs_dir / "cat", runs_dir / "escape")
    try:
        manifest = json.loads((runs_dir / "escape" / "manifest.json").read_text())
        manifest["edit"]["file"] = "../cat/edit.safetensors"
        (runs_dir / "escape" / "manifest.json").write_text(json.dumps(manifest))
        entry = inspect_run(runs_dir, "escape")
        assert entry.status == "broken" and "outside the run folder" in entry.problem
    finally:
        shutil.rmtree(runs_dir / "escape")


def test_request_within_bounds_is_accepted():
    from erasure.app.compare import Limits, check_request

    ok = check_request(" a cat ", " ", "0-5", 25, 5, ["cat", "dog", "x"], Limits())
    assert ok.prompt == "a cat" and ok.seeds == list(range(6)) and ok.negative_prompt is None
    assert ok.steps == 25 and isinstance(ok.steps, int) and ok.runs == ["cat", "dog", "x"]


@pytest.mark.parametrize("args, message", [
    (("", "", "0", 25, 5, []), "enter a prompt"),
    (("x" * 501, "", "0", 25, 5, []), "at most 500"),
    (("a", "x" * 501, "0", 25, 5, []), "negative prompt"),
    (("a", "", "0-8", 25, 5, []), "at most 8"),
    (("a", "", "x", 25, 5, []), "bad seeds"),
    (("a", "", "0", 0, 5, []), "between 1 and 100"),
    (("a", "", "0", 101, 5, []), "between 1 and 100"),
    (("a", "", "0", 2.5, 5, []), "whole number"),
    (("a", "", "0", 25, 31, []), "between 0 and 30"),
    (("a", "", "0", 25, float("nan"), []), "finite"),
    (("a", "", "0", 25, 5, ["a", "b", "c", "d", "e"]), "at most 4"),
    (("a", "", "0-6", 25, 5, ["a", "b", "c"]), "more than 24 images"),
])
def test_request_out_of_bounds_is_refused(args, message):
    from erasure.app.compare import Limits, check_request

    with pytest.raises(ErasureInputError, match=message):
        check_request(*args, Limits())


def test_one_generation_at_a_time_per_model(monkeypatch):
    from erasure.app.compare import ModelStore

    store = ModelStore(["a", "b"])
    monkeypatch.setattr(store, "_load", lambda source: source)  # the locking, not the loading
    waited, entered = threading.Event(), threading.Event()

    def second_request() -> None:
        with store.use("a", on_wait=waited.set):
            entered.set()

    with store.use("a"):
        worker = threading.Thread(target=second_request)
        worker.start()
        assert waited.wait(10) and not entered.wait(0.2)  # queued behind the first request
        with store.use("b", on_wait=lambda: pytest.fail("another model must not wait")):
            pass
    worker.join(10)
    assert entered.is_set()
    with pytest.raises(ErasureInputError, match="unknown base model"):
        with store.use("/etc"):
            pass


def test_an_edit_is_swapped_out_even_when_generation_fails(runs_dir, tiny_sd):
    from erasure.app.compare import edit_applied
    from erasure.edit import Edit

    pipe = load_pipeline(tiny_sd.folder, device="cpu")
    edit = Edit.load(runs_dir / "cat")
    before = {k: p.detach().clone() for k, p in pipe.unet.named_parameters()}
    with pytest.raises(RuntimeError, match="interrupted"):
        with edit_applied(pipe, edit):
            changed = [k for k, p in pipe.unet.named_parameters() if not torch.equal(p, before[k])]
            assert changed and {f"unet.{k}" for k in changed} <= set(edit.tensors)
            raise RuntimeError("interrupted")
    assert all(torch.equal(p, before[k]) for k, p in pipe.unet.named_parameters())


def test_cli_app_bad_options_fail_before_starting(tmp_path, capsys):
    from erasure.cli import main

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    for argv, message in [(["app", "--runs", str(not_a_folder)], "not a folder"),
                          (["app", "--runs", str(tmp_path), "--model", str(tmp_path / "missing")], "no such file"),
                          (["app", "--port", "0"], "--port")]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and err.count("\n") == 1


# -- through the running app


def test_client_compares_original_and_erased_on_the_same_seeds(client, tiny_sd, runs_dir):
    slider, gallery, status = _compare(client, tiny_sd, ["cat"], seeds="0,1")
    assert status.startswith("4 images: original, cat on seeds 0, 1; 3 steps, guidance 5;")
    assert len(slider) == 2 and len(gallery) == 4  # gallery: a row per model, a column per seed
    base = load_pipeline(tiny_sd.folder, device="cpu")
    expected_original = generate(base, "a cat", seeds=[0, 1], **SAMPLING)
    expected_erased = generate(load_erased(runs_dir / "cat", base=load_pipeline(tiny_sd.folder, device="cpu")),
                               "a cat", seeds=[0, 1], **SAMPLING)
    shown = [_open(item["image"]) for item in gallery]
    assert np.array_equal(shown[0], _shown(expected_original[0])) and np.array_equal(shown[1], _shown(expected_original[1]))
    assert _same_render(shown[2], _shown(expected_erased[0])) and _same_render(shown[3], _shown(expected_erased[1]))
    assert not np.array_equal(shown[0], shown[2])  # the edit changes the image
    assert np.array_equal(_open(slider[0]), shown[0]) and np.array_equal(_open(slider[1]), shown[2])
    assert [item["caption"] for item in gallery] == ["original, seed 0", "original, seed 1", "cat, seed 0", "cat, seed 1"]
    # The edit was swapped out again: the base model gives its original images afterwards.
    _, again, _ = _compare(client, tiny_sd, [], seeds="0")
    assert np.array_equal(_open(again[0]["image"]), shown[0])


def test_client_several_runs_side_by_side(client, tiny_sd):
    _, gallery, status = _compare(client, tiny_sd, ["cat", "dog"], seeds="3")
    assert [item["caption"] for item in gallery] == ["original, seed 3", "cat, seed 3", "dog, seed 3"]
    assert "3 images" in status


def test_client_samples_an_sfd_run_with_its_one_step_generator(client, tiny_sd, runs_dir):
    from erasure.one_step import OneStepPipeline

    _, gallery, _ = _compare(client, tiny_sd, ["one-step"], seeds="2")
    erased = load_erased(runs_dir / "one-step", base=load_pipeline(tiny_sd.folder, device="cpu"))
    assert isinstance(erased, OneStepPipeline)
    one_step = generate(erased, "a cat", seeds=[2], **SAMPLING)  # the sampler's steps and guidance are ignored
    multi_step = generate(erased.pipe, "a cat", seeds=[2], **SAMPLING)  # the same weights, the original sampler
    shown = _open(gallery[1]["image"])
    assert _same_render(shown, _shown(one_step[0]))
    assert not _same_render(shown, _shown(multi_step[0]))


@pytest.mark.parametrize("runs, message", [
    (["../cat"], "not a run name"),
    (["cat/../../etc"], "not a run name"),
    (["/etc"], "not a run name"),
    (["corrupt"], "malformed JSON"),
    (["truncated"], "truncated"),
    (["unfinished"], "unfinished"),
    (["eval"], "not a run"),
    (["missing"], "no such run"),
])
def test_client_bad_runs_are_refused_with_a_message(client, tiny_sd, runs, message):
    with pytest.raises(gradio_client.exceptions.AppError, match=message):
        _compare(client, tiny_sd, runs)


def test_client_bad_requests_are_refused_with_a_message(client, tiny_sd):
    with pytest.raises(gradio_client.exceptions.AppError, match="enter a prompt"):
        _compare(client, tiny_sd, ["cat"], prompt="  ")
    with pytest.raises(gradio_client.exceptions.AppError, match="at most 8"):
        _compare(client, tiny_sd, ["cat"], seeds="0-99")
    with pytest.raises(gradio_client.exceptions.AppError):  # a model not offered at start-up is never loaded
        client.predict("/etc", [], "a cat", "", "0", 3, 5.0, api_name="/compare")


def test_client_lists_broken_runs(client):
    menu, runs_table, metrics_table, measure, plot, attack_prompts = client.predict([], api_name="/runs")
    listed = {row[0]: row for row in _value(runs_table)["data"]}
    assert listed["corrupt"][1] == "broken" and "malformed JSON" in listed["corrupt"][-1]
    assert listed["cat"][1] == "ok" and listed["unfinished"][1] == "unfinished"
    assert {c[1] for c in menu["choices"]} == {"cat", "dog", "one-step"}  # only finished runs can be chosen
    assert menu["value"] == ["dog"]  # the newest finished run made for the default model
    assert [row[0] for row in _value(metrics_table)["data"]] == ["cat", "dog", "one-step"]
    assert plot["visible"] is True  # two runs have the measure
    assert listed["attack-cat"][1] == "attack"  # `erasure attack`'s folder: not a run, its text prompts offered
    assert attack_prompts["choices"] == [["attack-cat seed 0 (unlearndiffatk, recognised): wolves tapestry a cat",
                                          "wolves tapestry a cat"]]


def test_erase_tab_writes_a_run_that_the_app_lists(client, runs_dir, tiny_sd):
    settings = "ddim_steps=2\nprecompute_batch=1\ncheckpoint_every=0"
    for values, message in [
        (("esd", "style", "polka", "canvas-mini-style", 1, "x", settings), "no style 'polka'"),
        (("esd", "style", "dotted", "canvas-mini-style", 1, "../x", settings), "run name"),
        (("esd", "style", "dotted", "canvas-mini-style", 10**6, "x", settings), "between 1 and 2000"),
        (("esd", "style", "dotted", "canvas-mini-style", None, "x", settings + "\nsteps=99999"), "more than this app allows"),
        (("esd", "style", "dotted", "canvas-mini-style", 1, "x", "ddim_steps=5000"), "more than this app allows"),
        (("esd", "style", "dotted", "canvas-mini-style", 1, "cat", settings), "already exists"),
        (("esd", "style", "dotted", "canvas-mini-style", 1, "x", "nope=1"), "nope"),
    ]:
        with pytest.raises(gradio_client.exceptions.AppError, match=message):
            client.predict(*values, api_name="/erase")
    assert not (runs_dir / "x").exists()
    status = client.predict("esd", "style", "dotted", "canvas-mini-style", 1, "dotted-app", settings, api_name="/erase")
    assert "Finished **dotted-app**" in status
    manifest = json.loads((runs_dir / "dotted-app" / "manifest.json").read_text())
    assert manifest["request"]["targets"] == ["dotted"] and manifest["config"]["steps"] == 1
    assert manifest["base"]["source"] == "canvas-mini"
    menu = client.predict([], api_name="/runs")[0]
    assert "dotted-app" in {c[1] for c in menu["choices"]}
    with pytest.raises(gradio_client.exceptions.AppError, match="made for canvas-mini, not for the chosen base"):
        _compare(client, tiny_sd, ["dotted-app"])


# -- a real browser


def test_browser_shows_the_slider_with_two_images(app_url, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium chromium-driver; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: Chromium refuses to start as root with its sandbox (CI runs as root).
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            # Upper bounds only, generous for a busy CI machine; an idle one takes seconds.
            page.set_default_timeout(BROWSER_TIMEOUT_MS)
            page.goto(app_url, wait_until="domcontentloaded")
            page.get_by_text("dog: esd").first.wait_for()  # the newest run, chosen when the page loads
            page.locator("#attack-prompt input").click()  # a prompt `erasure attack` saved fills the prompt box
            page.get_by_text("attack-cat seed 0").first.click()
            sync_api.expect(page.locator("#prompt textarea")).to_have_value("wolves tapestry a cat")
            page.locator("#prompt textarea").fill("a cat")
            page.locator("#steps input[type=number]").fill("3")
            page.locator("#steps input[type=number]").press("Tab")
            page.locator("#generate").click()
            images = page.locator("#slider img")
            sync_api.expect(images).to_have_count(2, timeout=BROWSER_TIMEOUT_MS)
            for i in range(2):
                images.nth(i).wait_for(state="visible")
                assert images.nth(i).evaluate("img => img.complete && img.naturalWidth") >= 256
            sync_api.expect(page.locator("#status")).to_contain_text(re.compile(r"2 images: original, dog on seed 0; 3 steps"))
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert Image.open(shot).size[0] == 1280
