"""Fixed-step and exponential-integrator solves against dopri5 and the analytic Gaussian."""
import pytest
import torch

import sgc.likelihood as lik
from gaussian import GaussianEps
from sgc.likelihood import class_log_likelihoods, divergence
from sgc.nets import ScoreMLP
from sgc.sde import VPSDE
from sgc.solvers import step_weight, time_grid


def _setup():
    sde = VPSDE()
    model = GaussianEps(sde, means=[0.0, 0.0], stds=[0.15, 0.5], image_size=3)
    x = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    return sde, model, x


@pytest.mark.parametrize("method, order", [("rk4", 4), ("heun2", 2), ("dpm2", 2), ("dpm1", 1)])
def test_fixed_step_solvers_converge_to_dopri5(method, order):
    sde, model, x = _setup()
    ref = class_log_likelihoods(model, sde, x, divergence_mode="exact", rtol=1e-6, atol=1e-6).logp
    err = {}
    for budget in (32, 128):
        r = class_log_likelihoods(model, sde, x, divergence_mode="exact", method=method, nfe_budget=budget)
        assert r.nfe == budget
        err[budget] = (r.logp - ref).abs().max().item()
    # 4x the steps: the error falls by about 4^order (at least 4^order / 3 here)
    assert err[128] < err[32] * 3 / 4 ** min(order, 2), err
    if method == "rk4":
        assert err[128] < 5e-3, err


def test_log_snr_grid_and_step_weights():
    sde = VPSDE()
    t = time_grid(sde, 8)
    lam = torch.log(sde.marginal(t)[0] / sde.marginal(t)[1])
    assert t[0] == pytest.approx(1e-5) and t[-1] == pytest.approx(1.0)
    assert torch.allclose(lam.diff(), lam.diff().mean().expand(8), rtol=1e-3)
    # VP: int sigma dlambda = asinh(e^-lambda_s) - asinh(e^-lambda_t)
    want = torch.asinh(torch.exp(-lam[2])) - torch.asinh(torch.exp(-lam[3]))
    assert step_weight(sde, float(t[2]), float(t[3])) == pytest.approx(float(want), rel=1e-3)


def test_batched_probes_equal_looped_probes():
    torch.manual_seed(0)
    model = ScoreMLP(num_classes=3, image_size=4, hidden=32, blocks=1, emb_dim=16)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    z, probes, y = torch.randn(3, 1, 4, 4), torch.randn(4, 3, 1, 4, 4), torch.tensor([0, 1, 2])
    fn = lambda v: model(v, torch.full((3,), 0.3), y)  # noqa: E731
    _, batched = divergence(fn, z, probes)
    saved, lik._BATCHED_VJP[0] = lik._BATCHED_VJP[0], False
    try:
        _, looped = divergence(fn, z, probes)
    finally:
        lik._BATCHED_VJP[0] = saved
    assert torch.allclose(batched, looped, atol=1e-5)


def test_unknown_precision_is_rejected():
    sde, model, x = _setup()
    with pytest.raises(ValueError, match="precision"):
        class_log_likelihoods(model, sde, x, precision="fp8")


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "heun3", "rk4", "dpm1", "dpm2"])
def test_an_nfe_budget_is_spent_exactly(method):
    # steps = budget // evaluations per step of the method (sgc.solvers.FIXED_EVALS)
    sde, model, x = _setup()
    r = class_log_likelihoods(model, sde, x[:1], divergence_mode="exact", method=method, nfe_budget=24)
    assert r.nfe == 24 and torch.isfinite(r.logp).all()
