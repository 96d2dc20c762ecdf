"""Per-noise-level evidence and its weightings: known answers on the analytic Gaussian,
and a selection on validation that finds where the evidence is."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from gaussian import GaussianEps
from sgc.evidence import (Evidence, bin_edges_t, bin_means, compute_evidence, load_evidence, save_evidence,
                          weighted_scores)
from sgc.sde import VPSDE
from sgc.weighting import apply_weighting, fit_logistic, rank_auc, select_weighting

SDE = VPSDE()


def _gaussian_images():
    model = GaussianEps(SDE, means=[-0.2, 0.2], stds=[0.3, 0.4], image_size=3)
    g = torch.Generator().manual_seed(0)
    x = ((torch.tensor([-0.2, 0.2, 0.0])[:, None, None, None] + 0.3 * torch.randn(3, 1, 3, 3, generator=g)) + 1) / 2
    return model, x.clamp(0, 1)


def _uniform_difference(model, x, eps=1e-5):
    """-(Z / 2T) int_eps^T (E||eps_hat_1 - e||^2 - E||eps_hat_0 - e||^2) dt, in closed form per t:
    eps_hat_k - e = (s a / v_k)(z - mu_k) + (s^2 / v_k - 1) e with v_k = a^2 std_k^2 + s^2."""
    z = (2 * x - 1).flatten(1).double()
    d = z.shape[1]

    def err(t, k):
        a, s = (float(v) for v in SDE.marginal(torch.tensor(t, dtype=torch.float64)))
        v = a * a * float(model.stds[k]) ** 2 + s * s
        return (s * a / v) ** 2 * ((z - float(model.means[k])) ** 2).sum(1).numpy() + (s * s / v - 1) ** 2 * d

    out = []
    for i in range(len(z)):
        f = lambda t: err(t, 1)[i] - err(t, 0)[i]  # noqa: E731
        out.append(integrate.quad(f, eps, 1.0, limit=200, points=[1e-3, 1e-2, 0.1])[0])
    return np.array(out)


def test_likelihood_weighting_is_the_bound_and_bins_average_to_it():
    model, x = _gaussian_images()
    ev = compute_evidence(model, SDE, x, n_draws=64, batch_size=3, progress=False, seed=1)
    from sgc.classify import score_images
    s = score_images(model, SDE, x, estimator="elbo", batch_size=3, progress=False, seed=1, n_draws=64,
                     t_sampling="sobol", noise_sampling="antithetic")
    w = weighted_scores(ev, SDE, "likelihood")
    assert np.allclose(w[:, 1] - w[:, 0], s.log_lik[:, 1] - s.log_lik[:, 0], atol=1e-3)
    F = bin_means(ev, 16)                              # 4 draws in each of 16 equal-mass bins
    assert F.shape == (3, 2, 16) and not np.isnan(F).any()
    assert np.allclose(-F.mean(2), w)
    edges = bin_edges_t(SDE, 16)
    assert edges[0] == 1e-5 and edges[-1] == 1.0 and np.all(np.diff(edges) > 0)


def test_uniform_weighting_is_unbiased_for_its_integral():
    model, x = _gaussian_images()
    want = -_uniform_difference(model, x)   # score of class 1 minus class 0, in units of Z / 2T
    got = []
    for r in range(30):
        ev = compute_evidence(model, SDE, x, n_draws=64, batch_size=3, progress=False, seed=10 + r)
        w = weighted_scores(ev, SDE, "uniform")
        got.append((w[:, 1] - w[:, 0]) / (ev.Z / (2 * SDE.T)))
    got = np.array(got)
    z = (got.mean(0) - want) / (got.std(0) / math.sqrt(len(got)))
    assert np.abs(z).max() < 4, (got.mean(0), want, z)
    assert np.abs(want).min() > 5 * got.std(0).max() / math.sqrt(len(got))  # the test can tell a wrong weight


def _synthetic(n, seed, m=64, signal=(10, 14)):
    """Evidence where only the bins signal[0]..signal[1]-1 tell the classes apart."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    u = (np.argsort(rng.random((n, m)), 1) + rng.random((n, m))) / m
    v = rng.normal(0, 5, (n, 1, m)) + rng.normal(0, 3, (n, 2, m))
    b = (u * 16).astype(int)
    v[np.arange(n), y, :] -= 1.5 * ((b >= signal[0]) & (b < signal[1]))
    return Evidence(u=u, t=u, values=v, Z=1.0, ids=[str(i) for i in range(n)], labels=y, options={})


def test_selection_on_validation_finds_the_informative_noise_levels():
    val, test = _synthetic(80, 0), _synthetic(400, 1)
    rec = select_weighting(val, SDE, repeats=4)
    assert rec["chosen"] in ("truncated", "logistic")
    row = {r["label"]: r for r in rec["cv"]}
    assert row["truncated"]["params"]["lo"] == 10 and row["truncated"]["params"]["hi"] == 14
    assert row[rec["label"]]["cv_auc"] > row["likelihood"]["cv_auc"] + 0.05
    auc = {k: rank_auc(test.labels, apply_weighting(rec, test, SDE, k)) for k in ("likelihood", rec["label"])}
    assert auc[rec["label"]] > auc["likelihood"] + 0.05, auc


def test_selection_keeps_the_bound_when_every_level_carries_the_same_evidence():
    val = _synthetic(80, 2, signal=(0, 16))
    rec = select_weighting(val, SDE, repeats=4)
    strong = fit_logistic(bin_means(val, 16), val.labels, lam=1000.0)
    beta = np.array(strong["beta"])
    assert np.ptp(beta) < 0.05 * abs(beta.mean())      # a strong ridge is the (scaled) bound
    row = {r["label"]: r for r in rec["cv"]}
    assert row["likelihood"]["cv_auc"] >= row["logistic lam=0.01"]["cv_auc"] - 0.01  # free weights only add noise


def test_evidence_files_round_trip_and_refuse_a_stale_key(tmp_path):
    ev = _synthetic(5, 3)
    path = save_evidence(tmp_path / "ev.npz", ev, key="abc")
    back = load_evidence(path, key="abc")
    assert np.array_equal(back.values, ev.values) and back.ids == ev.ids and back.Z == ev.Z
    assert load_evidence(path, key="other") is None
    with pytest.raises(FileNotFoundError, match="no evidence file"):
        load_evidence(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="hold no draws"):
        select_weighting(ev.head(8), SDE, n_bins=16, folds=2, repeats=1)


@pytest.mark.parametrize("noise", ["iid", "antithetic"])
def test_offline_elimination_matches_the_online_run(noise):
    # one image per call, 16 pixels: the online rounds then draw exactly the noise of the full
    # run (torch's vectorised normal sampler works in blocks of 16 numbers)
    from sgc.elbo import elbo_class_scores
    from sgc.evidence import eliminate_offline
    model = GaussianEps(SDE, means=[-0.5, 0.0, 0.5], stds=[0.2] * 3, image_size=4)
    g = torch.Generator().manual_seed(5)
    z = torch.tensor([-0.5, 0.5, 0.0, -0.25, 0.25, 0.5])[:, None, None, None] + 0.2 * torch.randn(6, 1, 4, 4, generator=g)
    x = ((z + 1) / 2).clamp(0, 1)
    kw = dict(n_draws=64, t_sampling="sobol", noise_sampling=noise)
    spent = []
    for i in range(6):
        full = elbo_class_scores(model, SDE, x[i:i + 1], keep_draws=True, generator=torch.Generator().manual_seed(i), **kw)
        ev = Evidence(full.u.numpy(), full.t.numpy(), full.values.numpy(), 1.0, ["a"], np.array([0]),
                      {"noise_sampling": noise})
        scores, evals = eliminate_offline(ev, z=2.0, first_round=8)
        online = elbo_class_scores(model, SDE, x[i:i + 1], eliminate=True, stop_when_decided=True, first_round=8,
                                   eliminate_z=2.0, generator=torch.Generator().manual_seed(i), **kw)
        assert int(online.evals[0]) == int(evals[0]), i
        d_on = (online.logp - online.logp[:, :1]).numpy()
        assert np.allclose(scores - scores[:, :1], d_on, atol=2e-3), (i, scores, d_on)
        spent.append(int(evals[0]))
    assert min(spent) < 3 * 64 and max(spent) <= 3 * 64   # some images decided early
