"""torch.compile'd network evaluations give the same log-likelihoods as eager ones."""
import os
import shutil

import pytest
import torch

from sgc.elbo import elbo_class_scores
from sgc.likelihood import class_log_likelihoods
from sgc.nets import ScoreMLP, compiled
from sgc.sde import VPSDE

needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None,
    reason="torch.compile on the CPU generates C++: no C++ compiler (c++ or $CXX) on PATH")


def _model():
    torch.manual_seed(0)
    return ScoreMLP(3, 1, 4, hidden=32, blocks=1, emb_dim=16).eval()


def test_compile_mode_is_checked_and_none_is_the_model_itself():
    model = _model()
    assert compiled(model, None) is model
    with pytest.raises(ValueError, match="compile must be one of"):
        compiled(model, "fast")
    with pytest.raises(ValueError, match="compile must be one of"):
        class_log_likelihoods(model, VPSDE(), torch.rand(2, 1, 4, 4), method="rk4", steps=2, compile="fast")


@needs_compiler
def test_compiled_solves_and_bounds_equal_eager_ones():
    sde, model = VPSDE(), _model()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))

    def ode(mode):
        g = torch.Generator().manual_seed(2)
        return class_log_likelihoods(model, sde, x, method="dpm2", steps=4, generator=g, compile=mode)

    def bound(mode):
        g = torch.Generator().manual_seed(2)
        return elbo_class_scores(model, sde, x, n_draws=8, generator=g, compile=mode)

    eager, fast = ode(None), ode("default")
    assert fast.nfe == eager.nfe
    torch.testing.assert_close(fast.logp, eager.logp, rtol=0, atol=1e-3)
    torch.testing.assert_close(bound("default").logp, bound(None).logp, rtol=0, atol=1e-3)
    # compiled once per model and mode, not once per call
    assert compiled(model, "default") is compiled(model, "default")
