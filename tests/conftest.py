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
