"""Training: it learns, it resumes to the same weights, it refuses foreign checkpoints."""
import json

import numpy as np
import pytest
import torch

from sgc.data import load_dataset
from sgc.nets import ScoreMLP, ScoreUNet, build_model
from sgc.sde import VESDE, VPSDE, SubVPSDE, TimeSampler
from sgc.runs import load_checkpoint, load_run
from sgc.train import TrainConfig, train_score_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")["train"].subset(np.arange(200))


def _model():
    torch.manual_seed(0)
    return ScoreMLP(num_classes=10, image_size=8, hidden=32, blocks=1, emb_dim=16)


CFG = dict(steps=12, batch_size=16, warmup=3, levels=17, log_every=2, checkpoint_every=4,
           weighting="likelihood", hflip=True)


def test_resumed_run_equals_uninterrupted(digits, tmp_path):
    _, ema_a, hist_a = train_score_model(_model(), VPSDE(), digits.images, digits.labels, CFG,
                                         run_dir=tmp_path / "a", progress=False)
    # interrupted after 5 steps (between checkpoints), then resumed from the last one
    train_score_model(_model(), VPSDE(), digits.images, digits.labels, CFG, run_dir=tmp_path / "b",
                      progress=False, stop_after=4)
    _, ema_b, hist_b = train_score_model(_model(), VPSDE(), digits.images, digits.labels, CFG,
                                         run_dir=tmp_path / "b", resume=True, progress=False)
    for (k, a), b in zip(ema_a.state_dict().items(), ema_b.state_dict().values()):
        assert torch.equal(a, b), k
    assert hist_a == hist_b or [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]
    _, ckpt = load_checkpoint(tmp_path / "b")
    assert ckpt["step"] == 12


def test_training_lowers_the_loss(digits):
    cfg = dict(CFG, steps=100, batch_size=64, lr=2e-3, log_every=20, hflip=False, weighting="sigma2")
    _, _, hist = train_score_model(_model(), VPSDE(), digits.images, digits.labels, cfg, progress=False)
    assert hist[-1]["loss"] < 0.8 * hist[0]["loss"]


def test_checkpoint_from_another_config_is_refused(digits, tmp_path):
    train_score_model(_model(), VPSDE(), digits.images, digits.labels, dict(CFG, steps=2),
                      run_dir=tmp_path, progress=False)
    other = ScoreMLP(num_classes=10, image_size=8, hidden=48, blocks=1, emb_dim=16)
    with pytest.raises(ValueError, match="trained with"):
        train_score_model(other, VPSDE(), digits.images, digits.labels, dict(CFG, steps=4),
                          run_dir=tmp_path, resume=True, progress=False)
    # a config.json edited by hand no longer matches the checkpoint's own copy: named
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["hidden"] = 48
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"edited after training: model.hidden \(48 in config.json, 32"):
        load_run(tmp_path)


def test_truncated_checkpoint_is_named(digits, tmp_path):
    train_score_model(_model(), VPSDE(), digits.images, digits.labels, dict(CFG, steps=2),
                      run_dir=tmp_path, progress=False)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="checkpoint.pt"):
        load_checkpoint(tmp_path)


def test_bad_training_input(digits):
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"stpes": 3})
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        train_score_model(_model(), VPSDE(), digits.images, digits.labels + 5, CFG, progress=False)
    with pytest.raises(ValueError, match="no training images"):
        train_score_model(_model(), VPSDE(), digits.images[:5], np.zeros(5, int), CFG, progress=False)


@pytest.mark.parametrize("side", [8, 28, 32, 45])
def test_unet_any_side_and_channels(side):
    for c in (1, 3):
        m = ScoreUNet(num_classes=2, in_channels=c, image_size=side, channels=8, channel_mults=(1, 2, 2), emb_dim=16)
        x = torch.randn(2, c, side, side)
        assert m(x, torch.rand(2), torch.tensor([0, 1])).shape == x.shape
        assert build_model(m.config).config == m.config


def test_unet_has_no_batch_interaction():
    m = ScoreUNet(num_classes=2, image_size=16, channels=8, emb_dim=16).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(4, 1, 16, 16)
    t, y = torch.rand(4), torch.tensor([0, 1, 0, 1])
    together = m(x, t, y)
    alone = torch.cat([m(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_sde_marginals_solve_their_moment_ode(sde):
    # d var/dt = 2 a(t) var + g(t)^2 and d alpha/dt = a(t) alpha for a linear SDE
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    h = 1e-5
    a1, s1 = sde.marginal(t + h)
    a0, s0 = sde.marginal(t - h)
    alpha, sigma = sde.marginal(t)
    coef = sde.drift_coef(t)
    assert torch.allclose((a1 - a0) / (2 * h), coef * alpha, rtol=1e-4, atol=1e-6)
    # variance of the kernel x_t | x_0 (sigma^2, starting from 0; VE's starts at sigma_min^2)
    dvar = (s1 ** 2 - s0 ** 2) / (2 * h)
    assert torch.allclose(dvar, 2 * coef * sigma ** 2 + sde.diffusion(t) ** 2, rtol=1e-4)


def test_likelihood_time_sampler_is_importance_sampling():
    sde = VPSDE()
    sampler = TimeSampler(sde, "likelihood", eps=1e-3)
    t, w = sampler.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 1e-3 and t.max() <= 1.0
    # E_q[f(t) * w / density] for f = 1 recovers the integral Z; check the sampled histogram
    # matches the density g^2 / sigma^2 on a coarse grid
    edges = torch.tensor([1e-3, 1e-2, 1e-1, 0.5, 1.0])
    counts = torch.histc(torch.bucketize(t, edges).float(), bins=4, min=1, max=4) / len(t)
    grid = [torch.linspace(float(a), float(b), 20001, dtype=torch.float64) for a, b in zip(edges[:-1], edges[1:])]
    mass = torch.tensor([torch.trapezoid(sde.diffusion(g) ** 2 / sde.marginal(g)[1] ** 2, g) for g in grid])
    assert torch.allclose(counts.double(), mass / sampler.Z, atol=5e-3)
