"""The GPU engine's fast paths give the eager answers: the graphed training step (its static
buffers, learning-rate and EMA tensors, the undoing of the capture's warm-up steps), the
torch.compile'd step, resume from a graphed run, graphed ODE / dpm2 / bound evaluations.

Without CUDA the "graph" engine runs the same static-buffer code uncaptured, which is what
most tests here check; the capture itself is checked by the CUDA-only tests at the end.
"""
import os
import shutil

import numpy as np
import pytest
import torch

from sgc import graphs
from sgc.data import load_dataset
from sgc.elbo import elbo_class_scores
from sgc.likelihood import class_log_likelihoods, evaluators
from sgc.nets import ScoreMLP, ScoreUNet
from sgc.runs import load_checkpoint
from sgc.sde import VPSDE, TimeSampler
from sgc.train import TrainConfig, train_score_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None,
    reason="torch.compile on the CPU generates C++: no C++ compiler (c++ or $CXX) on PATH")

CFG = dict(steps=20, batch_size=16, warmup=4, lr=3e-3, levels=17, log_every=3, checkpoint_every=5,
           weighting="likelihood", hflip=True, vflip=True, grad_clip=0.1)  # clipping active in every step


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")["train"].subset(np.arange(160))


def _mlp():
    torch.manual_seed(0)
    return ScoreMLP(num_classes=10, image_size=8, hidden=32, blocks=1, emb_dim=16)


def _train(digits, engine, device="cpu", model=None, **kw):
    model = _mlp() if model is None else model
    return train_score_model(model, VPSDE(), digits.images, digits.labels, dict(CFG, compile=engine), progress=False,
                             device=device, **kw)


def _assert_close_runs(a, b, rtol, atol):
    (ma, ea, ha), (mb, eb, hb) = a, b
    for part_a, part_b in ((ma, mb), (ea, eb)):
        for (k, va), vb in zip(part_a.state_dict().items(), part_b.state_dict().values()):
            torch.testing.assert_close(va.cpu(), vb.cpu(), rtol=rtol, atol=atol, msg=k)
    assert [h["step"] for h in ha] == [h["step"] for h in hb]
    np.testing.assert_allclose([h["loss"] for h in ha], [h["loss"] for h in hb], rtol=1e-4)


def test_graph_engine_equals_eager_over_20_steps(digits):
    eager, graph = _train(digits, "eager"), _train(digits, "graph")
    assert {h["engine"] for h in eager[2]} == {"eager"}
    assert {h["engine"] for h in graph[2]} == {"graph (uncaptured)"}  # no CUDA here
    # the weights moved (20 real steps), and the 3 warm-up steps of the capture left no trace
    assert not torch.equal(graph[0].inp.weight, _mlp().inp.weight)
    _assert_close_runs(eager, graph, rtol=1e-4, atol=1e-6)


def test_resumed_graph_run_equals_uninterrupted(digits, tmp_path):
    ref = _train(digits, "graph", run_dir=tmp_path / "ref")
    _train(digits, "graph", run_dir=tmp_path / "run", stop_after=7)  # checkpoint at 5 and 7, loss sum partial
    assert load_checkpoint(tmp_path / "run")[1]["step"] == 7
    resumed = _train(digits, "graph", run_dir=tmp_path / "run", resume=True)
    for part_a, part_b in ((ref[0], resumed[0]), (ref[1], resumed[1])):
        for (k, a), b in zip(part_a.state_dict().items(), part_b.state_dict().values()):
            assert torch.equal(a, b), k
    assert [h["loss"] for h in ref[2]] == [h["loss"] for h in resumed[2]]
    # a graphed run's checkpoint resumes under another engine (same numbers up to rounding)
    _train(digits, "graph", run_dir=tmp_path / "mixed", stop_after=7)
    mixed = _train(digits, "eager", run_dir=tmp_path / "mixed", resume=True)
    _assert_close_runs(ref, mixed, rtol=1e-4, atol=1e-6)


@needs_compiler
def test_compiled_training_equals_eager(digits):
    _assert_close_runs(_train(digits, "eager"), _train(digits, "default"), rtol=1e-4, atol=1e-5)


def test_engine_option_is_checked():
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(compile="fast")
    assert TrainConfig(compile=None).compile == "eager"


def test_device_draws_follow_the_generator():
    sampler = TimeSampler(VPSDE(), "likelihood", 1e-5)
    a, _ = sampler.sample(64, generator=torch.Generator().manual_seed(3))
    b, _ = sampler.sample(64, u=torch.rand(64, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a, b) and a.min() >= 1e-5 and a.max() <= 1.0


def _unet():
    torch.manual_seed(0)
    m = ScoreUNet(num_classes=2, image_size=8, channels=8, channel_mults=(1, 2), emb_dim=16)
    with torch.no_grad():
        for p in m.parameters():  # an untrained UNet predicts zero noise: make it do something
            p.add_(0.01 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("method", ["dopri5", "rk4", "dpm2"])
def test_graphed_ode_equals_eager(method):
    model, sde = _unet(), VPSDE()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    opts = dict(method=method, rtol=1e-2, atol=1e-2, steps=4, dequantize=True, levels=256)
    eager = class_log_likelihoods(model, sde, x, generator=torch.Generator().manual_seed(2), **opts)
    fast = class_log_likelihoods(model, sde, x, generator=torch.Generator().manual_seed(2), compile="graph", **opts)
    assert fast.nfe == eager.nfe
    torch.testing.assert_close(fast.logp, eager.logp, rtol=0, atol=1e-4)


def test_graphed_bound_equals_eager():
    model, sde = _unet(), VPSDE()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    # max_batch 8: six forward passes of 6 rows each, one graph replayed on new inputs
    eager = elbo_class_scores(model, sde, x, n_draws=6, max_batch=8, generator=torch.Generator().manual_seed(2))
    fast = elbo_class_scores(model, sde, x, n_draws=6, max_batch=8, generator=torch.Generator().manual_seed(2),
                             compile="graph")
    torch.testing.assert_close(fast.logp, eager.logp, rtol=0, atol=1e-4)


def test_graph_cache_follows_the_weights():
    model, sde = _unet(), VPSDE()
    z, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    probes = torch.randn(1, 2, 1, 8, 8)
    graphs.clear_cache()
    f1 = evaluators(model, sde, y, probes, z, "graph")[0]
    t = torch.tensor(0.3)
    out1, div1 = f1(z, t)
    assert len(graphs._CACHE) == 1
    evaluators(model, sde, y, probes, z, "graph")[0](z, t)  # same model and shape: the same graph
    assert len(graphs._CACHE) == 1
    with torch.no_grad():  # weights changed in place: same graph, new values seen
        model.head[-1].bias.add_(1.0)
    out2, _ = evaluators(model, sde, y, probes, z, "graph")[0](z, t)
    assert len(graphs._CACHE) == 1 and not torch.allclose(out1, out2)
    eager_out, eager_div = evaluators(model, sde, y, probes, z, None)[0](z, t)
    torch.testing.assert_close(out2, eager_out)
    model.to(memory_format=torch.channels_last)  # replaced weight tensors: a new graph
    out3, _ = evaluators(model, sde, y, probes, z, "graph")[0](z, t)
    assert len(graphs._CACHE) == 2
    torch.testing.assert_close(out3, eager_out)
    with pytest.raises(ValueError, match="captured for shape"):
        f1(torch.randn(3, 1, 8, 8), t)


# ---------------------------------------------------------------------------- CUDA only
@needs_cuda
def test_cuda_graph_training_step_equals_eager(digits):
    eager, graph = _train(digits, "eager", "cuda"), _train(digits, "graph", "cuda")
    assert {h["engine"] for h in graph[2]} == {"graph"}  # captured, not the fallback
    _assert_close_runs(eager, graph, rtol=2e-2, atol=2e-3)  # bf16 autocast, fused vs capturable AdamW


@needs_cuda
def test_cuda_eager_step_never_waits_for_the_host(digits):
    from sgc.step import TrainStep, draw_batch
    cfg = TrainConfig(**dict(CFG, compile="eager"))
    model = _mlp().cuda()
    ema = _mlp().cuda().requires_grad_(False)
    images, labels = torch.as_tensor(digits.images).cuda(), torch.as_tensor(digits.labels).cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    step = TrainStep(model, ema, VPSDE(), cfg, torch.device("cuda"), "eager")
    sampler = TimeSampler(VPSDE(), cfg.weighting, cfg.eps)
    step.set_schedule(1e-3, 0.9)
    step(*draw_batch(images, labels, cfg, sampler, gen, slice(0, 16)))  # first step: lazy initialisations
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step.set_schedule(1e-3, 0.9)
            step(*draw_batch(images, labels, cfg, sampler, gen, slice(0, 16)))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
def test_cuda_graphed_ode_equals_eager():
    model, sde = _unet().cuda(), VPSDE()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    opts = dict(method="dopri5", rtol=1e-4, atol=1e-4)
    eager = class_log_likelihoods(model, sde, x, generator=torch.Generator().manual_seed(2), **opts)
    graphs.clear_cache()
    fast = class_log_likelihoods(model, sde, x, generator=torch.Generator().manual_seed(2), compile="graph", **opts)
    assert all(g.graphed for g in graphs._CACHE.values())
    torch.testing.assert_close(fast.logp, eager.logp, rtol=0, atol=1e-3)
