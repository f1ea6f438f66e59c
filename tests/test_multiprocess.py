"""`erasure erase` under `accelerate launch` with two CPU processes (gloo), data-parallel.

Two processes with batch_size 1 train on the same samples as one process with batch_size 2 (ESD's
plan is split by global sample index, gradients are averaged), so their edits must agree up to
float summation order, here for a two-process run that crashed after a checkpoint and was resumed.

`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's CPU launcher needs
mpirun for more), so the tests use accelerate's torchrun launcher (`--multi_gpu`) with no GPU
visible: each process then trains its CPU pipeline over gloo.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

from erasure import erase
from erasure.edit import Edit
from erasure.erased import load_erased
from erasure.pipelines import load_pipeline

# Each launch is ended (with its workers) after LAUNCH_TIMEOUT, within pytest-timeout's limit.
LAUNCH_TIMEOUT = 600
pytestmark = pytest.mark.timeout(3 * LAUNCH_TIMEOUT)

# Per process; checkpoint_every=2 makes the two-process run write and read a checkpoint mid-run.
CONFIG = dict(steps=4, ddim_steps=4, lr=1e-3, precompute_batch=8, checkpoint_every=2, batch_size=1)
SETS = [a for k, v in CONFIG.items() for a in ("--set", f"{k}={v}")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args, timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    """Run `accelerate launch` with two processes; `args` is the script (or `-m module`) and its arguments."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), *map(str, args)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # Output to files, not pipes: a worker that outlives the launcher cannot keep the test waiting.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # torchrun runs each worker in a session of its own; on SIGTERM it ends them
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, proc.returncode, out.read(), err.read())


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from erasure import erase
    from erasure.pipelines import load_pipeline

    def crash(stage, done, total, metrics):  # called on the main process only
        if stage == "training" and done == 3:  # after the checkpoint at step 2
            raise RuntimeError("simulated crash")

    erase(load_pipeline(sys.argv[1], device="cpu"), "a cat", out=sys.argv[2], progress=crash, **CONFIG)
    """
)


def test_two_processes_crash_resume_and_equal_one_process_with_the_global_batch(tiny_sd, tmp_path):
    # Two launches only (each starts three Pythons): a run that crashes after its checkpoint, then
    # `erasure erase --resume` finishing it, checked against the one-process run.
    run = tmp_path / "run"
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT.replace("**CONFIG", "**" + repr(CONFIG)))
    crashed = launch(script, tiny_sd.folder, run)
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr, crashed.stderr[-3000:]
    assert not (run / "manifest.json").exists()
    assert torch.load(run / "checkpoint" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert json.loads((run / "checkpoint" / "run.json").read_text())["num_processes"] == 2

    resumed = launch("-m", "erasure", "--verbose", "erase", "--model", tiny_sd.folder, "--concept", "a cat",
                     "--device", "cpu", "--out", run, "--resume", *SETS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("at step 2") == 2, resumed.stderr[-3000:]  # both processes resumed
    reports = [line for line in resumed.stdout.splitlines() if line.startswith("wrote ")]
    assert len(reports) == 1 and reports[0].startswith(f"wrote {run}: esd edit of ")  # the main process's
    assert sorted(p.name for p in run.iterdir()) == ["README.md", "edit.safetensors", "manifest.json"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["cost"]["num_processes"] == 2 and manifest["extra"]["global_batch_size"] == 2
    assert manifest["config"]["batch_size"] == 1

    reference = erase(load_pipeline(tiny_sd.folder, device="cpu"), "a cat", **{**CONFIG, "batch_size": 2})
    edit = Edit.load(run)
    assert edit.tensors.keys() == reference.tensors.keys() and edit.tensors
    for k in reference.tensors:
        assert torch.allclose(edit.tensors[k], reference.tensors[k], atol=1e-5), k
    # Recorded losses are the means over both processes: the one-process loss of the same batch.
    assert edit.extra["loss_last"] == pytest.approx(reference.extra["loss_last"], rel=1e-4)

    erased, base = load_erased(run, device="cpu"), load_pipeline(tiny_sd.folder, device="cpu")
    changed = {n for n, p in erased.unet.named_parameters() if not torch.equal(p, base.unet.get_parameter(n))}
    assert changed and {f"unet.{n}" for n in changed} == set(edit.tensors)
    assert all(".attn2." in n for n in changed)
