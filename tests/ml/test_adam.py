"""ml._common.adam.Adam: the update of torch.optim.Adam, without importing torch._dynamo."""

from __future__ import annotations

import pytest
from _dynamo import imports_dynamo

torch = pytest.importorskip("torch")

from distill4d.ml._common.adam import Adam  # noqa: E402


def _problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(5, 7, generator=g)
    cplx = torch.randn(4, 3, dtype=torch.complex64, generator=g)
    target = torch.randn(5, 7, generator=g)
    return real, cplx, target


def _loss(real, cplx, target):
    return ((real - target) ** 2).sum() + (cplx.abs() ** 2 - 1).pow(2).sum() + (real[:4, :3] * cplx.real).sum()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_equals_torch_optim_adam_step_for_step(weight_decay):
    """Real and complex parameters, two groups with their own rates, a rate changed mid-run and a group
    without a gradient for some steps (as ptychography's probe): the same parameters after every step,
    bit for bit on the CPU (tolerance 0)."""
    runs = []
    for cls in (torch.optim.Adam, Adam):
        real, cplx, target = (t.clone() for t in _problem(0))
        real.requires_grad_(True)
        cplx.requires_grad_(True)
        opt = cls([{"params": [real], "lr": 0.05, "name": "real"}, {"params": [cplx], "lr": 0.02, "name": "c"}],
                  weight_decay=weight_decay)
        trace = []
        for step in range(25):
            if step == 10:
                opt.param_groups[0]["lr"] = 0.01
            cplx.requires_grad_(step >= 5)
            opt.zero_grad(set_to_none=False)
            _loss(real, cplx, target).backward()
            opt.step()
            trace.append((real.detach().clone(), cplx.detach().clone()))
        runs.append((trace, opt.state_dict()))
    (t_ref, sd_ref), (t_new, sd_new) = runs
    for (a, b), (c, d) in zip(t_ref, t_new):
        torch.testing.assert_close(c, a, rtol=0, atol=0)
        torch.testing.assert_close(d, b, rtol=0, atol=0)
    assert set(sd_new["state"]) == set(sd_ref["state"]) == {0, 1}
    for i in (0, 1):
        assert float(sd_new["state"][i]["step"]) == float(sd_ref["state"][i]["step"])
        torch.testing.assert_close(sd_new["state"][i]["exp_avg_sq"], sd_ref["state"][i]["exp_avg_sq"], rtol=0, atol=0)
    assert [g["params"] for g in sd_new["param_groups"]] == [g["params"] for g in sd_ref["param_groups"]]


def test_adam_resumes_from_either_state_dict():
    """A run stopped after 6 steps and resumed from a saved state (ours or torch.optim's) ends where an
    uninterrupted run ends (tolerance 0)."""
    def run(steps, opt_cls, state=None, start=None):
        real, cplx, target = (t.clone() for t in _problem(1))
        if start is not None:
            real, cplx = (t.clone() for t in start)
        real.requires_grad_(True)
        cplx.requires_grad_(True)
        opt = opt_cls([real, cplx], lr=0.03)
        if state is not None:
            opt.load_state_dict(state)
        for _ in range(steps):
            opt.zero_grad()
            _loss(real, cplx, target).backward()
            opt.step()
        return (real.detach(), cplx.detach()), opt.state_dict()

    whole, _ = run(12, Adam)
    for first in (Adam, torch.optim.Adam):
        half, state = run(6, first)
        resumed, _ = run(6, Adam, state=state, start=half)
        for a, b in zip(resumed, whole):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_adam_does_not_import_dynamo():
    code = ("from distill4d.ml._common.adam import Adam; p = torch.zeros(3, requires_grad=True); "
            "o = Adam([p], lr=0.1); p.sum().backward(); o.step()")
    assert imports_dynamo(code) == "False"


def test_shared_dim_moves_each_row_by_its_gradient_relative_to_the_strongest():
    """``shared_dim=0``: a row whose gradient is 1e-3 of another's moves about 1e-3 as far after one step
    (plain Adam moves both by the rate); a single row along the axis is plain Adam, bit for bit (complex)."""
    p = torch.zeros(2, 3, requires_grad=True)
    opt = Adam([{"params": [p], "lr": 0.1, "shared_dim": 0}])
    p.grad = torch.stack([torch.ones(3), 1e-3 * torch.ones(3)])
    opt.step()
    strong, weak = p.detach().abs().mean(dim=1)
    assert strong == pytest.approx(0.1, rel=1e-3) and weak == pytest.approx(1e-4, rel=1e-2)
    g = torch.Generator().manual_seed(1)
    start, grads = torch.randn(1, 4, dtype=torch.complex64, generator=g), torch.randn(5, 1, 4, dtype=torch.complex64, generator=g)
    ends = []
    for group in ({}, {"shared_dim": 0}):
        q = start.clone().requires_grad_(True)
        o = Adam([{"params": [q], "lr": 0.05, **group}])
        for gr in grads:
            q.grad = gr.clone()
            o.step()
        ends.append(q.detach())
    torch.testing.assert_close(ends[1], ends[0], rtol=0, atol=0)
