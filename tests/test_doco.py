"""DoCo: gradient surgery on hand-made gradients, prompt pairs, configs, the training run on tiny
pipelines (only attn2 K/V change, the discriminator learns, resume equals an uninterrupted run, run
folders), and a short run on canvas-mini that makes the evaluator stop recognising the erased style."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from erasure import ErasureRequest, erase
from erasure.edit import Edit
from erasure.errors import ErasureInputError
from erasure.methods.doco import (
    DoCo,
    DoCoConfig,
    clip_global_norm,
    gradient_surgery,
    prompt_pairs,
)
from erasure.erased import load_erased
from erasure.pipelines import load_pipeline

CONFIGS = Path(__file__).parent.parent / "configs" / "doco"
# A few steps on the tiny SD pipeline (16x16 latents): small discriminator, few anchor images.
TINY = dict(steps=8, batch_size=2, lr=1e-3, warmup_steps=3, anchor_images=6, anchor_steps=3, anchor_batch=8,
            disc_widths=[8, 16], checkpoint_every=0)
REQUEST = ErasureRequest(["a cat"], kind="object", anchor="a dog")


def fresh(saved):
    return load_pipeline(saved.folder, device="cpu")


# ----------------------------------------------------------------------------- gradient surgery
R2 = math.sqrt(2.0)


@pytest.mark.parametrize(
    "mode, lam, g_adv, g_prior, expected",
    [
        # conflicting (cos = -1/sqrt 2): projection removes (g_a.g_p/|g_p|^2) g_p = -(-1, 1)
        ("projection", 1.0, [2.0, 0.0], [-1.0, 1.0], [1.0, 1.0]),
        # the reference removes cos * unit(g_p) = (-1/sqrt2) (-1, 1)/sqrt2 = (0.5, -0.5)
        ("reference", 1.0, [2.0, 0.0], [-1.0, 1.0], [1.5, 0.5]),
        ("projection", 0.5, [2.0, 0.0], [-1.0, 1.0], [1.5, 0.5]),
        ("reference", 0.5, [2.0, 0.0], [-1.0, 1.0], [1.75, 0.25]),
        ("off", 1.0, [2.0, 0.0], [-1.0, 1.0], [2.0, 0.0]),
        # aligned (cos > 0) and orthogonal (cos = 0): untouched in every mode
        ("projection", 1.0, [1.0, 2.0], [2.0, 1.0], [1.0, 2.0]),
        ("reference", 1.0, [1.0, 2.0], [2.0, 1.0], [1.0, 2.0]),
        ("projection", 1.0, [1.0, 0.0], [0.0, 3.0], [1.0, 0.0]),
        ("reference", 1.0, [1.0, 0.0], [0.0, 3.0], [1.0, 0.0]),
        # g_p of another length: the projection does not depend on it, the reference form neither
        ("projection", 1.0, [2.0, 0.0], [-4.0, 4.0], [1.0, 1.0]),
        ("reference", 1.0, [2.0, 0.0], [-4.0, 4.0], [1.5, 0.5]),
    ],
)
def test_gradient_surgery_on_hand_made_gradients(mode, lam, g_adv, g_prior, expected):
    a, p = torch.tensor(g_adv), torch.tensor(g_prior)
    out, cos = gradient_surgery(a, p, mode, lam)
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6, rtol=0), out
    assert cos == pytest.approx(float(a @ p / (a.norm() * p.norm())), abs=1e-7)
    assert torch.equal(a, torch.tensor(g_adv)) and torch.equal(p, torch.tensor(g_prior))  # inputs untouched


def test_projection_removes_the_whole_conflict_on_matrices_and_zero_gradients_pass():
    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    p = p - ((a * p).sum() / (a * a).sum() + 1) * a  # now a . p = -|a|^2: they conflict
    out, cos = gradient_surgery(a, p, "projection")
    assert cos < 0 and out.shape == a.shape
    assert abs(float((out * p).sum())) < 1e-5  # orthogonal to g_p afterwards
    ref, _ = gradient_surgery(a, p, "reference")
    expected = a - cos * p / p.norm()
    assert torch.allclose(ref, expected, atol=1e-6)
    zero, cos0 = gradient_surgery(a, torch.zeros_like(a), "projection")
    assert zero is a and math.isnan(cos0)


def test_clip_global_norm():
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]  # global norm 5
    clipped = clip_global_norm(grads, 1.0)
    assert torch.allclose(clipped[0], torch.tensor([3 / 5, 0.0]), atol=1e-6)
    assert torch.allclose(clipped[1], torch.tensor([4 / 5]), atol=1e-6)
    assert clip_global_norm(grads, 10.0)[0] is grads[0] and clip_global_norm(grads, 0.0)[1] is grads[1]


# ----------------------------------------------------------------------------- prompts and configs
def test_prompt_pairs_canvas_mini():
    style = prompt_pairs(ErasureRequest(["striped"], kind="style"), "canvas-mini")
    assert len(style) == 8 and style[3] == ("a star", "a star in striped style")
    anchored = prompt_pairs(ErasureRequest(["striped"], kind="style", anchor="dotted style"), "canvas-mini", [0, 2])
    assert ("a star in dotted style", "a star in striped style") in anchored
    assert ("a dotted painting of a star", "a striped painting of a star") in anchored and len(anchored) == 16
    obj = prompt_pairs(ErasureRequest(["a star"], kind="object"), "canvas-mini")
    assert len(obj) == 8 and obj[1] == ("striped style", "a star in striped style")
    assert prompt_pairs(ErasureRequest(["star"], kind="object", anchor="moon"), "canvas-mini")[0] == (
        "a moon in solid style", "a star in solid style")
    assert prompt_pairs(ErasureRequest(["star"], kind="object", anchor=""), "canvas-mini") == [("", "a star")]
    with pytest.raises(ErasureInputError, match="on canvas-mini a style anchor is one of its styles"):
        prompt_pairs(ErasureRequest(["striped"], kind="style", anchor="a painting"), "canvas-mini")
    with pytest.raises(ErasureInputError, match="is a concept being erased"):
        prompt_pairs(ErasureRequest(["striped"], kind="style", anchor="striped"), "canvas-mini")
    with pytest.raises(ErasureInputError, match="templates: \\[7\\] out of range"):
        prompt_pairs(ErasureRequest(["striped"], kind="style"), "canvas-mini", [0, 7])


def test_prompt_pairs_canvas_mini_other_concepts_as_anchors():
    style = prompt_pairs(ErasureRequest(["striped", "dotted"], kind="style"), "canvas-mini", [2], "others")
    assert len(style) == 2 * 6 * 8  # per target: the 6 styles not erased x 8 objects
    assert ("a solid painting of a star", "a dotted painting of a star") in style
    assert not any("striped" in a or "dotted" in a for a, _ in style)
    obj = prompt_pairs(ErasureRequest(["star"], kind="object"), "canvas-mini", [0], "others")
    assert len(obj) == 7 * 8 and ("a moon in noisy style", "a star in noisy style") in obj
    # an explicit anchor wins over the setting
    assert len(prompt_pairs(ErasureRequest(["star"], kind="object", anchor="moon"), "canvas-mini", [0], "others")) == 8
    with pytest.raises(ErasureInputError, match="canvas_anchors"):
        DoCoConfig(canvas_anchors="all")


def test_prompt_pairs_stable_diffusion():
    style = prompt_pairs(ErasureRequest(["van gogh"], kind="style"), "stable-diffusion")
    assert ("a painting of a house", "a painting of a house, in the style of van gogh") in style
    assert ("a painting of a house", "in van gogh's style, a painting of a house") in style
    obj = prompt_pairs(ErasureRequest(["church"], kind="object", anchor="a house"), "stable-diffusion")
    assert ("a photo of a house on a beach", "a photo of a church on a beach") in obj and len(obj) == 50
    nudity = prompt_pairs(ErasureRequest(["nudity"], kind="nudity"), "stable-diffusion")
    assert nudity[0] == ("a photo of a person wearing clothes", "a photo of nudity")
    explicit = prompt_pairs(ErasureRequest(["Van Gogh"], kind="style", prompts=["starry night by van gogh"]), "stable-diffusion")
    assert explicit == [("starry night by a painting", "starry night by van gogh")]
    assert prompt_pairs(ErasureRequest(["a cat"]), "stable-diffusion") == [("", "a cat")]  # custom: empty anchor


def test_config_round_trips_and_presets():
    cfg = DoCoConfig(surgery="reference", parameters=[r"attn2\.to_v"], disc_widths=[16, 32], templates=[0, 3])
    assert DoCoConfig.from_json(cfg.to_json()) == cfg and DoCoConfig.from_yaml(cfg.to_yaml()) == cfg
    assert json.loads(cfg.to_json())["method"] == "doco" and DoCoConfig().disc_betas == [0.5, 0.999]
    assert cfg.with_overrides(steps=5).steps == 5
    presets = {p.stem: DoCoConfig.load(p) for p in sorted(CONFIGS.glob("*.yaml"))}
    assert set(presets) == {"canvas-mini-style", "canvas-mini-object", "sd15-style", "sd15-object", "sd15-nudity",
                            "sdxl-style"}
    ref = presets["sd15-nudity"]
    assert (ref.lr, ref.weight_decay, ref.steps, ref.batch_size, ref.max_grad_norm) == (6e-6, 1e-2, 2000, 8, 1.0)
    assert (ref.disc_lr, ref.disc_widths, ref.parameters, ref.surgery) == (1e-4, [64, 128, 256, 512], "attn2-kv", "projection")
    assert presets["sd15-style"].disc_lr == 5e-4 and presets["canvas-mini-style"].disc_lr == 5e-4
    assert presets["sd15-object"].disc_lr == 1e-4 and presets["sd15-object"].lr == ref.lr
    assert presets["canvas-mini-style"].templates == [0]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"surgery": "pcgrad"}, "surgery: 'pcgrad'; expected one of projection, reference, off"),
        ({"warmup": "both"}, "warmup: 'both'"),
        ({"steps": 0}, "steps: must be at least 1"),
        ({"lr": 0}, "lr: must be positive"),
        ({"disc_lr": -1e-4}, "disc_lr: must be positive"),
        ({"disc_betas": [0.5]}, "disc_betas"),
        ({"disc_widths": []}, "disc_widths"),
        ({"templates": [0, 0]}, "templates"),
        ({"parameters": "attn9"}, "parameters: 'attn9'"),
        ({"max_grad_norm": -1}, "max_grad_norm: must be >= 0"),
        ({"mixed_precision": "fp8"}, "mixed_precision: 'fp8'"),
        ({"surgery_lambda": "big"}, "expected a number"),
        ({"stepz": 3}, "unknown doco config key"),
    ],
)
def test_bad_config_values_are_refused(values, message):
    with pytest.raises(ErasureInputError, match=None) as info:
        DoCoConfig.from_dict(values)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_discriminator_too_deep_for_the_model_is_refused(tiny_sd):
    with pytest.raises(ErasureInputError, match="disc_widths: 4 blocks need inputs of at least 32 px a side"):
        DoCo(DoCoConfig(**{**TINY, "disc_widths": [8, 8, 8, 8]}))(fresh(tiny_sd), REQUEST)


# ----------------------------------------------------------------------------- training on tiny SD
def all_tensors(pipe) -> dict[str, torch.Tensor]:
    out = {}
    for comp in ("unet", "text_encoder", "vae"):
        out |= {f"{comp}.{k}": v.detach().clone() for k, v in getattr(pipe, comp).state_dict().items()}
    return out


def test_only_attn2_kv_change_and_everything_else_is_bit_identical(tiny_sd):
    pipe = fresh(tiny_sd)
    before = all_tensors(pipe)
    edit = DoCo(DoCoConfig(**TINY))(pipe, REQUEST)
    after = all_tensors(pipe)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    kv = {k for k in before if k.startswith("unet.") and (".attn2.to_k." in k or ".attn2.to_v." in k)}
    assert kv and changed == kv == set(edit.tensors)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in pipe.unet.parameters())
    h = edit.extra["history"]
    assert h["adv"]["steps"] == h["disc"]["steps"] == TINY["steps"] and h["conflicts"]["steps"] == TINY["steps"] - 3
    assert edit.extra["prompt_pairs"] == 50 and edit.extra["anchor_images"] == 6
    assert edit.cost["phases_seconds"]["anchor images"] > 0 and edit.cost["peak_memory_bytes"] > 0


def test_surgery_modes_and_warmup_modes_differ(tiny_sd):
    edits = {}
    for name, over in {"projection": {}, "reference": {"surgery": "reference"}, "off": {"surgery": "off"},
                       "disc-warmup": {"warmup": "discriminator"}}.items():
        edits[name] = DoCo(DoCoConfig(**{**TINY, "steps": 5, **over}))(fresh(tiny_sd), REQUEST)
    key = next(iter(edits["projection"].tensors))
    values = {n: e.tensors[key] for n, e in edits.items()}
    assert not torch.equal(values["projection"], values["reference"])
    assert not torch.equal(values["projection"], values["off"])
    assert edits["off"].extra["history"]["conflicts"]["steps"] == 0
    assert edits["projection"].extra["history"]["conflicts"]["steps"] == 2
    # Discriminator-only warm-up: 3 steps without a generator update, then 2 with surgery.
    assert edits["disc-warmup"].extra["history"]["adv"]["steps"] == 2


def per_step(pipe, request=REQUEST, base=TINY, **overrides) -> tuple[dict[str, list[float]], Edit]:
    """A short run's per-step losses (from the progress callback) and its edit."""
    seen: dict[str, list[float]] = {"adv": [], "disc": []}

    def progress(stage, done, total, metrics):
        for k in seen:
            if stage == "training" and k in metrics:
                seen[k].append(metrics[k])

    edit = DoCo(DoCoConfig(**{**base, **overrides}))(pipe, request, progress=progress)
    return seen, edit


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tiny_sd, tmp_path):
    config = {**TINY, "steps": 10, "checkpoint_every": 4}
    run = tmp_path / "crashed"

    def crash(stage, done, total, metrics):
        if stage == "training" and done == 6:  # after the checkpoint at step 4
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        erase(fresh(tiny_sd), REQUEST, "doco", out=run, progress=crash, **config)
    ckpt = torch.load(run / "checkpoint" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["discriminator"] and ckpt["disc_optimizer"]["state"]
    assert len(ckpt["history"]["disc"]) == 4 and (run / "checkpoint" / "doco-anchors.safetensors").is_file()

    starts = []
    resumed = erase(fresh(tiny_sd), REQUEST, "doco", out=run, resume=True,
                    progress=lambda s, d, t, m: starts.append(d) if s == "training" else None, **config)
    assert starts[0] == 4
    whole = erase(fresh(tiny_sd), REQUEST, "doco", **config)
    assert resumed.tensors.keys() == whole.tensors.keys() and whole.tensors
    for k in whole.tensors:
        assert torch.equal(resumed.tensors[k], whole.tensors[k]), k
    assert resumed.extra["history"] == whole.extra["history"]  # discriminator restored: same D losses after step 4


def test_run_folder_save_and_load_round_trip(tiny_sd, tmp_path):
    pipe = fresh(tiny_sd)
    run = tmp_path / "run"
    edit = erase(pipe, REQUEST, "doco", out=run, **TINY)
    assert sorted(p.name for p in run.iterdir()) == ["README.md", "edit.safetensors", "manifest.json"]
    loaded = Edit.load(run)
    assert loaded.method == "doco" and loaded.tensors.keys() == edit.tensors.keys()
    assert all(torch.equal(loaded.tensors[k], edit.tensors[k]) for k in edit.tensors)
    assert DoCoConfig.from_dict(loaded.config) == DoCoConfig(**TINY)
    assert loaded.extra["history"] == edit.extra["history"]
    erased = load_erased(run, base=fresh(tiny_sd))
    for name, p in pipe.unet.named_parameters():
        assert torch.equal(erased.unet.get_parameter(name), p), name
    # The edit is the K/V projections only: a small part of the UNet.
    assert sum(t.numel() for t in loaded.tensors.values()) < sum(p.numel() for p in pipe.unet.parameters()) / 10



# ----------------------------------------------------------------------------- canvas-mini
# A short run on the embedded model (its real text conditioning gives the discriminator something
# to learn): small batch, few anchor images, a large learning rate, so it fits in a test.
CANVAS = dict(steps=40, batch_size=4, lr=1e-3, warmup_steps=10, anchor_images=16, anchor_steps=15, anchor_guidance=3.0,
              anchor_batch=16, disc_widths=[32, 64, 128], checkpoint_every=0)
STYLE = ErasureRequest(["striped"], kind="style")


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean())


@pytest.fixture(scope="module")
def canvas_effect():
    """x0 estimates (what the discriminator sees) before and after a short DoCo run erasing "striped"."""
    from erasure.pipelines.canvas.render import OBJECTS, caption

    pipe = load_pipeline("canvas-mini")
    method = DoCo(DoCoConfig(**CANVAS))
    pairs = prompt_pairs(STYLE, pipe)
    prompts = {
        "anchor": [a for a, _ in pairs],
        "target": [t for _, t in pairs],
        "paraphrase": [caption(o, "striped", 2) for o in OBJECTS],  # a template never trained on
        "retain": [caption(o, "solid") for o in OBJECTS],
    }
    samples = {"anchor": method.probe_samples(pipe, prompts["anchor"], n=8),
               "retain": method.probe_samples(pipe, prompts["retain"], n=8, seed=2)}

    def estimates():
        return {
            "anchor": method.x0_estimates(pipe, samples["anchor"], prompts["anchor"]),
            "target": method.x0_estimates(pipe, samples["anchor"], prompts["target"]),
            "paraphrase": method.x0_estimates(pipe, samples["anchor"], prompts["paraphrase"]),
            "retain": method.x0_estimates(pipe, samples["retain"], prompts["retain"]),
        }

    before = estimates()
    edit = method(pipe, STYLE)
    return before, estimates(), edit


def test_discriminator_loss_falls():
    # Discriminator-only warm-up for the whole run: D learns y_A ("a star", frozen) -> real and
    # y_S ("a star in striped style") -> fake on fixed anchor images; the UNet does not change.
    seen, edit = per_step(load_pipeline("canvas-mini"), STYLE, CANVAS, steps=16, warmup_steps=16,
                          warmup="discriminator", anchor_images=8, anchor_steps=10)
    assert len(seen["disc"]) == 16 and not seen["adv"]
    assert mean(seen["disc"][-4:]) < mean(seen["disc"][:4]) - 0.1, seen["disc"]
    assert edit.tensors == {}


def test_generator_loss_falls_against_a_fixed_discriminator():
    # The discriminator barely moves (lr 1e-12): the K/V learn to make y_S look "real" to it.
    seen, edit = per_step(load_pipeline("canvas-mini"), STYLE, CANVAS, steps=16, surgery="off", disc_lr=1e-12,
                          lr=1e-2, anchor_images=8, anchor_steps=10)
    assert len(seen["adv"]) == 16
    assert mean(seen["adv"][-4:]) < mean(seen["adv"][:4]) - 0.03, seen["adv"]
    assert edit.tensors


def test_canvas_target_prompts_move_to_the_anchor_domain_and_retain_prompts_stay(canvas_effect):
    before, after, edit = canvas_effect
    gap_before = mse(before["target"], before["anchor"])  # the original: striped vs style-free x0
    gap_after = mse(after["target"], before["anchor"])
    assert gap_after < 0.6 * gap_before, (gap_before, gap_after)
    # Generalisation: the paraphrase template, never trained on, moves towards the anchor domain too.
    assert mse(after["paraphrase"], before["anchor"]) < 0.8 * mse(before["paraphrase"], before["anchor"])
    # Another style's outputs change far less than the erased style's.
    assert mse(after["retain"], before["retain"]) < 0.25 * mse(after["target"], before["target"])
    assert all(".attn2.to_k." in k or ".attn2.to_v." in k for k in edit.tensors)
    assert edit.extra["prediction_type"] == "v_prediction"


# ----------------------------------------------------------------------------- several processes
MP_SCRIPT = """
import sys
import erasure.methods.doco  # registers "doco"
from erasure import ErasureRequest, erase
from erasure.pipelines import load_pipeline

request = ErasureRequest(["a cat"], kind="object", anchor="a dog")
erase(load_pipeline(sys.argv[1], device="cpu"), request, "doco", out=sys.argv[2], **CONFIG)
"""


@pytest.mark.timeout(1200)
def test_two_processes_train_data_parallel(tiny_sd, tmp_path):
    from test_multiprocess import launch

    # 5 anchor images over 2 processes: 3 + 2 (padded), gathered; 4 steps with surgery from step 2.
    config = {**TINY, "steps": 4, "warmup_steps": 2, "batch_size": 1, "anchor_images": 5}
    script = tmp_path / "doco.py"
    script.write_text(MP_SCRIPT.replace("**CONFIG", "**" + repr(config)))
    run = tmp_path / "run"
    done = launch(script, tiny_sd.folder, run)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["cost"]["num_processes"] == 2 and manifest["extra"]["global_batch_size"] == 2
    assert manifest["extra"]["anchor_images"] == 5 and manifest["extra"]["history"]["conflicts"]["steps"] == 2
    edit = Edit.load(run)  # both processes ended with the same weights (TrainLoop.finish checks it)
    assert edit.tensors and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in edit.tensors)
