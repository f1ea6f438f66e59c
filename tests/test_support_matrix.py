"""The support matrix: every method on every Stable Diffusion family at tiny size, or its refusal.

Families: SD 1.x (``tiny_sd``), SD 2.x with v-prediction (``tiny_sd2``'s layout, saved here with
SD 2.1's DDIM scheduler configured for v-prediction: OpenCLIP-style text encoder, linear attention
projections) and SDXL (``tiny_sdxl``: two text encoders, text_time conditioning). Each working cell
runs the method for a few steps from a saved folder and checks that it finishes with a non-empty
edit, changes exactly the tensors the method trains (everything else bit-identical), acts on the
concept where a tiny random model can show it (ESD's and AdvUnlearn's losses fall), and that
``load_erased`` rebuilds the erased pipeline from the run folder. Refused cells refuse in one line
before any weight loads. The SD 2.x / SDXL presets load, keep the SD 1.5 presets' hyperparameters
and run a step or two on the matching tiny pipeline.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from erasure import ErasureRequest, erase
from erasure.api import method_config
from erasure.errors import ErasureInputError
from erasure.erased import load_erased
from erasure.pipelines import load_pipeline

CONFIGS = Path(__file__).parent.parent / "configs"
FAMILIES = ("sd1", "sd2-v", "sdxl")
PREDICTION = {"sd1": "epsilon", "sd2-v": "v_prediction", "sdxl": "epsilon"}
COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae")
CAT = ErasureRequest(["a cat"], kind="object", anchor="a dog", retain=["a photo of a tree", "a red car", "a house"])

# The tiny settings of each method's own test file.
ESD = dict(steps=6, ddim_steps=4, lr=1e-3, precompute_batch=8, checkpoint_every=0)
DOCO = dict(steps=8, batch_size=2, lr=1e-3, warmup_steps=3, anchor_images=6, anchor_steps=3, anchor_batch=8,
            disc_widths=[8, 16], checkpoint_every=0)
PRUNE = dict(rho=0.05, tau=2, ddim_steps=4, guidance=3.0, seeds=2, batch_size=4)
ADVUNLEARN = dict(steps=6, warmup=2, attack_steps=3, attack_lr=1e-2, ddim_steps=4, lr=1e-3, retain_batch=2,
                  precompute_batch=16, checkpoint_every=0)
SFD = dict(steps=4, batch_size=1, generator_lr=1e-3, fake_lr=1e-3, guidance=1.0, checkpoint_every=0)


@pytest.fixture(scope="module")
def tiny_sd2_v(tmp_path_factory) -> Path:
    """The tiny SD-2.x layout with SD 2.1's sampler: DDIM, v-prediction (tiny_sd2 itself predicts noise)."""
    from diffusers import DDIMScheduler

    from erasure.pipelines.testing import tiny_sd2_pipeline

    pipe = tiny_sd2_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction", clip_sample=False)
    folder = tmp_path_factory.mktemp("tiny-sd2-v") / "diffusers"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture
def folder(request) -> Path:
    """The saved tiny pipeline of the test's ``family`` parameter."""
    name = request.node.callspec.params["family"]
    if name == "sd2-v":
        return request.getfixturevalue("tiny_sd2_v")
    return request.getfixturevalue({"sd1": "tiny_sd", "sdxl": "tiny_sdxl"}[name]).folder


def fresh(folder: Path):
    return load_pipeline(folder, device="cpu")


def all_tensors(pipe) -> dict[str, torch.Tensor]:
    """Every tensor of every model component, keyed ``component.name``."""
    out = {}
    for comp in COMPONENTS:
        module = getattr(pipe, comp, None)
        if module is not None:
            out |= {f"{comp}.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    return out


def changed_keys(before: dict[str, torch.Tensor], pipe) -> set[str]:
    after = all_tensors(pipe)
    assert after.keys() == before.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def assert_round_trip(run: Path, erased, base=None) -> None:
    """``load_erased`` of the run folder holds exactly the erased pipeline's tensors."""
    loaded = load_erased(run, base=base, device="cpu")
    inner = getattr(loaded, "pipe", loaded)  # a one-step run comes back wrapped
    got, expected = all_tensors(inner), all_tensors(erased)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


# ----------------------------------------------------------------------------- ESD (ESD-x)
@pytest.mark.parametrize("family", FAMILIES)
def test_esd_x_on_every_family(family, folder, tmp_path):
    from erasure.methods.esd import ESD as ESDMethod
    from erasure.methods.esd import ESDConfig

    pipe = fresh(folder)
    before = all_tensors(pipe)
    probe = ESDMethod(ESDConfig(**{**ESD, "steps": 12}))
    samples = probe.frozen_samples(pipe, CAT, n=12)  # the run's first 12 samples, frozen targets
    loss_before = probe.loss(pipe, CAT, samples)
    run = tmp_path / "run"
    edit = erase(pipe, CAT, "esd", out=run, **{**ESD, "steps": 12})
    assert probe.loss(pipe, CAT, samples) < loss_before

    changed = changed_keys(before, pipe)
    assert changed and changed == set(edit.tensors)
    assert all(k.startswith("unet.") and ".attn2." in k for k in changed)
    assert edit.extra["prediction_type"] == PREDICTION[family]
    assert_round_trip(run, pipe)


# ----------------------------------------------------------------------------- DoCo
@pytest.mark.parametrize("family", FAMILIES)
def test_doco_on_every_family(family, folder, tmp_path):
    pipe = fresh(folder)
    before = all_tensors(pipe)
    run = tmp_path / "run"
    edit = erase(pipe, CAT, "doco", out=run, **DOCO)

    kv = {k for k in before if k.startswith("unet.") and (".attn2.to_k." in k or ".attn2.to_v." in k)}
    assert kv and changed_keys(before, pipe) == kv == set(edit.tensors)  # SDXL's conditioning stays frozen
    history = edit.extra["history"]
    assert history["adv"]["steps"] == history["disc"]["steps"] == DOCO["steps"]
    assert history["conflicts"]["steps"] == DOCO["steps"] - DOCO["warmup_steps"]  # surgery after the warm-up
    assert all(math.isfinite(history[k]["last"]) for k in ("adv", "prior", "disc"))
    assert edit.extra["prediction_type"] == PREDICTION[family]
    assert_round_trip(run, pipe)


# ----------------------------------------------------------------------------- pruning
@pytest.mark.parametrize("family", FAMILIES)
def test_prune_on_every_family(family, folder, tmp_path):
    pipe = fresh(folder)
    before = all_tensors(pipe)
    ffn = {n for n, m in pipe.unet.named_modules() if n.endswith("ff.net.2")}
    run = tmp_path / "run"
    request = ErasureRequest(["a photo of the moon over paris"], kind="memorized", retain=["a dog", "a house", "a car"])
    edit = erase(pipe, request, "prune", out=run, **PRUNE)

    assert set(edit.extra["pruned_per_layer"]) == ffn  # every transformer block's FFN was hooked
    changed = changed_keys(before, pipe)
    assert changed and changed == set(edit.zeroed) and not edit.tensors
    assert all(k.startswith("unet.") and k.endswith("ff.net.2.weight") for k in changed)
    assert edit.extra["pruned_weights"] == sum(v.numel() for v in edit.zeroed.values()) > 0
    assert_round_trip(run, pipe)


# ----------------------------------------------------------------------------- AdvUnlearn
@pytest.mark.parametrize("family", ("sd1", "sd2-v"))
def test_advunlearn_on_single_text_encoder_families(family, folder, tmp_path):
    from erasure.methods.advunlearn import AdvUnlearn, AdvUnlearnConfig

    pipe = fresh(folder)
    before = all_tensors(pipe)
    probe = AdvUnlearn(AdvUnlearnConfig(**ADVUNLEARN))
    samples = probe.concept_samples(pipe, CAT, n=8)
    loss_before = probe.esd_loss(pipe, samples)
    run = tmp_path / "run"
    edit = erase(pipe, CAT, "advunlearn", out=run, **ADVUNLEARN)
    assert probe.esd_loss(pipe, samples) < loss_before

    changed = changed_keys(before, pipe)
    assert changed and changed == set(edit.tensors)
    assert all(k.startswith("text_encoder.") and "embeddings" not in k for k in changed)
    assert edit.extra["prediction_type"] == PREDICTION[family]
    assert_round_trip(run, pipe)


def test_advunlearn_refuses_sdxl_in_one_line_before_loading(tiny_sdxl, tiny_sd, tmp_path):
    from erasure.methods import get_method
    from erasure.methods.advunlearn import SDXL_REFUSAL, check_model

    assert "\n" not in SDXL_REFUSAL and "trains one CLIP text encoder; SDXL has two" in SDXL_REFUSAL
    # From model_index.json alone: a folder, or a single file with its config folder.
    for source, config in ((tiny_sdxl.folder, None), (tiny_sdxl.single_file, tiny_sdxl.folder)):
        with pytest.raises(ErasureInputError) as info:
            get_method("advunlearn").check_model(source, config)
        assert str(info.value) == SDXL_REFUSAL
    for source in (tiny_sd.folder, "canvas-mini", tmp_path / "missing"):
        check_model(source)  # supported, or for load_pipeline to report

    # A loaded SDXL pipeline: the same line, nothing trained and no run folder left behind.
    pipe = fresh(tiny_sdxl.folder)
    before = all_tensors(pipe)
    with pytest.raises(ErasureInputError) as info:
        erase(pipe, CAT, "advunlearn", out=tmp_path / "run", **ADVUNLEARN)
    assert str(info.value) == SDXL_REFUSAL
    assert not changed_keys(before, pipe) and not (tmp_path / "run").exists()


def test_cli_refuses_advunlearn_on_sdxl_before_any_weight_loads(tiny_sdxl, tmp_path, capsys, monkeypatch):
    from erasure.cli import main
    from erasure.methods.advunlearn import SDXL_REFUSAL
    from erasure.pipelines import loading

    def no_loading(*args, **kwargs):
        raise AssertionError("weights loaded before the refusal")

    import erasure.pipelines

    monkeypatch.setattr(loading, "load_pipeline", no_loading)
    monkeypatch.setattr(erasure.pipelines, "load_pipeline", no_loading)  # what the CLI imports
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["erase", "--method", "advunlearn", "--model", str(tiny_sdxl.folder), "--concept", "a cat",
              "--out", str(run)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == f"erasure: error: {SDXL_REFUSAL}\n"
    assert not run.exists()


# ----------------------------------------------------------------------------- SFD
@pytest.mark.parametrize("family", FAMILIES)
def test_sfd_training_on_every_family(family, folder, tmp_path):
    from erasure.one_step import OneStepPipeline, one_step_generate

    request = ErasureRequest(["a cat"], anchor="a dog", prompts=["a photo of a cat", "a cat on a sofa"],
                             retain=["a photo of a tree", "a red car"])
    pipe = fresh(folder)
    before = all_tensors(pipe)
    run = tmp_path / "run"
    edit = erase(pipe, request, "sfd", out=run, **SFD)

    changed = changed_keys(before, pipe)  # the pipeline now holds the generator
    assert changed and changed == set(edit.tensors) and all(k.startswith("unet.") for k in changed)
    assert all(torch.isfinite(v).all() for v in edit.tensors.values())
    assert edit.extra["sampler"] == "one-step" and edit.extra["t_star"] == 625  # SD's schedule on every family
    loaded = load_erased(run, device="cpu")
    assert isinstance(loaded, OneStepPipeline)
    assert_round_trip(run, pipe)
    images = one_step_generate(loaded, ["a photo of a cat", "a red car"], [0], edit.extra["t_star"])
    assert [im.size for im in images] == [(32, 32)] * 2 and images[0].tobytes() != images[1].tobytes()


# ----------------------------------------------------------------------------- SDXL's unconditional embedding
def test_empty_prompt_is_the_pipelines_unconditional_embedding(tiny_sdxl_pipe, tiny_sd_loaded):
    from erasure.diffusion import TextConditioner

    pipe = tiny_sdxl_pipe
    assert pipe.config.force_zeros_for_empty_prompt
    with torch.no_grad():
        cond = TextConditioner(pipe, 32)(["", "a cat"])
        positive, negative, pooled, negative_pooled = pipe.encode_prompt(
            ["a cat"], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
        encoded = TextConditioner(pipe, 32, zero_empty=False)([""])
    # SDXL's own sampler guides with zeros when no negative prompt is given.
    assert torch.equal(cond.hidden[:1], negative) and torch.equal(cond.added["text_embeds"][:1], negative_pooled)
    assert not negative.any() and not negative_pooled.any()
    # (batched with another prompt: equal up to float summation order)
    assert torch.allclose(cond.hidden[1:], positive, atol=1e-5) and torch.allclose(cond.added["text_embeds"][1:], pooled, atol=1e-5)
    assert torch.equal(cond.added["time_ids"], torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2))
    assert encoded.hidden.abs().sum() > 0  # zero_empty=False: the empty text, encoded
    # SD 1.x/2.x encode the empty text itself, as their pipelines do.
    with torch.no_grad():
        sd = TextConditioner(tiny_sd_loaded, 32)([""]).hidden
        _, sd_negative = tiny_sd_loaded.encode_prompt(["a cat"], "cpu", 1, True)
    assert torch.equal(sd, sd_negative) and sd.abs().sum() > 0


@pytest.fixture(scope="module")
def tiny_sdxl_pipe(tiny_sdxl):
    return fresh(tiny_sdxl.folder)


# ----------------------------------------------------------------------------- presets
# (method, preset, its SD 1.5 counterpart, family, tiny overrides, keys allowed to differ from SD 1.5's)
PRESETS = [
    ("esd", "sdxl-style", "sd15-style", "sdxl", dict(steps=2, ddim_steps=4, checkpoint_every=0),
     {"gradient_checkpointing"}),
    ("esd", "sd2-style", "sd15-style", "sd2-v", dict(steps=2, ddim_steps=4, checkpoint_every=0), set()),
    ("doco", "sdxl-style", "sd15-style", "sdxl",
     dict(steps=2, batch_size=2, warmup_steps=1, anchor_images=2, anchor_steps=2, disc_widths=[8, 16],
          checkpoint_every=0), set()),
    ("prune", "sdxl-style", "sd15-style", "sdxl", dict(tau=2, ddim_steps=4, batch_size=16), set()),
    ("sfd", "sdxl-nudity", "sd15-nudity", "sdxl", dict(steps=2, batch_size=1, checkpoint_every=0), set()),
]


@pytest.mark.parametrize("method, preset, sd15, family, overrides, differs", PRESETS,
                         ids=[f"{m}/{p}" for m, p, *_ in PRESETS])
def test_new_presets_carry_sd15_over_and_run_on_their_family(method, preset, sd15, family, overrides, differs,
                                                            folder, tmp_path):
    config = method_config(method, CONFIGS / method / f"{preset}.yaml")
    original = method_config(method, CONFIGS / method / f"{sd15}.yaml")
    assert {k for k, v in config.to_dict().items() if original.to_dict()[k] != v} == differs
    assert config.resolution is None  # the model's native resolution: 768 px (SD 2.x) / 1024 px (SDXL)

    kind = {"style": "style", "nudity": "nudity"}[preset.split("-")[-1]]
    request = ErasureRequest(["van gogh" if kind == "style" else "nudity"], kind=kind)
    pipe = fresh(folder)
    before = all_tensors(pipe)
    edit = erase(pipe, request, method, config=config, out=tmp_path / "run", **overrides)
    assert changed_keys(before, pipe) == set(edit.tensors) | set(edit.zeroed) != set()
    recorded = {k: v for k, v in edit.config.items() if k not in overrides}
    assert recorded == {k: v for k, v in config.to_dict().items() if k not in overrides}
    load_erased(tmp_path / "run", device="cpu")
