"""bench/gpu.py, the GPU bench, kept from rotting without a GPU.

Its ``--device cpu --tiny`` mode runs the whole bench (every method, both backends, the JSON) on a
32 px pipeline in a fresh process; the full-size settings it would use on a GPU are checked
against the method configs without building the model; its refusals exit 2 with one line.
Nothing here needs or uses a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"
METHODS = ("esd", "advunlearn", "doco", "sfd", "prune")


def run_bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def load_script():
    """bench/gpu.py as a module (registered first: its dataclasses look their module up by name)."""
    if "gpu_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_bench"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_bench"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu-bench") / "gpu.json"
    done = run_bench("--device", "cpu", "--tiny", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(out.read_text())


def test_tiny_cpu_run_measures_every_method(tiny_run):
    done, result = tiny_run
    assert result["complete"] is True and result["mode"] == "tiny"
    assert result["device"]["type"] == "cpu" and result["dtype"] == "float32" and result["mixed_precision"] == "no"
    assert result["memory_kind"].startswith("process_peak_rss")
    assert result["command"].startswith("python bench/gpu.py --device cpu --tiny")
    assert {"torch", "diffusers"} <= set(result["versions"])
    assert set(result["results"]) == set(METHODS)
    for method in METHODS:
        r = result["results"][method]["sdpa"]
        assert "error" not in r and "skipped" not in r, (method, r)
        assert math.isfinite(r["seconds_per_step"]) and r["seconds_per_step"] > 0, method
        assert r["steps"] >= 2 and all(s > 0 for s in r["step_seconds"]), method
        assert r["peak_memory_bytes"] > 0, method
        assert r["generation"]["seconds_per_image"] > 0 and r["generation"]["images"] == 2, method
        # What `erasure info` reports, before and after the method ran.
        assert r["attention_reported"] == r["attention_after_erase"] == "sdpa" and r["attention_ok"], method
        assert f"[sdpa] {method}:" in done.stdout
    # Each method's own progress ticks are the steps; the --tiny default is 3 training steps.
    assert all(result["results"][m]["sdpa"]["steps"] == 3 for m in ("esd", "advunlearn", "doco", "sfd"))
    assert result["results"]["sfd"]["sdpa"]["generation"]["sampler"].startswith("one-step generator")
    assert result["results"]["esd"]["sdpa"]["generation"]["sampler"].startswith("PNDMScheduler")


def test_xformers_is_skipped_with_a_reason_on_cpu(tiny_run):
    _, result = tiny_run
    reason = result["backends"]["xformers"]["skipped"]
    assert reason and ("xformers" in reason)
    for method in METHODS:
        assert result["results"][method]["xformers"] == {"skipped": reason}


def test_full_size_settings_are_valid_configs():
    """The overrides the GPU run applies to each SD preset are accepted by the method's config."""
    from erasure.api import method_config
    from erasure.config import parse_assignments
    from erasure.configs import preset_path

    bench = load_script()
    args = argparse.Namespace(tiny=False, steps=6, device="cuda")
    for method in METHODS:
        overrides = bench.method_overrides(method, args)
        cfg = method_config(method, preset_path(bench.PRESETS[method]), **parse_assignments(overrides))
        if method != "prune":
            assert cfg.steps == 6 and cfg.mixed_precision == "bf16", method
    assert bench.REQUESTS.keys() == bench.PRESETS.keys() == set(METHODS)


def test_budget_skips_pairs_and_still_writes_the_json(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--tiny", "--methods", "esd,prune", "--budget-seconds", "0.001", "--out", str(out)]
    assert load_script().main(args) == 0  # in-process: the subprocess run above already covers a fresh start
    result = json.loads(out.read_text())
    assert result["complete"] is True and set(result["results"]) == {"esd", "prune"}
    for method in ("esd", "prune"):
        assert result["results"][method]["sdpa"]["skipped"].startswith("time budget")
    assert "esd: skipped: time budget" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_exits_2_with_one_line(tmp_path):
    done = run_bench("--device", "cuda", "--out", str(tmp_path / "gpu.json"), timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench/gpu.py: error: --device cuda") and "CUDA" in lines[0]
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--device", "cpu"], "add --tiny"),
    (["--device", "tpu", "--tiny"], "--device 'tpu'"),
    (["--device", "cpu", "--tiny", "--methods", "esd,magic"], "--methods"),
    (["--device", "cpu", "--tiny", "--steps", "1"], "--steps 1"),
    (["--device", "cpu", "--tiny", "--steps", "many"], "invalid int value"),
])
def test_bad_input_exits_2_with_one_line(args, message, capsys, tmp_path):
    assert load_script().main([*args, "--out", str(tmp_path / "gpu.json")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench/gpu.py: error: ") and message in lines[0]
    assert captured.out == "" and not (tmp_path / "gpu.json").exists()
