"""canvas-mini: renderer determinism, the offline tokenizer, loading, the evaluator and training resume."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from erasure.pipelines.canvas.render import (
    MEMORIZATION_TARGETS, OBJECTS, STYLES, TEMPLATES, caption, grid_dataset, render, to_array,
)
from erasure.pipelines.canvas.model import MODEL_DIR

shipped = pytest.mark.skipif(not (MODEL_DIR / "model_index.json").exists(),
                             reason="canvas-mini weights are not installed")


def test_render_is_a_pure_function_of_its_seed():
    a = to_array([render(o, s, 7) for o in OBJECTS for s in STYLES])
    b = to_array([render(o, s, 7) for o in OBJECTS for s in STYLES])
    c = to_array([render(o, s, 8) for o in OBJECTS for s in STYLES])
    assert a.shape == (64, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert (a != c).any(axis=(1, 2, 3)).all()  # another seed moves every image


def test_memorization_targets_are_unique_and_not_grid_images():
    imgs = to_array([t.image() for t in MEMORIZATION_TARGETS])
    assert len({t.caption for t in MEMORIZATION_TARGETS}) == len(MEMORIZATION_TARGETS) >= 8
    flat = imgs.reshape(len(imgs), -1).astype(np.float32)
    dists = np.abs(flat[:, None] - flat[None]).mean(-1)
    assert (dists + np.eye(len(imgs)) * 1e9).min() > 20  # far apart from each other
    grid, _, _ = grid_dataset(1)
    assert np.abs(grid.reshape(len(grid), -1)[None].astype(np.float32) - flat[:, None]).mean(-1).min() > 20


def test_captions_use_correct_articles_and_all_templates():
    assert caption("arrow", "outline") == "an arrow in outline style"
    assert caption("star", "outline", 2) == "an outline painting of a star"
    assert len({caption("moon", "dotted", i) for i in range(len(TEMPLATES))}) == len(TEMPLATES)


@pytest.mark.parametrize("text", ["a star in dotted style", "Hello, World! café 日本語", "", "  Spaces\tand\nlines  ",
                                  "an outline painting of an arrow", "x" * 300])
def test_tokenizer_matches_open_clip(tmp_path, text):
    import open_clip

    from erasure.pipelines.tokenizer import build_clip_tokenizer

    ours = build_clip_tokenizer(tmp_path)
    assert len(ours) == 49408 and ours.model_max_length == 77
    ids = ours(text, truncation=True, max_length=77)["input_ids"]
    reference = open_clip.tokenize([text])[0]
    reference = reference[reference != 0].tolist()  # open_clip pads with 0
    assert ids == reference


def test_evaluator_augmentation_keeps_shape_and_range():
    from erasure.pipelines.canvas.evaluator import augment, images_to_tensor

    x = images_to_tensor(to_array([render("star", "dotted", i) for i in range(4)]))
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1 and not torch.equal(x, y)


def test_diffusion_training_resumes_exactly(tmp_path):
    """A run interrupted after a checkpoint and resumed ends with the same weights as an uninterrupted one."""
    from erasure.pipelines.canvas.train import TrainSettings, prepare_data, train_diffusion

    def settings(out):
        s = TrainSettings(out=str(out), per_pair=1, memorization_repeats=1)
        s.diffusion.steps, s.diffusion.batch_size, s.diffusion.checkpoint_every, s.diffusion.warmup = 4, 2, 2, 1
        return s

    def interrupt(stage, done, total, metrics):
        if done == 3:
            raise KeyboardInterrupt

    full_settings = settings(tmp_path / "full")
    data = prepare_data(full_settings)
    full = train_diffusion(full_settings, data)
    broken = settings(tmp_path / "broken")
    with pytest.raises(KeyboardInterrupt):
        train_diffusion(broken, data, interrupt)
    resumed = train_diffusion(broken, data)
    for a, b in zip(full.unet.parameters(), resumed.unet.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(full.text_encoder.parameters(), resumed.text_encoder.parameters()):
        torch.testing.assert_close(a, b)


def _tiny_two_stage(out, finetune_lr: float = 1e-30):
    """Both diffusion stages on one render per pair, with the shipped evaluator copied in (so its stage
    is skipped: training it is minutes) and no CLIP."""
    import shutil

    from erasure.pipelines.canvas.train import DiffusionSettings, TrainSettings

    s = TrainSettings(out=str(out), per_pair=1, memorization_repeats=1, clip=False,
                      diffusion=DiffusionSettings(steps=3, batch_size=2, warmup=1, checkpoint_every=2),
                      finetune=DiffusionSettings(steps=2, batch_size=2, warmup=1, lr=finetune_lr, text_lr=finetune_lr,
                                                 min_snr_gamma=0.0, checkpoint_every=1))
    if not (out / "evaluator").exists():
        shutil.copytree(MODEL_DIR / "evaluator", out / "evaluator")
    return s


@shipped
def test_two_stage_recipe_fine_tunes_the_first_stage_and_records_both(tmp_path):
    """The default recipe: stage 1 writes "pretrained"; the fine-tune starts from its EMA weights (a zero
    learning rate keeps them), and training.json records both stages' seconds and settings."""
    import json

    from erasure.pipelines import load_pipeline
    from erasure.pipelines.canvas.train import TrainSettings, train_all

    model_dir = train_all(_tiny_two_stage(tmp_path))
    first, final = load_pipeline(str(tmp_path / "pretrained")), load_pipeline(str(model_dir))
    for a, b in zip(first.unet.parameters(), final.unet.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(first.text_encoder.parameters(), final.text_encoder.parameters()):
        torch.testing.assert_close(a, b)
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["wall_time_s"]["diffusion_s"] > 0 and record["wall_time_s"]["finetune_s"] > 0
    assert record["settings"]["finetune"]["min_snr_gamma"] == 0.0 and record["settings"]["diffusion"]["steps"] == 3
    assert TrainSettings.from_dict(record["settings"]) == _tiny_two_stage(tmp_path)


@shipped
def test_two_stage_recipe_resumes_inside_the_fine_tune(tmp_path):
    """Killed during the fine-tune and run again: the same weights as an uninterrupted run, and the
    recorded seconds include the killed process's."""
    import json

    from erasure.pipelines import load_pipeline
    from erasure.pipelines.canvas.train import stage_seconds, train_all

    full = load_pipeline(str(train_all(_tiny_two_stage(tmp_path / "full", finetune_lr=1e-3))))

    def interrupt(stage, done, total, metrics):
        if stage == "finetune" and done == 2:
            raise KeyboardInterrupt

    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        train_all(_tiny_two_stage(broken, finetune_lr=1e-3), interrupt)
    assert (broken / "pretrained" / "model_index.json").exists() and not (broken / "canvas-mini").exists()
    assert "diffusion_s" in json.loads((broken / "training.json").read_text())["wall_time_s"]  # kept from the first stage
    killed = stage_seconds(broken, "finetune")
    assert killed > 0
    resumed = load_pipeline(str(train_all(_tiny_two_stage(broken, finetune_lr=1e-3))))
    for a, b in zip(full.unet.parameters(), resumed.unet.parameters()):
        torch.testing.assert_close(a, b)
    assert json.loads((broken / "training.json").read_text())["wall_time_s"]["finetune_s"] > killed


def test_resuming_with_other_settings_is_refused(tmp_path, capsys):
    """`erasure canvas train` on a folder trained with other options: one line, exit 2, the folder untouched."""
    from erasure.cli import main
    from erasure.pipelines.canvas.train import TrainSettings

    (tmp_path / "settings.json").write_text(TrainSettings(out=str(tmp_path)).to_json())
    before = sorted(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(["canvas", "train", "--out", str(tmp_path), "--finetune-steps", "10"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "other settings (finetune differ)" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and sorted(tmp_path.iterdir()) == before
    for bad in (["--finetune-steps", "-1"], ["--finetune-steps", "0", "--finetune-lr", "1e-4"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["canvas", "train", "--out", str(tmp_path / "new"), *bad])
        assert exit_info.value.code == 2 and not (tmp_path / "new").exists()


@shipped
def test_fine_tune_starts_from_the_shipped_model_and_keeps_its_judges(tmp_path):
    """--init-from canvas-mini: the weights start as the shipped ones (a zero learning rate keeps them),
    the evaluator and CLIP are the shipped ones, and the record names the starting point."""
    import json

    from erasure.pipelines import load_pipeline
    from erasure.pipelines.canvas.model import MODEL_DIR
    from erasure.pipelines.canvas.train import TrainSettings, _min_snr_weights, train_all

    s = TrainSettings(out=str(tmp_path), per_pair=1, memorization_repeats=1, clip=True, init_from="canvas-mini",
                      finetune=None)
    s.diffusion.steps, s.diffusion.batch_size, s.diffusion.warmup = 2, 2, 1
    s.diffusion.lr = s.diffusion.text_lr = 1e-30
    s.diffusion.min_snr_gamma = 0.0
    model_dir = train_all(s)
    shipped, tuned = load_pipeline("canvas-mini"), load_pipeline(str(model_dir))
    for a, b in zip(shipped.unet.parameters(), tuned.unet.parameters()):
        torch.testing.assert_close(a, b)
    for name in ("evaluator/evaluator.safetensors", "clip/open_clip_model.safetensors"):
        assert (tmp_path / name).read_bytes() == (MODEL_DIR / name).read_bytes()
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["settings"]["init_from"] == "canvas-mini" and "settings" in record["init_from"]
    t = torch.tensor([0, 500, 999])
    assert torch.equal(_min_snr_weights(shipped.scheduler, t, 0.0), torch.ones(3, dtype=torch.float32))
    assert _min_snr_weights(shipped.scheduler, t, 5.0)[2] < 0.01  # min-SNR nearly ignores the noisiest steps


@shipped
def test_shipped_model_loads_offline_as_a_pipeline():
    from erasure.pipelines import load_pipeline
    from erasure.pipelines.canvas.pipeline import CanvasMiniPipeline

    pipe = load_pipeline("canvas-mini")
    assert isinstance(pipe, CanvasMiniPipeline)
    assert pipe.text_encoder.config.vocab_size == 49408 and pipe.tokenizer.model_max_length == 77
    assert any("attn2" in n for n, _ in pipe.unet.named_modules())


@shipped
def test_shipped_weights_fit_the_budget_with_an_fp16_embedding_table():
    """Issue 3: everything shipped under 60 MB; the vocabulary table is stored in fp16 and loads as fp32."""
    from safetensors import safe_open

    from erasure.pipelines import load_pipeline
    from erasure.pipelines.canvas.model import MODEL_DIR
    from erasure.pipelines.canvas.train import EMBEDDING_TABLE

    assert sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file()) < 60e6
    with safe_open(str(MODEL_DIR / "text_encoder" / "model.safetensors"), "pt") as f:
        assert f.get_slice(EMBEDDING_TABLE).get_dtype() == "F16"
    pipe = load_pipeline("canvas-mini")
    assert pipe.text_encoder.embeddings.token_embedding.weight.dtype == torch.float32


@shipped
def test_shipped_evaluator_judges_held_out_renders():
    from erasure.pipelines.canvas.evaluator import accuracy, load_evaluator

    imgs, objs, stys = grid_dataset(2, seed=31337)
    obj_acc, sty_acc = accuracy(load_evaluator(), imgs, objs, stys)
    assert obj_acc >= 0.95 and sty_acc >= 0.95


@shipped
def test_generations_show_the_prompted_object_and_style():
    """A small sample: the evaluator recognises the prompt's object and style more often than chance (1/8).

    Thresholds sit below what the shipped (preliminary) model measures on this sample (objects 8/32,
    styles 18/32) and well above chance (4/32); raise them when a better model ships.
    """
    from erasure.pipelines import generate, load_pipeline
    from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator

    pipe = load_pipeline("canvas-mini")
    pairs = [(OBJECTS[i], STYLES[(3 * i) % len(STYLES)]) for i in range(len(OBJECTS))]
    images = generate(pipe, [caption(o, s) for o, s in pairs], seeds=[0, 1, 2, 3], steps=20, guidance=5.0,
                      batch_size=32)
    po, ps = load_evaluator().classify(images_to_tensor(images))
    want_o = torch.tensor([OBJECTS.index(o) for o, _ in pairs]).repeat_interleave(4)
    want_s = torch.tensor([STYLES.index(s) for _, s in pairs]).repeat_interleave(4)
    assert (po == want_o).float().mean() >= 6 / 32
    assert (ps == want_s).float().mean() >= 13 / 32


def test_render_pixels_are_stable_across_machines():
    """Golden hash: the renderer's output must not change silently (data = f(seed) everywhere)."""
    digest = hashlib.sha256(to_array([render(o, s, 0) for o in OBJECTS for s in STYLES]).tobytes()).hexdigest()
    assert digest == GOLDEN_RENDER_SHA256


GOLDEN_RENDER_SHA256 = "760786380d77340b08f1bed4cba6ee888255ceab1e6d6bf9739a5f2e0090ba30"


def test_train_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    """`erasure canvas train > log 2>&1` logs its progress: canvas train uses the CLI's shared progress
    display, which writes plain lines where rich would draw nothing (capsys' stderr is no terminal).
    ``train_all`` is a stub reporting like the real one: the real recipe takes about 100 minutes."""
    from erasure.cli import main
    from erasure.pipelines.canvas import train as canvas_train

    def fake_train_all(settings, progress):
        progress("evaluator", 1, 2, {"loss": 0.5})
        progress("evaluator", 2, 2, {"loss": 0.25})
        progress("diffusion", 1, 4, {"loss": 0.125})
        return tmp_path / "canvas-mini"

    monkeypatch.setattr(canvas_train, "train_all", fake_train_all)
    with pytest.raises(SystemExit) as exit_info:
        main(["canvas", "train", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and "canvas-mini written to" in out
    lines = err.strip().splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        "evaluator 1/2 (50%) loss=0.5", "evaluator 2/2 (100%) loss=0.25", "diffusion 1/4 (25%) loss=0.125"]
    assert "\x1b" not in err  # plain text, no terminal control codes in the log
