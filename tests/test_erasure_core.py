"""The erasure core: requests, method configs, the registry, diffusion arithmetic, parameter selection."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from erasure.errors import ErasureInputError
from erasure.methods import available_methods, get_method
from erasure.request import ErasureRequest

# ----------------------------------------------------------------------------- request


def test_request_validation():
    with pytest.raises(ErasureInputError, match="empty concept"):
        ErasureRequest(targets=["  "])
    with pytest.raises(ErasureInputError, match="no target concept"):
        ErasureRequest(targets=[])
    with pytest.raises(ErasureInputError, match="unknown kind"):
        ErasureRequest(targets=["x"], kind="colour")
    with pytest.raises(ErasureInputError, match="unknown request field"):
        ErasureRequest.from_dict({"targets": ["x"], "targtes": 1})
    req = ErasureRequest(targets="van gogh", kind="style")
    assert req.targets == ["van gogh"]
    assert ErasureRequest.from_dict(json.loads(json.dumps(req.to_dict()))) == req


def test_request_defaults_canvas_mini():
    from erasure.pipelines.canvas.render import OBJECTS, STYLES, TEMPLATES

    req = ErasureRequest(targets=["dotted"], kind="style").resolve("canvas-mini")
    assert req.prompts == ["dotted style"] and req.anchor == "a painting"
    assert len(req.retain) == (len(STYLES) - 1) * len(OBJECTS) and not any("dotted" in p for p in req.retain)
    assert "a star in striped style" in req.retain
    assert len(req.paraphrases) == (len(TEMPLATES) - 1) * len(OBJECTS) and all("dotted" in p for p in req.paraphrases)
    assert ErasureRequest(targets=["dotted style"], kind="style").resolve("canvas-mini").prompts == ["dotted style"]
    obj = ErasureRequest(targets=["a star"], kind="object").resolve("canvas-mini")
    assert obj.prompts == ["a star"] and not any("star" in p for p in obj.retain)
    with pytest.raises(ErasureInputError, match="canvas-mini has no style 'cubist'"):
        ErasureRequest(targets=["cubist"], kind="style").resolve("canvas-mini")


def test_request_defaults_stable_diffusion():
    req = ErasureRequest(targets=["cat"], kind="object", retain=None).resolve("stable-diffusion")
    assert req.prompts == ["cat"]
    assert "a photo of a dog" in req.retain and "a photo of a cat" not in req.retain
    assert "a photo of a cat" in req.paraphrases
    nudity = ErasureRequest(targets=["nudity"], kind="nudity").resolve("stable-diffusion")
    assert nudity.anchor == "a person wearing clothes"
    kept = ErasureRequest(targets=["x"], retain=["a tree"], anchor="").resolve("stable-diffusion")
    assert kept.retain == ["a tree"] and kept.anchor == ""


# ----------------------------------------------------------------------------- configs and registry


def test_config_round_trips_through_json_and_yaml(tmp_path):
    cls = get_method("esd").config_class
    cfg = cls(variant="esd-u", steps=7, lr=3e-5, parameters=[r"attn1\.to_q"], resolution=64)
    assert cls.from_json(cfg.to_json()) == cfg
    assert cls.from_yaml(cfg.to_yaml()) == cfg
    cfg.to_yaml(tmp_path / "c.yaml")
    cfg.to_json(tmp_path / "c.json")
    assert cls.load(tmp_path / "c.yaml") == cfg == cls.load(tmp_path / "c.json")
    assert json.loads(cfg.to_json())["method"] == "esd"
    assert cls.from_dict({"lr": 1}).lr == 1.0  # ints are numbers too


def test_config_refuses_unknown_keys_and_bad_values(tmp_path):
    cls = get_method("esd").config_class
    with pytest.raises(ErasureInputError, match="unknown esd config key.*stepz"):
        cls.from_dict({"stepz": 3})
    with pytest.raises(ErasureInputError, match="steps: expected an integer"):
        cls.from_dict({"steps": "many"})
    with pytest.raises(ErasureInputError, match="variant"):
        cls.from_dict({"variant": "esd-z"})
    with pytest.raises(ErasureInputError, match="config is for method 'doco'"):
        cls.from_dict({"method": "doco"})
    with pytest.raises(ErasureInputError, match="steps: must be at least 1"):
        cls().with_overrides(steps=0)
    assert cls().with_overrides(steps=5, lr=None).steps == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1\n")
    with pytest.raises(ErasureInputError, match="malformed YAML"):
        cls.load(bad)


def test_shipped_presets_load():
    from pathlib import Path

    cls = get_method("esd").config_class
    presets = sorted((Path(__file__).parent.parent / "configs" / "esd").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"canvas-mini-style", "canvas-mini-object", "sd15-nudity", "sd15-style"}
    for p in presets:
        cls.load(p)
    assert cls.load(presets[0].parent / "sd15-nudity.yaml").variant == "esd-u"


def test_registry():
    from erasure.methods import ErasureMethod, MethodConfig, register, register_lazy
    from erasure.methods import registry as reg

    assert "esd" in available_methods()
    with pytest.raises(ErasureInputError, match="unknown method 'nope'; available: .*esd"):
        get_method("nope")

    from dataclasses import dataclass

    @dataclass
    class ToyConfig(MethodConfig):
        strength: float = 1.0

    try:
        @register("toy")
        class Toy(ErasureMethod):
            config_class = ToyConfig

            def __call__(self, pipe, request, *, run_dir=None, resume=False, progress=None):
                return self.config.strength

        assert get_method("toy") is Toy and Toy.name == "toy"
        assert Toy(strength=2)(None, None) == 2.0
        register_lazy("toy-lazy", "erasure.methods.esd:ESD")
        esd = get_method("toy-lazy")
        assert esd.__name__ == "ESD" and esd.name == "esd" and esd.config_class.method == "esd"  # an alias renames nothing
        with pytest.raises(ValueError, match="module:Class"):
            register_lazy("bad", "no-colon")
    finally:
        reg.METHODS.entries.pop("toy", None)
        reg.METHODS.entries.pop("toy-lazy", None)


def test_methods_import_lazily():
    code = (
        "import sys, erasure.methods as m\n"
        "assert 'erasure.methods.esd' not in sys.modules and 'torch' not in sys.modules\n"
        "m.get_method('esd')\n"
        "assert 'erasure.methods.esd' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- diffusion arithmetic


def test_noising_and_estimates_on_hand_made_tensors():
    from erasure.diffusion import add_noise, cfg, eps_from_output, velocity, x0_from_output

    ac = torch.tensor([0.64, 0.36])  # sqrt: 0.8 / 0.6 and 0.6 / 0.8
    x0 = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    noise = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    t = torch.tensor([0, 1])
    x_t = add_noise(ac, x0, noise, t)
    assert torch.allclose(x_t, torch.tensor([[0.8 + 0.3, 1.6 - 0.6], [-0.6 + 1.6, 0.3]]))
    v = velocity(ac, x0, noise, t)
    assert torch.allclose(v, torch.tensor([[0.4 - 0.6, -0.8 - 1.2], [1.2 + 0.8, -0.4]]))
    for kind, output in (("epsilon", noise), ("v_prediction", v), ("sample", x0)):
        assert torch.allclose(x0_from_output(ac, output, x_t, t, kind), x0, atol=1e-6), kind
        assert torch.allclose(eps_from_output(ac, output, x_t, t, kind), noise, atol=1e-6), kind
    assert torch.allclose(cfg(torch.zeros(2), torch.ones(2), 3.0), torch.full((2,), 3.0))
    assert torch.allclose(cfg(torch.zeros(2), torch.ones(2), -1.0), torch.full((2,), -1.0))


def test_noising_matches_diffusers():
    from diffusers import DDPMScheduler

    from erasure.diffusion import add_noise, alphas_cumprod, velocity

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ac = alphas_cumprod(sched)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([1, 500, 999])
    assert torch.allclose(add_noise(ac, x0, noise, t), sched.add_noise(x0, noise, t), atol=1e-5)
    assert torch.allclose(velocity(ac, x0, noise, t), sched.get_velocity(x0, noise, t), atol=1e-5)


def test_the_ddim_sampler_clips_x0_only_when_the_pipeline_scheduler_does():
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from erasure.diffusion import ddim_for

    assert ddim_for(EulerDiscreteScheduler(), 10).config.clip_sample is False  # no such key: latents unclipped
    assert ddim_for(DDIMScheduler(clip_sample=True), 10).config.clip_sample is True
    ddim = ddim_for(EulerDiscreteScheduler(prediction_type="v_prediction"), 10)
    assert ddim.config.prediction_type == "v_prediction" and len(ddim.timesteps) == 10


def test_partial_trajectories_do_not_depend_on_batching(tiny_sd_loaded):
    from erasure.diffusion import TextConditioner, ddim_for, initial_noise, latent_shape, sample_partial_trajectories

    pipe = tiny_sd_loaded
    ddim = ddim_for(pipe.scheduler, 4)
    encode = TextConditioner(pipe, 32)
    with torch.no_grad():
        cond, uncond = encode(["a cat", "a dog", "a cat"]), encode([""])
    shape = latent_shape(pipe)
    assert shape == (4, 16, 16)
    depths, seeds = [0, 2, 4], [11, 12, 13]
    together = sample_partial_trajectories(pipe.unet, ddim, cond, uncond, depths, seeds, shape, 3.0)
    for i in range(3):
        alone = sample_partial_trajectories(pipe.unet, ddim, cond.index([i]), uncond, depths[i:i + 1], seeds[i:i + 1],
                                            shape, 3.0)
        assert torch.allclose(together[i], alone[0], atol=1e-5)
    # depth 0: the starting noise itself; deeper samples moved away from theirs
    start = initial_noise(seeds, shape, "cpu", torch.float32)
    assert torch.equal(together[0], start[0]) and not torch.allclose(together[2], start[2])


@torch.no_grad()
def held_batch_trajectories(unet, ddim, cond, uncond, depths, seeds, shape, guidance):
    """The sampler before issue 29, kept as the oracle: every sample runs to the batch's deepest
    depth and finished ones are held fixed."""
    from erasure.diffusion import Conditions, cfg, initial_noise, unet_output

    n = len(depths)
    if len(uncond) == 1 and n > 1:
        uncond = uncond.index([0] * n)
    x = initial_noise(seeds, shape, unet.device, cond.hidden.dtype) * ddim.init_noise_sigma
    depth = torch.as_tensor(list(depths), device=unet.device)
    both = Conditions.cat([uncond, cond])
    for i, t in enumerate(ddim.timesteps[: int(depth.max().item())]):
        out_u, out_c = unet_output(unet, ddim.scale_model_input(torch.cat([x, x]), t), t, both).chunk(2)
        stepped = ddim.step(cfg(out_u, out_c, guidance), t, x, eta=0.0, return_dict=False)[0]
        x = torch.where((depth > i).reshape(-1, 1, 1, 1), stepped.to(x.dtype), x)
    return x


@pytest.mark.parametrize("model", ["tiny-sd", "canvas-mini"])
def test_active_only_sampler_equals_the_held_batch_sampler_and_counts_its_steps(request, model):
    from erasure.diffusion import SampleSteps, TextConditioner, ddim_for, latent_shape, sample_partial_trajectories
    from erasure.pipelines import load_pipeline

    pipe = request.getfixturevalue("tiny_sd_loaded") if model == "tiny-sd" else load_pipeline("canvas-mini")
    ddim = ddim_for(pipe.scheduler, 8)
    with torch.no_grad():
        encode = TextConditioner(pipe, 32)
        cond, uncond = encode(["a cat", "a dog", "a cat", "a bird", "a cat"]), encode([""])
    shape = latent_shape(pipe)
    depths, seeds = [3, 0, 7, 3, 1], [21, 22, 23, 24, 25]  # unsorted, with a tie and a depth 0
    counter = SampleSteps()
    active = sample_partial_trajectories(pipe.unet, ddim, cond, uncond, depths, seeds, shape, 3.0, counter)
    held = held_batch_trajectories(pipe.unet, ddim, cond, uncond, depths, seeds, shape, 3.0)
    assert torch.allclose(active, held, atol=1e-5)
    # one sample-step per sample per step it takes, not the batch's deepest depth for every sample
    assert counter.executed == counter.needed == counter.independent == sum(depths) == 14
    assert counter.held == 5 * 7 and counter.unet_calls == 7 and counter.points == counter.trajectories == 5


def test_several_depths_of_one_trajectory_equal_separate_trajectories(tiny_sd_loaded):
    from erasure.diffusion import (
        SampleSteps,
        TextConditioner,
        ddim_for,
        latent_shape,
        sample_partial_trajectories,
        sample_trajectory_points,
    )

    pipe = tiny_sd_loaded
    ddim = ddim_for(pipe.scheduler, 6)
    with torch.no_grad():
        cond, uncond = TextConditioner(pipe, 32)(["a cat", "a dog"]), TextConditioner(pipe, 32)([""])
    shape = latent_shape(pipe)
    points = [(0, 2), (1, 4), (0, 5), (0, 0), (1, 1)]  # (trajectory, depth)
    counter = SampleSteps()
    shared = sample_trajectory_points(pipe.unet, ddim, cond, uncond, [7, 8], points, shape, 3.0, counter)
    separate = sample_partial_trajectories(pipe.unet, ddim, cond.index([j for j, _ in points]), uncond,
                                           [d for _, d in points], [[7, 8][j] for j, _ in points], shape, 3.0)
    assert torch.allclose(shared, separate, atol=1e-5)
    assert (counter.executed, counter.needed, counter.independent, counter.trajectories) == (9, 9, 12, 2)


def _plan(trajectories: str, steps: int = 100, ddim_steps: int = 50, seed: int = 0, prompts: int = 1):
    from diffusers import DDIMScheduler

    from erasure.diffusion import ddim_for
    from erasure.methods.esd import ESD, ESDConfig

    esd = ESD(ESDConfig(steps=steps, ddim_steps=ddim_steps, seed=seed, trajectories=trajectories))
    return esd.plan(prompts, ddim_for(DDIMScheduler(), ddim_steps), 1000)


def test_shared_trajectories_use_each_trajectory_depth_once_and_are_deterministic():
    from erasure.sampling import trajectory_of

    per_step, shared = _plan("per-step", prompts=3), _plan("shared", prompts=3)
    # the plan's prompts, depths and timesteps are kept; only the noise seeds change
    assert [(p.prompt, p.depth, p.timestep) for p in shared] == [(p.prompt, p.depth, p.timestep) for p in per_step]
    used = [(*trajectory_of(p), p.depth) for p in shared]
    assert len(set(used)) == len(used) == 100  # each (trajectory, depth) once
    assert len({trajectory_of(p) for p in shared}) < 25 < len({trajectory_of(p) for p in per_step}) == 100
    assert _plan("shared", prompts=3) == shared and _plan("shared", prompts=3, seed=1) != shared
    # consecutive iterations do not walk down one trajectory
    assert len({trajectory_of(p) for p in shared[:10]}) >= 4


class _ZeroUNet(torch.nn.Module):
    """A stand-in UNet (predicts zero noise) for counting the sampler's steps without the cost of one."""

    device = torch.device("cpu")

    def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
        return (torch.zeros_like(x),)


@pytest.mark.parametrize("trajectories", ["per-step", "shared"])
def test_sample_steps_of_a_100_iteration_plan(trajectories):
    """ESD's plan for 100 iterations, 50 DDIM steps, precomputed in batches of 16 as ESD does: the
    held-batch sampler ran ~1.2x the needed sample-steps; now executed == needed, and shared
    trajectories need several times fewer than per-step ones."""
    from diffusers import DDIMScheduler

    from erasure.diffusion import Conditions, SampleSteps, alphas_cumprod, ddim_for
    from erasure.sampling import SampleStore, frozen_predictions, trajectory_of

    plan, ddim = _plan(trajectories), ddim_for(DDIMScheduler(), 50)
    counter, cond = SampleSteps(), Conditions(torch.zeros(1, 2, 4))
    ac = alphas_cumprod(ddim)

    def compute(ids):
        return frozen_predictions(_ZeroUNet(), ddim, cond, cond, [plan[i] for i in ids], (1, 2, 2), 3.0, ac,
                                  "epsilon", counter=counter, batch_size=16)

    store = SampleStore.compute(range(100), compute, ("x_t",), batch_size=16, key=lambda i: plan[i].depth,
                                group=lambda i: trajectory_of(plan[i]))
    assert sorted(store.ids) == list(range(100)) and store.data["x_t"].shape == (100, 1, 2, 2)
    assert counter.points == 100 and counter.executed == counter.needed
    assert counter.independent == sum(p.depth for p in plan)
    if trajectories == "per-step":
        assert counter.needed == counter.independent and counter.held > 1.1 * counter.needed
    else:
        assert counter.independent > 6 * counter.executed


# ----------------------------------------------------------------------------- parameters


def test_parameter_selection_and_frozen_copy(tiny_sd_loaded):
    from erasure.training import FrozenCopy, select_parameters

    unet = tiny_sd_loaded.unet
    attn2 = select_parameters(unet, "attn2")
    rest = select_parameters(unet, "non-attn2")
    assert attn2 and all(".attn2." in n for n in attn2)
    assert rest and not any("attn2" in n for n in rest)
    assert not any("norm" in n for n in rest)  # Linear/Conv2d weights only, as the ESD reference
    assert "conv_in.weight" in rest and "time_embedding.linear_1.weight" in rest
    assert set(select_parameters(unet, "attn2-kv")) < set(attn2)
    assert all("ff.net" in n for n in select_parameters(unet, "ffn"))
    assert set(select_parameters(unet, [r"attn2\.to_q"])) == {n for n in attn2 if "to_q" in n}
    with pytest.raises(ErasureInputError, match="unknown parameter set"):
        select_parameters(unet, "attn3")
    with pytest.raises(ErasureInputError, match="matches no parameter"):
        select_parameters(unet, ["nothing-like-this"])
    te = select_parameters(tiny_sd_loaded.text_encoder, "text-encoder-layers")
    assert te and not any("embeddings" in n for n in te)

    name = next(iter(attn2))
    param = attn2[name]
    frozen = FrozenCopy({name: param}, device="cpu")
    original = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)
    assert set(frozen.changed()) == {name}
    with frozen.original():
        assert torch.equal(param, original)
    assert torch.equal(param, original + 1.0)
    frozen.restore()
    assert torch.equal(param, original) and not frozen.changed()


def test_exponent_floats_without_a_dot_are_numbers():
    # YAML 1.1 (PyYAML) reads "1e-3" as a string; configs and --set must read it as the number people mean.
    from erasure.config import parse_assignments
    from erasure.methods import get_method
    from erasure.methods.base import load_yaml

    assert parse_assignments(["lr=1e-3", "seed=3", "name=1e3x"]) == {"lr": 1e-3, "seed": 3, "name": "1e3x"}
    assert load_yaml("lr: -2E+4\nsteps: 10\nlrs: [1e-2, 0.5]") == {"lr": -2e4, "steps": 10, "lrs": [1e-2, 0.5]}
    config = get_method("esd").config_class.from_yaml("lr: 1e-5\nsteps: 7\n")
    assert (config.lr, config.steps) == (1e-5, 7)


def test_config_values_read_as_yaml_1_2():
    """--set and config files: "1e-5" is a number and yes/no/on/off are texts (YAML 1.1 made
    `mixed_precision=no` a boolean, which the config then refused); booleans are true/false."""
    from erasure.api import method_config
    from erasure.config import parse_assignments
    from erasure.methods.base import load_yaml

    assert load_yaml("a: no\nb: on\nc: true\nd: False\ne: 1e-5") == {"a": "no", "b": "on", "c": True, "d": False,
                                                                   "e": 1e-5}
    overrides = parse_assignments(["mixed_precision=no", "gradient_checkpointing=true"])
    config = method_config("esd", None, **overrides)
    assert config.mixed_precision == "no" and config.gradient_checkpointing is True
