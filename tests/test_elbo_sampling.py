"""Variance reduction in the Monte-Carlo bound: Sobol / antithetic draws stay unbiased and pay.

Known answers: the analytic class-conditional Gaussian of ``tests/gaussian.py``, whose exact
noise predictor makes the bound equal to the log-density (up to the tiny prior mismatch).
"""
import math

import pytest
import torch

from gaussian import GaussianEps
from sgc.elbo import _noise, _times, elbo_class_scores
from sgc.sde import TimeSampler, VPSDE

SDE = VPSDE()


def _setup():
    model = GaussianEps(SDE, means=[-0.3, 0.3], stds=[0.3, 0.3], image_size=4)
    g = torch.Generator().manual_seed(0)
    z = torch.tensor([-0.3, 0.3, -0.3, 0.3])[:, None, None, None] + 0.3 * torch.randn(4, 1, 4, 4, generator=g)
    x = ((z + 1) / 2).clamp(0, 1)
    exact = torch.stack([model.logp01(x, torch.full((4,), k)) for k in range(2)], 1)
    return model, x, exact


def _repeats(model, x, reps=60, **kw):
    return torch.stack([elbo_class_scores(model, SDE, x, n_draws=32, generator=torch.Generator().manual_seed(100 + r),
                                          **kw).logp for r in range(reps)])


@pytest.mark.parametrize("t_sampling,noise_sampling", [("sobol", "antithetic"), ("sobol", "sobol"),
                                                       ("stratified", "antithetic"), ("sobol", "iid")])
def test_new_sampling_schemes_are_unbiased(t_sampling, noise_sampling):
    model, x, exact = _setup()
    logp = _repeats(model, x, t_sampling=t_sampling, noise_sampling=noise_sampling)
    z = (logp.mean(0) - exact) / (logp.std(0) / math.sqrt(len(logp)))
    assert z.abs().max() < 4, z


def test_sobol_t_and_antithetic_noise_reduce_the_variance_of_class_differences():
    model, x, _ = _setup()

    def diff_var(**kw):
        logp = _repeats(model, x, **kw)
        return (logp[..., 1] - logp[..., 0]).var(0).mean().item()

    base = diff_var(t_sampling="stratified", noise_sampling="iid")   # the default estimator
    anti = diff_var(t_sampling="sobol", noise_sampling="antithetic")
    iid = diff_var(t_sampling="iid", noise_sampling="iid")
    assert base < 0.3 * iid, (base, iid)      # stratified t pays by itself
    assert anti < 0.7 * base, (anti, base)    # measured ~0.5: the part linear in e cancels in a pair


def test_sobol_prefixes_are_stratified_and_antithetic_pairs_mirror():
    sampler = TimeSampler(SDE, "likelihood")
    u, t = _times(sampler, 3, 64, "sobol", torch.Generator().manual_seed(0))
    assert u.shape == t.shape == (3, 64) and (t >= sampler.eps).all() and (t <= 1).all()
    for m in (2, 4, 8, 16, 32, 64):   # the first m draws: one in each stratum of width 1/m
        strata = (u[:, :m] * m).floor().long().sort(1).values
        assert torch.equal(strata, torch.arange(m).expand(3, m)), m
    e = _noise(2, 6, (1, 3, 3), "antithetic", torch.Generator().manual_seed(0))
    assert torch.equal(e[:, 1::2], -e[:, 0::2]) and not torch.equal(e[:, 0], e[:, 2])
    s = _noise(1, 256, (1, 4, 4), "sobol", torch.Generator().manual_seed(0))
    assert abs(s.mean()) < 0.02 and abs(s.std() - 1) < 0.02   # balanced normal quantiles


def test_keep_draws_reproduce_the_estimate_and_antithetic_pairs_share_t():
    model, x, _ = _setup()
    r = elbo_class_scores(model, SDE, x, n_draws=16, keep_draws=True, t_sampling="sobol",
                          noise_sampling="antithetic", generator=torch.Generator().manual_seed(1))
    assert r.values.shape == (4, 2, 16) and r.t.shape == r.u.shape == (4, 16)
    assert torch.equal(r.t[:, 0::2], r.t[:, 1::2])
    logp = -(r.prior.double()[:, None] + r.values.mean(2)) + 16 * math.log(2)
    assert torch.allclose(logp.float(), r.logp, atol=1e-3)
    assert elbo_class_scores(model, SDE, x, n_draws=16).values is None


def test_stop_when_decided_spends_draws_where_the_classes_are_close():
    sde = VPSDE()
    model = GaussianEps(sde, means=[-0.5, 0.5], stds=[0.2, 0.2], image_size=4)
    g = torch.Generator().manual_seed(3)
    centre = torch.tensor([-0.5, 0.5, -0.5, 0.5, 0.0, 0.0])   # the last two sit between the classes
    x = ((centre[:, None, None, None] + 0.2 * torch.randn(6, 1, 4, 4, generator=g)) + 1) / 2
    x[4:] = ((0.02 * torch.randn(2, 1, 4, 4, generator=g)) + 1) / 2
    kw = dict(n_draws=64, eliminate=True, first_round=8, t_sampling="sobol", generator=None)
    keep = elbo_class_scores(model, sde, x, **{**kw, "generator": torch.Generator().manual_seed(4)})
    stop = elbo_class_scores(model, sde, x, stop_when_decided=True, **{**kw, "generator": torch.Generator().manual_seed(4)})
    assert torch.equal(stop.alive, keep.alive)                 # same eliminations
    assert torch.equal(stop.logp.argmax(1), keep.logp.argmax(1))
    decided = stop.alive.sum(1) == 1
    assert decided[:4].all() and not decided[4:].any()        # clear images decided, close ones not
    assert (stop.evals[:4] <= 64).all() and (stop.evals[4:] == 128).all()
    assert (keep.evals[:4] > stop.evals[:4]).all()            # without stopping, the survivor keeps drawing
    # a decided image's two classes saw the same draws: its difference is paired, not re-expressed
    assert torch.equal(stop.draws[decided, 0], stop.draws[decided, 1])


def test_bad_sampling_options_are_refused():
    model, x, _ = _setup()
    with pytest.raises(ValueError, match="t_sampling"):
        elbo_class_scores(model, SDE, x, n_draws=8, t_sampling="halton")
    with pytest.raises(ValueError, match="noise_sampling"):
        elbo_class_scores(model, SDE, x, n_draws=8, noise_sampling="qmc")
    with pytest.raises(ValueError, match="even"):
        elbo_class_scores(model, SDE, x, n_draws=7, noise_sampling="antithetic")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device"))])
def test_graphed_bound_keeps_sobol_antithetic_draws_and_elimination(device):
    # the graphed network evaluation (a CUDA graph per batch shape; on the CPU the same buffers, eager)
    # must see exactly the draws of the eager path: Sobol t, antithetic noise, elimination rounds
    from sgc import graphs
    from sgc.nets import build_model
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "num_classes": 3, "in_channels": 1, "image_size": 4, "hidden": 16,
                         "blocks": 1, "emb_dim": 8}).to(device).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    kw = dict(n_draws=16, t_sampling="sobol", noise_sampling="antithetic", eliminate=True, first_round=4,
              eliminate_z=0.5, stop_when_decided=True, max_batch=24)
    eager = elbo_class_scores(model, SDE, x, generator=torch.Generator().manual_seed(7), **kw)
    graphs.clear_cache()
    fast = elbo_class_scores(model, SDE, x, generator=torch.Generator().manual_seed(7), compile="graph", **kw)
    assert graphs._CACHE and (device == "cpu" or all(g.graphed for g in graphs._CACHE.values()))
    assert torch.equal(fast.draws, eager.draws) and torch.equal(fast.alive, eager.alive)
    assert (eager.draws < 16).any()                                   # elimination did take draws away
    tol = 0 if device == "cpu" else 1e-3
    torch.testing.assert_close(fast.logp, eager.logp, rtol=0, atol=tol)
