"""The soft-prompt attack (erasure.attacks): token placement, the embedding hook, the attack lowering
its own loss, its update rules and projection, teacher samples, generation from embeddings, ASR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from erasure.attacks import (
    SoftPrompt,
    SoftPromptAttack,
    SoftPromptAttackConfig,
    attack_success,
    encode_soft_prompt,
    generate_from_embeddings,
    load_attack,
    random_token_embeddings,
    teacher_samples,
)
from erasure.diffusion import TextConditioner
from erasure.errors import ErasureInputError
from erasure.pipelines import load_pipeline

FEW = dict(ddim_steps=4, batch_size=8)


@pytest.fixture()
def pipe(tiny_sd):
    return load_pipeline(tiny_sd.folder, device="cpu")


def erased_copy(tiny_sd):
    """A stand-in for an erased model: the tiny pipeline with its cross-attention keys perturbed."""
    erased = load_pipeline(tiny_sd.folder, device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in erased.unet.named_parameters():
            if "attn2.to_k" in name or "attn2.to_v" in name:
                p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))
    return erased


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text).input_ids[1:-1]


def test_soft_prompt_placements(pipe):
    tok = pipe.tokenizer
    cat = token_ids(tok, "a cat")
    sot, eot = tok.bos_token_id, tok.eos_token_id
    prefix = SoftPrompt.build(tok, "a cat", 2, "prefix")
    assert prefix.positions == (1, 2)
    assert prefix.ids[0, :6].tolist() == [sot, 0, 0, *cat, eot]
    assert prefix.attention_mask[0].sum() == 6 and prefix.ids.shape == (1, tok.model_max_length)
    suffix = SoftPrompt.build(tok, "a cat", 1, "suffix")
    assert suffix.positions == (1 + len(cat),) and suffix.ids[0, :5].tolist() == [sot, *cat, 0, eot]
    replace = SoftPrompt.build(tok, "a cat", 3, "replace")
    assert replace.positions == (1, 2, 3) and replace.ids[0, :5].tolist() == [sot, 0, 0, 0, eot]
    with pytest.raises(ErasureInputError, match="needs 78 tokens"):
        SoftPrompt.build(tok, "a cat", tok.model_max_length - 2 - len(cat) + 1, "prefix")
    with pytest.raises(ErasureInputError, match="placement"):
        SoftPrompt.build(tok, "a cat", 1, "middle")


def test_soft_tokens_equal_real_tokens(pipe):
    """With the embeddings of real words in the adversarial slots, the encoding is that of the text."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    table = te.get_input_embeddings().weight.detach()
    encode = TextConditioner(pipe, 32)
    for placement, text in (("prefix", "green dog a cat"), ("suffix", "a cat green dog"), ("replace", "green dog")):
        soft = SoftPrompt.build(tok, "a cat", 2, placement)
        delta = table[token_ids(tok, "green dog")]
        with torch.no_grad():
            got = encode_soft_prompt(te, soft, delta)
            want = encode([text]).hidden
        assert torch.allclose(got, want, atol=1e-5), placement
    # the hook is gone after the call
    with torch.no_grad():
        assert torch.equal(encode(["a cat"]).hidden, encode(["a cat"]).hidden)
        plain = te(soft.ids)[0]
        assert not torch.allclose(plain, got)


def test_attack_lowers_its_own_loss_and_leaves_the_model_alone(tiny_sd, pipe):
    teacher = teacher_samples(pipe, "a cat", 12, seed=1, **FEW)
    erased = erased_copy(tiny_sd)
    weights = {n: p.detach().clone() for n, p in [*erased.unet.named_parameters(), *erased.text_encoder.named_parameters()]}
    attack = SoftPromptAttack(steps=25, lr=1e-2, batch_size=4)
    result = attack.run(erased, "a cat", teacher.sampler(4, seed=0, device="cpu"), seed=0)
    everything = (teacher.x_t, teacher.t, teacher.eps_cond)
    start = random_token_embeddings(erased.text_encoder, 1, 0)
    before = attack.loss(erased, result.soft, start, everything)
    after = attack.loss(erased, result.soft, result.delta, everything)
    assert after < 0.9 * before, (before, after)
    assert len(result.losses) == 25 and result.delta.shape == (1, 32)
    for n, p in [*erased.unet.named_parameters(), *erased.text_encoder.named_parameters()]:
        assert torch.equal(p, weights[n]) and p.grad is None, n


def test_latest_init_fast_at_and_projection(pipe):
    teacher = teacher_samples(pipe, "a cat", 4, seed=2, **FEW)
    samples = teacher.sampler(2, seed=0, device="cpu")
    start = random_token_embeddings(pipe.text_encoder, 2, "mine")
    # fast AT: Adam on the gradient's sign; its first step moves every coordinate by exactly lr
    one = SoftPromptAttack(steps=1, lr=0.01, algorithm="fast_at", tokens=2, init="latest").run(
        pipe, "a cat", samples, init=start)
    moved = (one.delta - start).abs()
    assert torch.allclose(moved[moved > 0], torch.full_like(moved[moved > 0], 0.01), rtol=1e-3)
    assert (moved > 0).float().mean() > 0.9
    # "random" ignores the given init; "latest" starts from it
    rand = SoftPromptAttack(steps=1, lr=1e-9, tokens=2).run(pipe, "a cat", samples, init=start, seed=5)
    assert torch.allclose(rand.delta, random_token_embeddings(pipe.text_encoder, 2, 5), atol=1e-6)
    # projection: every token stays within epsilon of where it started
    far = SoftPromptAttack(steps=5, lr=0.5, epsilon=0.05, tokens=2, init="latest").run(pipe, "a cat", samples, init=start)
    dist = (far.delta - start).norm(dim=-1)
    assert torch.all(dist <= 0.05 + 1e-5) and torch.all(dist > 0.04)
    with pytest.raises(ErasureInputError, match="does not fit"):
        SoftPromptAttack(steps=1, init="latest").run(pipe, "a cat", samples, init=start)


def test_teacher_samples_do_not_depend_on_the_batch(pipe):
    a = teacher_samples(pipe, "a cat", 5, seed=3, ddim_steps=4, batch_size=8)
    b = teacher_samples(pipe, "a cat", 5, seed=3, ddim_steps=4, batch_size=2)
    for key in ("x_t", "t", "eps_cond", "eps_uncond"):
        assert torch.allclose(getattr(a, key).float(), getattr(b, key).float(), atol=1e-5), key
    assert len(set(a.t.tolist())) > 1
    # the sampler walks a permutation: every sample once before any repeats
    seen = [tuple(a.sampler(1, seed=0, device="cpu")(i)[1].tolist()) for i in range(5)]
    assert sorted(seen) == sorted((t,) for t in a.t.tolist())
    # shared trajectories: the same timesteps, x_t from fewer trajectories, still batch-independent
    c = teacher_samples(pipe, "a cat", 12, seed=3, ddim_steps=4, batch_size=8, trajectories="shared")
    d = teacher_samples(pipe, "a cat", 12, seed=3, ddim_steps=4, batch_size=1, trajectories="shared")
    assert torch.equal(c.t, teacher_samples(pipe, "a cat", 12, seed=3, ddim_steps=4).t)
    assert all(torch.allclose(getattr(c, k).float(), getattr(d, k).float(), atol=1e-5) for k in ("x_t", "eps_cond"))


def test_generation_from_embeddings_matches_generate(pipe):
    from erasure.pipelines.generation import generate

    embeds = TextConditioner(pipe, 32)(["a cat"]).hidden
    got = generate_from_embeddings(pipe, embeds, seeds=[3, 4], steps=3, guidance=3.0, scheduler="ddim")
    want = generate(pipe, "a cat", seeds=[3, 4], steps=3, guidance=3.0, scheduler="ddim", batch_size=2)
    for g, w in zip(got, want):
        diff = np.asarray(g, dtype=np.int16) - np.asarray(w, dtype=np.int16)
        assert np.abs(diff).max() <= 1, "generation from embeddings differs from generate()"


def test_attack_success_generates_attacked_images_and_counts(tiny_sd, pipe):
    """The soft-prompt attack through the registry: teacher samples of the original, one attack and one
    attacked image per seed, judged; the unattacked prompt on the same seeds judged first."""
    erased = erased_copy(tiny_sd)
    seen = []

    def judge(images):
        seen.append(images)
        return torch.tensor([len(seen) == 2] * len(images))  # "recognised" only in the first attacked image

    attack = load_attack("soft-prompt", steps=2, lr=0.1, teacher_samples=4, teacher_ddim_steps=4, sample_steps=3,
                         guidance=3.0)
    out = attack_success(attack, erased, pipe, "a cat", judge, seeds=[10, 11])
    assert out["asr"] == 0.5 and out["clean_rate"] == 0.0 and out["attack_name"] == "soft-prompt"
    assert [r["recognised"] for r in out["per_seed"]] == [True, False]
    assert len(seen) == 3 and len(seen[0]) == 2 and seen[1][0].size == (32, 32)
    # the attacked image of seed 10 is not the clean one of seed 10
    assert not np.array_equal(np.asarray(seen[1][0]), np.asarray(seen[0][0]))
    assert out["attack"]["steps"] == 2 and out["sampling"]["steps"] == 3 and out["seeds"] == [10, 11]
    assert all(r["budget"] == {"steps": 2, "teacher_samples": 4} for r in out["per_seed"])
    assert len(attack._teachers) == 1  # the original's samples are drawn once for every seed
    assert attack_success(attack, erased, pipe, "a cat", judge, seeds=[10], budget=3)["per_seed"][0]["budget"]["steps"] == 3
    with pytest.raises(ErasureInputError, match="no seeds"):
        attack_success(attack, erased, pipe, "a cat", judge, seeds=[])


def test_canvas_judge_recognises_rendered_styles():
    from erasure.families import family_named
    from erasure.pipelines.canvas.render import OBJECTS, render

    canvas_judge = family_named("canvas-mini").judge
    judge = canvas_judge("style", "dotted")
    dotted = [render(o, "dotted", seed=s) for o in OBJECTS for s in range(2)]
    striped = [render(o, "striped", seed=s) for o in OBJECTS for s in range(2)]
    assert judge(dotted).float().mean() >= 0.8 and judge(striped).float().mean() <= 0.2
    with pytest.raises(ErasureInputError, match="no style"):
        canvas_judge("style", "plaid")


def test_attack_config_round_trip_and_refusals(tiny_sdxl):
    cfg = SoftPromptAttackConfig(tokens=2, placement="suffix", algorithm="fast_at", epsilon=0.5)
    assert SoftPromptAttackConfig.from_yaml(cfg.to_yaml()) == cfg
    assert SoftPromptAttackConfig.from_json(cfg.to_json()) == cfg
    for bad, match in (({"placement": "middle"}, "placement"), ({"steps": 0}, "steps: must be at least 1"),
                       ({"lr": -1}, "lr: must be positive"), ({"epsilon": 0}, "epsilon"),
                       ({"algorithm": "adam"}, "algorithm"), ({"init": "zero"}, "init"), ({"tokenz": 1}, "unknown")):
        with pytest.raises(ErasureInputError, match=match):
            SoftPromptAttackConfig.from_dict(bad)
    xl = load_pipeline(tiny_sdxl.folder, device="cpu")
    with pytest.raises(ErasureInputError, match="one CLIP text encoder"):
        teacher_samples(xl, "a cat", 2)
