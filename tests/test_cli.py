"""The erasure CLI: generate, info, progress output (bad input on every command: test_bad_input.py)."""

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


# ----------------------------------------------------------------------------- progress in a log file
def _progress_lines(err: str, *stages: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(stages)]


def test_erase_into_a_log_prints_each_stages_first_and_last_update(capsys, tmp_path):
    # capsys' stderr is not a terminal, as with `erasure erase ... > log 2>&1`: rich would draw nothing.
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "erase", "--concept", "dotted", "--kind", "style", "--steps", "3",
                             "--set", "ddim_steps=3", "--set", "precompute_batch=4", "--out", run)
    assert code == 0, err
    lines = _progress_lines(err, "sampling x_t", "training")
    # A fast run: only the announced start and the end of each stage (the throttle drops the rest).
    assert lines[0] == "sampling x_t 0/3 (0%)"
    assert lines[1].startswith("sampling x_t 3/3 (100%) in ")
    assert lines[2] == "training 0/3 (0%)"
    assert lines[3].startswith("training 3/3 (100%) loss=") and " in " in lines[3]
    assert len(lines) == 4 and "\x1b" not in err  # plain text, no terminal control codes
    config_line, wrote = out.splitlines()[:2]
    assert config_line == ("config: the shipped preset configs/esd/canvas-mini-style.yaml (--config FILE for another, "
                           "--config defaults for esd's own)")
    assert wrote.startswith(f"wrote {run}: esd edit")


def test_generate_into_a_log_prints_progress_lines(capsys, tmp_path, tiny_sd):
    code, _, err = run_cli(capsys, "generate", "--model", tiny_sd.folder, "-p", "a cat", "--seeds", "0-1",
                           "--steps", "2", "--scheduler", "ddim", "--batch-size", "1", "--out", tmp_path / "grid.png")
    assert code == 0, err
    lines = _progress_lines(err, "generating")  # fractional images: steps within a batch
    assert lines[0].startswith("generating 0.5/2 (25%)")
    assert lines[-1].startswith("generating 2/2 (100%) in ")


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_are_throttled_per_stage(capsys):
    from erasure.progress import ProgressLines

    clock = _FakeClock()
    lines = ProgressLines(interval=15.0, clock=clock)
    lines.update("training", 0, 1000, {})
    for step in range(1, 1001):  # one step a second for 1000 s
        clock.now += 1.0
        lines.update("training", step, 1000, {"loss": 1.0 / step})
    lines.close()
    printed = capsys.readouterr().err.splitlines()
    # The start, one line per 15 s, the end: 68 lines instead of 1001.
    assert len(printed) == 1 + 1000 // 15 + 1
    assert printed[0] == "training 0/1000 (0%)"
    assert printed[1] == "training 15/1000 (2%) loss=0.06667 eta 16m25s"
    assert printed[-1] == "training 1000/1000 (100%) loss=0.001 in 16m40s"


def test_progress_lines_announce_a_stage_at_once_and_keep_its_last_update(capsys):
    from erasure.progress import ProgressLines

    clock = _FakeClock()
    lines = ProgressLines(interval=15.0, clock=clock)
    lines.update("sampling x_t", 0, 64, {})
    assert capsys.readouterr().err == "sampling x_t 0/64 (0%)\n"  # before the (slow) first step ends
    clock.now += 2.0
    lines.update("sampling x_t", 8, 64, {})  # throttled
    lines.update("training", 500, 1000, {})  # another stage (here resumed at step 500) prints its own first line
    clock.now += 7200.0
    lines.update("training", 501, 1000, {})
    assert capsys.readouterr().err.splitlines() == ["training 500/1000 (50%)", "training 501/1000 (50%) eta 998h00m"]
    lines.close()  # the run stops: the throttled last state of the unfinished stage still reaches the log
    assert capsys.readouterr().err.splitlines() == ["sampling x_t 8/64 (12%) eta 14s"]


def test_bars_on_a_terminal_lines_otherwise(monkeypatch):
    import io

    from erasure import progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for var in ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich would call this a terminal and redraw into the log
    assert not progress.stderr_is_live_terminal()
    monkeypatch.delenv("FORCE_COLOR")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert progress.stderr_is_live_terminal()
    with progress.StageBars() as bars:
        bars("training", 0, 10, {})
        assert "training" in terminal.getvalue() and "0/10" in terminal.getvalue()  # drawn at once
    monkeypatch.setenv("TERM", "dumb")
    assert not progress.stderr_is_live_terminal()
