"""The Monte-Carlo denoising bound against analytic Gaussian log-densities."""
import math

import torch

from gaussian import GaussianEps
from sgc.elbo import elbo_class_scores, prior_term
from sgc.sde import VPSDE, SubVPSDE


def _exact(model, x):
    return torch.stack([model.logp01(x, torch.full((x.shape[0],), k)) for k in range(model.num_classes)], 1)


def test_bound_matches_exact_for_exact_scores():
    # an exact score makes the bound tight up to the prior mismatch: mean within the s.e.
    for sde in (VPSDE(), SubVPSDE()):
        model = GaussianEps(sde, means=[0.0, 0.0], stds=[0.15, 0.5], image_size=3)
        x = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
        r = elbo_class_scores(model, sde, x, n_draws=2048, generator=torch.Generator().manual_seed(1))
        z = (r.logp - _exact(model, x)) / r.stderr
        assert r.logp.shape == r.stderr.shape == (4, 2)
        assert z.abs().max() < 4, z           # unbiased for the exact score
        assert z.mean() < 1.5, z              # and never systematically above log p (it is a bound)


class ScaledEps(GaussianEps):
    """A deliberately wrong noise predictor: 0.6 x the exact one for zero-mean Gaussian data."""

    def forward(self, x, t, y):
        return 0.6 * super().forward(x, t, y)


def _sde_nll(model, sde, x, y, scale=0.6):
    """-log p^SDE(x | y) of the reverse SDE driven by ScaledEps, nats on [0, 1]^D.

    With score -scale x / v(t), v = alpha^2 s^2 + sigma^2, the reverse SDE is linear and its
    marginal is N(0, V(t) I) with dV/dt = 2 b V - g^2, b = a + scale g^2 / v, V(T) = 1.
    """
    from scipy.integrate import solve_ivp
    s2 = float(model.stds[y]) ** 2

    def rhs(t, V):
        t = torch.tensor(t, dtype=torch.float64)
        a, sig = sde.marginal(t)
        g2 = sde.diffusion(t) ** 2
        b = sde.drift_coef(t) + scale * g2 / (a * a * s2 + sig * sig)
        return [float(2 * b * V[0] - g2)]

    V = solve_ivp(rhs, (sde.T, 1e-5), [1.0], rtol=1e-10, atol=1e-12).y[0, -1]  # backwards in time
    V = torch.tensor(V, dtype=torch.float64)
    z = (2 * x - 1).flatten(1).double()
    d = z.shape[1]
    return (0.5 * d * torch.log(2 * math.pi * V) + 0.5 * z.pow(2).sum(1) / V - d * math.log(2)).float()


def test_bound_is_above_the_nll_of_a_wrong_model():
    # for an imperfect score the bound is strict: -logp_elbo >= -log p^SDE with a visible gap
    sde = VPSDE()
    model = ScaledEps(sde, means=[0.0, 0.0], stds=[0.2, 0.5], image_size=3)
    x = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(2)) * 0.6 + 0.2
    r = elbo_class_scores(model, sde, x, n_draws=1024, generator=torch.Generator().manual_seed(3))
    for k in range(2):
        gap = -r.logp[:, k] - _sde_nll(model, sde, x, k)   # bound - NLL, nats, should be > 0
        assert (gap > -3 * r.stderr[:, k]).all(), (k, gap, r.stderr[:, k])
        assert gap.mean() > 3 * r.stderr[:, k].mean(), (k, gap, r.stderr[:, k])


def test_class_ranking_matches_exact():
    sde = VPSDE()
    means = [-0.6, -0.2, 0.2, 0.6]
    model = GaussianEps(sde, means=means, stds=[0.25] * 4, image_size=3)
    g = torch.Generator().manual_seed(4)
    y = torch.arange(8) % 4
    z = torch.tensor(means)[y][:, None, None, None] + 0.25 * torch.randn(8, 1, 3, 3, generator=g)
    x = ((z + 1) / 2).clamp(0, 1)
    r = elbo_class_scores(model, sde, x, n_draws=256, generator=g)
    exact = _exact(model, x)
    assert torch.equal(r.logp.argmax(1), exact.argmax(1))
    assert torch.equal(r.logp.argsort(1), exact.argsort(1))


def test_standard_error_shrinks_with_draws():
    sde = VPSDE()
    model = GaussianEps(sde, means=[0.0, 0.0], stds=[0.2, 0.4], image_size=3)
    x = torch.rand(3, 1, 3, 3, generator=torch.Generator().manual_seed(5))
    se = [elbo_class_scores(model, sde, x, n_draws=n, generator=torch.Generator().manual_seed(6)).stderr.mean()
          for n in (64, 1024)]
    assert se[1] < 0.4 * se[0], se  # 1/sqrt(16) = 0.25 ideally


def test_same_noise_for_every_class_and_prior_term():
    sde = VPSDE()
    model = GaussianEps(sde, means=[0.0, 0.0], stds=[0.3, 0.3], image_size=3)
    x = torch.rand(4, 1, 3, 3)
    r = elbo_class_scores(model, sde, x, n_draws=16, dequantize=True, levels=17,
                          generator=torch.Generator().manual_seed(1))
    assert torch.equal(r.logp[:, 0], r.logp[:, 1])
    assert torch.allclose(r.bpd, -r.logp / (9 * math.log(2)) + math.log2(17))
    # the prior term of z = 0 under N(0, I) after the VP forward process: D/2 log(2 pi) + D sigma_T^2 / 2
    a, s = sde.marginal(torch.tensor(1.0))
    want = 4.5 * math.log(2 * math.pi) + 4.5 * float(s) ** 2
    assert abs(prior_term(sde, torch.zeros(1, 1, 3, 3)).item() - want) < 1e-5


def test_elimination_keeps_the_true_class_and_saves_evaluations():
    sde = VPSDE()
    means = torch.linspace(-0.8, 0.8, 6)
    model = GaussianEps(sde, means=means.tolist(), stds=[0.15] * 6, image_size=4)
    g = torch.Generator().manual_seed(7)
    y = torch.arange(12) % 6
    z = means[y][:, None, None, None] + 0.15 * torch.randn(12, 1, 4, 4, generator=g)
    x = ((z + 1) / 2).clamp(0, 1)
    full = elbo_class_scores(model, sde, x, n_draws=64, generator=torch.Generator().manual_seed(8))
    fast = elbo_class_scores(model, sde, x, n_draws=64, eliminate=True, first_round=8, eliminate_z=3.0,
                             generator=torch.Generator().manual_seed(8))
    assert fast.alive[torch.arange(12), y].all()
    assert torch.equal(fast.logp.argmax(1), y) and torch.equal(full.logp.argmax(1), y)
    assert (fast.evals < full.evals).all() and fast.evals.sum() < 0.7 * full.evals.sum()
    assert (fast.draws[fast.alive] == 64).all() and full.nfe == fast.nfe == 64
