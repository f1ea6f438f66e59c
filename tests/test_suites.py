"""Evaluation suites beyond canvas: their YAML files, the checks made before any generation, and
their plumbing end to end on tiny random Stable Diffusion pipelines (and canvas-mini's memorized
captions). The metrics' own known answers are in test_metrics.py; here: prompts, settings and
scores reach metrics.json and the reports, and bad input is refused in one line before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from PIL import Image

from erasure import ErasureRequest, erase
from erasure.cli import main
from erasure.errors import ErasureInputError
from erasure.evaluation import SamplingSettings, available_suites, check_runs, evaluate_runs, load_suite
from erasure.evaluation.suites.memorization import memorized_pairs
from erasure.pipelines import load_pipeline


def check_inputs(original, runs, suite, suite_args=None):
    """What `erasure evaluate` checks before any model loads: the suite's settings, then the runs."""
    return check_runs(original, runs, load_suite(suite, **(suite_args or {})))

TINY = SamplingSettings(steps=2, guidance=5.0, seeds=[0], batch_size=64)
TINY_ESD = dict(steps=2, ddim_steps=4, precompute_batch=8, checkpoint_every=0)


def tiny_run(saved, path, targets, kind):
    erase(load_pipeline(saved.folder, device="cpu"), ErasureRequest(targets, kind=kind), "esd", out=path, **TINY_ESD)
    return path


@pytest.fixture(scope="module")
def nudity_run(tiny_sd, tmp_path_factory):
    return tiny_run(tiny_sd, tmp_path_factory.mktemp("runs") / "nudity", ["nudity"], "nudity")


@pytest.fixture(scope="module")
def style_run(tiny_sd, tmp_path_factory):
    return tiny_run(tiny_sd, tmp_path_factory.mktemp("runs") / "monet", ["Claude Monet"], "style")


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, render

    folder = tmp_path_factory.mktemp("reference")
    for i in range(8):
        render(OBJECTS[i], STYLES[i], seed=i).save(folder / f"ref{i}.png")
    return folder


# ----------------------------------------------------------------------------- suite files
def test_every_suite_has_a_yaml_with_its_prompt_sets():
    from erasure.configs import preset_path
    from erasure.metrics import NUDENET_LABELS

    assert available_suites() == ["canvas", "memorization", "sd-nudity", "sd-object", "sd-style"]
    for name in available_suites():
        assert preset_path(f"suites/{name}").is_file()
        spec = load_suite(name).config
        assert spec.name == name and spec.seeds
    nudity = load_suite("sd-nudity").config
    assert 20 <= len(nudity.prompts) <= 30 and len(set(nudity.prompts)) == len(nudity.prompts)
    assert len(nudity.utility) >= 10 and set(nudity.nudity_classes) <= set(NUDENET_LABELS)
    for name in ("sd-style", "sd-object"):
        spec = load_suite(name).config
        assert all("{concept}" in t or "{a_concept}" in t for t in spec.templates) and len(spec.others) >= 8
    assert load_suite("sd-object").config.prompts("apple")[0] == "a photo of an apple"
    assert load_suite("canvas").config.paraphrase_templates == [1, 2, 3, 4]
    with pytest.raises(ErasureInputError, match="unknown suite 'coco'"):
        load_suite("coco")


# ----------------------------------------------------------------------------- checks before work
def test_checks_refuse_missing_local_files(tmp_path, style_run, nudity_run, tiny_sd):
    original = str(tiny_sd.folder)
    with pytest.raises(ErasureInputError, match="pass --clip ARCH:WEIGHTS"):
        check_inputs(original, [style_run], "sd-style")
    with pytest.raises(ErasureInputError, match="no CLIP weights file"):
        check_inputs(original, [style_run], "sd-style", dict(clip=f"ViT-B-32:{tmp_path / 'w.pt'}"))
    with pytest.raises(ErasureInputError, match="scores object erasures"):
        check_inputs(original, [style_run], "sd-object", dict(clip="canvas-mini"))
    with pytest.raises(ErasureInputError, match="not a folder of images"):
        check_inputs(original, [nudity_run], "sd-nudity", dict(reference=str(tmp_path / "none")))
    (tmp_path / "refs").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / "refs" / f"{i}.png")
    with pytest.raises(ErasureInputError, match="fid-features inception:WEIGHTS"):
        check_inputs(original, [nudity_run], "sd-nudity",
                     dict(reference=str(tmp_path / "refs"), fid_features=f"inception:{tmp_path / 'missing.pth'}"))
    with pytest.raises(ErasureInputError, match="unknown NudeNet class"):
        check_inputs(original, [nudity_run], "sd-nudity", dict(nudity_classes=["NAKED"]))
    with pytest.raises(ErasureInputError, match="pass --suite-arg training_images=DIR --suite-arg captions=FILE"):
        check_inputs(original, [nudity_run], "memorization")
    for embedding, message in (("clip", "pass --clip too"), (f"torchscript:{tmp_path / 'sscd.pt'}", "no TorchScript file"),
                               ("dino", "expected pixels, canvas-evaluator, clip or torchscript:PATH")):
        with pytest.raises(ErasureInputError, match=message):
            check_inputs("canvas-mini", [nudity_run], "memorization", dict(embedding=embedding))
    with pytest.raises(ErasureInputError, match="scores style and object erasures"):
        check_inputs("canvas-mini", [nudity_run], "canvas")


def test_captions_file_is_checked_line_by_line(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    captions = tmp_path / "captions.tsv"
    captions.write_text("# memorized\na.png\tthe first caption\n\n")
    assert memorized_pairs(tmp_path, captions) == [(tmp_path / "a.png", "the first caption")]
    captions.write_text("a.png the first caption\n")
    with pytest.raises(ErasureInputError, match="captions.tsv:1: expected IMAGE<TAB>CAPTION"):
        memorized_pairs(tmp_path, captions)
    captions.write_text("b.png\tanother\n")
    with pytest.raises(ErasureInputError, match="no training image 'b.png'"):
        memorized_pairs(tmp_path, captions)


def test_cli_refuses_before_any_generation(tmp_path, style_run, tiny_sd, capsys):
    out = tmp_path / "e"
    for args, message in (
        (["--suite", "sd-style"], "pass --clip"),
        (["--suite", "sd-cats"], "unknown suite"),
        (["--suite", "canvas", "--suite-arg", "attack_steps=3"], "need attack=true"),
        (["--suite", "canvas", "--clip", "canvas-mini"], "does not use it"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "--original", str(tiny_sd.folder), "--erased", str(style_run), "--out", str(out), *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# ----------------------------------------------------------------------------- SD suites end to end
def test_sd_nudity_on_a_tiny_run(tmp_path, nudity_run, tiny_sd, reference_dir):
    spec = load_suite("sd-nudity").config
    args = dict(nudity_classes=["FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"], nudity_threshold=0.45,
                clip="canvas-mini", reference=str(reference_dir), fid_features="canvas-evaluator")
    metrics = evaluate_runs(str(tiny_sd.folder), [nudity_run], suite="sd-nudity", out=tmp_path, settings=TINY,
                            suite_args=args)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["nudity"]["classes"] == ["FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"]
    assert metrics["nudity"]["threshold"] == 0.45 and metrics["nudity"]["detector"].startswith("nudenet")
    assert metrics["prompts"] == len(spec.prompts) + len(spec.utility)
    (run,) = metrics["runs"]
    for side in ("before", "after"):
        scores = run[side]
        assert scores["nudity_rate"] == 0.0  # random tiny models draw no people
        assert set(scores["nudity_per_class"]) == {"FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"}
        assert 0.0 <= scores["clip_score"] <= 100.0 and scores["fid"] > 0 and "kid" in scores
    assert [c["key"] for c in metrics["columns"]] == ["nudity_rate", "clip_score", "fid", "kid"]
    grid = Image.open(tmp_path / run["grid"])
    assert grid.width > 2 * 128 and grid.height >= 9 * 128  # 6 nudity + 3 utility prompts, 128 px cells
    report = (tmp_path / "report.md").read_text()
    assert "FEMALE_BREAST_EXPOSED" in report and "0.45" in report and "nudity rate before" in report
    page = (tmp_path / "report.html").read_text()
    assert run["grid"] in page and "FEMALE_BREAST_EXPOSED" in page and "&rarr;" in page


def test_sd_style_prompts_come_from_the_runs_target(tmp_path, style_run, tiny_sd, capsys):
    out = tmp_path / "style"
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--suite", "sd-style", "--original", str(tiny_sd.folder), "--erased", str(style_run),
              "--out", str(out), "--clip", "canvas-mini", "--steps", "2", "--seeds", "0"])
    assert exc.value.code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "sd-style suite" in printed and "monet" in printed and "->" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    spec = load_suite("sd-style").config
    (run,) = metrics["runs"]
    assert run["prompts"]["erased"] == spec.prompts("Claude Monet")
    assert len(run["prompts"]["others"]) == len(spec.templates) * (len(spec.others) - 1)  # Monet left out
    assert not any("Monet" in p for p in run["prompts"]["others"])
    for side in ("before", "after"):
        assert 0.0 <= run[side]["clip_erased"] <= 100.0 and 0.0 <= run[side]["clip_others"] <= 100.0
    assert metrics["sampling"]["steps"] == 2 and metrics["sampling"]["guidance"] == spec.guidance
    assert metrics["judge"] == "canvas-mini CLIP" and (out / run["grid"]).is_file()


def test_memorization_with_user_training_images(tmp_path, nudity_run, tiny_sd):
    from erasure.pipelines.generation import generate

    captions = ["a red square on the wall", "a blue square on the wall"]
    data = tmp_path / "train"
    data.mkdir()
    # Caption 0's training image is exactly what the original draws for it (a memorized caption,
    # similarity 1); caption 1's is noise, like nothing the model draws.
    generate(load_pipeline(tiny_sd.folder, device="cpu"), captions[:1], seeds=TINY.seeds, steps=TINY.steps,
             guidance=TINY.guidance, scheduler=TINY.scheduler)[0].save(data / "0.png")
    Image.effect_noise((64, 48), 64).convert("RGB").save(data / "1.png")
    (tmp_path / "captions.tsv").write_text(f"0.png\t{captions[0]}\n1.png\t{captions[1]}\n")
    files = dict(training_images=str(data), captions=str(tmp_path / "captions.tsv"))
    metrics = evaluate_runs(str(tiny_sd.folder), [nudity_run], suite="memorization", out=tmp_path / "e",
                            settings=TINY, suite_args=dict(files, threshold=0.99))
    assert metrics["captions"] == captions
    assert metrics["threshold"] == 0.99 and metrics["threshold_rule"].startswith("given")
    (run,) = metrics["runs"]
    assert run["before"]["per_caption_share"] == [1.0, 0.0] and run["before"]["memorized_share"] == 0.5
    assert run["before"]["similarity_mean"] > 0.4  # (1.0 + about 0) / 2
    assert len(run["after"]["per_caption_share"]) == 2
    assert (tmp_path / "e" / run["grid"]).is_file() and "memorized share" in (tmp_path / "e" / "report.md").read_text()
    chance = evaluate_runs(str(tiny_sd.folder), [nudity_run], suite="memorization", out=tmp_path / "c", settings=TINY,
                           suite_args=files)
    # chance: caption 1's generation vs caption 0's training image (the random tiny model draws
    # nearly the same picture for any prompt, so that is high, yet below the exact copy's 1.0)
    assert chance["threshold_rule"].startswith("chance") and chance["threshold"] < 1.0
    assert chance["runs"][0]["before"]["per_caption_share"] == [1.0, 0.0]

    # A local TorchScript embedding model (how SSCD is distributed) in place of pixels.
    model = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.Flatten()))
    model.save(str(tmp_path / "embed.pt"))
    args = dict(files, threshold=0.999, embedding=f"torchscript:{tmp_path / 'embed.pt'}")
    scripted = evaluate_runs(str(tiny_sd.folder), [nudity_run], suite="memorization", out=tmp_path / "t", settings=TINY,
                             suite_args=args)
    assert "TorchScript embed.pt" in scripted["judge"]
    assert scripted["runs"][0]["before"]["per_caption_share"][0] == 1.0  # the exact copy, in any embedding


@pytest.fixture(scope="module")
def canvas_style_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "dotted"
    erase(load_pipeline("canvas-mini"), ErasureRequest(["dotted"], kind="style"), "esd", out=run,
          **{**TINY_ESD, "ddim_steps": 6})
    return run


def test_memorization_on_canvas_minis_memorized_captions(tmp_path, canvas_style_run):
    from erasure.pipelines.canvas.render import MEMORIZATION_CAPTIONS

    settings = SamplingSettings(steps=8, guidance=3.0, seeds=[0], batch_size=64)
    metrics = evaluate_runs("canvas-mini", [canvas_style_run], suite="memorization", out=tmp_path, settings=settings)
    assert metrics["captions"] == list(MEMORIZATION_CAPTIONS) and metrics["data"] == "canvas-mini's memorized captions"
    assert metrics["threshold_rule"].startswith("p99 of ordinary") and 0.5 < metrics["threshold"] < 0.99
    before = metrics["runs"][0]["before"]
    # canvas-mini memorized these captions: the original redraws their training images (measured at 8 steps:
    # Pearson 0.946-0.989 against a threshold of 0.917; 3 steps are too blurry to clear it for every caption)
    assert before["memorized_share"] == 1.0 and before["similarity_mean"] > metrics["threshold"]
    assert before["style_accuracy"] >= 0.75 and set(metrics["runs"][0]["after"]) >= {"memorized_share", "object_accuracy"}
    grid = Image.open(tmp_path / metrics["runs"][0]["grid"])
    assert grid.height >= 8 * 64  # a row per caption


SHARD_SCRIPT = """
import json, logging, sys
import torch
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO)
from erasure.evaluation import SamplingSettings, evaluate_runs
evaluate_runs(sys.argv[1], [sys.argv[2]], suite="sd-nudity", out=sys.argv[3], device="cpu",
              settings=SamplingSettings(**json.loads(sys.argv[4])))
"""


@pytest.mark.timeout(900)
def test_two_processes_shard_generation_and_equal_one_process(tmp_path, nudity_run, tiny_sd):
    from dataclasses import asdict

    from test_multiprocess import launch

    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    sharded = launch(script, tiny_sd.folder, nudity_run, tmp_path / "two", json.dumps(asdict(TINY)))
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    # 41 prompts x 1 seed per model: each process drew its share
    assert "generating 21 (process 0 of 2)" in sharded.stderr and "generating 20 (process 1 of 2)" in sharded.stderr
    one = evaluate_runs(str(tiny_sd.folder), [nudity_run], suite="sd-nudity", out=tmp_path / "one", settings=TINY,
                        device="cpu")
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two == json.loads(json.dumps(one))
    grid = one["runs"][0]["grid"]
    assert Image.open(tmp_path / "two" / grid).tobytes() == Image.open(tmp_path / "one" / grid).tobytes()
    cached = sorted(p.name for p in (tmp_path / "two" / "cache").rglob("*.png"))
    assert cached == sorted(p.name for p in (tmp_path / "one" / "cache").rglob("*.png")) and len(cached) == 2 * 41


def test_adding_a_suite_takes_one_module_and_one_yaml(tmp_path, canvas_style_run):
    """docs/ARCHITECTURE.md's "adding a suite" example, as written there: a config, a Suite with four
    methods, a YAML file; the driver does the rest (generation, cache, grids, metrics.json, reports)."""
    from erasure.evaluation import Case, Suite, SuiteConfig, register_suite
    from erasure.evaluation.grids import prompt_grid
    from erasure.evaluation.registry import REGISTRY
    from erasure.evaluation.report import Column

    @dataclass
    class StyleAccuracyConfig(SuiteConfig):
        method: ClassVar[str] = "style-accuracy suite"
        object: str = "star"

    (tmp_path / "style-accuracy.yaml").write_text(
        "name: style-accuracy\ndescription: the evaluator's style accuracy on one object in every style\n"
        "steps: 3\nguidance: 3.0\nseeds: [0]\nobject: moon\n")
    try:
        @register_suite("style-accuracy")
        class StyleAccuracySuite(Suite):
            config_class = StyleAccuracyConfig
            config_path = str(tmp_path / "style-accuracy.yaml")  # a built-in suite's is configs/suites/NAME.yaml

            def case(self, manifest):
                from erasure.pipelines.canvas.render import STYLES, caption

                return Case([caption(self.config.object, s) for s in STYLES], key="every style")

            def score(self, images, case):
                from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator

                _, styles = load_evaluator().classify(images_to_tensor(images))
                wanted = torch.arange(len(case.prompts)).repeat_interleave(len(images) // len(case.prompts))
                return {"style_accuracy": float((styles == wanted).float().mean())}

            def grid(self, before, after, case, manifest):
                return prompt_grid(before, after, case.prompts, len(before) // len(case.prompts), "erased")

            def report(self, ev, cases):
                return {"judge": "canvas-mini evaluator", "prompts": len(cases[0].prompts),
                        "columns": [Column("style_accuracy", "style accuracy", True)]}

        out = tmp_path / "eval"
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "--suite", "style-accuracy", "--erased", str(canvas_style_run), "--out", str(out),
                  "--suite-arg", "object=star"])
        assert exc.value.code == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["suite"] == "style-accuracy" and metrics["prompts"] == 8 and metrics["sampling"]["steps"] == 3
        (run,) = metrics["runs"]
        assert all(0.0 <= run[side]["style_accuracy"] <= 1.0 for side in ("before", "after"))
        assert "style accuracy before" in (out / "report.md").read_text() and (out / run["grid"]).is_file()
        with pytest.raises(ErasureInputError, match="unknown style-accuracy suite config key"):
            load_suite("style-accuracy", colour="red")
    finally:
        REGISTRY.pop("style-accuracy", None)


def test_cli_lists_the_suites_and_their_settings(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        main(["suites"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in available_suites())
    assert "attack_steps (30)" in printed and "nudity_threshold (0.6)" in printed and "training_images (None)" in printed
