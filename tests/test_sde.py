"""The forward SDEs against closed forms and scipy: marginals, prior density, perturbation,
time sampling, configs."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sgc.sde import VESDE, VPSDE, SubVPSDE, TimeSampler, _bcast, make_sde


def test_vp_and_subvp_marginals_against_quadrature():
    t = 0.37
    beta = lambda s: 0.2 + s * (15.0 - 0.2)  # noqa: E731
    big_b = integrate.quad(beta, 0, t)[0]
    vp, sub = VPSDE(beta_min=0.2, beta_max=15.0), SubVPSDE(beta_min=0.2, beta_max=15.0)
    a, s = vp.marginal(torch.tensor(t, dtype=torch.float64))
    assert float(a) == pytest.approx(math.exp(-0.5 * big_b), rel=1e-12)
    assert float(s) == pytest.approx(math.sqrt(1 - math.exp(-big_b)), rel=1e-12)
    a2, s2 = sub.marginal(torch.tensor(t, dtype=torch.float64))
    assert float(a2) == float(a) and float(s2) == pytest.approx(1 - math.exp(-big_b), rel=1e-12)
    assert float(vp.drift_coef(torch.tensor(t))) == pytest.approx(-0.5 * beta(t), rel=1e-6)
    assert float(vp.diffusion(torch.tensor(t))) == pytest.approx(math.sqrt(beta(t)), rel=1e-6)
    g2 = beta(t) * (1 - math.exp(-2 * big_b))
    assert float(sub.diffusion(torch.tensor(t, dtype=torch.float64))) == pytest.approx(math.sqrt(g2), rel=1e-9)


def test_ve_sigma_is_geometric_and_its_prior_is_wide():
    ve = VESDE(sigma_min=0.02, sigma_max=40.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    a, s = ve.marginal(t)
    assert torch.equal(a, torch.ones(3, dtype=torch.float64))
    assert s.tolist() == pytest.approx([0.02, math.sqrt(0.02 * 40.0), 40.0], rel=1e-12)
    assert ve.prior_std == 40.0 and VPSDE().prior_std == 1.0
    assert torch.equal(ve.drift(torch.ones(2, 3), torch.tensor([0.1, 0.9])), torch.zeros(2, 3))
    g = ve.diffusion(torch.tensor(0.5, dtype=torch.float64))
    assert float(g) == pytest.approx(math.sqrt(0.02 * 40.0) * math.sqrt(2 * math.log(2000.0)), rel=1e-12)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=7.0)], ids=["vp", "ve"])
def test_prior_logp_is_the_gaussian_density(sde):
    z = torch.randn(4, 1, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    want = stats.multivariate_normal(np.zeros(6), sde.prior_std ** 2 * np.eye(6)).logpdf(z.flatten(1).numpy())
    assert sde.prior_logp(z).numpy() == pytest.approx(want, rel=1e-10)


def test_perturb_and_prior_sample():
    sde = VPSDE()
    x0, noise, t = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 2.0), torch.tensor([0.1, 0.8])
    a, s = sde.marginal(t)
    want = a.view(2, 1, 1, 1) * x0 + s.view(2, 1, 1, 1) * noise
    assert torch.allclose(sde.perturb(x0, t, noise), want)
    ve = VESDE(sigma_max=3.0)
    got = ve.prior_sample((5, 2), generator=torch.Generator().manual_seed(1))
    assert torch.equal(got, 3.0 * torch.randn((5, 2), generator=torch.Generator().manual_seed(1)))


def test_bcast():
    x = torch.zeros(3, 2, 4, 4)
    assert _bcast(torch.arange(3.0), x).shape == (3, 1, 1, 1)
    assert _bcast(torch.tensor(2.0), x).shape == ()
    assert _bcast(torch.arange(3), x).dtype == x.dtype


def test_configs_round_trip_and_unknown_names():
    for sde in (VPSDE(beta_min=0.3, beta_max=12.0), SubVPSDE(beta_max=30.0), VESDE(sigma_min=0.05, sigma_max=9.0)):
        again = make_sde(**sde.config())
        assert type(again) is type(sde) and again.config() == sde.config()
        t = torch.tensor([0.2, 0.9], dtype=torch.float64)
        assert all(torch.equal(p, q) for p, q in zip(again.marginal(t), sde.marginal(t)))
    assert VPSDE().config() == {"name": "vp", "beta_min": 0.1, "beta_max": 20.0}
    with pytest.raises(ValueError, match="unknown SDE 'vq'"):
        make_sde("vq")


def test_uniform_time_sampler_and_loss_weights():
    sde = VPSDE()
    uni = TimeSampler(sde, "sigma2", eps=0.01)
    t, w = uni.sample(3, u=torch.tensor([0.0, 0.5, 1.0]))
    assert t.tolist() == pytest.approx([0.01, 0.505, 1.0]) and w.tolist() == pytest.approx([0.99] * 3)
    assert torch.equal(uni.loss_weight(t), torch.ones(3))
    lik = TimeSampler(sde, "likelihood", eps=0.01)
    _, sigma = sde.marginal(t)
    assert torch.allclose(lik.loss_weight(t), sde.diffusion(t) ** 2 / sigma ** 2)
    tl, wl = lik.sample(3, u=torch.tensor([0.0, 0.5, 0.999999]))
    assert tl[0].item() == pytest.approx(0.01, rel=1e-4) and tl[2].item() == pytest.approx(1.0, rel=1e-3)
    assert torch.equal(wl, torch.full((3,), lik.Z))
    top, _ = lik.sample(1, u=torch.tensor([1 - 1e-9]))        # the last cell of the table: never past T
    assert 0.999 < top.item() <= 1.0
    # Z = integral of g^2 / sigma^2 over [eps, T]; the median splits it in half
    z = integrate.quad(lambda s: float(lik.loss_weight(torch.tensor(s, dtype=torch.float64))), 0.01, 1.0)[0]
    assert lik.Z == pytest.approx(z, rel=1e-3)
    half = integrate.quad(lambda s: float(lik.loss_weight(torch.tensor(s, dtype=torch.float64))), 0.01,
                          float(tl[1]))[0]
    assert half == pytest.approx(z / 2, rel=1e-3)
    with pytest.raises(ValueError, match="weighting"):
        TimeSampler(sde, "uniform")
