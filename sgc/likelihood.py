"""Log-likelihoods log p(x | y) with the probability-flow ODE (torchdiffeq).

For a trained noise-prediction network eps_hat(x, t, y) under a forward SDE, the
probability-flow ODE dz/dt = f(z, t) - 1/2 g(t)^2 s(z, t, y), with s = -eps_hat / sigma(t),
moves data (t = eps) to the prior (t = T) deterministically. By the instantaneous change
of variables, log p_eps(z) = log p_T(z_T) + integral_eps^T div(drift)(z_t, t) dt. We integrate
the state and the divergence integral together, on the model's device, in one solve for
all images x classes of a batch.

Units: images enter in [0, 1] (N, C, H, W) and the model sees z = 2x - 1. ``LikelihoodResult``
reports log-densities of x on [0, 1]^D in nats and bits/dim of the discrete data with
``levels`` intensity levels: bpd = -log p(x) / (D ln 2) + log2(levels) (an upper bound on the
discrete code length when x is uniformly dequantized, x = (k + u) / levels).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from .sde import SDE, _bcast

__all__ = ["LikelihoodResult", "SolverError", "ode_drift", "divergence", "log_likelihood",
           "class_log_likelihoods", "validate_images", "dequantize", "to_bits_per_dim"]

ADAPTIVE = {"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"}
FIXED = {"euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams"}


class SolverError(RuntimeError):
    """The ODE solve returned non-finite values."""


@dataclass
class LikelihoodResult:
    logp: torch.Tensor   # log p(x | y) in nats, density of x on [0, 1]^D; (N,) or (N, K)
    bpd: torch.Tensor    # bits/dim of the discrete data, same shape as logp
    nfe: int             # function evaluations of the solve (each = 1 forward + n_probes VJPs)
    seconds: float       # wall-clock time of the solve
    prior_logp: torch.Tensor  # log p_T(z_T) in nats, model space, same shape as logp
    delta_logp: torch.Tensor  # integral of the divergence, same shape as logp


def validate_images(x: torch.Tensor, model=None, name: str = "images") -> None:
    """Raise ValueError naming the problem when x is not a batch of images in [0, 1]."""
    if not torch.is_tensor(x) or x.dim() != 4:
        raise ValueError(f"{name} must be a 4-d tensor (N, C, H, W); got "
                         f"{tuple(x.shape) if hasattr(x, 'shape') else type(x).__name__}")
    if model is not None:
        want = (model.in_channels, model.image_size, model.image_size)
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"{name} have shape (C, H, W) = {tuple(x.shape[1:])} but the model was "
                             f"built for {want}; resize the data or load the matching checkpoint")
    bad = (~torch.isfinite(x)).flatten(1).any(1)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise ValueError(f"{name} contain NaN or inf at indices {idx[:10]}{' ...' if len(idx) > 10 else ''}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name} must have values in [0, 1]; got range [{lo:.4g}, {hi:.4g}] "
                         f"(divide 8-bit data by 255, or use the dataset loaders)")


def dequantize(x: torch.Tensor, levels: int, generator=None) -> torch.Tensor:
    """Uniform dequantization: x = k / (levels - 1) in [0, 1] -> (k + u) / levels, u ~ U[0, 1)."""
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
    return (k + u) / levels


def to_bits_per_dim(logp01: torch.Tensor, dims: int, levels: int) -> torch.Tensor:
    """bits/dim of discrete data with ``levels`` values from a density on [0, 1]^D in nats."""
    return -logp01 / (dims * math.log(2)) + math.log2(levels)


def ode_drift(model, sde: SDE, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Probability-flow drift f(z, t) - 1/2 g(t)^2 s(z, t, y) with s = -eps_hat / sigma(t)."""
    t_vec = t.expand(z.shape[0]) if t.dim() == 0 else t
    _, sigma = sde.marginal(t_vec)
    g2 = sde.diffusion(t_vec) ** 2
    eps = model(z, t_vec, y)
    return sde.drift(z, t_vec) + 0.5 * _bcast(g2 / sigma, z) * eps


def divergence(fn, z: torch.Tensor, probes: torch.Tensor | None):
    """(fn(z), div fn(z)) with one forward pass.

    probes None: exact divergence, one VJP per dimension (small images only).
    probes (P, N, ...): Hutchinson-Skilling estimate, mean over P probes of v^T (df/dz) v.
    """
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        out = fn(z)
        if probes is None:
            flat = out.flatten(1)
            div = torch.zeros(z.shape[0], device=z.device, dtype=out.dtype)
            for d in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, d].sum(), z, retain_graph=True)
                div = div + g.flatten(1)[:, d]
        else:
            div = 0.0
            for p, v in enumerate(probes):
                (g,) = torch.autograd.grad(out, z, v, retain_graph=p < len(probes) - 1)
                div = div + (g * v).flatten(1).sum(1)
            div = div / len(probes)
    return out.detach(), div.detach()


def _make_probes(kind: str, n_probes: int, shape, generator, device, dtype):
    if kind == "gaussian":
        v = torch.randn((n_probes, *shape), generator=generator)
    elif kind == "rademacher":
        v = torch.randint(0, 2, (n_probes, *shape), generator=generator).float() * 2 - 1
    else:
        raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {kind!r}")
    return v.to(device=device, dtype=dtype)


@torch.no_grad()
def log_likelihood(model, sde: SDE, x: torch.Tensor, y: torch.Tensor, *,
                   levels: int = 256,            # intensity levels of the source data (bits/dim)
                   dequantize_noise: torch.Tensor | None = None,  # u in [0,1) of x's shape, or None
                   method: str = "dopri5",       # torchdiffeq solver
                   rtol: float = 1e-5,           # relative tolerance (adaptive solvers)
                   atol: float = 1e-5,           # absolute tolerance (adaptive solvers)
                   steps: int = 100,             # number of steps (fixed-step solvers)
                   eps: float = 1e-5,            # start time of the ODE (t = 0 is singular)
                   divergence_mode: str = "hutchinson",  # "hutchinson" or "exact"
                   probe: str = "rademacher",    # Hutchinson probe distribution
                   n_probes: int = 1,            # Hutchinson probes per evaluation
                   probes: torch.Tensor | None = None,  # explicit probes (P, N, C, H, W)
                   generator: torch.Generator | None = None,
                   ) -> LikelihoodResult:
    """log p(x_i | y_i) for a batch of images x (N, C, H, W) in [0, 1] and labels y (N,)."""
    validate_images(x, model)
    device = next(model.parameters()).device
    x = x.to(device=device, dtype=torch.float32)
    y = torch.as_tensor(y, device=device, dtype=torch.long).expand(x.shape[0])
    if dequantize_noise is not None:
        x = (torch.round(x * (levels - 1)) + dequantize_noise.to(device, x.dtype)) / levels
    z0 = 2 * x - 1
    if divergence_mode == "exact":
        probes = None
    elif divergence_mode == "hutchinson":
        if probes is None:
            probes = _make_probes(probe, n_probes, z0.shape, generator, device, z0.dtype)
        probes = probes.to(device=device, dtype=z0.dtype)
    else:
        raise ValueError(f"divergence_mode must be 'exact' or 'hutchinson', got {divergence_mode!r}")
    if method not in ADAPTIVE | FIXED:
        raise ValueError(f"unknown ODE method {method!r}; adaptive: {sorted(ADAPTIVE)}, fixed: {sorted(FIXED)}")

    nfe = 0

    def func(t, state):
        nonlocal nfe
        nfe += 1
        z = state[0]
        out, div = divergence(lambda v: ode_drift(model, sde, v, t, y), z, probes)
        return out, div

    was_training = model.training
    model.eval()
    start = time.perf_counter()
    ts = torch.tensor([eps, sde.T], device=device, dtype=torch.float32)
    kwargs = dict(rtol=rtol, atol=atol) if method in ADAPTIVE else dict(options={"step_size": (sde.T - eps) / steps})
    state0 = (z0, torch.zeros(z0.shape[0], device=device))
    try:
        zs, deltas = odeint(func, state0, ts, method=method, **kwargs)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    zT, delta = zs[-1], deltas[-1]
    prior = sde.prior_logp(zT)
    dims = z0[0].numel()
    logp = prior + delta + dims * math.log(2.0)  # z = 2x - 1: density of x on [0, 1]^D
    bad = ~torch.isfinite(logp)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise SolverError(f"the probability-flow ODE returned non-finite log-likelihoods for batch rows "
                          f"{idx[:10]} (method={method}, rtol={rtol}, atol={atol}, eps={eps}); try a "
                          f"tighter tolerance, a larger eps (e.g. 1e-3), or method='rk4' with more steps")
    return LikelihoodResult(logp.cpu(), to_bits_per_dim(logp, dims, levels).cpu(), nfe, seconds,
                            prior.cpu(), delta.cpu())


def class_log_likelihoods(model, sde: SDE, x: torch.Tensor, classes=None, *,
                          levels: int = 256, dequantize: bool = False, probe: str = "rademacher",
                          n_probes: int = 1, divergence_mode: str = "hutchinson",
                          generator: torch.Generator | None = None, **solver) -> LikelihoodResult:
    """log p(x_i | y = k) for every image i and class k in ONE solve: result (N, K).

    Every class of an image sees the same Hutchinson probe and the same dequantization noise,
    so differences between classes are not blurred by independent noise.
    """
    validate_images(x, model)
    classes = list(range(model.num_classes)) if classes is None else list(classes)
    n, k = x.shape[0], len(classes)
    deq = torch.rand(x.shape, generator=generator) if dequantize else None
    probes = None
    if divergence_mode == "hutchinson":
        probes = _make_probes(probe, n_probes, x.shape, generator, "cpu", torch.float32)
        probes = probes.repeat_interleave(k, dim=1)
    xs = x.repeat_interleave(k, dim=0)
    ys = torch.tensor(classes, dtype=torch.long).repeat(n)
    res = log_likelihood(model, sde, xs, ys, levels=levels,
                         dequantize_noise=None if deq is None else deq.repeat_interleave(k, dim=0),
                         divergence_mode=divergence_mode, probes=probes, **solver)
    shape = (n, k)
    return LikelihoodResult(res.logp.view(shape), res.bpd.view(shape), res.nfe, res.seconds,
                            res.prior_logp.view(shape), res.delta_logp.view(shape))
