"""Shared fixtures: tiny SD-1.x, SD-2.x and SDXL pipelines with random weights, saved once per session.

Everything is offline: HF_HUB_OFFLINE makes any accidental hub access fail instead of downloading.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Tiny models gain nothing from threads, and on a shared, busy machine extra threads oversubscribe
# the cores (measured: 0.2 s per tiny pipeline call with 1 thread, 9.7 s with 2). Subprocesses
# inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@dataclass(frozen=True)
class SavedPipeline:
    """A random-weight pipeline saved as a diffusers folder and as one original-layout file."""

    folder: Path
    single_file: Path
    pipe: object  # the in-memory pipeline the files were written from


def _save(pipe, root: Path) -> SavedPipeline:
    from erasure.pipelines import save_single_file

    folder = root / "diffusers"
    pipe.save_pretrained(folder)
    # Kept apart from the folder so the tests show that --config alone supplies the configs.
    single = save_single_file(pipe, root / "single" / "model.safetensors")
    return SavedPipeline(folder, single, pipe)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> SavedPipeline:
    from erasure.pipelines.testing import tiny_sd_pipeline

    return _save(tiny_sd_pipeline(), tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory) -> SavedPipeline:
    from erasure.pipelines.testing import tiny_sd2_pipeline

    return _save(tiny_sd2_pipeline(), tmp_path_factory.mktemp("tiny-sd2"))


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> SavedPipeline:
    from erasure.pipelines.testing import tiny_sdxl_pipeline

    return _save(tiny_sdxl_pipeline(), tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_sd_loaded(tiny_sd):
    """The tiny SD folder loaded through load_pipeline (shared; tests must not modify it)."""
    from erasure.pipelines import load_pipeline

    return load_pipeline(tiny_sd.folder, device="cpu")


# -- the comparison app (test_app.py, test_app_bad_input.py): its runs are made once per session;
# each module gets a copy of the runs folder and one live app on it, started once.


@dataclass(frozen=True)
class AppRuns:
    """Finished runs on the tiny SD pipeline, made once, and the settings each was made with."""

    folder: Path
    settings: dict


@pytest.fixture(scope="session")
def app_runs(tiny_sd, tmp_path_factory) -> AppRuns:
    from erasure import ErasureRequest, erase
    from erasure.pipelines import load_pipeline

    # A few ESD steps on a 4-step DDIM grid: enough to move the weights, fast on a CPU.
    esd = dict(steps=6, ddim_steps=4, lr=1e-3, precompute_batch=8, checkpoint_every=0)
    # Two SFD steps make a one-step generator run (sampled in one UNet call, whatever the sampler settings).
    sfd = dict(steps=2, batch_size=1, generator_lr=1e-3, fake_lr=1e-3, guidance=1.0, checkpoint_every=0)
    sfd_request = ErasureRequest(["a cat"], anchor="a dog", prompts=["a photo of a cat"], retain=["a red car"])
    made = {  # in this order: the app preselects the newest run ("dog")
        "one-step": (sfd_request, "sfd", sfd),
        "cat": ("a cat", "esd", esd),
        "dog": ("a dog", "esd", {**esd, "steps": 2}),
    }
    folder = tmp_path_factory.mktemp("app-runs")
    for name, (request, method, settings) in made.items():
        erase(load_pipeline(tiny_sd.folder, device="cpu"), request, method, out=folder / name, **settings)
    return AppRuns(folder, {name: settings for name, (_, _, settings) in made.items()})


@pytest.fixture(scope="module")
def runs_dir(app_runs, tmp_path_factory) -> Path:
    """This module's runs folder: ``app_runs``' runs (cat with a metrics.json), a corrupt run, a
    truncated one, an unfinished one, an evaluation report and an attack's findings."""
    import json
    import shutil

    runs = tmp_path_factory.mktemp("runs")
    shutil.copytree(app_runs.folder, runs, dirs_exist_ok=True)
    (runs / "cat" / "metrics.json").write_text(json.dumps({"ua": 0.75, "fid": {"value": 12.5}, "note": "text"}))
    (runs / "corrupt").mkdir()
    (runs / "corrupt" / "manifest.json").write_text("{not json")
    shutil.copytree(runs / "cat", runs / "truncated")
    edit = runs / "truncated" / "edit.safetensors"
    edit.write_bytes(edit.read_bytes()[:-100])
    (runs / "unfinished" / "checkpoint").mkdir(parents=True)
    report = {"runs": [{"run": str(runs / "dog"), "before": {"UA": 0.1}, "after": {"UA": 0.9, "IRA": 0.8}}]}
    (runs / "eval").mkdir()
    (runs / "eval" / "metrics.json").write_text(json.dumps(report))
    # what `erasure attack --out runs/attack-cat` writes: its text prompts are offered by the compare tab
    attack = {"attack": "unlearndiffatk", "per_seed": [{"seed": 0, "prompt": "wolves tapestry a cat", "recognised": True},
                                                      {"seed": 1, "prompt": None, "recognised": False}]}
    (runs / "attack-cat").mkdir()
    (runs / "attack-cat" / "attack.json").write_text(json.dumps(attack))
    return runs


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(runs_dir, tiny_sd):
    """The app, in this process, on ``runs_dir`` with the tiny SD pipeline as its one base model."""
    from erasure.app import launch

    running = launch(runs_dir, [str(tiny_sd.folder)], port=_free_port(), device="cpu")
    yield running.url
    running.close()


@pytest.fixture(scope="module")
def client(app_url):
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(app_url, verbose=False)
