"""``erasure export``: every format reloaded by its consumer's own loader; LoRA factors; model cards;
presets chosen by default."""

from __future__ import annotations

import json

import pytest
import torch

from erasure import ErasureRequest, erase
from erasure.cli import main
from erasure.edit import Edit, read_manifest
from erasure.errors import ErasureInputError
from erasure.export import export_run
from erasure.lora import lora_from_edit
from erasure.pipelines import load_pipeline

ESD = dict(steps=3, ddim_steps=4, lr=1e-2, precompute_batch=8, checkpoint_every=0)
CAT = ErasureRequest(targets=["a cat"], kind="object")


def fresh(saved):
    return load_pipeline(saved.folder, device="cpu")


@pytest.fixture(scope="module")
def esd_u_run(tiny_sd, tmp_path_factory):
    """ESD-u on the tiny SD-1.x pipeline: Linear and Conv2d weights and biases change."""
    run = tmp_path_factory.mktemp("esd-u") / "run"
    erase(fresh(tiny_sd), CAT, "esd", out=run, variant="esd-u", **ESD)
    return run


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# ----------------------------------------------------------------------------- lossless formats
def test_single_file_reloads_with_from_single_file_and_matches(esd_u_run, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "erased.safetensors"
    result = export_run(esd_u_run, "single-file", out)
    assert result.check["loader"] == "StableDiffusionPipeline.from_single_file"
    assert result.check["max_abs_diff"] <= 2
    assert result.card == tmp_path / "erased.md" and "from_single_file" in result.card.read_text()
    # The file holds the erased weights: the edited tensors come back from it (configs: the base's folder).
    erased = StableDiffusionPipeline.from_single_file(str(out), config=read_manifest(esd_u_run)["base"]["source"],
                                                      local_files_only=True, safety_checker=None)
    edit = Edit.load(esd_u_run)
    key = next(k for k in edit.tensors if k.startswith("unet.") and k.endswith("weight"))
    assert torch.equal(erased.unet.get_parameter(key.partition(".")[2]), edit.tensors[key])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["erased.md", "erased.safetensors"]


@pytest.mark.parametrize("fixture", ["tiny_sd2", "tiny_sdxl"])
def test_single_file_and_lora_for_sd2_and_sdxl(fixture, request, tmp_path):
    saved = request.getfixturevalue(fixture)
    run = tmp_path / "run"
    erase(fresh(saved), CAT, "esd", out=run, variant="esd-x", **ESD)
    result = export_run(run, "single-file", tmp_path / "x.safetensors")
    assert result.check["loader"].endswith(".from_single_file") and result.check["max_abs_diff"] <= 2
    lora = export_run(run, "lora", tmp_path / "lora", rank=10_000)
    assert lora.details["lora"]["relative_error"] < 1e-4 and lora.check["max_abs_diff"] <= 2


def test_diffusers_folder_reloads_with_from_pretrained(esd_u_run, tmp_path):
    result = export_run(esd_u_run, "diffusers", tmp_path / "full")
    assert result.check["loader"] == "StableDiffusionPipeline.from_pretrained" and result.check["max_abs_diff"] <= 2
    assert (tmp_path / "full" / "model_index.json").is_file() and (tmp_path / "full" / "README.md").is_file()
    assert json.loads((tmp_path / "full" / "erasure-export.json").read_text())["format"] == "diffusers"


def test_text_encoder_export_plugs_into_the_base(tiny_sd, tmp_path):
    from transformers import CLIPTextModel

    run = tmp_path / "adv"
    erase(fresh(tiny_sd), CAT, "advunlearn", out=run, steps=3, warmup=1, attack_steps=2, ddim_steps=4, lr=1e-3,
          retain_batch=2, precompute_batch=16, checkpoint_every=0)
    result = export_run(run, "text-encoder", tmp_path / "te")
    assert result.check["loader"] == "CLIPTextModel.from_pretrained" and result.check["max_abs_diff"] <= 2
    exported = CLIPTextModel.from_pretrained(tmp_path / "te", local_files_only=True)
    edit = Edit.load(run)
    name, value = next(iter(edit.tensors.items()))
    assert torch.equal(exported.get_parameter(name.partition(".")[2]), value)
    # the text encoder's edit as a LoRA: its Linear layers exactly, its layer norms (which AdvUnlearn's
    # "all" trains) left out and reported
    report = export_run(run, "lora", tmp_path / "te-lora", rank=64).details["lora"]
    assert all(t["relative_error"] < 1e-3 for t in report["tensors"].values())
    assert report["left_out"] and all("layer_norm" in k for k in report["left_out"])


# ----------------------------------------------------------------------------- LoRA
def test_lora_at_full_rank_is_exact_and_smaller_ranks_approximate(esd_u_run, tiny_sd, tmp_path):
    edit = Edit.load(esd_u_run)
    base = fresh(tiny_sd)
    full = lora_from_edit(edit, base, rank=10_000).report()
    low = lora_from_edit(edit, base, rank=1).report()
    assert full["relative_error"] < 1e-4 and full["left_out"] == {}
    assert low["relative_error"] > full["relative_error"] and low["max_rank"] == 1
    by_energy = lora_from_edit(edit, base, energy=0.9).report()
    # a tensor's kept singular values hold at least 90% of its squared norm: error <= sqrt(0.1)
    assert all(t["relative_error"] <= 0.1 ** 0.5 + 1e-6 for t in by_energy["tensors"].values())

    result = export_run(esd_u_run, "lora", tmp_path / "lora", rank=10_000)
    assert result.check["loader"] == "StableDiffusionPipeline.load_lora_weights"
    assert result.check["max_abs_diff"] <= 2  # the full-rank LoRA reproduces the erasure
    assert json.loads((tmp_path / "lora" / "erasure-export.json").read_text())["lora"]["modules"] == full["modules"]


def test_lora_without_biases_fuses(esd_u_run, tiny_sd, tmp_path):
    result = export_run(esd_u_run, "lora", tmp_path / "lora", rank=10_000, lora_bias=False)
    assert result.details["fusable"] and any(k.endswith(".bias") for k in result.details["lora"]["left_out"])
    pipe = fresh(tiny_sd)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    pipe.fuse_lora()
    edit = Edit.load(esd_u_run)
    key = next(k for k in edit.tensors if k.endswith("to_q.weight"))
    fused = pipe.unet.get_parameter(key.partition(".")[2].replace("to_q.weight", "to_q.base_layer.weight"))
    assert torch.allclose(fused, edit.tensors[key], atol=1e-5)


def test_pruning_masks_export_as_an_exact_delta(tiny_sd, tmp_path):
    run = tmp_path / "prune"
    erase(fresh(tiny_sd), CAT, "prune", out=run, rho=0.05, tau=2, ddim_steps=4, guidance=3.0, seeds=2, batch_size=4)
    edit = Edit.load(run)
    assert edit.zeroed
    report = lora_from_edit(edit, fresh(tiny_sd), rank=10_000).report()
    assert report["relative_error"] < 1e-4


def test_one_step_generators_are_refused_as_lora_and_single_file(tiny_sd, tmp_path):
    run = tmp_path / "sfd"
    erase(fresh(tiny_sd), ErasureRequest(targets=["a cat"], kind="object"), "sfd", out=run, steps=1, batch_size=1,
          guidance=1.0, checkpoint_every=0)
    for to, out in (("lora", tmp_path / "l"), ("single-file", tmp_path / "s.safetensors")):
        with pytest.raises(ErasureInputError, match="one-step generator"):
            export_run(run, to, out)
    result = export_run(run, "diffusers", tmp_path / "full")  # sampled through the one-step sampler
    assert result.check["max_abs_diff"] <= 2 and "one-step" in result.card.read_text()


# ----------------------------------------------------------------------------- canvas-mini and the CLI
@pytest.fixture(scope="module")
def canvas_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("canvas") / "run"
    erase(load_pipeline("canvas-mini", device="cpu"), ErasureRequest(["dotted"], kind="style"), "esd", out=run,
          steps=3, ddim_steps=4, checkpoint_every=0)
    return run


def test_canvas_exports_through_the_cli(canvas_run, tmp_path, capsys):
    code, out, err = run_cli(["export", str(canvas_run), "--to", "lora", "--out", str(tmp_path / "lora")], capsys)
    assert code == 0 and "CanvasMiniPipeline.load_lora_weights" in out and "Traceback" not in err
    code, out, _ = run_cli(["export", str(canvas_run), "--to", "diffusers", "--out", str(tmp_path / "d")], capsys)
    assert code == 0 and (tmp_path / "d" / "README.md").is_file()
    assert "load_pipeline" in (tmp_path / "d" / "README.md").read_text()  # canvas-mini's pipeline is ours


@pytest.mark.parametrize("args, message", [
    (["--to", "single-file", "--out", "{tmp}/x.safetensors"], "no original-layout single-file format"),
    (["--to", "onnx", "--out", "{tmp}/x"], "unknown format"),
    (["--to", "text-encoder", "--out", "{tmp}/x"], "not the text encoder alone"),
    (["--to", "diffusers", "--out", "{tmp}/x", "--rank", "4"], "apply to --to lora only"),
    (["--to", "lora", "--out", "{tmp}/x", "--rank", "0"], "--rank"),
    (["--to", "lora", "--out", "{tmp}/full"], "not empty"),
    (["--to", "lora", "--out", "/proc/x"], "cannot"),
])
def test_bad_exports_are_refused_in_one_line(canvas_run, tmp_path, capsys, args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "kept.txt").write_text("x")
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run_cli(["export", str(canvas_run), *[a.format(tmp=tmp_path) for a in args]], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before


def test_run_folders_carry_a_model_card(canvas_run):
    card = (canvas_run / "README.md").read_text()
    manifest = read_manifest(canvas_run)
    for needed in ("# esd erasure of \"dotted\" (style)", manifest["base"]["fingerprint"], "ICCV 2023",
                   "rohitgandikota/erasing", "## Intended use and limitations", "Not evaluated yet",
                   "configs/esd/canvas-mini-style.yaml"):
        assert needed in card


# ----------------------------------------------------------------------------- presets by default
def test_presets_are_chosen_by_model_family_and_kind(tiny_sd):
    from erasure.api import choose_config

    cfg, source = choose_config("esd", None, "canvas-mini", "style", overrides={"steps": 5})
    assert source == "preset esd/canvas-mini-style" and cfg.variant == "esd-x" and cfg.steps == 5 and cfg.lr == 5e-4
    assert choose_config("esd", None, "canvas-mini", "custom")[1] == "defaults"  # no preset for custom
    assert choose_config("esd", "defaults", "canvas-mini", "style")[1] == "defaults"
    assert choose_config("esd", None, str(tiny_sd.folder), "style")[1] == "defaults"  # not SD's real size
    sd15 = {"block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768}
    from erasure.families import family_named

    assert family_named("stable-diffusion").preset_prefix(sd15) == "sd15"
    assert family_named("stable-diffusion").preset_prefix({**sd15, "cross_attention_dim": 1024}) == "sd2"


def test_erase_without_config_uses_the_preset_and_says_so(tmp_path, capsys):
    code, out, err = run_cli(["erase", "--method", "esd", "--model", "canvas-mini", "--concept", "dotted", "--kind",
                              "style", "--out", str(tmp_path / "x"), "--steps", "1", "--set", "ddim_steps=2"], capsys)
    assert code == 0, err
    assert "the shipped preset configs/esd/canvas-mini-style.yaml" in out.splitlines()[0]
    manifest = read_manifest(tmp_path / "x")
    assert manifest["config_source"] == "preset esd/canvas-mini-style" and manifest["config"]["variant"] == "esd-x"


def test_a_half_precision_run_exports_in_its_own_dtype(esd_u_run, tmp_path):
    """A run made on a bfloat16 load (on a GPU; the CPU trains in float32): its exports stay bfloat16."""
    import dataclasses

    from safetensors import safe_open

    edit = Edit.load(esd_u_run)
    run = dataclasses.replace(edit, base={**edit.base, "dtype": "bfloat16"}).save(tmp_path / "bf16")
    result = export_run(run, "single-file", tmp_path / "x.safetensors")
    assert result.check["max_abs_diff"] <= 2
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.get_tensor(next(k for k in f.keys() if k.startswith("model.diffusion_model."))).dtype == torch.bfloat16
    assert export_run(run, "lora", tmp_path / "lora", rank=10_000).check["max_abs_diff"] <= 2


def test_a_chained_run_exports_its_own_change(esd_u_run, tmp_path):
    """A run that continues another: its LoRA is its own delta on the earlier run's pipeline; its card lists the chain."""
    from erasure import load_erased

    run = tmp_path / "second"
    erase(load_erased(esd_u_run, device="cpu"), ErasureRequest(targets=["a dog"], kind="object"), "esd", out=run,
          variant="esd-x", **ESD)
    lora = export_run(run, "lora", tmp_path / "lora", rank=10_000)
    assert lora.details["lora"]["relative_error"] < 1e-4 and lora.check["max_abs_diff"] <= 2
    assert "applies on top of the earlier runs' pipeline" in lora.card.read_text()
    assert export_run(run, "single-file", tmp_path / "all.safetensors").check["max_abs_diff"] <= 2
    card = (run / "README.md").read_text()
    assert "## Chain" in card and "esd: a cat (object)" in card
    with pytest.raises(ErasureInputError, match="not the text encoder alone"):
        export_run(run, "text-encoder", tmp_path / "te")


def test_a_canvas_text_encoder_edit_exports_as_a_text_encoder(tmp_path, capsys):
    run = tmp_path / "adv"
    erase(load_pipeline("canvas-mini", device="cpu"), ErasureRequest(["dotted"], kind="style"), "advunlearn", out=run,
          steps=2, warmup=0, attack_steps=1, ddim_steps=2, retain_batch=2, sample_pool=4, precompute_batch=4,
          checkpoint_every=0)
    code, out, err = run_cli(["export", str(run), "--to", "text-encoder", "--out", str(tmp_path / "te")], capsys)
    assert code == 0, err
    assert "CLIPTextModel.from_pretrained vs load_erased, max pixel difference 0/255" in out
