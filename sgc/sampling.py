"""Class-conditional samples from a trained noise-prediction network.

Two samplers run the forward SDE dx = f(x, t) dt + g(t) dw backwards from the prior
x_T ~ N(0, prior_std^2 I) at t = T to t = eps, with the score s(x, t, y) = -eps_hat / sigma(t):

* ``reverse_sde``: Euler-Maruyama on the reverse-time SDE (Anderson 1982, Song et al. 2021)
      dx = [f(x, t) - g(t)^2 s(x, t, y)] dt + g(t) dw_bar,
  followed by one denoising step x_0 = (x_eps - sigma eps_hat) / alpha (Tweedie).
* ``probability_flow``: the deterministic ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t, y), whose
  marginals equal the SDE's; the same ODE the likelihood integrates, here solved backwards
  with a torchdiffeq method ("euler", "rk4" on ``steps`` steps, or adaptive "dopri5").

Samples are returned as images in [0, 1] (model space [-1, 1] mapped back and clipped),
with the number of network evaluations and the seconds spent.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .likelihood import ode_drift
from .nets import check_labels
from .sde import SDE, _bcast

__all__ = ["SampleResult", "reverse_sde", "probability_flow", "sample_per_class"]


@dataclass
class SampleResult:
    images: np.ndarray   # float32 (N, C, H, W) in [0, 1]
    labels: np.ndarray   # int64 (N,) the class each sample was drawn from
    nfe: int             # network evaluations per sample
    seconds: float       # wall-clock time


def _setup(model, y, generator, sde: SDE):
    device = next(model.parameters()).device
    check_labels(np.asarray(y), model.num_classes)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long, device=device)
    shape = (len(y), model.in_channels, model.image_size, model.image_size)
    x = sde.prior_sample(shape, generator=generator).to(device)
    return x, y, device


def _denoise(model, sde: SDE, x, t, y):
    alpha, sigma = sde.marginal(t)
    eps = model(x, t.expand(len(x)), y)
    return (x - _bcast(sigma, x) * eps) / _bcast(alpha, x)


def _to_images(x: torch.Tensor) -> np.ndarray:
    return ((x.float().cpu() + 1) / 2).clamp(0, 1).numpy().astype(np.float32)


@torch.no_grad()
def reverse_sde(model, sde: SDE, y, *,
                steps: int = 500,          # Euler-Maruyama steps from T to eps
                eps: float = 1e-3,         # last time before the denoising step
                denoise: bool = True,      # finish with x_0 = (x - sigma eps_hat) / alpha
                generator: torch.Generator | None = None,
                ) -> SampleResult:
    """Draw one sample per label in ``y`` (N,) by Euler-Maruyama on the reverse SDE."""
    start = time.perf_counter()
    x, y, device = _setup(model, y, generator, sde)
    ts = torch.linspace(sde.T, eps, steps + 1)
    for i in range(steps):
        t, dt = ts[i], float(ts[i + 1] - ts[i])  # dt < 0
        t_vec = t.expand(len(x)).to(device)
        _, sigma = sde.marginal(t_vec)
        g = sde.diffusion(t_vec)
        score = -model(x, t_vec, y) / _bcast(sigma, x)
        drift = sde.drift(x, t_vec) - _bcast(g ** 2, x) * score
        noise = torch.randn(x.shape, generator=generator).to(device)
        x = x + drift * dt + _bcast(g, x) * abs(dt) ** 0.5 * noise
    nfe = steps
    if denoise:
        x = _denoise(model, sde, x, ts[-1].to(device), y)
        nfe += 1
    return SampleResult(_to_images(x), y.cpu().numpy(), nfe, time.perf_counter() - start)


@torch.no_grad()
def probability_flow(model, sde: SDE, y, *,
                     method: str = "euler",   # torchdiffeq method: "euler", "rk4", "dopri5", ...
                     steps: int = 100,        # steps of a fixed-step method
                     rtol: float = 1e-4,      # adaptive methods only
                     atol: float = 1e-4,      # adaptive methods only
                     eps: float = 1e-3,       # end time (then one denoising step)
                     denoise: bool = True,
                     generator: torch.Generator | None = None,
                     ) -> SampleResult:
    """Draw one sample per label in ``y`` (N,) by solving the probability-flow ODE from T to eps."""
    from torchdiffeq import odeint
    start = time.perf_counter()
    x, y, device = _setup(model, y, generator, sde)
    count = [0]

    def func(t, z):
        count[0] += 1
        return ode_drift(model, sde, z, t.reshape(()).to(device).float(), y)

    ts = torch.tensor([sde.T, eps], dtype=torch.float32, device=device)
    options = {"step_size": (sde.T - eps) / steps} if method in ("euler", "rk4", "midpoint") else None
    kwargs = {} if options else {"rtol": rtol, "atol": atol}
    x = odeint(func, x, ts, method=method, options=options, **kwargs)[-1]
    if denoise:
        x = _denoise(model, sde, x, ts[-1], y)
        count[0] += 1
    return SampleResult(_to_images(x), y.cpu().numpy(), count[0], time.perf_counter() - start)


def sample_per_class(model, sde: SDE, per_class: int, sampler: str = "sde", seed: int = 0,
                     **options) -> SampleResult:
    """``per_class`` samples of every class, grouped by class (labels 0,0,..,1,1,..)."""
    y = np.repeat(np.arange(model.num_classes), per_class)
    gen = torch.Generator().manual_seed(seed)
    fn = {"sde": reverse_sde, "ode": probability_flow}.get(sampler)
    if fn is None:
        raise ValueError(f"sampler must be 'sde' or 'ode', got {sampler!r}")
    return fn(model, sde, y, generator=gen, **options)
