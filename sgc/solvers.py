"""Fixed-step solvers of the probability-flow ODE and its log-density integral.

* ``time_grid``: steps from t = eps to T, uniform in t or uniform in the log-SNR
  lambda(t) = log(alpha / sigma) (which puts the steps where the drift changes fastest).
* ``dpm_solve``: a DPM-Solver-style exponential integrator (Lu et al. 2022) for any SDE with
  linear drift. With lambda as the variable the ODE is dz/dlambda = (dlog alpha/dlambda) z - sigma eps_hat,
  whose linear part is solved exactly:
      z_t = (alpha_t / alpha_s) z_s - sigma_t (e^h - 1) eps_hat,   h = lambda_t - lambda_s,
  and the log-density integral is  D log(alpha_T / alpha_eps) - int sigma tr(d eps_hat / dz) dlambda,
  whose weight int sigma dlambda over a step is computed exactly (quadrature of scalars).
  order 1 (DDIM-like): one evaluation per step; order 2 (midpoint in lambda): the state is
  first moved to the midpoint with a forward pass only, then the drift and the divergence are
  evaluated there (one forward + one VJP), so a step costs 2 forward passes and 1 VJP.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .sde import SDE

__all__ = ["time_grid", "step_weight", "dpm_solve", "FIXED_EVALS"]

# network evaluations per step of each fixed-step method (torchdiffeq's and ours)
FIXED_EVALS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4, "dpm1": 1, "dpm2": 2}


def _log_snr(sde: SDE, t) -> np.ndarray:
    alpha, sigma = sde.marginal(torch.as_tensor(t, dtype=torch.float64))
    return (torch.log(alpha) - torch.log(sigma)).numpy()


def time_grid(sde: SDE, steps: int, eps: float = 1e-5, spacing: str = "logsnr") -> torch.Tensor:
    """steps + 1 increasing times from eps to T, float64. spacing: "logsnr" or "uniform"."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if spacing == "uniform":
        return torch.linspace(eps, sde.T, steps + 1, dtype=torch.float64)
    if spacing != "logsnr":
        raise ValueError(f"spacing must be 'logsnr' or 'uniform', got {spacing!r}")
    table = np.geomspace(eps, sde.T, 8192)
    lam = _log_snr(sde, table)                   # decreasing in t
    want = np.linspace(lam[0], lam[-1], steps + 1)
    t = np.interp(-want, -lam, table)
    t[0], t[-1] = eps, sde.T
    return torch.from_numpy(t)


def step_weight(sde: SDE, s: float, t: float, points: int = 65) -> float:
    """int_{lambda_s}^{lambda_t} sigma dlambda = -int_s^t g^2 / (2 sigma) dtau (geometric quadrature)."""
    tau = torch.from_numpy(np.geomspace(s, t, points))
    f = sde.diffusion(tau) ** 2 / (2 * sde.marginal(tau)[1])
    return -float(torch.trapezoid(f, tau))


def dpm_solve(evaluate, forward, sde: SDE, z0: torch.Tensor, *,
              steps: int = 50,            # solver steps (network forward passes = order x steps)
              order: int = 2,             # 1 or 2
              eps: float = 1e-5,          # start time
              spacing: str = "logsnr",    # time grid, see ``time_grid``
              ):
    """Solve the probability-flow ODE from t = eps to T. z0 (N, C, H, W) model space.

    ``evaluate(z, t)`` -> (eps_hat, divergence estimate of eps_hat in z (N,)) and
    ``forward(z, t)`` -> eps_hat, with t a 0-d float32 tensor on z0's device (the class labels,
    probes, precision and any CUDA graph live in these callables: ``sgc.likelihood.evaluators``).
    Returns (z_T, delta_logp (N,), nfe) with log p_eps(z0) = log p_T(z_T) + delta_logp and nfe the
    number of network forward passes (each VJP comes on top of one of them).
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    grid = time_grid(sde, steps, eps, spacing)
    mids = time_grid(sde, 2 * steps, eps, spacing)[1::2] if order == 2 else None  # midpoints in lambda
    device, dtype = z0.device, z0.dtype
    # the times the network sees, moved to the device once (no host-to-device copy per step)
    starts = grid.to(device=device, dtype=torch.float32)
    at = starts if order == 1 else mids.to(device=device, dtype=torch.float32)
    dims = z0[0].numel()
    z, delta, nfe = z0, torch.zeros(z0.shape[0], device=device, dtype=dtype), 0
    for i in range(steps):
        s, t = grid[i], grid[i + 1]
        a_s, s_s = sde.marginal(s)
        a_t, s_t = sde.marginal(t)
        h = float(torch.log(a_t / s_t) - torch.log(a_s / s_s))
        w = step_weight(sde, float(s), float(t))
        if order == 1:
            zs = z
        else:
            m = mids[i]
            a_m, s_m = sde.marginal(m)
            hm = float(torch.log(a_m / s_m) - torch.log(a_s / s_s))
            e0 = forward(z, starts[i])
            nfe += 1
            zs = float(a_m / a_s) * z - float(s_m * math.expm1(hm)) * e0
        e, div = evaluate(zs, at[i])
        nfe += 1
        z = float(a_t / a_s) * z - float(s_t * math.expm1(h)) * e
        delta = delta + dims * float(torch.log(a_t / a_s)) - w * div
    return z, delta, nfe
