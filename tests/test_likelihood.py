"""The probability-flow ODE likelihood against analytic Gaussian log-densities."""
import math

import pytest
import torch

from gaussian import GaussianEps, RotatedGaussianEps
from sgc.likelihood import SolverError, class_log_likelihoods, log_likelihood, to_bits_per_dim
from sgc.nets import ScoreMLP
from sgc.sde import SubVPSDE, VPSDE


def _setup(sde):
    # zero means: VP's prior at T=1 still carries alpha(1) * mean, which would bias the test
    model = GaussianEps(sde, means=[0.0, 0.0], stds=[0.15, 0.5], image_size=3)
    x = torch.rand(6, 1, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    return model, x


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=["vp", "subvp"])
def test_exact_divergence_matches_analytic(sde):
    model, x = _setup(sde)
    res = class_log_likelihoods(model, sde, x, divergence_mode="exact", rtol=1e-6, atol=1e-6)
    want = torch.stack([model.logp01(x, torch.full((6,), k)) for k in range(2)], 1)
    assert res.logp.shape == (6, 2)
    assert torch.allclose(res.logp, want, atol=2e-3), (res.logp - want).abs().max()
    assert res.nfe > 10


def test_hutchinson_mean_within_standard_error():
    sde = VPSDE()
    model, x = _setup(sde)
    x = x[:1]
    want = model.logp01(x, torch.tensor([1]))
    draws = torch.stack([
        log_likelihood(model, sde, x, torch.tensor([1]), probe="gaussian",
                       generator=torch.Generator().manual_seed(s), rtol=1e-5, atol=1e-5).logp[0]
        for s in range(24)])
    se = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - want[0]) < 3 * se + 1e-3, (draws.mean(), want, se)
    assert draws.std() > 0  # a stochastic estimate really is stochastic


def test_bits_per_dim_formula():
    # uniform density on [0,1]^D (log p = 0) of 8-bit data costs exactly 8 bits/dim
    assert to_bits_per_dim(torch.tensor([0.0]), 64, 256).item() == pytest.approx(8.0)


def test_label_changes_network_output_and_likelihood():
    torch.manual_seed(0)
    model = ScoreMLP(num_classes=3, image_size=4, hidden=32, blocks=1, emb_dim=16)
    for p in model.parameters():  # break the zero initialisation of the output layers
        torch.nn.init.normal_(p, std=0.2)
    x = torch.rand(2, 1, 4, 4)
    out0 = model(2 * x - 1, torch.tensor([0.5, 0.5]), torch.tensor([0, 0]))
    out1 = model(2 * x - 1, torch.tensor([0.5, 0.5]), torch.tensor([1, 1]))
    assert (out0 - out1).abs().max() > 1e-3
    res = class_log_likelihoods(model, VPSDE(), x, divergence_mode="exact", rtol=1e-4, atol=1e-4)
    assert (res.logp[:, 0] - res.logp[:, 1]).abs().min() > 1e-3


def test_same_probe_for_every_class():
    # identical class models must give identical class log-likelihoods: shared probe and noise.
    # The covariance is rotated (a non-diagonal Jacobian), so a Rademacher probe does not give the
    # exact trace and a probe per class would make the two classes differ (an isotropic model
    # could not tell: there every probe gives the same trace).
    sde = VPSDE()
    model = RotatedGaussianEps(sde, [[0.1, 0.0, -0.1, 0.2]] * 2, [0.1, 0.3, 0.6, 1.0], side=2)
    x = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    res = class_log_likelihoods(model, sde, x, dequantize=True, levels=17,
                                generator=torch.Generator().manual_seed(1))
    assert torch.equal(res.logp[:, 0], res.logp[:, 1])
    other = class_log_likelihoods(model, sde, x, dequantize=True, levels=17,
                                  generator=torch.Generator().manual_seed(2))
    assert (other.logp - res.logp).abs().max() > 0.1  # another probe and noise: another estimate


@pytest.mark.parametrize("bad, match", [
    (torch.rand(2, 1, 4, 4), "shape"),
    (torch.full((2, 1, 3, 3), 2.0), r"\[0, 1\]"),
    (torch.full((2, 1, 3, 3), float("nan")), "NaN"),
])
def test_bad_images_are_named(bad, match):
    sde = VPSDE()
    model = GaussianEps(sde, means=[0.0, 0.0], stds=[0.3, 0.3], image_size=3)
    with pytest.raises(ValueError, match=match):
        class_log_likelihoods(model, sde, bad)


def test_label_outside_classes_is_rejected():
    # checked once per call on the labels, not inside forward (which may run in a CUDA graph)
    from sgc.elbo import elbo_class_scores
    from sgc.sampling import reverse_sde
    model = ScoreMLP(num_classes=2, image_size=4, hidden=16, blocks=1, emb_dim=8)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="class labels"):
        log_likelihood(model, VPSDE(), x, torch.tensor([5]), method="euler", steps=1)
    with pytest.raises(ValueError, match="class labels"):
        elbo_class_scores(model, VPSDE(), x, classes=[0, 2], n_draws=2)
    with pytest.raises(ValueError, match="class labels"):
        reverse_sde(model, VPSDE(), [1, -1], steps=1)


def test_non_finite_solve_is_reported():
    class Exploding(GaussianEps):
        def forward(self, x, t, y):
            return super().forward(x, t, y) * float("inf")

    sde = VPSDE()
    model = Exploding(sde, means=[0.0, 0.0], stds=[0.3, 0.3], image_size=3)
    with pytest.raises(SolverError, match=r"non-finite log-likelihoods for batch rows \[0, 1, 2, 3\]"):
        class_log_likelihoods(model, sde, torch.rand(2, 1, 3, 3), method="rk4", steps=4)
