"""Forward SDEs dx = f(x, t) dt + g(t) dw on t in [0, T], in continuous time.

All three are linear in x, so the perturbation kernel is Gaussian:
x_t = alpha(t) * x_0 + sigma(t) * eps with eps ~ N(0, I). ``marginal(t)`` returns
(alpha(t), sigma(t)); the score of the kernel is -eps / sigma(t).

* ``VPSDE``   variance preserving, beta(t) linear from beta_min to beta_max (the paper: 0.1 -> 20)
* ``SubVPSDE`` sub-variance preserving (Song et al. 2021), better likelihoods
* ``VESDE``   variance exploding, sigma(t) geometric from sigma_min to sigma_max

Data given to an SDE are in "model space" (images mapped from [0, 1] to [-1, 1]).
Time tensors may be 0-d or shape (N,); results broadcast against x of shape (N, ...).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "make_sde", "TimeSampler"]


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample (N,) or scalar coefficient to broadcast against x (N, ...)."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return v.reshape(-1, *([1] * (x.dim() - 1))) if v.dim() > 0 else v


class SDE:
    """Base class. Subclasses define ``marginal``, ``drift_coef`` and ``diffusion``."""

    T: float = 1.0
    name: str = "sde"

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)) of the kernel x_t | x_0 ~ N(alpha x_0, sigma^2 I)."""
        raise NotImplementedError

    def drift_coef(self, t: torch.Tensor) -> torch.Tensor:
        """Scalar a(t) with f(x, t) = a(t) x."""
        raise NotImplementedError

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g(t)."""
        raise NotImplementedError

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _bcast(self.drift_coef(t), x) * x

    @property
    def prior_std(self) -> float:
        return 1.0

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.marginal(t)
        return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * noise

    def prior_sample(self, shape, generator=None, device=None) -> torch.Tensor:
        return self.prior_std * torch.randn(shape, generator=generator, device=device)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per sample, in nats. z: (N, ...) -> (N,)."""
        d = z[0].numel()
        s = self.prior_std
        return (-0.5 * d * math.log(2 * math.pi * s * s)
                - 0.5 * z.flatten(1).pow(2).sum(1) / (s * s))

    def config(self) -> dict:
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


class VPSDE(SDE):
    """Variance preserving: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw, beta linear in t."""

    name = "vp"

    def __init__(self,
                 beta_min: float = 0.1,   # beta(0)
                 beta_max: float = 20.0,  # beta(T)
                 ):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t):
        """B(t) = integral_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def marginal(self, t):
        t = torch.as_tensor(t)
        b = self.integral_beta(t)
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))

    def drift_coef(self, t):
        return -0.5 * self.beta(torch.as_tensor(t))

    def diffusion(self, t):
        return torch.sqrt(self.beta(torch.as_tensor(t)))


class SubVPSDE(VPSDE):
    """sub-VP: the VP drift with g(t)^2 = beta(t) (1 - exp(-2 B(t)))."""

    name = "subvp"

    def marginal(self, t):
        t = torch.as_tensor(t)
        b = self.integral_beta(t)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def diffusion(self, t):
        t = torch.as_tensor(t)
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.integral_beta(t)))


class VESDE(SDE):
    """Variance exploding: dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw."""

    name = "ve"

    def __init__(self,
                 sigma_min: float = 0.01,  # noise std at t = 0
                 sigma_max: float = 50.0,  # noise std at t = T (about the data's diameter)
                 ):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** torch.as_tensor(t)

    def marginal(self, t):
        s = self.sigma(t)
        return torch.ones_like(s), s

    def drift_coef(self, t):
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float32))

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    @property
    def prior_std(self):
        return self.sigma_max


def make_sde(name: str = "vp", **kwargs) -> SDE:
    """Build an SDE from its config (``sde.config()`` round-trips through this)."""
    choices = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
    if name not in choices:
        raise ValueError(f"unknown SDE {name!r}; choose one of {sorted(choices)}")
    return choices[name](**kwargs)


class TimeSampler:
    """Draws diffusion times t in [eps, T] for training and Monte-Carlo bounds.

    ``weighting="sigma2"``: t ~ U(eps, T) and loss weight lambda(t) = sigma(t)^2 (the paper).
    ``weighting="likelihood"``: lambda(t) = g(t)^2, which makes the loss a bound on the NLL;
    t is importance-sampled with density proportional to g^2 / sigma^2, so that the weight
    on ||eps_hat - eps||^2 is the constant Z = integral of g^2 / sigma^2 over [eps, T].
    ``sample`` returns (t, w) with E[w * ||eps_hat - eps||^2] = integral lambda/sigma^2 E||.||^2 dt
    (for "sigma2" w = T - eps, the same up to a constant).
    """

    def __init__(self, sde: SDE, weighting: str = "sigma2", eps: float = 1e-5, grid: int = 4096):
        if weighting not in ("sigma2", "likelihood"):
            raise ValueError(f"weighting must be 'sigma2' or 'likelihood', got {weighting!r}")
        self.sde, self.weighting, self.eps = sde, weighting, float(eps)
        self._on_device = {}  # device -> the tables below, copied there once
        if weighting == "likelihood":
            # tabulate the density on a log grid (it grows like 1/t near 0) and invert its CDF
            ts = torch.from_numpy(np.geomspace(self.eps, sde.T, grid)).double()
            dens = sde.diffusion(ts) ** 2 / sde.marginal(ts)[1] ** 2
            cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                             torch.cumsum(0.5 * (dens[1:] + dens[:-1]) * ts.diff(), 0)])
            self.Z = float(cdf[-1])
            self._ts, self._cdf = ts, cdf / cdf[-1]

    def sample(self, n: int, generator=None, device=None, u: torch.Tensor | None = None):
        """n times and their weights, both float32 (n,), on ``device`` (default: where they were
        drawn). The uniforms are drawn on the generator's device (a CUDA generator draws on the
        GPU, without a host round trip); ``u`` in [0,1) overrides the draws (e.g. stratified
        u = (i + U) / n) and is used on its own device."""
        if u is None:
            where = generator.device if generator is not None else torch.device(device or "cpu")
            u = torch.rand(n, generator=generator, device=where)
        u = u.double()
        if self.weighting == "sigma2":
            t = self.eps + u * (self.sde.T - self.eps)
            w = torch.full_like(t, self.sde.T - self.eps)
        else:
            ts, cdf = self._tables(u.device)
            i = torch.searchsorted(cdf, u.clamp(0, 1 - 1e-12), right=True).clamp(1, len(ts) - 1)
            c0, c1 = cdf[i - 1], cdf[i]
            t = ts[i - 1] + (u - c0) / (c1 - c0).clamp_min(1e-300) * (ts[i] - ts[i - 1])
            w = torch.full_like(t, self.Z)
        return t.float().to(device), w.float().to(device)

    def _tables(self, device: torch.device):
        """The tabulated times and CDF on ``device`` (copied once per device, float64)."""
        if device.type == "cpu":
            return self._ts, self._cdf
        if device not in self._on_device:
            self._on_device[device] = (self._ts.to(device), self._cdf.to(device))
        return self._on_device[device]

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) / sigma(t)^2, the weight on ||eps_hat - eps||^2 of a uniformly drawn t."""
        _, sigma = self.sde.marginal(t)
        if self.weighting == "sigma2":
            return torch.ones_like(sigma)
        return self.sde.diffusion(t) ** 2 / sigma ** 2
