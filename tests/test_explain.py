"""Evidence maps (known answers on Gaussian classes, finite differences, Adebayo's randomisation
check) and counterfactuals (SDEdit towards the other class)."""
import numpy as np
import pytest
import torch

from gaussian import GaussianEps
from sgc.classify import posterior, score_images
from sgc.counterfactual import counterfactual, counterfactual_study
from sgc.data import load_dataset
from sgc.explain import deletion_insertion, evidence_map, randomized_model, rank_similarity
from sgc.runs import load_run
from sgc.sde import make_sde
from tiny_runs import digits_run, one_thread  # noqa: F401 (one_thread: autouse fixture)


def _analytic_grad(model, x):
    xt = torch.tensor(x, requires_grad=True)
    one, zero = torch.ones(len(x), dtype=torch.long), torch.zeros(len(x), dtype=torch.long)
    (g,) = torch.autograd.grad((model.logp01(xt, one) - model.logp01(xt, zero)).sum(), xt)
    return g.numpy()


def test_evidence_map_of_gaussian_classes_is_the_analytic_gradient():
    sde = make_sde("vp")
    x = np.random.default_rng(0).random((4, 1, 2, 2)).astype(np.float32)
    same = GaussianEps(sde, [-0.5, 0.5], [0.3, 0.3])   # equal variances: the map is 2 (mu_1 - mu_0) / var everywhere
    e = evidence_map(same, sde, x, 1, 0, n_draws=512)  # each draw's gradient depends on t only: stratified in t
    np.testing.assert_allclose(e.maps, _analytic_grad(same, x), rtol=2e-3)
    wide = GaussianEps(sde, [-0.5, 0.5], [0.3, 0.6])   # unequal variances: a Monte-Carlo estimate
    e = evidence_map(wide, sde, x, 1, 0, n_draws=2000)
    g = _analytic_grad(wide, x)
    assert np.abs(e.maps - g).mean() < 0.05 * np.abs(g).mean()
    exact = (wide.logp01(torch.tensor(x), torch.ones(4, dtype=torch.long))
             - wide.logp01(torch.tensor(x), torch.zeros(4, dtype=torch.long))).numpy()
    assert (np.abs(e.log_ratio - exact) < 4 * e.stderr + 0.05).all()


@pytest.fixture(scope="module")
def digits():
    model, sde, config = load_run(digits_run())
    test = load_dataset("digits", val_size=0.2)["test"]
    x = test.images[:12]

    def classify(images):
        s = score_images(model, sde, images, estimator="elbo", n_draws=32, levels=17, dequantize=False,
                         progress=False, seed=0)
        return posterior(s.log_lik)

    post = classify(x)
    return model, sde, x, classify, post.argmax(1), np.argsort(post, 1)[:, -2]


def test_evidence_map_is_the_gradient_of_its_own_estimate(digits):
    model, sde, x, _, a, b = digits
    e = evidence_map(model, sde, x[:2], a[:2], b[:2], n_draws=16, seed=3)
    i = np.unravel_index(np.abs(e.maps[0]).argmax(), e.maps[0].shape)
    h = 1e-2
    up, down = x[:2].copy(), x[:2].copy()
    up[(0, *i)] += h
    down[(0, *i)] -= h
    fd = (evidence_map(model, sde, up, a[:2], b[:2], n_draws=16, seed=3).log_ratio[0]
          - evidence_map(model, sde, down, a[:2], b[:2], n_draws=16, seed=3).log_ratio[0]) / (2 * h)
    assert fd == pytest.approx(e.maps[(0, *i)], rel=0.02)


def test_randomised_model_gives_different_maps(digits):
    """Adebayo et al. 2018: maps of the trained model agree across draws, and differ from those of
    the same network with re-initialised weights."""
    model, sde, x, _, a, b = digits
    trained = evidence_map(model, sde, x, a, b, n_draws=64, seed=0)
    again = evidence_map(model, sde, x, a, b, n_draws=64, seed=1)
    rnd = evidence_map(randomized_model(model, seed=0), sde, x, a, b, n_draws=64, seed=0)
    same, other = rank_similarity(trained.maps, again.maps).mean(), rank_similarity(trained.maps, rnd.maps).mean()
    assert same > 0.7 and other < 0.3, (same, other)
    assert not np.allclose(next(randomized_model(model).parameters()).detach(), next(model.parameters()).detach())


def test_deletion_falls_faster_along_the_evidence_than_at_random(digits):
    model, sde, x, classify, a, b = digits
    maps = evidence_map(model, sde, x, a, b, n_draws=32).maps.reshape(len(x), -1)
    score = lambda images: classify(images)[np.arange(len(x)), a]  # noqa: E731
    curves = deletion_insertion(score, x, np.argsort(-maps, 1), steps=4)
    rng = np.random.default_rng(0)
    rand = deletion_insertion(score, x, np.stack([rng.permutation(maps.shape[1]) for _ in x]), steps=4)
    np.testing.assert_allclose(curves["deletion"][:, 0], rand["deletion"][:, 0])   # both start at p(a | x)
    np.testing.assert_allclose(curves["deletion"][:, -1], rand["deletion"][:, -1])  # and end at the blank image
    assert curves["deletion"][:, 1:-1].mean() < rand["deletion"][:, 1:-1].mean()
    assert curves["insertion"][:, 1:-1].mean() > rand["insertion"][:, 1:-1].mean()
    lin = deletion_insertion(lambda im: im.reshape(len(im), -1).sum(1), x[:1], np.arange(64)[None], steps=2)
    np.testing.assert_allclose(lin["insertion"][0], [0, x[0].ravel()[:32].sum(), x[0].sum()], rtol=1e-6)


def test_counterfactuals_of_gaussian_classes_move_to_the_target_only_with_enough_noise():
    sde = make_sde("vp")
    model = GaussianEps(sde, [-0.5, 0.5], [0.1, 0.1])       # class 0 near 0.25, class 1 near 0.75 in [0, 1]
    x = np.full((200, 1, 2, 2), 0.25, np.float32)
    for sampler in ("sde", "ode"):
        far = counterfactual(model, sde, x, 1, t_star=1.0, sampler=sampler, steps=200)
        near = counterfactual(model, sde, x, 1, t_star=0.002, sampler=sampler, steps=200)
        assert far.images.mean() == pytest.approx(0.75, abs=0.03)
        assert near.images.mean() == pytest.approx(0.25, abs=0.02)
        np.testing.assert_allclose(far.diff, far.images - x)
    with pytest.raises(ValueError, match="t_star"):
        counterfactual(model, sde, x, 1, t_star=0.0)


def test_counterfactual_study_flips_towards_the_target_more_than_the_control(digits):
    model, sde, x, classify, _, _ = digits
    table, results = counterfactual_study(model, sde, x, classify, t_stars=(0.2, 0.6), steps=100)
    assert list(table["t_star"]) == [0.2, 0.2, 0.6, 0.6] and (table["n"] == len(x)).all()
    target, control = table[table["towards"].str.startswith("runner")], table[~table["towards"].str.startswith("runner")]
    assert target["flip_rate"].to_numpy()[-1] > control["flip_rate"].to_numpy()[-1]
    assert (target["l2_mean"].to_numpy()[1] > target["l2_mean"].to_numpy()[0])   # more noise, more change
    assert results[(0.6, "target")].images.shape == x.shape
