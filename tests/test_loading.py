"""load_pipeline: folders, single files, the embedded model, attention backends, and bad sources."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from erasure.errors import ErasureInputError
from erasure.pipelines import active_attention, describe, load_pipeline
from erasure.pipelines import attention as attention_module
from erasure.pipelines.loading import resolve_dtype


LAYOUTS = [("tiny_sd", StableDiffusionPipeline), ("tiny_sd2", StableDiffusionPipeline),
           ("tiny_sdxl", StableDiffusionXLPipeline)]


def _models(pipe) -> dict[str, torch.nn.Module]:
    return {n: c for n, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


def _assert_same_weights(expected, actual) -> None:
    assert _models(expected).keys() == _models(actual).keys()
    for name, model in _models(expected).items():
        want, got = model.state_dict(), _models(actual)[name].state_dict()
        assert want.keys() == got.keys(), name
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}.{key}"


@pytest.mark.parametrize("fixture, cls", LAYOUTS)
def test_folder_loads_with_class_from_model_index(fixture, cls, request):
    saved = request.getfixturevalue(fixture)
    pipe = load_pipeline(saved.folder, device="cpu")
    assert type(pipe) is cls
    assert pipe.device.type == "cpu" and pipe.dtype == torch.float32
    assert active_attention(pipe) == "sdpa"
    if cls is StableDiffusionPipeline:
        assert pipe.safety_checker is None
    _assert_same_weights(saved.pipe, pipe)


@pytest.mark.parametrize("fixture, cls", LAYOUTS)
def test_single_file_round_trip_is_exact(fixture, cls, request):
    saved = request.getfixturevalue(fixture)
    pipe = load_pipeline(saved.single_file, config=saved.folder, device="cpu")
    assert type(pipe) is cls
    _assert_same_weights(saved.pipe, pipe)


def test_canvas_mini_folder_loads_through_its_own_class(tmp_path):
    from erasure.pipelines.canvas.model import build_untrained
    from erasure.pipelines.canvas.pipeline import CanvasMiniPipeline

    build_untrained(tmp_path / "tokenizer").save_pretrained(tmp_path / "canvas")
    pipe = load_pipeline(tmp_path / "canvas", device="cpu")
    assert type(pipe) is CanvasMiniPipeline
    assert active_attention(pipe) == "sdpa"
    assert describe(pipe).pipeline == "CanvasMiniPipeline"


def test_embedded_model_without_weights_says_how_to_build_them(tmp_path, monkeypatch):
    from erasure.pipelines.canvas import model as canvas_model

    monkeypatch.setattr(canvas_model, "MODEL_DIR", tmp_path / "missing")
    with pytest.raises(ErasureInputError, match="canvas-mini has no weights at .*missing.*erasure canvas train"):
        load_pipeline("canvas-mini")


def test_embedded_model_name_loads_its_folder(tmp_path, monkeypatch):
    from erasure.pipelines.canvas import model as canvas_model

    canvas_model.build_untrained(tmp_path / "tokenizer").save_pretrained(tmp_path / "canvas-mini")
    monkeypatch.setattr(canvas_model, "MODEL_DIR", tmp_path / "canvas-mini")
    assert type(load_pipeline("canvas-mini", device="cpu")).__name__ == "CanvasMiniPipeline"


# ----------------------------------------------------------------------------- bad sources
def _folder_with_index(tmp_path, text: str):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text(text)
    return folder


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nope", "model source not found: .*nope"),
        (lambda p: p, "no model_index.json"),
        (lambda p: _folder_with_index(p, "{not json"), "model_index.json: malformed JSON"),
        (lambda p: _folder_with_index(p, json.dumps({"a": 1})), "no \"_class_name\""),
        (lambda p: _folder_with_index(p, json.dumps({"_class_name": "FluxPipeline"})), "unsupported pipeline class 'FluxPipeline'"),
        (lambda p: _folder_with_index(p, json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]})),
         "cannot load StableDiffusionPipeline"),
    ],
    ids=["missing", "no-index", "malformed-json", "no-class-name", "unknown-class", "missing-components"],
)
def test_bad_folders_are_one_line_errors(tmp_path, make, message):
    with pytest.raises(ErasureInputError, match=message) as info:
        load_pipeline(make(tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickled_checkpoints_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not even read")
    with pytest.raises(ErasureInputError, match=r"refused.*convert it to \.safetensors"):
        load_pipeline(path)


def test_single_file_needs_config(tiny_sd):
    with pytest.raises(ErasureInputError, match="needs --config FOLDER"):
        load_pipeline(tiny_sd.single_file)


def test_config_is_only_for_single_files(tiny_sd):
    with pytest.raises(ErasureInputError, match="--config is only for single-file"):
        load_pipeline(tiny_sd.folder, config=tiny_sd.folder)


def test_single_file_in_diffusers_layout_is_rejected(tiny_sd):
    unet_weights = tiny_sd.folder / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ErasureInputError, match="no 'model.diffusion_model.' weights"):
        load_pipeline(unet_weights, config=tiny_sd.folder)


def test_corrupt_safetensors_is_rejected(tmp_path, tiny_sd):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ErasureInputError, match="not a readable safetensors file"):
        load_pipeline(path, config=tiny_sd.folder)


def test_single_file_with_mismatched_config_is_one_line(tiny_sd, tiny_sdxl):
    with pytest.raises(ErasureInputError, match="cannot load as a StableDiffusionXLPipeline checkpoint") as info:
        load_pipeline(tiny_sd.single_file, config=tiny_sdxl.folder)
    assert "\n" not in str(info.value)


def test_other_file_types_are_rejected(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("hello")
    with pytest.raises(ErasureInputError, match="unsupported file type '.txt'"):
        load_pipeline(path)


# ----------------------------------------------------------------------------- device, dtype, attention
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"device": "gpu"}, "unknown device 'gpu'"),
        ({"dtype": "int8"}, "unknown dtype 'int8'"),
        ({"attention": "flash"}, "unknown attention backend 'flash'"),
    ],
)
def test_bad_device_dtype_attention_fail_before_loading(tmp_path, kwargs, message):
    # The source does not exist: the option is checked first.
    with pytest.raises(ErasureInputError, match=message):
        load_pipeline(tmp_path / "nope", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cuda_requested_without_cuda():
    with pytest.raises(ErasureInputError, match="CUDA is not available"):
        load_pipeline("unused", device="cuda")


def test_auto_dtype_is_fp32_on_cpu():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_xformers_without_xformers_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(attention_module, "xformers_installed", lambda: False)
    with pytest.raises(ErasureInputError, match="xformers is not installed"):
        attention_module.resolve_attention("xformers", torch.device("cuda"))
    assert attention_module.resolve_attention("auto", torch.device("cuda")) == "sdpa"


def test_xformers_on_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(attention_module, "xformers_installed", lambda: True)
    with pytest.raises(ErasureInputError, match="xformers needs a CUDA device"):
        attention_module.resolve_attention("xformers", torch.device("cpu"))
    assert attention_module.resolve_attention("auto", torch.device("cpu")) == "sdpa"


def test_xformers_through_load_pipeline_on_this_machine(tiny_sd):
    if attention_module.xformers_installed() and torch.cuda.is_available():
        pytest.skip("xformers is usable here")
    with pytest.raises(ErasureInputError, match="attention 'xformers' is unavailable"):
        load_pipeline(tiny_sd.folder, attention="xformers")


def test_active_attention_reads_the_installed_processors(tiny_sd_loaded):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    pipe = tiny_sd_loaded
    assert active_attention(pipe) == "sdpa"
    try:
        pipe.vae.set_attn_processor(AttnProcessor())
        assert active_attention(pipe) == "mixed: eager, sdpa"
    finally:
        pipe.vae.set_attn_processor(AttnProcessor2_0())


def test_describe_counts_parameters(tiny_sd_loaded, tiny_sd):
    info = describe(tiny_sd_loaded)
    counts = {c.name: c.parameters for c in info.components}
    assert counts["unet"] == sum(p.numel() for p in tiny_sd.pipe.unet.parameters())
    assert counts["tokenizer"] is None and counts["safety_checker"] is None
    assert info.total_parameters == sum(v or 0 for v in counts.values())
    assert (info.scheduler, info.attention, info.device, info.dtype) == ("PNDMScheduler", "sdpa", "cpu", "float32")


# ----------------------------------------------------------------------------- one GPU per process
LAUNCHER_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _fake_launch(monkeypatch, *, gpus: int, world_size: int | None = None, local_rank: int | None = None,
                 rank: int | None = None) -> None:
    """A machine with ``gpus`` visible GPUs (none really), in a process started as ``accelerate launch`` /
    ``torchrun`` would start it (their environment variables), or a plain process when world_size is None."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    if world_size is not None:
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(world_size))
        monkeypatch.setenv("RANK", str(local_rank if rank is None else rank))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))


def test_one_process_keeps_the_current_gpu(monkeypatch):
    from erasure.pipelines.loading import resolve_device

    _fake_launch(monkeypatch, gpus=4)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:2") == torch.device("cuda", 2)
    # torchrun --nproc-per-node 1 is one process too.
    _fake_launch(monkeypatch, gpus=4, world_size=1, local_rank=0)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("local_rank", [0, 1, 2, 3])
def test_each_launched_process_resolves_to_its_own_gpu(monkeypatch, local_rank):
    from erasure.pipelines.loading import resolve_device

    _fake_launch(monkeypatch, gpus=4, world_size=4, local_rank=local_rank)
    own = torch.device("cuda", local_rank)
    assert resolve_device("auto") == own
    assert resolve_device(" CUDA ") == own
    assert resolve_device(f"cuda:{local_rank}") == own  # naming its own GPU is fine


def test_the_gpu_follows_the_local_rank_not_the_global_rank(monkeypatch):
    from erasure.pipelines.loading import resolve_device

    _fake_launch(monkeypatch, gpus=4, world_size=8, local_rank=1, rank=5)  # second machine, second process
    assert resolve_device("auto") == torch.device("cuda", 1)


@pytest.mark.parametrize("gpus, local_rank, index", [(1, 3, 0), (2, 3, 1)])
def test_fewer_visible_gpus_than_processes_follow_accelerates_rule(monkeypatch, gpus, local_rank, index):
    from erasure.pipelines.loading import resolve_device

    # One GPU visible per process (CUDA_VISIBLE_DEVICES set per process), or processes sharing GPUs:
    # accelerate's PartialState picks local rank modulo the visible count, and so does loading.
    _fake_launch(monkeypatch, gpus=gpus, world_size=4, local_rank=local_rank)
    assert resolve_device("auto") == torch.device("cuda", index)


def test_another_processes_gpu_is_refused_in_one_line(monkeypatch):
    from erasure.pipelines.loading import resolve_device

    _fake_launch(monkeypatch, gpus=2, world_size=2, local_rank=1)
    with pytest.raises(ErasureInputError, match=r"device 'cuda:0': under a launcher every process uses its own "
                                                r"GPU \(this one cuda:1\); use --device cuda or auto") as info:
        resolve_device("cuda:0")
    assert "\n" not in str(info.value)


def test_cpu_under_a_launcher_stays_cpu(monkeypatch):
    from erasure.pipelines.loading import resolve_device

    _fake_launch(monkeypatch, gpus=0, world_size=2, local_rank=1)
    assert resolve_device("auto") == torch.device("cpu")
    _fake_launch(monkeypatch, gpus=2, world_size=2, local_rank=1)
    assert resolve_device("cpu") == torch.device("cpu")


class _RecordingPipe:
    """Stands in for a loaded pipeline: records where load_pipeline puts its weights."""

    def __init__(self) -> None:
        self.moves: list[torch.device] = []

    def to(self, device):
        self.moves.append(torch.device(device))
        return self


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_load_pipeline_puts_each_process_on_its_own_gpu(monkeypatch, device):
    from erasure.pipelines import loading

    _fake_launch(monkeypatch, gpus=2, world_size=2, local_rank=1)
    pipe, current = _RecordingPipe(), []
    monkeypatch.setattr(loading, "_load", lambda source, config, dtype: pipe)
    monkeypatch.setattr(loading, "apply_attention", lambda pipe, backend: None)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    assert loading.load_pipeline("canvas-mini", device=device, dtype="fp32", attention="sdpa") is pipe
    # The weights go straight to GPU 1 (never via GPU 0), and later bare "cuda" work follows them.
    assert pipe.moves == [torch.device("cuda", 1)]
    assert current == [torch.device("cuda", 1)]


def test_load_pipeline_leaves_the_current_gpu_alone_in_one_process(monkeypatch):
    from erasure.pipelines import loading

    _fake_launch(monkeypatch, gpus=2)
    pipe, current = _RecordingPipe(), []
    monkeypatch.setattr(loading, "_load", lambda source, config, dtype: pipe)
    monkeypatch.setattr(loading, "apply_attention", lambda pipe, backend: None)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(d))
    loading.load_pipeline("canvas-mini", device="cuda:1", dtype="fp32", attention="sdpa")
    assert pipe.moves == [torch.device("cuda", 1)] and current == []
