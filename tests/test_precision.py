"""Reduced-precision options: bf16 autocast really runs the network in bf16 (and stays close to
float32), tf32 switches the CUDA matmul flags on during the solve only, and both are undone after."""
import pytest
import torch

from sgc.elbo import draw_terms, elbo_class_scores
from sgc.likelihood import class_log_likelihoods, evaluators
from sgc.nets import ScoreMLP
from sgc.sde import VPSDE
from sgc.solvers import dpm_solve


def _model():
    torch.manual_seed(0)
    model = ScoreMLP(num_classes=3, image_size=4, hidden=32, blocks=1, emb_dim=16)
    for p in model.parameters():  # break the zero initialisation so the output depends on everything
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


class Spy:
    """Records, at every forward pass, the dtype of the first linear layer's output and the tf32 flags."""

    def __init__(self, model):
        self.dtypes, self.flags = [], []
        layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        layer.register_forward_hook(self.hook)

    def hook(self, module, args, out):
        self.dtypes.append(out.dtype)
        self.flags.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))


X = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def _solve(model, precision, method="rk4"):
    return class_log_likelihoods(model, VPSDE(), X, method=method, steps=6, precision=precision,
                                 generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("method", ["rk4", "dpm2"])
def test_bf16_runs_the_network_in_bf16_and_stays_close(method):
    model = _model()
    spy = Spy(model)
    fp32 = _solve(model, None, method)
    assert set(spy.dtypes) == {torch.float32}
    spy.dtypes.clear()
    bf16 = _solve(model, "bf16", method)
    assert set(spy.dtypes) == {torch.bfloat16}, spy.dtypes[:3]
    assert bf16.logp.dtype == torch.float32 and torch.isfinite(bf16.logp).all()
    diff = (bf16.bpd - fp32.bpd).abs()
    assert diff.max() > 0, "bf16 gave bit-identical results: autocast did not take effect"
    assert diff.max() < 0.05, diff                       # bits/dim, 16 dimensions
    assert torch.equal(bf16.logp.argmax(1), fp32.logp.argmax(1))
    # the autocast context is closed after the solve
    assert not torch.is_autocast_enabled("cpu")
    spy.dtypes.clear()
    model(torch.zeros(1, 1, 4, 4), torch.tensor([0.5]), torch.tensor([0]))
    assert spy.dtypes == [torch.float32]


def test_tf32_sets_the_cuda_flags_during_the_solve_and_restores_them():
    model = _model()
    spy = Spy(model)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
    try:
        fp32 = _solve(model, None)
        assert set(spy.flags) == {(False, False)}
        spy.flags.clear()
        tf32 = _solve(model, "tf32")
        assert set(spy.flags) == {(True, True)} and set(spy.dtypes) == {torch.float32}
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        if not torch.cuda.is_available():   # the flags only change CUDA arithmetic
            assert torch.equal(tf32.logp, fp32.logp)

        class Broken(torch.nn.Module):      # restored even when the solve fails
            def __init__(self):
                super().__init__()
                self.inner, self.num_classes, self.in_channels, self.image_size = model, 3, 1, 4

            def forward(self, x, t, y):
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            _solve(Broken(), "tf32")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_bound_autocast_bf16():
    model = _model()
    spy = Spy(model)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    fp32 = elbo_class_scores(model, VPSDE(), X, n_draws=8, generator=g())
    bf16 = elbo_class_scores(model, VPSDE(), X, n_draws=8, generator=g(), autocast="bf16")
    assert spy.dtypes[0] == torch.float32 and spy.dtypes[-1] == torch.bfloat16
    assert 0 < (bf16.logp - fp32.logp).abs().max() < 0.5
    with pytest.raises(ValueError, match="autocast"):
        draw_terms(model, VPSDE(), torch.zeros(1, 1, 4, 4), torch.tensor([0]), torch.tensor([0.5]),
                   torch.zeros(1, 1, 4, 4), 1.0, autocast="fp16")


def test_dpm_solve_autocast_bf16():
    model = _model()
    spy = Spy(model)
    sde = VPSDE()
    z0, y = 2 * X - 1, torch.tensor([0, 1, 2])
    probes = torch.randn(1, 3, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    _, ev, fwd = evaluators(model, sde, y, probes, z0)
    zt, delta, nfe = dpm_solve(ev, fwd, sde, z0, steps=4, order=2)
    assert set(spy.dtypes) == {torch.float32} and nfe == 8
    spy.dtypes.clear()
    _, ev, fwd = evaluators(model, sde, y, probes, z0, precision="bf16")
    zb, db, _ = dpm_solve(ev, fwd, sde, z0, steps=4, order=2)
    assert set(spy.dtypes) == {torch.bfloat16} and zb.dtype == torch.float32
    assert 0 < (db - delta).abs().max() < 0.5 and (zb - zt).abs().max() < 0.1
