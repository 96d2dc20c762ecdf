"""Known answers that can tell a broken method from a working one.

A Gaussian with a full (rotated, non-isotropic) covariance and class-dependent means: the
score is linear with a Jacobian that is neither diagonal nor a multiple of the identity, so a
Rademacher probe does not give the exact trace and the Hutchinson estimate is really noisy.
The isotropic model of ``gaussian.GaussianEps`` cannot tell these apart: there, any probe gives
the same trace.

The SDEs here use a large beta_max (VP, sub-VP) or sigma_max (VE) so that the prior N(0, s^2 I)
matches p_T of the non-zero means to ~1e-4 nats, and the exact answers are tight.
"""
import math

import pytest
import torch

from gaussian import RotatedGaussianEps
from sgc.elbo import elbo_class_scores
from sgc.likelihood import _make_probes, class_log_likelihoods, log_likelihood
from sgc.sde import VESDE, VPSDE, SubVPSDE

MEANS = [[0.3, -0.2, 0.1, 0.0], [-0.1, 0.2, -0.3, 0.2]]   # class means in model space, D = 4
STDS = [0.1, 0.3, 0.6, 1.0]                               # eigenvalues of the covariance (std)
X = torch.tensor([[[[0.55, 0.40], [0.60, 0.50]]], [[[0.30, 0.70], [0.45, 0.52]]]])  # (2, 1, 2, 2) in [0, 1]
SDES = {"vp": VPSDE(beta_max=40.0), "subvp": SubVPSDE(beta_max=40.0), "ve": VESDE(sigma_max=2000.0)}


def _exact(model, x):
    return torch.stack([model.logp01(x, torch.full((x.shape[0],), k)) for k in range(model.num_classes)], 1)


@pytest.mark.parametrize("name", list(SDES))
def test_exact_divergence_matches_a_full_covariance_gaussian(name):
    sde = SDES[name]
    model = RotatedGaussianEps(sde, MEANS, STDS)
    res = class_log_likelihoods(model, sde, X, divergence_mode="exact", rtol=1e-6, atol=1e-6)
    want = _exact(model, X)
    assert torch.allclose(res.logp.double(), want, atol=2e-3), (res.logp.double() - want).abs().max()
    # the two classes really differ here (a test where they do not could not catch a label mix-up)
    assert (want[:, 0] - want[:, 1]).abs().min() > 0.5


@pytest.mark.parametrize("name", list(SDES))
def test_bound_matches_a_full_covariance_gaussian(name):
    # the exact score makes the bound tight (up to the tiny prior mismatch): unbiased within its s.e.
    sde = SDES[name]
    model = RotatedGaussianEps(sde, MEANS, STDS)
    r = elbo_class_scores(model, sde, X, n_draws=2048, generator=torch.Generator().manual_seed(1))
    z = (r.logp.double() - _exact(model, X)) / r.stderr
    assert z.abs().max() < 4, z
    assert (r.stderr < 1.5).all() and (r.stderr > 0).all()


def _hutchinson_draws(model, sde, probe, seeds=16):
    """(seeds, N, K) class log-likelihoods, each solve with its own probe draw (shared by the classes)."""
    return torch.stack([class_log_likelihoods(model, sde, X, probe=probe, rtol=1e-6, atol=1e-6,
                                              generator=torch.Generator().manual_seed(s)).logp
                        for s in range(seeds)]).double()


def test_hutchinson_agrees_with_the_exact_divergence_in_mean():
    sde = SDES["vp"]
    model = RotatedGaussianEps(sde, MEANS, STDS)
    exact = class_log_likelihoods(model, sde, X, divergence_mode="exact", rtol=1e-6, atol=1e-6).logp.double()
    draws = _hutchinson_draws(model, sde, "rademacher")
    se = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - exact).abs() < 4 * se + 1e-3).all(), (draws.mean(0) - exact, se)
    # a non-diagonal Jacobian: even a Rademacher probe leaves a visible spread (> 0.3 nats here)
    assert (draws.std(0) > 0.3).all(), draws.std(0)
    # The mean over ALL Rademacher probes is the trace exactly: in D = 4 dimensions the 8 sign
    # patterns with v_0 = +1 (v and -v give the same v^T J v) averaged in one solve (P = 8 probes,
    # the batched VJP) must reproduce the exact divergence; single probes scatter around it.
    signs = torch.tensor([[1.0] + [1.0 - 2 * ((i >> b) & 1) for b in range(3)] for i in range(8)])
    probes = signs.view(8, 1, 1, 2, 2).expand(8, 4, 1, 2, 2)             # (P, N x K rows, C, H, W)
    xs, ys = X.repeat_interleave(2, 0), torch.tensor([0, 1, 0, 1])
    every = log_likelihood(model, sde, xs, ys, probes=probes, rtol=1e-6, atol=1e-6).logp.view(2, 2).double()
    assert torch.allclose(every, exact, atol=2e-3), (every - exact)
    single = torch.stack([log_likelihood(model, sde, xs, ys, probes=probes[i:i + 1], rtol=1e-6,
                                         atol=1e-6).logp.view(2, 2).double() for i in range(8)])
    assert torch.allclose(single.mean(0), exact, atol=2e-3)
    assert (single.std(0) > 0.5).all(), single.std(0)   # one probe is far from the trace


def test_shared_probes_make_class_differences_exact_and_independent_ones_do_not():
    # The design's central claim: every class of an image sees the same probe, so the Hutchinson
    # noise cancels in log p(x|0) - log p(x|1). Here the Jacobian is the same for both classes,
    # so with a shared probe the difference is exact (up to the solver's tolerance), whatever the
    # probe; with one probe per class it carries the full noise of both estimates.
    sde = SDES["vp"]
    model = RotatedGaussianEps(sde, MEANS, STDS)
    exact = class_log_likelihoods(model, sde, X, divergence_mode="exact", rtol=1e-6, atol=1e-6).logp.double()
    shared = _hutchinson_draws(model, sde, "rademacher")
    indep = []
    for s in range(len(shared)):   # the same solve with an independent probe for every image x class row
        probes = _make_probes("rademacher", 1, (4, 1, 2, 2), torch.Generator().manual_seed(100 + s), "cpu",
                              torch.float32)
        r = log_likelihood(model, sde, X.repeat_interleave(2, 0), torch.tensor([0, 1, 0, 1]), probes=probes,
                           rtol=1e-6, atol=1e-6)
        indep.append(r.logp.view(2, 2))
    indep = torch.stack(indep).double()
    per_class = shared.std(0)                                   # spread of one class's estimate
    d_shared = (shared[..., 0] - shared[..., 1]).std(0)         # spread of the class difference
    d_indep = (indep[..., 0] - indep[..., 1]).std(0)
    assert (per_class > 0.3).all(), per_class                   # the estimates are noisy ...
    assert (d_shared < 1e-2 * per_class.min()).all(), (d_shared, per_class)  # ... their difference is not
    assert (d_indep > 0.5 * per_class.min()).all(), (d_indep, per_class)
    assert (d_indep > 100 * d_shared).all(), (d_indep, d_shared)
    # and the shared-probe difference is the exact one
    diff_exact = exact[:, 0] - exact[:, 1]
    assert torch.allclose(shared[..., 0] - shared[..., 1], diff_exact.expand(len(shared), -1), atol=2e-3)
