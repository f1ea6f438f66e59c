"""The erasure CLI: generate, info, and one-line errors with exit code 2 and no output file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from erasure.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_generate_writes_a_labelled_grid(capsys, tmp_path, tiny_sd):
    out = tmp_path / "grids" / "grid.png"
    code, stdout, err = run_cli(capsys, "generate", "--model", tiny_sd.folder, "-p", "a cat", "-p", "a dog",
                                "--seeds", "0-2", "--steps", "2", "--batch-size", "2", "--scheduler", "ddim",
                                "--out", out)
    assert code == 0, err
    assert f"wrote {out} (2 prompts x 3 seeds)" in stdout
    grid = Image.open(out)
    # 32 px images enlarged to 128 px cells; 3 columns and 2 rows plus label margins.
    assert grid.width > 3 * 128 and grid.height > 2 * 128
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temporary file left


def test_generate_from_single_file(capsys, tmp_path, tiny_sd):
    out = tmp_path / "grid.jpg"
    code, _, err = run_cli(capsys, "generate", "--model", tiny_sd.single_file, "--config", tiny_sd.folder,
                           "-p", "a cat", "--seeds", "0", "--steps", "1", "--out", out)
    assert code == 0, err
    assert Image.open(out).format == "JPEG"


def test_info_describes_the_model(capsys, tiny_sd):
    code, out, err = run_cli(capsys, "info", "--model", tiny_sd.folder)
    assert code == 0, err
    unet = sum(p.numel() for p in tiny_sd.pipe.unet.parameters())
    for expected in ("StableDiffusionPipeline", "PNDMScheduler", "attention:  sdpa", "device:     cpu",
                     "dtype:      float32", "UNet2DConditionModel", f"{unet:,} params", "CLIPTokenizer"):
        assert expected in out


def test_info_json(capsys, tiny_sdxl):
    code, out, err = run_cli(capsys, "info", "--model", tiny_sdxl.single_file, "--config", tiny_sdxl.folder, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["pipeline"] == "StableDiffusionXLPipeline" and info["attention"] == "sdpa"
    names = {c["name"]: c for c in info["components"]}
    assert names["text_encoder_2"]["class_name"] == "CLIPTextModelWithProjection"
    assert info["total_parameters"] == sum(c["parameters"] or 0 for c in info["components"])


def _bad_cases(tmp_path, tiny_sd) -> dict[str, tuple[list, str, str]]:
    """case -> (arguments to `erasure generate`, expected message, output file name)."""
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"pickle")
    empty = tmp_path / "empty"
    empty.mkdir()
    model = ["--model", tiny_sd.folder, "-p", "x"]
    return {
        "missing-path": (["--model", tmp_path / "nope", "-p", "x"], "model source not found", "grid.png"),
        "no-model-index": (["--model", empty, "-p", "x"], "no model_index.json", "grid.png"),
        "ckpt-refused": (["--model", ckpt, "-p", "x"], "pickled checkpoints", "grid.png"),
        "bad-seeds": ([*model, "--seeds", "0-x"], "bad seeds", "grid.png"),
        "backwards-seeds": ([*model, "--seeds", "7-0"], "runs backwards", "grid.png"),
        "zero-steps": ([*model, "--steps", "0"], "--steps", "grid.png"),
        "not-a-number": ([*model, "--guidance", "lots"], "--guidance", "grid.png"),
        "unknown-scheduler": ([*model, "--scheduler", "warp"], "unknown scheduler", "grid.png"),
        "xformers": ([*model, "--attention", "xformers"], "xformers", "grid.png"),
        "bad-device": ([*model, "--device", "tpu"], "unknown device", "grid.png"),
        "missing-prompt": (["--model", tiny_sd.folder], "Missing option '--prompt'", "grid.png"),
        "bad-extension": (model, "unsupported image type", "grid.gif"),
        "single-file-without-config": (["--model", tiny_sd.single_file, "-p", "x"], "needs --config", "grid.png"),
    }


CASES = ["missing-path", "no-model-index", "ckpt-refused", "bad-seeds", "backwards-seeds", "zero-steps",
         "not-a-number", "unknown-scheduler", "xformers", "bad-device", "missing-prompt", "bad-extension",
         "single-file-without-config"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_no_output(capsys, tmp_path, tiny_sd, case):
    if case == "xformers":
        from erasure.pipelines.attention import xformers_installed

        if xformers_installed():
            pytest.skip("xformers is installed here")
    args, message, name = _bad_cases(tmp_path, tiny_sd)[case]
    out = tmp_path / "outdir" / name
    code, stdout, err = run_cli(capsys, "generate", *args, "--out", out)
    assert code == 2
    assert err.startswith("erasure: error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err and stdout == ""
    assert not (tmp_path / "outdir").exists() or not list((tmp_path / "outdir").iterdir())


def test_failed_generation_leaves_no_file(capsys, tmp_path, tiny_sd, monkeypatch):
    import erasure.pipelines as pipelines
    from erasure.errors import ErasureInputError

    def fail_halfway(*args, **kwargs):
        raise ErasureInputError("stopped")

    monkeypatch.setattr(pipelines, "image_grid", fail_halfway)
    out = tmp_path / "grid.png"
    code, _, err = run_cli(capsys, "generate", "--model", tiny_sd.folder, "-p", "x", "--seeds", "0",
                           "--steps", "1", "--out", out)
    assert code == 2 and "stopped" in err
    assert list(tmp_path.iterdir()) == []


def test_console_script_entry_point(tmp_path):
    from importlib.metadata import entry_points

    assert [ep.value for ep in entry_points(group="console_scripts", name="erasure")] == ["erasure.cli:main"]
    # A fresh process, as the `erasure` script runs (python -m erasure calls the same main()).
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "erasure", "info", "--model", tmp_path / "nope"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("erasure: error: model source not found")
    assert "Traceback" not in result.stderr


def test_help_lists_the_commands(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("generate", "info", "canvas"):
        assert command in out
