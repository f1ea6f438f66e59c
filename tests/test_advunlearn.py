"""AdvUnlearn on tiny SD pipelines (trained tensors, losses, precompute = online, resume with the
attack state, run folder, export, plug-and-play) and a short run on canvas-mini (the erased style
stops being drawn, also with the text encoder plugged into a canvas-mini whose UNet differs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from erasure import ErasureRequest, erase
from erasure.errors import ErasureInputError
from erasure.export import export_run
from erasure.methods.advunlearn import AdvUnlearn, AdvUnlearnConfig, text_encoder_parameters
from erasure.erased import load_erased
from erasure.pipelines import load_pipeline

PRESETS = Path(__file__).parent.parent / "configs" / "advunlearn"
# A few steps on a 4-step DDIM grid; the attack starts after 2 warm-up steps.
TINY = dict(steps=6, warmup=2, attack_steps=3, attack_lr=1e-2, ddim_steps=4, lr=1e-3, retain_batch=2,
            precompute_batch=16, checkpoint_every=0)
CAT = ErasureRequest(targets=["a cat"], kind="object")


def fresh(saved):
    return load_pipeline(saved.folder, device="cpu")


def state(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ----------------------------------------------------------------------------- config
def test_config_round_trip_presets_and_refusals():
    cfg = AdvUnlearnConfig(layers=2, component="ffn", attack_placement="suffix", attack_epsilon=0.1, parameters=None)
    assert AdvUnlearnConfig.from_yaml(cfg.to_yaml()) == cfg
    assert AdvUnlearnConfig.from_json(cfg.to_json()) == cfg
    presets = {p.stem: AdvUnlearnConfig.load(p) for p in sorted(PRESETS.glob("*.yaml"))}
    assert set(presets) == {"canvas-mini-style", "canvas-mini-object", "sd15-nudity", "sd15-style"}
    reference = presets["sd15-nudity"]
    assert (reference.steps, reference.lr, reference.warmup, reference.attack_steps, reference.attack_lr) == (1000, 1e-5, 200, 30, 1e-3)
    assert (reference.retain_batch, reference.gamma, reference.attack_tokens, reference.attack_placement) == (5, 0.3, 1, "prefix")
    assert reference.attack_epsilon is None and not reference.precompute
    bad = [({"attack_placement": "middle"}, "attack_placement"), ({"steps": 0}, "steps: must be at least 1"),
           ({"attack_steps": 0}, "attack_steps: must be at least 1"), ({"component": "norms"}, "component"),
           ({"attack_epsilon": -1.0}, "attack_epsilon"), ({"gamma": -0.1}, "gamma"), ({"layers": 0}, "layers"),
           ({"attack_algorithm": "adam"}, "attack_algorithm"), ({"warmup": -1}, "warmup"),
           ({"timesteps": "late"}, "timesteps"), ({"attack_lr": 0}, "attack_lr"), ({"retain_batch": 1.5}, "integer"),
           ({"learning_rate": 1}, "unknown advunlearn config key"), ({"method": "esd"}, "not 'advunlearn'")]
    for values, match in bad:
        with pytest.raises(ErasureInputError, match=match):
            AdvUnlearnConfig.from_dict(values)


def test_parameter_selection(tiny_sd_loaded):
    te = tiny_sd_loaded.text_encoder
    names = lambda **kw: set(text_encoder_parameters(te, AdvUnlearnConfig(**kw)))  # noqa: E731
    everything = names()
    assert any(n.startswith("final_layer_norm.") for n in everything)
    assert not any("embeddings" in n for n in everything)
    assert everything == {n for n, _ in te.named_parameters() if n.startswith(("encoder.layers.", "final_layer_norm."))}
    first = names(layers=1)
    assert first and all(n.startswith("encoder.layers.0.") for n in first)  # no final norm with a layer subset
    assert names(layers=1, final_layer_norm=True) == first | {"final_layer_norm.weight", "final_layer_norm.bias"}
    assert all(".self_attn." in n for n in names(component="attn"))
    assert all(".mlp." in n for n in names(component="ffn")) and names(component="ffn")
    assert names(parameters=["layers\\.1\\.mlp\\.fc1"]) == {"encoder.layers.1.mlp.fc1.weight", "encoder.layers.1.mlp.fc1.bias"}
    with pytest.raises(ErasureInputError, match="has 2 layers"):
        names(layers=3)


# ----------------------------------------------------------------------------- training
def test_trains_only_the_text_encoder_and_lowers_the_esd_loss(tiny_sd):
    pipe = fresh(tiny_sd)
    unet, text = state(pipe.unet), state(pipe.text_encoder)
    method = AdvUnlearn(AdvUnlearnConfig(**TINY))
    samples = method.concept_samples(pipe, CAT, n=8)
    before = method.esd_loss(pipe, samples)
    edit = method(pipe, CAT)
    after = method.esd_loss(pipe, samples)
    assert after < before, (before, after)

    assert all(torch.equal(p, unet[n]) for n, p in pipe.unet.named_parameters())  # bit-identical
    changed = {n for n, p in pipe.text_encoder.named_parameters() if not torch.equal(p, text[n])}
    assert changed and {f"text_encoder.{n}" for n in changed} == set(edit.tensors)
    assert not any("embeddings" in n for n in changed)
    assert edit.extra["attack_rounds"] == TINY["steps"] - TINY["warmup"]
    assert edit.extra["components"]["text_encoder"]["fingerprint"].startswith("sha256:")
    assert all(not p.requires_grad for p in [*pipe.unet.parameters(), *pipe.text_encoder.parameters()])


def test_precomputed_equals_online_and_pool(tiny_sd):
    a, b = fresh(tiny_sd), fresh(tiny_sd)
    ea = AdvUnlearn(AdvUnlearnConfig(**TINY))(a, CAT)
    eb = AdvUnlearn(AdvUnlearnConfig(**TINY, precompute=False, gradient_checkpointing=True))(b, CAT)
    assert not b.unet.is_gradient_checkpointing and not b.text_encoder.is_gradient_checkpointing
    assert ea.tensors.keys() == eb.tensors.keys()
    for k in ea.tensors:
        # A key projection's bias adds the same logit to every key of a query, which softmax
        # ignores: its true gradient is zero, its computed one is rounding noise that depends on
        # how samples are batched, and Adam scales noise up to lr-sized steps. Skip those.
        if not k.endswith("k_proj.bias"):
            assert torch.allclose(ea.tensors[k], eb.tensors[k], atol=1e-5), k
    pooled = AdvUnlearn(AdvUnlearnConfig(**{**TINY, "sample_pool": 3}))(fresh(tiny_sd), CAT)
    assert pooled.extra["frozen_samples"] == 3 + 3 < ea.extra["frozen_samples"]  # concept pool + retain pool


def test_shared_trajectories_keep_the_plan_and_sample_less(tiny_sd):
    """``trajectories: shared``: the same prompts, depths and timesteps, several samples per trajectory
    (each (trajectory, depth) once), fewer frozen sample-steps, deterministic for a seed."""
    from erasure.diffusion import ddim_for
    from erasure.methods.advunlearn import _Planner
    from erasure.sampling import trajectory_of

    pipe = fresh(tiny_sd)
    ddim = ddim_for(pipe.scheduler, 8)
    config = dict(TINY, steps=40, ddim_steps=8)

    def samples(**kw):
        planner = _Planner(AdvUnlearnConfig(**{**config, **kw}), 2, 3, ddim, 1000, 1)
        planner.plan()
        return planner.samples

    per_step, shared = samples(), samples(trajectories="shared")
    assert [(p.prompt, p.depth, p.timestep) for p in shared] == [(p.prompt, p.depth, p.timestep) for p in per_step]
    used = [(*trajectory_of(p), p.depth) for p in shared]
    assert len(set(used)) == len(used) and len({trajectory_of(p) for p in shared}) < len(shared) / 3
    assert samples(trajectories="shared") == shared
    edit = AdvUnlearn(AdvUnlearnConfig(**{**TINY, "trajectories": "shared"}))(fresh(tiny_sd), CAT)
    counts = edit.extra["sample_steps"]
    assert counts["executed"] == counts["needed"] < counts["independent"] and edit.tensors


class Interrupt(Exception):
    pass


def test_resume_with_the_attack_state_equals_an_uninterrupted_run(tiny_sd, tmp_path):
    config = dict(TINY, steps=8, warmup=1, checkpoint_every=3, attack_init="latest")
    run = tmp_path / "run"

    def stop_after_5(stage, done, total, metrics):
        if stage == "training" and done == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        erase(fresh(tiny_sd), CAT, "advunlearn", out=run, progress=stop_after_5, **config)
    saved = torch.load(run / "checkpoint" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 3 and saved["method_state"]["delta"].shape == (1, 32)
    assert (run / "checkpoint" / "advunlearn-data-0-of-1.safetensors").is_file()

    starts = []
    resumed = erase(fresh(tiny_sd), CAT, "advunlearn", out=run, resume=True,
                    progress=lambda stage, done, total, m: starts.append(done) if stage == "training" else None, **config)
    assert starts[0] == 3
    whole = erase(fresh(tiny_sd), CAT, "advunlearn", **config)
    assert resumed.tensors.keys() == whole.tensors.keys()
    for k in whole.tensors:
        assert torch.allclose(resumed.tensors[k], whole.tensors[k], atol=1e-6), k
    assert resumed.extra["attack_rounds"] == whole.extra["attack_rounds"] == 7


def test_sdxl_is_refused(tiny_sdxl):
    with pytest.raises(ErasureInputError, match="one CLIP text encoder"):
        AdvUnlearn(AdvUnlearnConfig(**TINY))(load_pipeline(tiny_sdxl.folder, device="cpu"), CAT)


# ----------------------------------------------------------------------------- output, export, plug-and-play
def perturbed_unet(saved):
    """Another model with the same text encoder: the pipeline with its UNet perturbed."""
    pipe = fresh(saved)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return pipe


def test_run_folder_export_and_plug_and_play(tiny_sd, tiny_sd2, tmp_path):
    from transformers import CLIPTextModel

    from erasure.diffusion import TextConditioner

    pipe = fresh(tiny_sd)
    run = tmp_path / "run"
    erase(pipe, CAT, "advunlearn", out=run, **TINY)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["method"] == "advunlearn" and manifest["edit"]["components"] == ["text_encoder"]
    erased_text = state(pipe.text_encoder)

    # the default path still protects against another base
    other = perturbed_unet(tiny_sd)
    other_unet = state(other.unet)
    with pytest.raises(ErasureInputError, match="weights differ"):
        load_erased(run, base=other)
    plugged = load_erased(run, base=other, allow_other_base=True)
    assert all(torch.equal(p, erased_text[n]) for n, p in plugged.text_encoder.named_parameters())
    assert all(torch.equal(p, other_unet[n]) for n, p in plugged.unet.named_parameters())

    # export: a CLIPTextModel folder equal to the erased text encoder
    out = export_run(run, "text-encoder", tmp_path / "te").path
    exported = CLIPTextModel.from_pretrained(out, local_files_only=True)
    assert all(torch.equal(p, erased_text[n]) for n, p in exported.named_parameters())
    assert json.loads((out / "erasure-export.json").read_text())["method"] == "advunlearn"
    swapped = perturbed_unet(tiny_sd)
    swapped.text_encoder = exported
    with torch.no_grad():
        a = TextConditioner(swapped, 32)(["a cat"]).hidden
        b = TextConditioner(plugged, 32)(["a cat"]).hidden
    assert torch.equal(a, b)
    with pytest.raises(ErasureInputError, match="exists and is not empty"):
        export_run(run, "text-encoder", out)

    # another text-encoder architecture (same shapes, other activation) is refused
    with pytest.raises(ErasureInputError, match="hidden_act"):
        load_erased(run, base=fresh(tiny_sd2), allow_other_base=True)
    # a UNet edit never moves to another base
    esd_run = tmp_path / "esd"
    erase(fresh(tiny_sd), "a cat", "esd", out=esd_run, steps=2, ddim_steps=4, checkpoint_every=0)
    with pytest.raises(ErasureInputError, match="only text_encoder edits"):
        load_erased(esd_run, base=perturbed_unet(tiny_sd), allow_other_base=True)
    with pytest.raises(ErasureInputError, match="not the text encoder alone"):
        export_run(esd_run, "text-encoder", tmp_path / "esd-te")


def test_cli_exports_the_text_encoder_and_refuses_other_methods(capsys, tiny_sd, tmp_path):
    from transformers import CLIPTextModel

    from erasure.cli import main

    def cli(*args) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in args])
        return (info.value.code, *capsys.readouterr())

    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    # refused before any work: a method that edits the UNet, a non-empty export folder
    code, _, err = cli("erase", "-c", "a cat", "--model", tiny_sd.folder, "--method", "esd", "-o", tmp_path / "esd",
                       "--export-text-encoder", tmp_path / "te-esd")
    assert code == 2 and "does not train the text encoder alone" in err and err.count("\n") == 1
    assert not (tmp_path / "esd").exists() and not (tmp_path / "te-esd").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    code, _, err = cli("erase", "-c", "a cat", "--model", tiny_sd.folder, "--method", "advunlearn", "-o", tmp_path / "r0",
                       "--export-text-encoder", tmp_path / "full", *sets)
    assert code == 2 and "--export-text-encoder" in err and "not empty" in err and not (tmp_path / "r0").exists()

    code, out, err = cli("erase", "-c", "a cat", "--kind", "object", "--model", tiny_sd.folder, "--method", "advunlearn",
                         "-o", tmp_path / "run", "--export-text-encoder", tmp_path / "te", *sets)
    assert code == 0, err
    assert "(text-encoder, " in out and "CLIPTextModel.from_pretrained vs load_erased" in out
    exported = CLIPTextModel.from_pretrained(tmp_path / "te", local_files_only=True)
    erased = load_erased(tmp_path / "run")
    assert all(torch.equal(p, dict(erased.text_encoder.named_parameters())[n]) for n, p in exported.named_parameters())


# ----------------------------------------------------------------------------- canvas-mini
CANVAS_TARGET = "striped"
# Short and with a large learning rate so it fits in a test; small sample pools keep the frozen
# model's precomputation to 32 trajectories.
CANVAS_RUN = dict(steps=40, warmup=10, attack_steps=3, lr=1e-3, ddim_steps=20, retain_batch=2, sample_pool=16,
                  precompute_batch=32, checkpoint_every=0)


@pytest.fixture(scope="module")
def canvas_before_after():
    from erasure.evaluation import SamplingSettings, generate_cached
    from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, caption

    sampling = SamplingSettings(steps=10, guidance=3.0, seeds=[0], batch_size=64)
    evaluator = load_evaluator()
    prompts = [caption(o, CANVAS_TARGET) for o in OBJECTS]

    def accuracy(pipe) -> float:
        _, styles = evaluator.classify(images_to_tensor(generate_cached(pipe, prompts, sampling)))
        return float((styles == STYLES.index(CANVAS_TARGET)).float().mean())

    pipe = load_pipeline("canvas-mini")
    unet = state(pipe.unet)
    variant = load_pipeline("canvas-mini")  # a second model: its UNet perturbed, the same text encoder
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in variant.unet.parameters():
            p.add_(0.02 * p.std() * torch.randn(p.shape, generator=g))
    out = {"before": accuracy(pipe), "variant_before": accuracy(variant)}
    torch.manual_seed(0)
    erase(pipe, ErasureRequest([CANVAS_TARGET], kind="style"), "advunlearn", **CANVAS_RUN)
    out["after"] = accuracy(pipe)
    out["unet_unchanged"] = all(torch.equal(p, unet[n]) for n, p in pipe.unet.named_parameters())
    variant.text_encoder = pipe.text_encoder  # plug-and-play
    out["variant_after"] = accuracy(variant)
    return out


def test_canvas_erased_style_is_no_longer_drawn(canvas_before_after):
    r = canvas_before_after
    assert r["before"] >= 0.75, r
    assert r["after"] <= r["before"] - 0.5, r
    assert r["unet_unchanged"]


def test_canvas_text_encoder_plugs_into_another_unet(canvas_before_after):
    r = canvas_before_after
    assert r["variant_before"] >= 0.75, r
    assert r["variant_after"] <= r["variant_before"] - 0.5, r
