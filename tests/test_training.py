"""Shared training machinery: the momentum-free Adam and the optimiser step fused into backward."""

from __future__ import annotations

import pytest
import torch

from erasure.training import ZeroBeta1Adam, adam, step_in_backward


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))


def _loss(model: torch.nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
    return (model(x) - y).pow(2).mean()


@pytest.mark.parametrize("eps", [1e-8, 1e-6])
def test_zero_beta1_adam_equals_torch_adam_bit_for_bit(eps):
    ours, theirs = _model(), _model()
    opt_ours = ZeroBeta1Adam(ours.parameters(), lr=1e-2, beta2=0.999, eps=eps)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-2, betas=(0.0, 0.999), eps=eps, foreach=False)
    for step in range(6):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            _loss(model, step).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    # and it holds one buffer per tensor where torch holds two
    assert all(set(s) == {"step", "exp_avg_sq"} for s in opt_ours.state.values())


def test_adam_picks_the_momentum_free_variant_only_for_beta1_zero():
    params = list(_model().parameters())
    assert isinstance(adam(params, 1e-3, (0.0, 0.999)), ZeroBeta1Adam)
    assert type(adam(params, 1e-3, (0.9, 0.999))) is torch.optim.Adam


def test_step_in_backward_equals_backward_then_step_and_frees_the_gradients():
    fused, plain = _model(), _model()
    opt_fused = ZeroBeta1Adam(fused.parameters(), lr=1e-2)
    opt_plain = ZeroBeta1Adam(plain.parameters(), lr=1e-2)
    seen = []
    for step in range(4):
        with step_in_backward(opt_fused, list(fused.parameters()), prepare_grad=lambda g: seen.append(g.shape)):
            _loss(fused, step).backward()
        assert all(p.grad is None for p in fused.parameters())
        _loss(plain, step).backward()
        opt_plain.step()
        opt_plain.zero_grad(set_to_none=True)
    assert len(seen) == 4 * len(list(fused.parameters()))
    for a, b in zip(fused.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    # the hooks are gone after the block: a plain backward leaves gradients again
    _loss(fused, 9).backward()
    assert all(p.grad is not None for p in fused.parameters())


def test_zero_beta1_adam_state_round_trips():
    model = _model()
    opt = ZeroBeta1Adam(model.parameters(), lr=1e-2)
    _loss(model, 0).backward()
    opt.step()
    restored = ZeroBeta1Adam(_model().parameters(), lr=1e-2)
    restored.load_state_dict(opt.state_dict())
    for a, b in zip(opt.state.values(), restored.state.values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and a["step"] == b["step"]


def test_stage_clock_times_each_unit_and_passes_updates_on(monkeypatch):
    from erasure import training

    now = iter([0.0, 5.0, 6.0, 7.5, 9.0, 10.0, 10.0, 20.0])
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(now))
    seen = []
    clock = training.StageClock(lambda *update: seen.append(update))
    clock("training", 0, 3, {})          # t=0: the stage starts
    clock("training", 1, 3, {"loss": 1})  # t=5: the first step, start-up included
    clock("training", 2, 3, {})          # t=6
    clock("training", 3, 3, {})          # t=7.5
    clock("sampling", 0, 32, {})         # t=9
    clock("sampling", 16, 32, {})        # t=10: 16 samples in 1 s
    clock("sampling", 0, 32, {})         # t=10: a new round
    clock("sampling", 16, 32, {})        # t=20
    assert len(seen) == 8 and seen[1] == ("training", 1, 3, {"loss": 1})
    summary = clock.summary()
    assert summary["training"] == {"units": 3, "seconds": 7.5, "first_per_unit": 5.0, "median_per_unit": 1.5}
    assert summary["sampling"]["units"] == 32 and summary["sampling"]["first_per_unit"] == 0.0625
