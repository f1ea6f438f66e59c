"""ESD on a tiny SD pipeline; run folders, load_erased, fingerprints, resume after SIGKILL, `erasure erase`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from erasure import ErasureRequest, erase
from erasure.cli import main
from erasure.errors import ErasureInputError
from erasure.erased import load_erased
from erasure.pipelines import load_pipeline

# A few steps on a 4-step DDIM grid: enough to move the weights, fast on a CPU.
TINY = dict(steps=6, ddim_steps=4, lr=1e-3, precompute_batch=8, checkpoint_every=0)


def fresh(saved):
    return load_pipeline(saved.folder, device="cpu")


def unet_state(pipe) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}


@pytest.mark.parametrize("variant", ["esd-x", "esd-u"])
def test_esd_changes_only_its_parameters_and_lowers_its_loss(tiny_sd, variant):
    from erasure.methods.esd import ESD, ESDConfig

    pipe = fresh(tiny_sd)
    before = unet_state(pipe)
    text_before = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters()}
    request = ErasureRequest(targets=["a cat"])
    lr = 1e-3 if variant == "esd-x" else 3e-5  # ESD-u moves every layer: a smaller step
    esd = ESD(ESDConfig(variant=variant, **{**TINY, "steps": 12, "lr": lr}))
    samples = esd.frozen_samples(pipe, request, n=12)  # the first 12 training samples, frozen targets
    loss_before = esd.loss(pipe, request, samples)
    edit = esd(pipe, request)
    loss_after = esd.loss(pipe, request, samples)
    assert loss_after < loss_before

    changed = {n for n, p in pipe.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and {f"unet.{n}" for n in changed} == set(edit.tensors)
    if variant == "esd-x":
        assert all(".attn2." in n for n in changed)
    else:
        assert not any("attn2" in n for n in changed)
        assert any(n.startswith("down_blocks") for n in changed) and "conv_in.weight" in changed
    assert all(torch.equal(p, text_before[n]) for n, p in pipe.text_encoder.named_parameters())
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in pipe.unet.parameters())
    assert edit.cost["peak_memory_bytes"] > 0 and edit.cost["wall_seconds"] > 0
    assert edit.extra["prediction_type"] == "epsilon"


def test_esd_v_prediction_and_reference_timesteps(tiny_sd):
    """A v-predicting scheduler and the reference script's timestep pairing run through the same code."""
    from diffusers import DDIMScheduler

    pipe = fresh(tiny_sd)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    edit = erase(pipe, ErasureRequest(targets=["a cat"]), **TINY, timesteps="reference", precompute=False)
    assert edit.extra["prediction_type"] == "v_prediction" and edit.tensors


def test_esd_on_sdxl_layout(tiny_sdxl):
    pipe = load_pipeline(tiny_sdxl.folder, device="cpu")
    before = unet_state(pipe)
    edit = erase(pipe, "a cat", **{**TINY, "steps": 2})
    assert edit.tensors and all(".attn2." in k for k in edit.tensors)
    assert any(not torch.equal(p, before[n]) for n, p in pipe.unet.named_parameters())


def test_precomputed_equals_online_and_gradient_checkpointing_changes_nothing(tiny_sd):
    a, b = fresh(tiny_sd), fresh(tiny_sd)
    ea = erase(a, "a cat", **TINY, precompute=True)
    eb = erase(b, "a cat", **TINY, precompute=False, gradient_checkpointing=True)
    assert not b.unet.is_gradient_checkpointing and ea.extra["attention"] == "sdpa"
    assert ea.tensors.keys() == eb.tensors.keys()
    for k in ea.tensors:
        assert torch.allclose(ea.tensors[k], eb.tensors[k], atol=1e-5), k


def test_run_folder_save_and_load_erased(tiny_sd, tmp_path):
    pipe = fresh(tiny_sd)
    run = tmp_path / "runs" / "cat"
    edit = erase(pipe, ErasureRequest(targets=["a cat"], kind="object"), out=run, **TINY)
    assert sorted(p.name for p in run.iterdir()) == ["README.md", "edit.safetensors", "manifest.json"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["method"] == "esd" and manifest["config"]["steps"] == TINY["steps"]
    assert manifest["request"]["targets"] == ["a cat"] and manifest["request"]["retain"]
    assert manifest["base"]["source"] == str(tiny_sd.folder.resolve())
    assert manifest["base"]["fingerprint"].startswith("sha256:")
    assert manifest["edit"]["tensors"] == len(edit.tensors) > 0
    assert {"torch", "diffusers", "transformers"} <= set(manifest["versions"])
    assert manifest["seed"] == 0 and manifest["cost"]["wall_seconds"] > 0

    erased = unet_state(pipe)
    for loaded in (load_erased(run, base=fresh(tiny_sd)), load_erased(run, device="cpu")):
        state = unet_state(loaded)
        assert all(torch.equal(state[n], erased[n]) for n in erased)
    # The edit holds only the changed tensors: the rest of the UNet is the base's.
    assert manifest["edit"]["parameters"] < sum(p.numel() for p in pipe.unet.parameters()) / 4


def test_edit_of_a_half_precision_base_is_stored_in_its_dtype(tiny_sd, tmp_path):
    """A run on a bfloat16 load stores bfloat16 tensors: half the bytes, and on that base the same
    weights as the float32 master values give."""
    edit = erase(fresh(tiny_sd), ErasureRequest(targets=["a cat"], kind="object"), **TINY)
    full = tmp_path / "fp32"
    edit.save(full)
    edit.base = {**edit.base, "dtype": "bfloat16"}
    half = tmp_path / "bf16"
    edit.save(half)
    m_full = json.loads((full / "manifest.json").read_text())["edit"]
    m_half = json.loads((half / "manifest.json").read_text())["edit"]
    assert (m_full["dtype"], m_half["dtype"]) == ("float32", "bfloat16")
    assert m_half["bytes"] * 2 == m_full["bytes"] and m_half["file_bytes"] < 0.6 * m_full["file_bytes"]
    assert m_half["write_seconds"] >= 0

    def applied(run):
        from erasure.edit import Edit

        base = load_pipeline(tiny_sd.folder, device="cpu", dtype="bf16")
        Edit.load(run).apply(base)
        return unet_state(base)

    expected, got = applied(full), applied(half)
    assert all(torch.equal(expected[n], got[n]) for n in expected)


def test_load_erased_refuses_another_base(tiny_sd, tmp_path):
    from erasure.pipelines.testing import tiny_sd_pipeline

    run = tmp_path / "run"
    erase(fresh(tiny_sd), "a cat", out=run, **TINY)
    with pytest.raises(ErasureInputError, match="weights differ from the model this edit was made for"):
        load_erased(run, base=tiny_sd_pipeline(seed=1))
    with pytest.raises(ErasureInputError, match="not a run folder"):
        load_erased(tmp_path)
    with pytest.raises(ErasureInputError, match="holds a finished run"):
        erase(fresh(tiny_sd), "a cat", out=run, **TINY)


def test_full_export(tiny_sd, tmp_path):
    run = tmp_path / "run"
    pipe = fresh(tiny_sd)
    erase(pipe, "a cat", out=run, export_full=True, **{**TINY, "steps": 2})
    exported = load_pipeline(run / "full", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(exported.unet.parameters(), pipe.unet.parameters()))


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from erasure import erase
    from erasure.pipelines import load_pipeline

    def slow(stage, done, total, metrics):
        if stage == "training":
            print(done, flush=True)
            time.sleep(0.25)

    erase(load_pipeline(sys.argv[1], device="cpu"), "a cat", out=sys.argv[2], progress=slow, **CONFIG)
    """
)


def test_resume_after_sigkill_equals_uninterrupted_run(tiny_sd, tmp_path):
    config = dict(steps=16, ddim_steps=4, lr=1e-3, precompute_batch=8, checkpoint_every=4)
    run = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT.replace("**CONFIG", "**" + repr(config)))
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_sd.folder), str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        for line in proc.stdout:
            if int(line) >= 10:  # past the checkpoint at step 8, before the one at 12
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert (run / "checkpoint" / "checkpoint.pt").is_file() and not (run / "manifest.json").exists()
    with pytest.raises(ErasureInputError, match="unfinished run"):
        load_erased(run)
    with pytest.raises(ErasureInputError, match="pass --resume"):
        erase(fresh(tiny_sd), "a cat", out=run, **config)
    with pytest.raises(ErasureInputError, match="different config"):
        erase(fresh(tiny_sd), "a cat", out=run, resume=True, **{**config, "lr": 2e-3})

    starts = []
    resumed = erase(fresh(tiny_sd), "a cat", out=run, resume=True,
                    progress=lambda stage, done, total, m: starts.append(done) if stage == "training" else None, **config)
    assert starts[0] == 8  # continued from the last checkpoint
    whole = erase(fresh(tiny_sd), "a cat", **config)
    assert resumed.tensors.keys() == whole.tensors.keys()
    for k in whole.tensors:
        assert torch.allclose(resumed.tensors[k], whole.tensors[k], atol=1e-6), k
    assert not (run / "checkpoint").exists() and (run / "manifest.json").is_file()


class Interrupt(Exception):
    pass


def test_shared_trajectories_run_resume_from_their_saved_data_and_count_sample_steps(tiny_sd, tmp_path):
    """``trajectories: shared``: fewer frozen sample-steps than per-step trajectories need, the samples
    saved and reloaded on resume (nothing sampled again), the resumed run equal to an uninterrupted one."""
    config = dict(steps=12, ddim_steps=6, lr=1e-3, precompute_batch=4, checkpoint_every=4, trajectories="shared")
    run = tmp_path / "run"

    def stop_after_6(stage, done, total, metrics):
        if stage == "training" and done == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        erase(fresh(tiny_sd), "a cat", out=run, progress=stop_after_6, **config)
    assert (run / "checkpoint" / "esd-data-0-of-1.safetensors").is_file()
    resumed = erase(fresh(tiny_sd), "a cat", out=run, resume=True, **config)
    assert resumed.extra["sample_steps"]["executed"] == 0  # the saved samples, not sampled again
    whole = erase(fresh(tiny_sd), "a cat", **config)
    for k in whole.tensors:
        assert torch.allclose(resumed.tensors[k], whole.tensors[k], atol=1e-6), k
    shared = whole.extra["sample_steps"]
    per_step = erase(fresh(tiny_sd), "a cat", **{**config, "trajectories": "per-step"}).extra["sample_steps"]
    assert shared["points"] == per_step["points"] == 12 and shared["independent"] == per_step["independent"]
    assert shared["executed"] == shared["needed"] < per_step["executed"] == per_step["needed"] == per_step["independent"]
    with pytest.raises(ErasureInputError, match="trajectories: 'reused'; expected one of per-step, shared"):
        erase(fresh(tiny_sd), "a cat", **{**config, "trajectories": "reused"})


# ----------------------------------------------------------------------------- CLI


def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_cli_erase_with_a_preset_and_overrides(capsys, tmp_path, tiny_sd):
    from pathlib import Path

    preset = Path(__file__).parent.parent / "configs" / "esd" / "canvas-mini-style.yaml"
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "erase", "--model", tiny_sd.folder, "--concept", "a cat", "--config", preset,
                             "--steps", "2", "--set", "ddim_steps=3", "--set", "precompute_batch=4", "--out", run,
                             "--retain", "a dog", "--retain", "a red car")
    assert code == 0, err
    config_line, wrote = out.splitlines()[:2]
    assert "configs/esd/canvas-mini-style.yaml" in config_line and wrote.startswith(f"wrote {run}: esd edit of ")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config_source"] == "preset esd/canvas-mini-style"  # a shipped file, named as such
    assert manifest["config"]["steps"] == 2 and manifest["config"]["ddim_steps"] == 3
    assert manifest["request"]["retain"] == ["a dog", "a red car"]  # --retain replaces the kind's default
    assert manifest["cost"]["stages"]["training"]["units"] == 2  # seconds per step are recorded
    assert manifest["config"]["lr"] == 5e-4  # from the preset
    load_erased(run, device="cpu")


def _bad_erase_cases(tmp_path, tiny_sd) -> dict[str, tuple[list, str]]:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    model = ["--model", tiny_sd.folder]
    return {
        "unknown-method": ([*model, "--concept", "x", "--method", "nope"], "unknown method 'nope'"),
        "empty-concept": ([*model, "--concept", " "], "empty concept"),
        "missing-model": (["--model", tmp_path / "nope", "--concept", "x"], "model source not found"),
        "unwritable-output": ([*model, "--concept", "x", "--out", blocker / "run"], "cannot write there"),
        "unknown-config-key": ([*model, "--concept", "x", "--set", "stepz=3"], "unknown esd config key"),
        "bad-config-value": ([*model, "--concept", "x", "--set", "variant=esd-z"], "variant"),
        "missing-config-file": ([*model, "--concept", "x", "--config", tmp_path / "none.yaml"], "config file not found"),
        "unknown-kind": ([*model, "--concept", "x", "--kind", "colour"], "unknown kind"),
        "canvas-style": (["--concept", "cubist", "--kind", "style"], "canvas-mini has no style 'cubist'"),
        "missing-concept": (model, "Missing option '--concept'"),
    }


@pytest.mark.parametrize("case", ["unknown-method", "empty-concept", "missing-model", "unwritable-output",
                                  "unknown-config-key", "bad-config-value", "missing-config-file", "unknown-kind",
                                  "canvas-style", "missing-concept"])
def test_cli_erase_bad_input_is_one_line_exit_2_and_no_run(capsys, tmp_path, tiny_sd, case):
    args, message = _bad_erase_cases(tmp_path, tiny_sd)[case]
    if "--out" not in args:
        args = [*args, "--out", tmp_path / "runs" / "r"]
    code, stdout, err = run_cli(capsys, "erase", *args)
    assert code == 2
    assert err.startswith("erasure: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err and stdout == ""
    assert not (tmp_path / "runs").exists()
    assert not list(tmp_path.rglob("manifest.json"))
