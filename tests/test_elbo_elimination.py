"""Class elimination in the bound: paired means and standard errors computed by hand.

``_eliminated`` drops a class when its bound is worse than the best alive class's by more than
z paired standard errors; ``_paired_to_survivor`` re-expresses an eliminated class relative to
the best survivor. A deterministic fake model then checks both inside ``elbo_class_scores``.
"""
import math

import pytest
import torch

from sgc.elbo import _eliminated, _paired_to_survivor, elbo_class_scores, prior_term
from sgc.sde import VPSDE, TimeSampler

NAN = float("nan")


def _vals(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_eliminated_uses_paired_differences_by_hand():
    # one image, three classes, four draws (values of the bound: lower = more likely)
    vals = _vals([[[1.0, 2.0, 3.0, 4.0],      # class 0: mean 2.5, the best
                   [1.5, 2.5, 3.5, 4.5],      # class 1: +0.5 on every draw: paired s.e. 0
                   [2.0, 1.0, 5.0, 4.4]]])    # class 2: differences 1, -1, 2, 0.4
    alive = torch.ones(1, 3, dtype=torch.bool)
    # class 2's differences: mean 0.6, std (n-1) = sqrt((0.16 + 2.56 + 1.96 + 0.04) / 3), s.e. = std / 2
    se2 = math.sqrt((0.4 ** 2 + 1.6 ** 2 + 1.4 ** 2 + 0.2 ** 2) / 3) / 2           # 0.627
    assert _eliminated(vals, alive, z=3.0, min_classes=1).tolist() == [[False, True, False]]
    # an unpaired test would keep class 1: its own spread (s.e. 0.65) hides a 0.5 difference
    assert 0.6 > 0.9 * se2 and not 0.6 > 1.0 * se2
    assert _eliminated(vals, alive, z=0.9, min_classes=1).tolist() == [[False, True, True]]
    assert _eliminated(vals, alive, z=1.0, min_classes=1).tolist() == [[False, True, False]]
    # the min_classes best alive classes stay, whatever their margins (ranks: 0, then 1, then 2)
    assert _eliminated(vals, alive, z=0.0, min_classes=2).tolist() == [[False, False, True]]
    assert _eliminated(vals, alive, z=0.0, min_classes=3).tolist() == [[False, False, False]]


def test_eliminated_compares_with_the_best_alive_class_only():
    vals = _vals([[[1.0, 2.0, 3.0, 4.0],      # class 0: best, but already eliminated
                   [1.5, 2.5, 3.5, 4.5],      # class 1: best alive
                   [2.0, 3.0, 4.0, 5.0],      # class 2: +0.5 over class 1 on every draw
                   [1.5, 2.5, 3.5, 4.5]]])    # class 3: identical to class 1: never dropped
    alive = torch.tensor([[False, True, True, True]])
    drop = _eliminated(vals, alive, z=3.0, min_classes=1)
    assert drop.tolist() == [[False, False, True, False]]   # a dead class is not dropped again


def test_paired_to_survivor_by_hand():
    # class 0 survived with all four draws; class 1 was eliminated after two
    vals = _vals([[[1.0, 2.0, 3.0, 6.0], [3.0, 5.0, NAN, NAN]]])
    alive = torch.tensor([[True, False]])
    mean = _vals([[3.0, 4.0]])                              # their own means
    se0 = math.sqrt((4 + 1 + 0 + 9) / 3 / 4)                # s.e. of class 0: var 14/3, 4 draws
    se1 = math.sqrt(2.0 / 2)                                 # own s.e. of class 1: var 2, 2 draws
    stderr = _vals([[se0, se1]])
    m, s = _paired_to_survivor(vals, mean, stderr, alive)
    # differences on the shared draws: 3 - 1 = 2, 5 - 2 = 3: mean 2.5, variance 0.5, / 2 draws
    assert m[0].tolist() == pytest.approx([3.0, 3.0 + 2.5])
    assert s[0].tolist() == pytest.approx([se0, math.sqrt(se0 ** 2 + 0.5 / 2)])
    assert mean.tolist() == [[3.0, 4.0]] and stderr[0].tolist() == pytest.approx([se0, se1])  # inputs untouched


def test_paired_to_survivor_picks_the_best_survivor_per_image():
    vals = _vals([[[5.0, 5.0, 5.0], [1.0, 2.0, 3.0], [4.0, NAN, NAN]],     # image 0: class 1 is the best
                  [[1.0, 1.0, 4.0], [9.0, 9.0, 9.0], [2.0, NAN, NAN]]])    # image 1: class 0 is the best
    alive = torch.tensor([[True, True, False], [True, True, False]])
    mean = torch.nanmean(vals, 2)
    stderr = torch.zeros(2, 3, dtype=torch.float64)
    m, s = _paired_to_survivor(vals, mean, stderr, alive)
    assert m[0, 2].item() == pytest.approx(2.0 + (4.0 - 1.0))   # best survivor: class 1 (mean 2)
    assert m[1, 2].item() == pytest.approx(2.0 + (2.0 - 1.0))   # best survivor: class 0 (mean 2)
    assert torch.equal(m[:, :2], mean[:, :2]) and torch.equal(s[:, :2], stderr[:, :2])
    assert s[:, 2].tolist() == [0.0, 0.0]   # one shared draw: no variance estimate (m - 1 clamped to 1)


class OffsetEps(torch.nn.Module):
    """Deterministic fake model for images x = 0.5 (z0 = 0): eps_hat = e + offset[y].

    With z0 = 0 the network input is z_t = sigma(t) e, so it recovers the noise e exactly and
    every draw of class y has denoising error D offset[y]^2: the class differences of the
    bound are known and carry no Monte-Carlo noise at all.
    """

    def __init__(self, sde, offsets, side=2):
        super().__init__()
        self.sde, self.offsets = sde, torch.as_tensor(offsets, dtype=torch.float32)
        self.num_classes, self.in_channels, self.image_size = len(offsets), 1, side
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, y):
        _, sigma = self.sde.marginal(torch.as_tensor(t))
        return x / sigma.view(-1, 1, 1, 1) + self.offsets[y].view(-1, 1, 1, 1)


def test_elimination_inside_the_bound_with_a_deterministic_model():
    sde = VPSDE()
    offsets = [0.0, 1.0, 0.3]                       # class 0 is the best, 2 the runner-up
    model = OffsetEps(sde, offsets)
    x = torch.full((3, 1, 2, 2), 0.5)
    d, z_norm = 4, TimeSampler(sde, "likelihood", 1e-5).Z
    full = elbo_class_scores(model, sde, x, n_draws=16, generator=torch.Generator().manual_seed(0))
    fast = elbo_class_scores(model, sde, x, n_draws=16, eliminate=True, first_round=4, round_size=4,
                             min_classes=2, generator=torch.Generator().manual_seed(0))
    # the bound's class differences: 1/2 Z D (offset_k^2 - offset_0^2), exactly, in both runs
    gap = torch.tensor([0.5 * z_norm * d * o * o for o in offsets])
    for r in (full, fast):
        assert torch.allclose((r.logp[:, :1] - r.logp).double(), gap.double().expand(3, 3), rtol=1e-5, atol=1e-3)
    # class 1 is dropped after the first round (its paired s.e. is 0); min_classes=2 keeps class 2
    assert fast.alive.tolist() == [[True, False, True]] * 3
    assert fast.draws.tolist() == [[16, 4, 16]] * 3 and fast.evals.tolist() == [36] * 3
    assert full.evals.tolist() == [48] * 3 and fast.nfe == full.nfe == 16
    # paired to the survivor: the eliminated class has the survivor's s.e. (the differences have none)
    assert torch.equal(fast.stderr[:, 1], fast.stderr[:, 0])
    assert torch.equal(fast.prior, prior_term(sde, torch.zeros(3, 1, 2, 2)))


def test_without_min_classes_only_the_best_survives():
    sde = VPSDE()
    model = OffsetEps(sde, [0.3, 0.0, 1.0])        # class 1 is the best here
    x = torch.full((2, 1, 2, 2), 0.5)
    r = elbo_class_scores(model, sde, x, n_draws=12, eliminate=True, first_round=3,
                          generator=torch.Generator().manual_seed(1))
    assert r.alive.tolist() == [[False, True, False]] * 2
    assert r.draws.tolist() == [[3, 12, 3]] * 2 and r.evals.tolist() == [18, 18]
    assert (r.logp.argmax(1) == 1).all()
