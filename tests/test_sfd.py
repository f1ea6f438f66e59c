"""SFD (score forgetting distillation into a one-step generator) on a tiny SD pipeline and on canvas-mini.

The loss formulas on hand-made tensors, the prompt sets and timesteps, which conditions reach the
frozen teacher, NaN masking, one-UNet-call sampling, run folders, load and resume; on canvas-mini, a
short run after which the one-step generator stops drawing the erased style and keeps others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from erasure import ErasureRequest, erase
from erasure.errors import ErasureInputError
from erasure.methods import sfd
from erasure.methods.sfd import (
    SFD,
    SFDConfig,
    fake_score_loss,
    override_prompt,
    prompt_sets,
    resolve_timesteps,
    sid_generator_loss,
)
from erasure.erased import load_erased
from erasure.pipelines import generate, load_pipeline
from erasure.one_step import OneStepPipeline, one_step_generate, one_step_pipeline

# A request with few prompts (the text table stays small) and an anchor for the override prompts.
REQUEST = dict(targets=["a cat"], anchor="a dog", prompts=["a photo of a cat", "a cat on a sofa"],
               retain=["a photo of a tree", "a red car"])
# guidance 1: one UNet call per branch (CFG is covered by the conditions test); big steps so a few move the weights.
TINY = dict(steps=4, batch_size=1, generator_lr=1e-3, fake_lr=1e-3, guidance=1.0, checkpoint_every=0)


def fresh(saved):
    return load_pipeline(saved.folder, device="cpu")


def request() -> ErasureRequest:
    return ErasureRequest(**REQUEST)


def state(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ----------------------------------------------------------------------------- losses by hand
def test_sid_generator_loss_matches_a_hand_computation():
    # Two samples of four pixels each.
    x = torch.tensor([[0.0, 1.0, -1.0, 0.5], [2.0, 0.0, 1.0, -1.0]]).reshape(2, 1, 2, 2)
    y_real = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]).reshape(2, 1, 2, 2)
    y_fake = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 1.0]]).reshape(2, 1, 2, 2)

    def by_hand(alpha: float) -> float:
        total = 0.0
        for i in range(2):
            xs, rs, fs = x[i].flatten().tolist(), y_real[i].flatten().tolist(), y_fake[i].flatten().tolist()
            norm = sum(abs(a - b) for a, b in zip(xs, rs)) / 4
            total += sum((r - f) * ((r - a) - alpha * (r - f)) for a, r, f in zip(xs, rs, fs)) / norm
        return total / 2

    # alpha 1. Sample 0: (r - f)(f - x) = 0, 0, -2, -0.5; mean|x - r| = 0.625 -> -4.
    # Sample 1: -2, 0, -1, -2; mean|x - r| = 0.75 -> -20/3. Mean over the batch: -16/3.
    assert by_hand(1.0) == pytest.approx(-16 / 3)
    loss1, kept = sid_generator_loss(x, y_real, y_fake, alpha=1.0)  # the simplified form (y_r - y_f)(y_f - x)
    assert kept.all() and float(loss1) == pytest.approx(by_hand(1.0))
    loss12, _ = sid_generator_loss(x, y_real, y_fake, alpha=1.2)  # the general form
    assert float(loss12) == pytest.approx(by_hand(1.2))
    # alpha a hair from 1 takes the general branch and agrees with the simplified one.
    loss_general, _ = sid_generator_loss(x, y_real, y_fake, alpha=1.0 + 1e-9)
    assert float(loss_general) == pytest.approx(float(loss1), abs=1e-6)
    # Per-sample weights and the reference's division by the batch.
    weighted, _ = sid_generator_loss(x, y_real, y_fake, alpha=1.0, weights=torch.tensor([0.5, 3.0]), batch=4)
    assert float(weighted) == pytest.approx((0.5 * -4.0 + 3.0 * -20 / 3) / 4)


def test_generator_gradient_flows_through_x_and_the_scores_but_not_the_normaliser():
    x = torch.tensor([[1.0, -2.0]], requires_grad=True)
    y_real = (2 * x).detach().requires_grad_(True)
    y_fake = torch.tensor([[0.5, 0.5]], requires_grad=True)
    loss, _ = sid_generator_loss(x.reshape(1, 1, 2), y_real.reshape(1, 1, 2), y_fake.reshape(1, 1, 2), alpha=1.0)
    loss.backward()
    norm = (x - y_real).abs().mean().detach()  # sg: a constant
    assert torch.allclose(x.grad, -(y_real - y_fake).detach() / norm)
    assert torch.allclose(y_real.grad, (y_fake - x).detach() / norm)
    assert torch.allclose(y_fake.grad, ((y_real - y_fake) - (y_fake - x)).detach() / norm)


def test_nan_rows_are_masked_out_of_both_losses():
    x = torch.randn(3, 2, 2, 2)
    y_real, y_fake, noise = torch.randn_like(x), torch.randn_like(x), torch.randn_like(x)
    bad = y_fake.clone()
    bad[1, 0, 0, 0] = float("nan")
    loss, kept = sid_generator_loss(x, y_real, bad, alpha=1.0)
    clean, _ = sid_generator_loss(x[[0, 2]], y_real[[0, 2]], y_fake[[0, 2]], alpha=1.0, batch=3)
    assert kept.tolist() == [True, False, True] and torch.isfinite(loss) and float(loss) == pytest.approx(float(clean))

    eps = torch.randn_like(x).requires_grad_(True)
    poisoned = eps * torch.tensor([1.0, float("inf"), 1.0]).reshape(3, 1, 1, 1)
    f_loss, f_kept = fake_score_loss(poisoned, noise)
    assert f_kept.tolist() == [True, False, True]
    assert float(f_loss.detach()) == pytest.approx(float(((eps[[0, 2]] - noise[[0, 2]]) ** 2).sum().detach() / 3))
    f_loss.backward()
    assert torch.isfinite(eps.grad[[0, 2]]).all()


# ----------------------------------------------------------------------------- prompts, timesteps, config
def test_override_prompts_replace_the_concept_by_the_anchor():
    assert override_prompt("a star in dotted style", ["dotted"], "a painting") == "a star in a painting style"
    assert override_prompt("A photo of Brad Pitt smiling", ["brad pitt"], "a middle aged man") == \
        "A photo of a middle aged man smiling"
    assert override_prompt("a photo of a cat", ["a cat"], "a dog") == "a photo of a dog"  # article taken along
    assert override_prompt("nudity, a woman", ["nudity"], "") == ", a woman"
    assert override_prompt("a photo of a tree", ["cat"], "a dog") is None  # no concept: caller decides
    assert override_prompt("a category of things", ["cat"], "a dog") is None  # whole words only

    sets = prompt_sets(ErasureRequest(["dotted"], kind="style").resolve("canvas-mini"))
    assert sets.forget[0] == "dotted style" and sets.override[0] == "a painting style"
    assert len(sets.forget) == 1 + 4 * 8 and len(sets.override) == len(sets.forget)
    assert all("dotted" not in o for o in sets.override) and all("dotted" in f for f in sets.forget)
    assert sets.remain and not any("dotted" in r for r in sets.remain)
    only = prompt_sets(ErasureRequest(["dotted"], kind="style").resolve("canvas-mini"), "prompts")
    assert only.forget == ["dotted style"]
    with pytest.raises(ErasureInputError, match="no retain prompts"):
        prompt_sets(ErasureRequest(["a cat"], retain=[]).resolve("stable-diffusion"))


def test_timesteps_match_the_reference_on_any_schedule():
    from diffusers import DDIMScheduler

    from erasure.pipelines.canvas.model import scheduler as canvas_scheduler
    from erasure.pipelines.testing import SD15_SCHEDULER

    sd = DDIMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k != "skip_prk_steps"})
    assert resolve_timesteps(SFDConfig(), sd) == {"t_min": 20, "t_star": 625, "t_max": 980}
    assert resolve_timesteps(SFDConfig(), canvas_scheduler()) == {"t_min": 79, "t_star": 755, "t_max": 950}
    assert resolve_timesteps(SFDConfig(t_star=500, t_min=10, t_max=900), sd) == {"t_min": 10, "t_star": 500, "t_max": 900}
    with pytest.raises(ErasureInputError, match="t_min < t_max"):
        resolve_timesteps(SFDConfig(t_min=900, t_max=100), sd)
    with pytest.raises(ErasureInputError, match="t_star"):
        resolve_timesteps(SFDConfig(t_star=1000), sd)


def test_config_round_trips_and_presets_load(tmp_path):
    from erasure.configs import preset_path

    config = SFDConfig(steps=7, alpha=1.2, adam_betas=[0.0, 0.99], t_star=700, negative_prompt="blurry")
    assert SFDConfig.from_yaml(config.to_yaml()) == config
    assert SFDConfig.from_json(config.to_json()) == config
    config.to_yaml(tmp_path / "c.yaml")
    assert SFDConfig.load(tmp_path / "c.yaml") == config
    for name in ("canvas-mini-style", "canvas-mini-object", "sd15-nudity", "sd15-celebrity"):
        loaded = SFDConfig.load(preset_path(f"sfd/{name}"))
        assert loaded.to_dict() != SFDConfig().to_dict(), name
    assert SFDConfig().guidances() == {"fake_train": 4.5, "fake": 4.5, "real": 4.5}
    assert SFDConfig(real_guidance=2.0).guidances()["real"] == 2.0


@pytest.mark.parametrize("values, message", [
    (dict(steps=0), "steps"),
    (dict(batch_size=0), "batch_size"),
    (dict(generator_lr=0), "generator_lr"),
    (dict(fake_lr=-1e-6), "fake_lr"),
    (dict(adam_betas=[0.0]), "adam_betas"),
    (dict(adam_betas=[0.0, 1.0]), "adam_betas"),
    (dict(alpha=0), "alpha"),
    (dict(guidance=-1), "guidance"),
    (dict(guidance=float("nan")), "guidance"),
    (dict(prompt_dropout=1.0), "prompt_dropout"),
    (dict(t_star=-5), "t_star"),
    (dict(forget_set="everything"), "forget_set"),
    (dict(mixed_precision="fp8"), "mixed_precision"),
    (dict(remain_weight=0, forget_weight=0), "nothing to train"),
    (dict(checkpoint_every=-1), "checkpoint_every"),
    (dict(micro_batch_size=0), "micro_batch_size"),
])
def test_bad_config_values_are_refused(values, message):
    with pytest.raises(ErasureInputError, match=message):
        SFDConfig(**values)


def test_bad_config_keys_and_types_are_refused():
    with pytest.raises(ErasureInputError, match="unknown sfd config key"):
        SFDConfig.from_dict({"stepz": 3})
    with pytest.raises(ErasureInputError, match="expected a number"):
        SFDConfig.from_dict({"alpha": "big"})
    with pytest.raises(ErasureInputError, match="not 'sfd'"):
        SFDConfig.from_dict({"method": "esd"})


def test_requests_carry_no_images():
    """SFD is data-free by construction: a request is prompts only, and an image field is refused."""
    from erasure.request import ErasureRequest as R

    assert {f.name for f in dataclasses.fields(R)} == {"targets", "kind", "anchor", "prompts", "retain", "paraphrases"}
    with pytest.raises(ErasureInputError, match="unknown request field"):
        R.from_dict({"targets": ["a cat"], "images": ["cat.png"]})


# ----------------------------------------------------------------------------- a training run
@pytest.fixture(scope="module")
def conditioned_run(tiny_sd):
    """Two SFD steps with guidance and a negative prompt, recording what reaches the teacher."""
    pipe = fresh(tiny_sd)
    teacher = pipe.unet
    before = state(teacher)
    text_before = state(pipe.text_encoder)
    vae_before = state(pipe.vae)
    calls = {"teacher": [], "copies": []}

    def record(module, args, kwargs):
        hidden = kwargs["encoder_hidden_states"].detach().clone()
        if module is teacher:
            # The teacher stays frozen during training: its weights equal the originals at every call.
            unchanged = all(torch.equal(p, before[n]) for n, p in module.named_parameters())
            calls["teacher"].append((hidden, unchanged))
        else:
            calls["copies"].append(hidden)

    hook = teacher.register_forward_pre_hook(record, with_kwargs=True)  # deep copies inherit it
    try:
        edit = SFD(SFDConfig(**{**TINY, "steps": 2, "guidance": 4.5, "negative_prompt": "blurry"}))(pipe, request())
    finally:
        hook.remove()
    encode = lambda texts: pipe.encode_prompt(texts, pipe.device, 1, False)[0]  # noqa: E731
    return dict(pipe=pipe, edit=edit, calls=calls, before=before, text_before=text_before, vae_before=vae_before,
                encode=encode)


def test_forget_rows_reach_the_teacher_with_the_override_prompt(conditioned_run):
    r = conditioned_run
    encode = r["encode"]
    forget, override = encode(["a photo of a cat", "a cat on a sofa", "a cat"]), encode(
        ["a photo of a dog", "a dog on a sofa", "a dog"])
    remain, empty, negative = encode(["a photo of a tree", "a red car"]), encode([""]), encode(["blurry"])

    def which(row, table) -> int | None:
        hits = [i for i in range(len(table)) if torch.allclose(row, table[i], atol=1e-6)]
        return hits[0] if hits else None

    assert len(r["calls"]["teacher"]) == 2  # one guided call per generator step
    for hidden, _ in r["calls"]["teacher"]:
        # CFG batch: [uncond remain, uncond forget, cond remain, cond forget] with batch_size 1.
        assert hidden.shape[0] == 4
        assert which(hidden[0], empty) == 0 and which(hidden[1], negative) == 0  # negative prompt on forget rows
        assert which(hidden[2], remain) is not None
        assert which(hidden[3], override) is not None and which(hidden[3], forget) is None
    # The generator and the fake-score network see the forget prompts themselves.
    seen = [h for hidden in r["calls"]["copies"] for h in hidden]
    assert any(which(h, forget) is not None for h in seen)
    assert not any(which(h, override) is not None for h in seen)


def test_only_the_generator_changes_and_the_edit_records_one_step_sampling(conditioned_run):
    r = conditioned_run
    pipe, edit = r["pipe"], r["edit"]
    assert all(unchanged for _, unchanged in r["calls"]["teacher"])
    assert edit.tensors and all(k.startswith("unet.") for k in edit.tensors)
    assert all(torch.isfinite(v).all() for v in edit.tensors.values())
    changed = {n for n, p in pipe.unet.named_parameters() if not torch.equal(p, r["before"][n])}
    assert {f"unet.{n}" for n in changed} == set(edit.tensors)  # the pipeline now holds the generator
    assert all(torch.equal(p, r["text_before"][n]) for n, p in pipe.text_encoder.named_parameters())
    assert all(torch.equal(p, r["vae_before"][n]) for n, p in pipe.vae.named_parameters())
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert edit.extra["sampler"] == "one-step" and edit.extra["t_star"] == 625
    assert edit.extra["override_examples"]["a photo of a cat"] == "a photo of a dog"
    assert edit.extra["guidance"] == {"fake_train": 4.5, "fake": 4.5, "real": 4.5}
    assert edit.cost["peak_memory_bytes"] > 0 and edit.cost["wall_seconds"] > 0


def test_generator_samples_in_one_unet_call(conditioned_run):
    pipe, t_star = conditioned_run["pipe"], conditioned_run["edit"].extra["t_star"]
    rows: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        images = one_step_generate(pipe, ["a photo of a cat", "a red car"], [0, 1], t_star, batch_size=4)
        assert rows == [4]  # four images, one UNet call
        rows.clear()
        one_step_generate(pipe, ["a red car"], [0], t_star, guidance=3.0)
        assert rows == [2]  # guidance: conditional and unconditional rows in the same call
        rows.clear()
        one_step_generate(pipe, ["a red car"], [0], t_star, steps=2)
        assert rows == [1, 1]  # few-step sampling: one call per step
    finally:
        hook.remove()
    assert len(images) == 4 and images[0].size == (32, 32)
    # Through the ordinary generate(), as evaluation and the app call pipelines: the multi-step
    # sampler's steps and guidance are ignored, images depend on the seed only.
    wrapped = OneStepPipeline(pipe, t_star)
    again = generate(wrapped, ["a photo of a cat", "a red car"], seeds=[0, 1], steps=25, guidance=7.5, batch_size=4)
    assert [im.tobytes() for im in again] == [im.tobytes() for im in images]
    assert images[0].tobytes() != images[1].tobytes()  # different seeds, different noise


def test_one_step_sampling_on_the_sdxl_layout(tiny_sdxl):
    """SDXL's added conditions and its VAE decode go through the same sampler (here the untrained teacher)."""
    pipe = load_pipeline(tiny_sdxl.folder, device="cpu")
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(sorted(kwargs)), with_kwargs=True)
    try:
        images = one_step_generate(pipe, ["a cat", "a dog"], [0], 625, batch_size=2)
    finally:
        hook.remove()
    assert len(calls) == 1 and "added_cond_kwargs" in calls[0]
    assert [im.size for im in images] == [(32, 32), (32, 32)] and images[0].tobytes() != images[1].tobytes()


def test_fake_score_loss_falls_on_fixed_samples(tiny_sd):
    """A few fake-score updates on one step's samples (generator fixed) lower the fake-score loss on them."""
    from erasure.training import process_state

    pipe = fresh(tiny_sd)
    c = SFDConfig(**{**TINY, "fake_lr": 3e-4})
    req = request().resolve(pipe)
    times = resolve_timesteps(c, pipe.scheduler)
    run = sfd._Run(SFD(c), pipe, prompt_sets(req), times, "no", 32, process_state(cpu=True), None)
    losses = [run.fake_step(0) for _ in range(6)]  # each is the loss before its update
    run.close()
    assert losses[-1] < 0.9 * losses[0], losses


def test_nan_samples_are_masked_during_training(tiny_sd, monkeypatch):
    """A generator output with NaNs is dropped from both losses; the weights stay finite (v-prediction too)."""
    from diffusers import DDIMScheduler

    real = sfd.generator_x0

    def poisoned(*args, **kwargs):
        x = real(*args, **kwargs)
        return torch.cat([torch.full_like(x[:1], float("nan")), x[1:]])

    monkeypatch.setattr(sfd, "generator_x0", poisoned)
    pipe = fresh(tiny_sd)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    edit = SFD(SFDConfig(**{**TINY, "steps": 2}))(pipe, request())
    assert edit.extra["prediction_type"] == "v_prediction"
    assert all(torch.isfinite(p).all() for p in pipe.unet.parameters())
    assert edit.extra["fake_loss_first"] is not None and edit.extra["generator_loss_first"] is not None
    assert all(v == v for v in (edit.extra["fake_loss_first"], edit.extra["generator_loss_first"]))  # not NaN


def test_gradient_checkpointing_changes_nothing(tiny_sd):
    """Checkpointing all three UNets (for GPU memory) gives the same generator, and is switched off afterwards."""
    config = {**TINY, "steps": 2}
    plain = SFD(SFDConfig(**config))(fresh(tiny_sd), request())
    pipe = fresh(tiny_sd)
    checkpointed = SFD(SFDConfig(**config, gradient_checkpointing=True))(pipe, request())
    assert not pipe.unet.is_gradient_checkpointing
    assert plain.tensors.keys() == checkpointed.tensors.keys() and plain.tensors
    for k in plain.tensors:
        assert torch.allclose(plain.tensors[k], checkpointed.tensors[k], atol=1e-6), k


def test_optimizer_step_in_backward_changes_nothing(tiny_sd):
    """The memory option on by default (each tensor updated as its gradient completes, no gradient
    buffer) trains the same generator as backward-then-step, with and without checkpointing."""
    config = {**TINY, "steps": 3}
    for checkpointing in (False, True):
        fused = SFD(SFDConfig(**config, gradient_checkpointing=checkpointing))(fresh(tiny_sd), request())
        plain = SFD(SFDConfig(**config, gradient_checkpointing=checkpointing,
                              optimizer_in_backward=False))(fresh(tiny_sd), request())
        assert fused.extra["optimizer_in_backward"] and not plain.extra["optimizer_in_backward"]
        assert fused.tensors.keys() == plain.tensors.keys() and fused.tensors
        for k in fused.tensors:
            assert torch.equal(fused.tensors[k], plain.tensors[k]), k


@pytest.mark.parametrize("rows", [1, 3])
def test_micro_batches_accumulate_to_the_whole_batch(tiny_sd, rows):
    """A step's 2B rows in parts of 1 and 3 (gradient accumulation) train the generator the whole batch does."""
    config = {**TINY, "steps": 2, "batch_size": 2}
    whole = SFD(SFDConfig(**config))(fresh(tiny_sd), request())
    parts = SFD(SFDConfig(**config, micro_batch_size=rows))(fresh(tiny_sd), request())
    assert whole.extra["optimizer_in_backward"] and not parts.extra["optimizer_in_backward"]  # accumulation needs .grad
    assert whole.tensors.keys() == parts.tensors.keys() and whole.tensors
    for k in whole.tensors:
        assert torch.allclose(whole.tensors[k], parts.tensors[k], atol=1e-5), k
    for key in ("fake_loss_first", "generator_loss_first"):
        assert parts.extra[key] == pytest.approx(whole.extra[key], rel=1e-4)


# ----------------------------------------------------------------------------- run folders and resume
def test_resume_equals_an_uninterrupted_run_and_the_run_folder_loads(tiny_sd, tmp_path):
    config = {**TINY, "steps": 3, "checkpoint_every": 2}

    class Stop(Exception):
        pass

    def stop_after_3(stage, done, total, metrics):
        if stage == "training" and done == 3:  # a step past the checkpoint at 2, before the run is saved
            raise Stop

    run = tmp_path / "interrupted"
    with pytest.raises(Stop):
        erase(fresh(tiny_sd), request(), "sfd", out=run, progress=stop_after_3, **config)
    checkpoint = torch.load(run / "checkpoint" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 2 and {"generator", "fake", "generator_optimizer", "fake_optimizer"} <= set(checkpoint)

    starts = []
    resumed = erase(fresh(tiny_sd), request(), "sfd", out=run, resume=True, **config,
                    progress=lambda stage, done, total, m: starts.append(done) if stage == "training" else None)
    assert starts[0] == 2 and resumed.extra["resumed_from_step"] == 2
    whole_dir = tmp_path / "whole"
    whole = erase(fresh(tiny_sd), request(), "sfd", out=whole_dir, **config)
    assert resumed.tensors.keys() == whole.tensors.keys() and whole.tensors and whole.extra["resumed_from_step"] == 0
    for k in whole.tensors:
        assert torch.allclose(resumed.tensors[k], whole.tensors[k], atol=1e-6), k

    # The run folder: the generator's tensors and how to sample it; load_erased returns the one-step pipeline.
    manifest = json.loads((whole_dir / "manifest.json").read_text())
    assert manifest["method"] == "sfd" and manifest["extra"]["sampler"] == "one-step"
    loaded = load_erased(whole_dir, base=fresh(tiny_sd))
    assert isinstance(loaded, OneStepPipeline) and loaded.t_star == manifest["extra"]["t_star"]
    assert one_step_pipeline(loaded, manifest["extra"]) is loaded  # wrapping twice is a no-op
    in_memory = fresh(tiny_sd)
    whole.apply(in_memory)
    a = generate(loaded, ["a photo of a cat"], seeds=[3])
    b = one_step_generate(in_memory, ["a photo of a cat"], [3], whole.extra["t_star"])
    assert a[0].tobytes() == b[0].tobytes()
    assert one_step_pipeline(in_memory, {"sampler": None}) is in_memory

    # generator_init: a later run starts its generator from this one's.
    pipe = fresh(tiny_sd)
    c = SFDConfig(**{**TINY, "generator_init": str(whole_dir)})
    from erasure.training import process_state

    r = sfd._Run(SFD(c), pipe, prompt_sets(request().resolve(pipe)), resolve_timesteps(c, pipe.scheduler), "no", 32,
                 process_state(cpu=True), None)
    params = dict(r.generator.named_parameters())
    assert all(torch.equal(params[k.removeprefix("unet.")], v) for k, v in whole.tensors.items())
    r.close()
    with pytest.raises(ErasureInputError, match="t_star"):
        bad = SFDConfig(**{**TINY, "generator_init": str(whole_dir), "t_star": 500})
        sfd._Run(SFD(bad), pipe, prompt_sets(request().resolve(pipe)), resolve_timesteps(bad, pipe.scheduler), "no",
                 32, process_state(cpu=True), None)


# ----------------------------------------------------------------------------- several processes
TWO_PROCESS_SCRIPT = """
import sys
import erasure.methods.sfd  # registers "sfd"
from erasure import ErasureRequest, erase
from erasure.pipelines import load_pipeline

erase(load_pipeline(sys.argv[1], device="cpu"), ErasureRequest(**REQUEST), "sfd", out=sys.argv[2], **CONFIG)
"""


@pytest.mark.timeout(1800)
def test_two_processes_equal_one_process_with_the_global_batch(tiny_sd, tmp_path):
    """Under `accelerate launch` with 2 CPU processes (gloo) and batch 1 each, the generator equals one process with batch 2."""
    from erasure.edit import Edit

    config = {**TINY, "steps": 2, "batch_size": 1}
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT.replace("REQUEST", repr(REQUEST)).replace("**CONFIG", "**" + repr(config)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), str(script), str(tiny_sd.folder), str(run)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    edit = Edit.load(run)
    assert edit.cost["num_processes"] == 2 and edit.extra["global_batch_size"] == 2

    reference = SFD(SFDConfig(**{**config, "batch_size": 2}))(fresh(tiny_sd), request())
    assert edit.tensors.keys() == reference.tensors.keys() and edit.tensors
    for k in reference.tensors:
        assert torch.allclose(edit.tensors[k], reference.tensors[k], atol=1e-5), k
    # Recorded losses are the means over both processes: the one-process losses of the same samples.
    assert edit.extra["fake_loss_first"] == pytest.approx(reference.extra["fake_loss_first"], rel=1e-4)
    assert edit.extra["generator_loss_first"] == pytest.approx(reference.extra["generator_loss_first"], rel=1e-4)


# ----------------------------------------------------------------------------- canvas-mini
# A short run from the canvas-mini preset (fewer and smaller steps, so it fits in a test), judged
# by the shipped evaluator on one-step samples of the same prompts and seeds before (the generator
# starts as the teacher) and after. Striped: the teacher's one-step samples already show it, so a
# drop is forgetting, not a generator that has not learnt to draw yet. Kept: styles unlike it
# (checkered, another line pattern, goes with it on canvas-mini).
CANVAS_TARGET = "striped"
CANVAS_KEPT = ("solid", "gradient", "concentric")
CANVAS_RUN = dict(steps=80, batch_size=4, checkpoint_every=0)


@pytest.fixture(scope="module")
def canvas_one_step_accuracy():
    from erasure.configs import preset_path
    from erasure.pipelines.canvas.evaluator import images_to_tensor, load_evaluator
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, caption

    evaluator = load_evaluator()

    def style_accuracy(generator) -> dict[str, float]:
        out = {}
        for style in (CANVAS_TARGET, *CANVAS_KEPT):
            images = generate(generator, [caption(o, style) for o in OBJECTS], seeds=[0, 1, 2, 3], batch_size=32)
            _, predicted = evaluator.classify(images_to_tensor(images))
            out[style] = float((predicted == STYLES.index(style)).float().mean())
        return out

    pipe = load_pipeline("canvas-mini")
    t_star = resolve_timesteps(SFDConfig(), pipe.scheduler)["t_star"]
    before = style_accuracy(OneStepPipeline(pipe, t_star))
    edit = erase(pipe, ErasureRequest([CANVAS_TARGET], kind="style"), "sfd", config=preset_path("sfd/canvas-mini-style"),
                 **CANVAS_RUN)
    after = style_accuracy(OneStepPipeline(pipe, edit.extra["t_star"]))
    return before, after


def test_canvas_run_stops_drawing_the_erased_style(canvas_one_step_accuracy):
    before, after = canvas_one_step_accuracy
    assert before[CANVAS_TARGET] >= 0.75, before
    assert after[CANVAS_TARGET] <= before[CANVAS_TARGET] - 0.5, (before, after)


def test_canvas_run_keeps_the_other_styles(canvas_one_step_accuracy):
    before, after = canvas_one_step_accuracy
    kept = sum(after[s] for s in CANVAS_KEPT) / len(CANVAS_KEPT)
    assert kept >= 0.75, (before, after)
