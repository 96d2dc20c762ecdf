"""Deterministic figures (byte-identical re-runs), the samplers and the Figure 1 toy problem."""
import hashlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sgc import plots, toy  # noqa: E402
from sgc.metrics import reliability_curve  # noqa: E402
from sgc.sampling import probability_flow, reverse_sde, sample_per_class  # noqa: E402
from sgc.sde import make_sde  # noqa: E402


def _figure1(sde):
    g = np.linspace(-1, 1, 41)
    gx, gy = np.meshgrid(g, g)
    grid = np.stack([gx, gy], -1)
    a = np.linspace(-0.9, 0.9, 9)
    ax_, ay_ = np.meshgrid(a, a)
    arrows = np.stack([ax_, ay_], -1)
    panels = []
    for c in (0, 1):
        s = toy.toy_score(arrows, c, sde, 0.05)
        panels.append({"title": f"class {c}", "density": toy.toy_density(grid, c, sde, 0.05), "grid_xy": (ax_, ay_),
                       "score": (s[..., 0], s[..., 1])})
    d0, d1 = toy.toy_density(grid, 0), toy.toy_density(grid, 1)
    pts, lab = toy.sample_toy(50, 0)
    return plots.score_fields(panels, (-1, 1, -1, 1), posterior={"learned": d1 / (d0 + d1 + 1e-300),
                                                                 "true": d1 / (d0 + d1 + 1e-300),
                                                                 "points": pts, "labels": lab})


def _figures(sde):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    yield "figure1", _figure1(sde)
    yield "confusion", plots.confusion_matrix(y, p.argmax(1), ["a", "b", "c"])
    yield "reliability", plots.reliability_diagram(reliability_curve(y, p, 10), ece=0.1)
    yield "roc", plots.roc_pr_curves(y, p, ["a", "b", "c"])
    yield "grid", plots.image_grid(rng.random((12, 1, 8, 8)), y[:12], ["a", "b", "c"], ncols=6)


def _digests(folder, sde):
    plots.set_theme()
    out = {}
    for name, fig in _figures(sde):
        for path in plots.save_figure(fig, folder / name):
            out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        plt.close(fig)
    return out


def test_regenerated_figures_are_byte_identical(tmp_path):
    sde = make_sde("vp")
    first = _digests(tmp_path / "a", sde)
    second = _digests(tmp_path / "b", sde)
    assert len(first) == 10 and first == second
    png = (tmp_path / "a" / "figure1.png").read_bytes()
    pdf = (tmp_path / "a" / "figure1.pdf").read_bytes()
    assert b"matplotlib version" not in png and b"CreationDate" not in pdf
    assert not list((tmp_path / "a").glob("*.tmp.*")), "temporary files left behind"


class ExactToyModel(torch.nn.Module):
    """eps_hat = -sigma(t) * exact score of the toy mixture: a perfect noise predictor."""

    def __init__(self, sde):
        super().__init__()
        self.sde, self.num_classes, self.in_channels, self.image_size = sde, 2, 2, 1
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, y):
        t = torch.as_tensor(t).expand(len(x))
        out = torch.empty_like(x)
        for c in (0, 1):
            m = y == c
            if m.any():
                assert (t[m] == t[m][0]).all(), "the samplers use one time per step"
                s = toy.toy_score(x[m, :, 0, 0].double().numpy(), c, self.sde, float(t[m][0]))
                _, sigma = self.sde.marginal(t[m])
                out[m] = (-sigma[:, None].double() * torch.from_numpy(s)).float()[:, :, None, None]
        return out


@pytest.mark.parametrize("sampler", ["sde", "ode"])
def test_samplers_recover_the_class_means_of_an_exact_score(sampler):
    sde = make_sde("vp")
    model = ExactToyModel(sde)
    res = sample_per_class(model, sde, 200, sampler=sampler, seed=0, steps=100)
    assert res.images.shape == (400, 2, 1, 1) and res.nfe == 101
    assert np.isfinite(res.images).all() and res.images.min() >= 0 and res.images.max() <= 1
    z = res.images[:, :, 0, 0] * 2 - 1
    pts, lab = toy.sample_toy(20000, 3)
    for c in (0, 1):
        got, want = z[res.labels == c].mean(0), pts[lab == c].mean(0)
        assert np.abs(got - want).max() < 0.05, (sampler, c, got, want)


def test_probability_flow_is_deterministic_and_labels_matter():
    sde = make_sde("vp")
    model = ExactToyModel(sde)
    a = probability_flow(model, sde, [0, 1], steps=40, generator=torch.Generator().manual_seed(1))
    b = probability_flow(model, sde, [0, 1], steps=40, generator=torch.Generator().manual_seed(1))
    c = probability_flow(model, sde, [1, 0], steps=40, generator=torch.Generator().manual_seed(1))
    assert np.array_equal(a.images, b.images)
    assert not np.allclose(a.images, c.images)
    r = reverse_sde(model, sde, [0, 1], steps=20, generator=torch.Generator().manual_seed(1))
    assert r.images.shape == (2, 2, 1, 1)


def test_toy_exact_score_is_the_gradient_of_the_log_density():
    sde = make_sde("vp")
    xy = np.array([[0.1, -0.2], [-0.5, 0.4]])
    h = 1e-5
    for c in (0, 1):
        num = np.stack([(np.log(toy.toy_density(xy + h * e, c, sde, 0.1)) -
                         np.log(toy.toy_density(xy - h * e, c, sde, 0.1))) / (2 * h) for e in np.eye(2)], -1)
        assert np.allclose(num, toy.toy_score(xy, c, sde, 0.1), rtol=1e-4, atol=1e-4)


def test_fit_toy_model_learns_the_score():
    torch.set_num_threads(1)
    model, sde, history = toy.fit_toy_model(n_per_class=500, steps=300, seed=0)
    assert np.isfinite(history[-1]["loss"])
    assert toy.score_agreement(model, sde, t=0.1, n=200) > 0.8
