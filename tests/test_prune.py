"""Memorization-subspace pruning (erasure.methods.prune) on tiny random pipelines."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from erasure.errors import ErasureInputError
from erasure.methods.prune import ActivationNorms, Prune, PruneConfig, prompt_sets, record_activation_norms, wanda_mask
from erasure.request import ErasureRequest

FAST = dict(tau=2, ddim_steps=4, guidance=3.0, seeds=2, batch_size=4)


def _ffn_layers(unet) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in unet.named_modules() if n.endswith("ff.net.2")}


def test_hooks_record_exactly_the_ffn_inputs(tiny_sd_loaded):
    pipe = tiny_sd_loaded
    layers = _ffn_layers(pipe.unet)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: seen[n].append(args[0].detach().clone()))
               for n, m in layers.items()]
    try:
        norms = record_activation_norms(pipe, ["a red cube", "a blue ball", "a tree"], PruneConfig(**FAST))
    finally:
        for h in handles:
            h.remove()
    assert set(norms) == set(layers) and len(layers) > 0
    calls_per_step = -(-3 * FAST["seeds"] // FAST["batch_size"])  # 6 samples in batches of 4: 2 UNet calls
    for name, module in layers.items():
        assert norms[name].shape == (FAST["tau"], module.in_features)
        inputs = seen[name]
        assert len(inputs) == FAST["tau"] * calls_per_step
        for step in range(FAST["tau"]):
            # batches run one after the other, each through the tau steps: call b * tau + step
            calls = [inputs[b * FAST["tau"] + step] for b in range(calls_per_step)]
            rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in calls])
            # both CFG halves of 6 samples, every token
            assert rows.shape[0] == 2 * 6 * inputs[0].shape[1]
            expected = F.normalize(rows.double(), dim=1).square().mean(0).sqrt().float()
            torch.testing.assert_close(norms[name][step], expected, rtol=1e-5, atol=1e-7)


def test_hooks_removed_and_idle_steps_not_recorded(tiny_sd_loaded):
    unet = tiny_sd_loaded.unet
    recorder = ActivationNorms(unet, r"ff\.net\.2$", steps=1)
    with recorder:
        layer = next(iter(recorder.layers.values()))
        layer(torch.randn(2, 5, layer.in_features))  # step None: ignored
        recorder.step = 0
        layer(torch.randn(2, 5, layer.in_features))
    layer(torch.randn(2, 5, layer.in_features))  # hooks removed: ignored
    name = next(iter(recorder.layers))
    assert recorder.rows[name].tolist() == [10.0]
    assert all(not m._forward_pre_hooks for m in recorder.layers.values())


def test_wanda_selection_on_a_hand_made_matrix():
    weight = torch.tensor([[1.0, -4.0, 2.0, 0.5],
                           [3.0, 1.0, -1.2, 2.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 1.0],    # step 0 scores: row0 [1, 4, 6, .5], row1 [3, 1, 3.6, 2]
                           [4.0, 1.0, 1.0, 1.0]])   # step 1 scores: row0 [4, 4, 2, .5], row1 [12, 1, 1.2, 2]
    base = torch.tensor([[1.0, 1.0, 1.0, 1.0],      # step 0 base: row0 [1, 4, 2, .5], row1 [3, 1, 1.2, 2]
                         [1.0, 2.0, 1.0, 1.0]])     # step 1 base: row0 [1, 8, 2, .5], row1 [3, 2, 1.2, 2]
    # rho 0.5 of 4 inputs: top-2 per row. Step 0: row0 top {2, 1}, target > base only for input 2;
    # row1 top {2, 0}: input 2 (3.6 > 1.2), not input 0 (3 = 3).
    # Step 1: row0 top {0, 1}: input 0 (4 > 1), not 1 (4 < 8); row1 top {0, 3}: input 0 (12 > 3).
    mask = wanda_mask(weight, target, base, rho=0.5)
    expected = torch.tensor([[True, False, True, False],
                             [True, False, True, False]])
    assert torch.equal(mask, expected)
    # Nothing is pruned where the base set activates as much as the target set.
    assert not wanda_mask(weight, target, target, rho=0.5).any()


def test_prune_changes_only_ffn_weights_and_round_trips(tiny_sd, tmp_path):
    from erasure.edit import Edit, fingerprint
    from erasure.erased import load_erased
    from erasure.pipelines import load_pipeline

    pipe = load_pipeline(tiny_sd.folder, device="cpu")
    before = {f"{c}.{n}": p.detach().clone() for c in ("unet", "text_encoder", "vae")
              for n, p in getattr(pipe, c).named_parameters()}
    base_print = fingerprint(pipe)
    request = ErasureRequest(targets=["a photo of the moon over paris"], kind="memorized",
                             retain=["a dog", "a house", "a car"])
    edit = Prune(PruneConfig(rho=0.05, **FAST))(pipe, request)
    after = {f"{c}.{n}": p.detach() for c in ("unet", "text_encoder", "vae") for n, p in getattr(pipe, c).named_parameters()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("ff.net.2.weight") for k in changed)
    assert changed == set(edit.zeroed)
    for key, idx in edit.zeroed.items():
        flat = after[key].reshape(-1)
        assert (flat[idx.long()] == 0).all()
        untouched = torch.ones_like(flat, dtype=torch.bool)
        untouched[idx.long()] = False
        assert torch.equal(flat[untouched], before[key].reshape(-1)[untouched])
    assert edit.extra["pruned_weights"] == sum(v.numel() for v in edit.zeroed.values()) > 0
    assert 0 < edit.extra["fraction_of_unet"] < 0.05

    # The edit stores 4 bytes per pruned weight and re-applies exactly.
    edit.base = {"source": str(tiny_sd.folder), "config": None, "fingerprint": base_print}
    edit.save(tmp_path / "run")
    loaded = Edit.load(tmp_path / "run")
    assert loaded.size()["bytes"] == 4 * edit.extra["pruned_weights"]
    assert {k: v.tolist() for k, v in loaded.zeroed.items()} == {k: v.tolist() for k, v in edit.zeroed.items()}
    erased = load_erased(tmp_path / "run", device="cpu")
    for key in changed:
        comp, _, name = key.partition(".")
        assert torch.equal(getattr(erased, comp).get_parameter(name), after[key])


def test_concept_prompt_sets_pair_prompts_with_and_without_the_concept():
    from erasure.pipelines.canvas.render import OBJECTS, caption

    class Canvas:  # prompt_sets only asks for the model family
        pass

    Canvas.__name__ = "CanvasMiniPipeline"
    req = ErasureRequest(targets=["dotted"], kind="style").resolve("canvas-mini")
    targets, bases = prompt_sets(Canvas(), req)
    assert targets == [caption(o, "dotted") for o in OBJECTS] and "an arrow in dotted style" in targets
    assert bases == [caption(o, "dotted", "a {object}") for o in OBJECTS] and "an arrow" in bases
    req = ErasureRequest(targets=["van gogh"], kind="style").resolve("stable-diffusion")
    targets, bases = prompt_sets(object(), req)
    assert len(targets) == len(bases) and all(t == f"{b}, in the style of van gogh" for t, b in zip(targets, bases))
    mem = ErasureRequest(targets=["caption one"], kind="memorized", retain=["x", "y"]).resolve("stable-diffusion")
    assert prompt_sets(object(), mem) == (["caption one"], ["x", "y"])
    assert prompt_sets(object(), mem, "empty") == (["caption one"], [""])


@pytest.mark.parametrize("bad", [{"rho": 0}, {"rho": 1.5}, {"tau": 0}, {"tau": 60, "ddim_steps": 50},
                                 {"base": "nothing"}, {"layers": "("}, {"seeds": 0}])
def test_bad_config_refused(bad):
    with pytest.raises(ErasureInputError):
        PruneConfig(**bad)


def test_config_round_trip():
    c = PruneConfig(rho=0.02, tau=5, base="empty")
    assert PruneConfig.from_json(c.to_json()) == c
    assert PruneConfig.from_yaml(c.to_yaml()) == c


def test_recording_reports_progress_per_batch(tiny_sd):
    """At SD's size a batch of prompts takes minutes on a CPU: progress after every batch, in samples."""
    from erasure.pipelines import load_pipeline

    pipe = load_pipeline(tiny_sd.folder, device="cpu")  # pruned in place: not the shared fixture
    seen = []
    request = ErasureRequest(targets=["a photo of the moon over paris"], kind="memorized",
                             retain=["a dog", "a house", "a car"])
    config = PruneConfig(rho=0.05, **{**FAST, "batch_size": 2})
    Prune(config)(pipe, request, progress=lambda *update: seen.append(update[:3]))
    totals = {total for _, _, total in seen}
    assert totals == {4 * config.seeds} and seen[0][1] == 0 and seen[-1][1] == 4 * config.seeds
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen) and len(seen) >= 4
