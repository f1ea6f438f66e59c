"""The attack registry (erasure.attacks) and UnlearnDiffAtk: registry and configs, the pieces of the
attack (simplex projection, timestep blocks, the straight-through draw), end to end on a tiny SD
pipeline with its budget honoured, the concept brought back from a model with nothing erased, the
canvas suite's attacks, and `erasure attack` / `erasure attacks` (and their refusals)."""

from __future__ import annotations

import json

import pytest
import torch

from erasure import ErasureRequest, erase
from erasure.attacks import Attack, AttackConfig, attack_success, available_attacks, get_attack, load_attack
from erasure.attacks.unlearndiffatk import UnlearnDiffAtkConfig, _DrawOneHot, block_timesteps, project_to_simplex
from erasure.cli import main
from erasure.errors import ErasureInputError
from erasure.pipelines import load_pipeline


def test_registry_names_configs_and_refusals():
    assert {"concept-inversion", "ring-a-bell", "soft-prompt", "unlearndiffatk"} <= set(available_attacks())
    for name in ("concept-inversion", "ring-a-bell", "soft-prompt", "unlearndiffatk"):
        cls = get_attack(name)
        assert issubclass(cls, Attack) and issubclass(cls.config_class, AttackConfig) and cls.name == name
        config = cls.config_class()
        assert type(config).from_yaml(config.to_yaml()) == config  # configs round-trip
    cfg = UnlearnDiffAtkConfig(steps=80, tokens=3, target_images=None)
    assert UnlearnDiffAtkConfig.from_yaml(cfg.to_yaml()) == cfg and "method: unlearndiffatk" in cfg.to_yaml()
    for call, match in ((lambda: get_attack("p4d"), "unknown attack 'p4d'; available: concept-inversion, ring-a-bell, soft-prompt, unlearndiffatk"),
                        (lambda: load_attack("unlearndiffatk", stepz=3), "unknown unlearndiffatk config key"),
                        (lambda: load_attack("unlearndiffatk", steps=0), "steps: must be at least 1"),
                        (lambda: load_attack("unlearndiffatk", lr=-1.0), "lr: must be positive"),
                        (lambda: load_attack("unlearndiffatk", target_images="/no/such/folder"), "not a folder"),
                        (lambda: load_attack("soft-prompt", init="latest"), "starts from random tokens"),
                        (lambda: load_attack("soft-prompt", placement="middle"), "placement"),
                        (lambda: load_attack("ring-a-bell", population=2), "population: must be at least 4"),
                        (lambda: load_attack("ring-a-bell", kind="painting"), "kind")):
        with pytest.raises(ErasureInputError, match=match):
            call()


def test_simplex_projection_and_timestep_blocks():
    allowed = torch.tensor([[True, True, True, False]])
    p = project_to_simplex(torch.tensor([[0.5, 0.5, 0.5, 0.9]]), allowed)
    assert torch.allclose(p, torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0]]), atol=1e-5)  # shifted by mu = 1/6; masked: 0
    rows = project_to_simplex(torch.randn(3, 50) * 2, torch.ones(3, 50, dtype=torch.bool))
    assert torch.allclose(rows.sum(-1), torch.ones(3), atol=1e-4) and rows.min() >= 0 and rows.max() <= 1
    already = torch.tensor([[0.2, 0.8]])
    assert torch.equal(project_to_simplex(already, torch.ones(1, 2, dtype=torch.bool)), already)
    # the reference's 50 x 40 on SD's 1,000 steps: t = 10, 30, ..., 990
    assert block_timesteps(2000, 40, 1000) == [(10 + 20 * j, 40) for j in range(50)]
    assert block_timesteps(100, 40, 1000) == [(166, 40), (500, 40), (833, 20)]
    assert block_timesteps(5, 40, 1000) == [(500, 5)]


def test_the_draw_is_one_hot_and_passes_a_clipped_gradient():
    probs = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    one_hot = _DrawOneHot.apply(probs, torch.Generator().manual_seed(0))
    assert torch.equal(one_hot, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    (one_hot * torch.tensor([[3.0, -0.5, -7.0], [0.2, 2.0, -2.0]])).sum().backward()
    assert torch.equal(probs.grad, torch.tensor([[1.0, -0.5, -1.0], [0.2, 1.0, -1.0]]))


def test_unlearndiffatk_end_to_end_on_a_tiny_pipeline_within_its_budget(tiny_sd):
    pipe = load_pipeline(tiny_sd.folder, device="cpu")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    attack = load_attack("unlearndiffatk", steps=7, iterations=3, tokens=2, target_steps=2, sample_steps=2, images=2,
                         selection_points=2)
    steps = []
    result = attack(pipe, pipe, "a cat", seed=5, progress=lambda done, total: steps.append((done, total)))
    assert len(result.losses) == 7 and steps[-1] == (7, 7) and len(steps) == 7  # the budget, step by step
    assert result.budget == {"steps": 7, "timesteps": 3, "candidates": len(result.details["candidates"])}
    assert result.prompt.endswith(" a cat") and len(result.prompt) > len(" a cat")  # text, the tokens in front
    assert result.prompt_embeds is None and len(result.images) == 2 and result.images[0].size == (32, 32)
    special = {pipe.tokenizer.bos_token, pipe.tokenizer.eos_token, pipe.tokenizer.pad_token}
    assert not any(tok in result.prompt for tok in special if tok)
    assert result.seconds > 0 and result.config["steps"] == 7
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())  # the model is left alone
    assert attack(pipe, pipe, "a cat", seed=5, budget=4).budget["steps"] == 4  # budget= overrides steps
    again = attack(pipe, pipe, "a cat", seed=5)
    assert again.prompt == result.prompt and again.losses == result.losses  # the seed decides everything
    with pytest.raises(ErasureInputError, match="concept prompt is empty"):
        attack(pipe, pipe, "  ", seed=0)


def test_unlearndiffatk_reads_a_users_target_images(tiny_sd, tmp_path):
    from erasure.pipelines import generate

    pipe = load_pipeline(tiny_sd.folder, device="cpu")
    generate(pipe, "a cat", seeds=[1], steps=2)[0].save(tmp_path / "cat.png")
    (tmp_path / "notes.txt").write_text("not an image")
    attack = load_attack("unlearndiffatk", steps=2, iterations=2, tokens=1, sample_steps=2, target_images=str(tmp_path))
    result = attack(pipe, pipe, "a cat", seed=3)
    assert result.details["target"].endswith("cat.png") and len(result.losses) == 2
    (tmp_path / "cat.png").unlink()
    with pytest.raises(ErasureInputError, match="no .png"):
        load_attack("unlearndiffatk", target_images=str(tmp_path))


def test_unlearndiffatk_brings_the_concept_back_from_a_model_with_nothing_erased():
    """On canvas-mini as it ships, the attacked prompt still names the concept and the attack keeps it:
    the evaluator sees dotted in the attacked images of at least 3 of 4 seeds."""
    from erasure.families import family_named

    canvas = load_pipeline("canvas-mini")
    attack = load_attack("unlearndiffatk", steps=40, iterations=20, tokens=3, guidance=3.0, target_steps=10,
                         sample_steps=10)
    out = attack_success(attack, canvas, canvas, "dotted style", family_named("canvas-mini").judge("style", "dotted"),
                         seeds=[0, 1, 2, 3])
    assert out["asr"] >= 0.75, out
    assert all(r["prompt"].endswith("dotted style") and r["budget"]["steps"] == 40 for r in out["per_seed"])


def test_concept_inversion_learns_a_word_that_diffusers_loads(tiny_sd, tmp_path):
    pipe = load_pipeline(tiny_sd.folder, device="cpu")
    attack = load_attack("concept-inversion", steps=3, batch_size=2, accumulation=2, images_count=3, image_steps=2,
                         sample_steps=2, learnable_property="object", initializer="cat")
    steps = []
    result = attack(pipe, pipe, "a cat", seed=1, progress=lambda done, total: steps.append(done))
    assert len(result.losses) == 3 and steps == [1, 2, 3] and result.budget == {"steps": 3, "images_seen": 12}
    assert result.details["generation_prompt"] == "a photo of a <concept>" and result.prompt is None
    token = result.learned["<concept>"]
    init = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer("cat").input_ids[1]]
    assert token.shape == (1, init.shape[0]) and not torch.equal(token[0], init)  # it moved from "cat"
    record = result.save(tmp_path, "ci")
    # the learned word in diffusers' textual-inversion format: any pipeline of this text encoder loads it
    fresh = load_pipeline(tiny_sd.folder, device="cpu")
    fresh.load_textual_inversion(str(tmp_path / record["files"]["learned"]), token="<concept>")
    row = fresh.tokenizer.convert_tokens_to_ids("<concept>")
    assert torch.allclose(fresh.text_encoder.get_input_embeddings().weight[row], token[0])
    from erasure.diffusion import TextConditioner

    ours = TextConditioner(fresh, 32)(["a photo of a <concept>"]).hidden
    assert torch.allclose(ours, result.prompt_embeds, atol=1e-5)  # the saved prompt embeddings are that prompt's
    for bad, match in (({"initializer": "a cat"}, "is 2 tokens"), ({"templates": ["no slot"]}, "exactly one"),
                       ({"learnable_property": "person"}, "learnable_property")):
        with pytest.raises(ErasureInputError, match=match):
            load_attack("concept-inversion", steps=1, **bad)(pipe, pipe, "a cat", seed=0)


def test_concept_inversion_brings_the_concept_back_from_a_model_with_nothing_erased():
    """Learned on 8 of canvas-mini's own dotted images, the word draws dotted again in canvas-mini's
    caption ("a circle in <concept> style") on at least 3 of 4 seeds."""
    from erasure.families import family_named

    canvas = load_pipeline("canvas-mini")
    attack = load_attack("concept-inversion", steps=40, accumulation=1, images_count=8, image_steps=10, sample_steps=10,
                         guidance=3.0)
    out = attack_success(attack, canvas, canvas, "dotted style", family_named("canvas-mini").judge("style", "dotted"),
                         seeds=[0, 1, 2, 3])
    assert out["asr"] >= 0.75, out


def test_ring_a_bell_searches_the_original_text_encoder_only(tiny_sd):
    from erasure.attacks.ring_a_bell import RingABell

    pipe = load_pipeline(tiny_sd.folder, device="cpu")
    attack = load_attack("ring-a-bell", steps=4, population=8, length=5, sample_steps=2)
    steps = []
    result = attack(pipe, pipe, "a cat", seed=2, progress=lambda done, total: steps.append(done))
    assert steps == [1, 2, 3, 4] and len(result.losses) == 4 and result.budget == {"steps": 4, "population": 8}
    assert all(a >= b for a, b in zip(result.losses, result.losses[1:]))  # the best half survives: never worse
    assert result.prompt and result.prompt_embeds is None and len(result.images) == 1
    special = [t for t in (pipe.tokenizer.bos_token, pipe.tokenizer.eos_token) if t]
    assert not any(t in result.prompt for t in special)
    # generic pairs: the family's ordinary prompts without and with ", a cat"; the base prompt is one of them
    with_concept, without = RingABell.pairs(pipe, "a cat", "custom")
    assert with_concept == [f"{p}, a cat" for p in without] and result.details["base_prompt"] in without
    # the erased model is never queried: another model gets the same prompt (searched once, reused)
    other = erased_like(tiny_sd)
    again = attack(other, pipe, "a cat", seed=2)
    assert again.prompt == result.prompt and len(attack._found) == 1
    with pytest.raises(ErasureInputError, match="do not fit"):
        load_attack("ring-a-bell", steps=1, length=100)(pipe, pipe, "a cat", seed=0)


def erased_like(tiny_sd):
    pipe = load_pipeline(tiny_sd.folder, device="cpu")
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.mul_(0.5)
    return pipe


def test_ring_a_bell_brings_the_concept_back_from_a_model_with_nothing_erased():
    """Token soup found in canvas-mini's text space (its captions with and without "dotted") draws
    dotted on at least 3 of 4 seeds."""
    from erasure.families import family_named

    canvas = load_pipeline("canvas-mini")
    attack = load_attack("ring-a-bell", steps=30, population=48, guidance=3.0, kind="style", sample_steps=10)
    out = attack_success(attack, canvas, canvas, "dotted style", family_named("canvas-mini").judge("style", "dotted"),
                         seeds=[0, 1, 2, 3])
    assert out["asr"] >= 0.75, out


@pytest.fixture(scope="module")
def canvas_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "dotted"
    erase(load_pipeline("canvas-mini"), ErasureRequest(["dotted"], kind="style"), "esd", out=run,
          steps=2, ddim_steps=6, precompute_batch=8, checkpoint_every=0)
    return run


def test_cli_attack_writes_prompts_images_and_a_report(canvas_run, tmp_path, capsys):
    out = tmp_path / "attack"
    with pytest.raises(SystemExit) as exc:
        main(["attack", str(canvas_run), "--out", str(out), "--budget", "3", "--seeds", "0,1",
              "--set", "tokens=2", "--set", "iterations=3", "--set", "sample_steps=3", "--set", "target_steps=3"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "seed 0: " in printed and "dotted style" in printed and "attack success" in printed
    summary = json.loads((out / "attack.json").read_text())
    assert summary["attack"] == "unlearndiffatk" and summary["concept"] == "dotted" and summary["prompt"] == "dotted style"
    assert summary["config"]["steps"] == 3 and summary["config"]["guidance"] == 3.0  # canvas-mini's guidance
    assert summary["original"] == "canvas-mini" and summary["seeds"] == [0, 1] and 0 <= summary["asr"] <= 1
    for r in summary["per_seed"]:
        assert (out / r["files"]["prompt"]).read_text().strip() == r["prompt"]
        assert all((out / f).is_file() for f in r["files"]["images"]) and r["recognised"] in (True, False)
    assert (out / "grid.png").is_file() and "| seed | adversarial prompt |" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--attack", "p4d"], "unknown attack 'p4d'"),
    (["--set", "stepz=2"], "unknown unlearndiffatk config key"),
    (["--budget", "0"], "--budget"),
    (["--seeds", "x"], "seeds"),
])
def test_cli_attack_refuses_bad_input_in_one_line_before_work(canvas_run, tmp_path, capsys, args, message):
    out = tmp_path / "attack"
    capsys.readouterr()  # the fixture's loading bars
    with pytest.raises(SystemExit) as exc:
        main(["attack", str(canvas_run), "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_cli_attack_refuses_a_missing_run_and_a_used_folder(canvas_run, tmp_path, capsys):
    capsys.readouterr()  # the fixture's loading bars
    for run, out, message in ((tmp_path / "missing", tmp_path / "a", "missing"), (canvas_run, canvas_run.parent, "not empty")):
        with pytest.raises(SystemExit) as exc:
            main(["attack", str(run), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_a_runs_attack_takes_the_models_guidance_and_the_concepts_kind(canvas_run, tmp_path):
    from erasure.evaluation.attack_run import check_attack_run

    _, attack = check_attack_run(canvas_run, "concept-inversion", {}, tmp_path / "a")
    assert attack.config.guidance == 3.0 and attack.config.learnable_property == "style"
    _, attack = check_attack_run(canvas_run, "concept-inversion", {"guidance": 5.0, "learnable_property": "object"},
                                 tmp_path / "a")
    assert attack.config.guidance == 5.0 and attack.config.learnable_property == "object"  # what the user says wins
    assert check_attack_run(canvas_run, "ring-a-bell", {}, tmp_path / "a")[1].config.kind == "style"


def test_cli_lists_the_attacks(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        main(["attacks"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "unlearndiffatk" in printed and "soft-prompt" in printed and "iterations (40)" in printed


def test_canvas_suite_runs_registry_attacks_and_the_cli_names_them(canvas_run, tmp_path, capsys):
    from erasure.evaluation import SamplingSettings, evaluate_runs

    args = dict(attacks=["unlearndiffatk"], attack_seeds=[7],
                attack_configs={"unlearndiffatk": {"steps": 2, "iterations": 2, "tokens": 1, "target_steps": 2}})
    metrics = evaluate_runs("canvas-mini", [canvas_run], out=tmp_path / "e", suite_args=args,
                            settings=SamplingSettings(steps=2, guidance=3.0, seeds=[0], batch_size=64))
    (run,) = metrics["runs"]
    record = run["robustness"]["attacks"]["unlearndiffatk"]
    assert record["concept"] == "dotted" and record["after"]["attack"]["steps"] == 2
    assert record["after"]["sampling"] == {"steps": 2, "guidance": 3.0, "scheduler": "ddim"}  # the evaluation's
    for side in ("before", "after"):
        assert run[side]["unlearndiffatk_success_rate"] == record[side]["asr"] in (0.0, 1.0)
        assert record[side]["per_seed"][0]["prompt"].endswith("dotted style")
    assert "unlearndiffatk_success_rate" in [c["key"] for c in metrics["columns"]]
    assert "attack" not in run["robustness"]  # soft-prompt was not asked for
    capsys.readouterr()  # the loading bars of the evaluation above
    for argv, message in ((["--suite", "memorization", "--attack", "unlearndiffatk"], "runs no attacks"),
                          (["--attack", "p4d"], "unknown attack 'p4d'"),
                          (["-a", "attack_configs={unlearndiffatk: {steps: 2}}"], "need attacks=")):
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "--erased", str(canvas_run), "--out", str(tmp_path / "bad"), *argv])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- membership inference (PrivLeak)
def test_membership_auc_counts_lower_errors_as_members():
    from erasure.attacks.membership import auc_lower_is_member

    assert auc_lower_is_member(torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4])) == 1.0
    assert auc_lower_is_member(torch.tensor([0.5, 0.6]), torch.tensor([0.3, 0.4])) == 0.0
    assert auc_lower_is_member(torch.tensor([0.1, 0.5]), torch.tensor([0.3])) == 0.5
    assert auc_lower_is_member(torch.tensor([0.3]), torch.tensor([0.3])) == 0.5  # a tie counts half


def test_membership_inference_finds_canvas_minis_memorized_images():
    """canvas-mini memorized its 8 captioned compositions: their denoising errors under their captions are
    below those of compositions it never saw under the same captions (AUC about 1); the same images on
    both sides give exactly 0.5."""
    from erasure.attacks.images import images_x0
    from erasure.attacks.membership import membership_inference
    from erasure.families import family_named
    from erasure.pipelines.canvas.render import render_composition

    pipe = load_pipeline("canvas-mini")
    memorized = family_named("canvas-mini").memorized()
    captions, images = [c for c, _ in memorized], [im for _, im in memorized]
    unseen = [render_composition(190_001 + i) for i in range(8)]
    members = (images_x0(pipe, images), captions)
    result = membership_inference(pipe, members, (images_x0(pipe, unseen), captions), timesteps=3, noises=1)
    assert result["auc"] >= 0.9 and result["privleak"] >= 0.8 and result["member_error"] < result["nonmember_error"], result
    assert len(result["per_timestep_auc"]) == 3 and result["members"] == result["nonmembers"] == 8
    assert membership_inference(pipe, members, members, timesteps=2, noises=1)["auc"] == 0.5


def test_memorization_suite_reports_the_membership_auc(tmp_path):
    from erasure.evaluation import SamplingSettings, evaluate_runs

    run = tmp_path / "memorized"
    erase(load_pipeline("canvas-mini"), ErasureRequest(["the lighthouse keeper's quilt from vera marsh"], kind="memorized"),
          "esd", out=run, steps=2, ddim_steps=4, precompute_batch=8, checkpoint_every=0)
    args = dict(membership=True, membership_nonmembers=8, membership_timesteps=2, membership_noises=1)
    metrics = evaluate_runs("canvas-mini", [run], suite="memorization", out=tmp_path / "e", suite_args=args,
                            settings=SamplingSettings(steps=2, guidance=3.0, seeds=[0], batch_size=64))
    (entry,) = metrics["runs"]
    record = entry["membership"]
    assert record["before"]["auc"] >= 0.9 and record["before"]["nonmembers"] == 8 and record["before"]["timesteps"] == 2
    for side in ("before", "after"):
        assert entry[side]["membership_auc"] == record[side]["auc"] and 0 <= record[side]["auc"] <= 1
        assert entry[side]["privleak"] == pytest.approx((record[side]["auc"] - 0.5) / 0.5)
    assert "membership_auc" in [c["key"] for c in metrics["columns"]]
    assert "membership AUC before" in (tmp_path / "e" / "report.md").read_text()


def test_membership_on_a_users_data_needs_nonmembers(canvas_run, tmp_path, capsys):
    (tmp_path / "train").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "a.png")
    (tmp_path / "captions.tsv").write_text("a.png\ta red square\n")
    capsys.readouterr()  # the fixture's loading bars
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--suite", "memorization", "--erased", str(canvas_run), "--out", str(tmp_path / "e"),
              "-a", f"training_images={tmp_path / 'train'}", "-a", f"captions={tmp_path / 'captions.tsv'}",
              "-a", "threshold=0.5", "-a", "membership=true"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "nonmembers=DIR" in err, err
    assert not (tmp_path / "e").exists()


def test_sfd_generators_are_refused_by_noise_prediction_attacks_and_inverted_through_their_sampler(tmp_path):
    """An SFD run's UNet is a one-step generator: the soft prompt and UnlearnDiffAtk, whose loss is a
    noise-prediction loss, refuse it in one line, which the canvas suite records (n/a); Ring-A-Bell (never
    queries the model) runs, and concept inversion learns its word through the generator's own map at t*
    (the word lowers that loss on the concept's images) and draws with the one-step sampler."""
    import torch.nn.functional as F

    from erasure.attacks.soft_prompt import SoftPrompt, encode_soft_prompt
    from erasure.diffusion import Conditions, add_noise, alphas_cumprod, prediction_type, unet_output, x0_from_output
    from erasure.erased import load_erased
    from erasure.evaluation import SamplingSettings, evaluate_runs
    from erasure.evaluation.attack_run import check_attack_run

    run = tmp_path / "sfd-dotted"
    erase(load_pipeline("canvas-mini"), ErasureRequest(["dotted"], kind="style"), "sfd", out=run,
          steps=2, batch_size=1, guidance=1.0, checkpoint_every=0)
    generator, canvas = load_erased(run, base=load_pipeline("canvas-mini")), load_pipeline("canvas-mini")
    for name in ("soft-prompt", "unlearndiffatk"):
        with pytest.raises(ErasureInputError, match="one-step generator is not a noise predictor"):
            load_attack(name, steps=1)(generator, canvas, "dotted style", seed=0)
        with pytest.raises(ErasureInputError, match="--attack ring-a-bell or concept-inversion"):  # before any model loads
            check_attack_run(run, name, {}, tmp_path / "a")
    for name in ("ring-a-bell", "concept-inversion"):
        assert check_attack_run(run, name, {}, tmp_path / "a")[1].name == name

    attack = load_attack("concept-inversion", steps=8, batch_size=4, accumulation=1, images_count=4, image_steps=5, images=2)
    result = attack(generator, canvas, "dotted style", seed=0)
    t_star = generator.t_star
    assert result.details["loss"] == f"one-step generator's x0 at t = [{t_star}]"
    assert result.details["generation_prompt"] == "a circle in <concept> style"  # canvas-mini's caption, not a painting's
    drawn = generator(prompt_embeds=result.prompt_embeds.expand(2, -1, -1),
                      generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images
    assert [a.tobytes() for a in drawn] == [b.tobytes() for b in result.images]  # the one-step sampler drew them

    x0, _ = attack.images(canvas, "dotted style", attack.config.with_overrides(), 0)
    ac = alphas_cumprod(generator.scheduler, "cpu")
    t = torch.full((len(x0),), t_star)
    x_t = add_noise(ac, x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(7)), t)
    soft = SoftPrompt.in_template(generator.tokenizer, "a circle in {} style")
    init = generator.text_encoder.get_input_embeddings().weight[generator.tokenizer("art").input_ids[1:-1]]

    def loss(token):
        with torch.no_grad():
            hidden = encode_soft_prompt(generator.text_encoder, soft, token).expand(len(x0), -1, -1)
            out = unet_output(generator.unet, x_t, t, Conditions(hidden))
            return float(F.mse_loss(x0_from_output(ac, out, x_t, t, prediction_type(generator.scheduler)), x0))

    assert loss(result.learned["<concept>"]) < loss(init.detach())

    args = dict(attacks=["unlearndiffatk", "ring-a-bell"], attack_seeds=[3],
                attack_configs={"unlearndiffatk": {"steps": 1}, "ring-a-bell": {"steps": 1, "population": 8}})
    metrics = evaluate_runs("canvas-mini", [run], out=tmp_path / "e", suite_args=args,
                            settings=SamplingSettings(steps=2, guidance=3.0, seeds=[0], batch_size=64))
    (entry,) = metrics["runs"]
    refused = entry["robustness"]["attacks"]["unlearndiffatk"]["after"]
    assert "not a noise predictor" in refused["refused"] and entry["after"]["unlearndiffatk_success_rate"] is None
    assert entry["robustness"]["attacks"]["unlearndiffatk"]["before"]["asr"] in (0.0, 1.0)  # the original is attacked
    assert entry["after"]["ring-a-bell_success_rate"] in (0.0, 1.0)
    assert "n/a" in (tmp_path / "e" / "report.md").read_text()
