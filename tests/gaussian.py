"""Analytic class-conditional Gaussian 'networks' for tests with known answers."""
import math

import torch

from sgc.sde import _bcast


class GaussianEps(torch.nn.Module):
    """Exact noise prediction for data z_0 | y ~ N(mean[y], std[y]^2 I) in model space."""

    def __init__(self, sde, means, stds, image_size=2, in_channels=1):
        super().__init__()
        self.sde, self.means, self.stds = sde, torch.as_tensor(means, dtype=torch.float32), torch.as_tensor(stds, dtype=torch.float32)
        self.num_classes, self.in_channels, self.image_size = len(self.means), in_channels, image_size
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def var_t(self, t, y):
        a, s = self.sde.marginal(t)
        return a * a * self.stds[y] ** 2 + s * s

    def forward(self, x, t, y):
        t = torch.as_tensor(t).expand(x.shape[0])
        a, s = self.sde.marginal(t)
        mu = self.means[y]
        return _bcast(s / self.var_t(t, y), x) * (x - _bcast(a * mu, x))

    def logp01(self, x, y, t=1e-5):
        """Analytic log-density of x in [0, 1]^D at diffusion time t (nats)."""
        z = (2 * x - 1).flatten(1)
        t = torch.full((x.shape[0],), t)
        a, _ = self.sde.marginal(t)
        var = self.var_t(t, y)
        d = z.shape[1]
        return (-0.5 * ((z - (a * self.means[y])[:, None]) ** 2).sum(1) / var
                - 0.5 * d * torch.log(2 * math.pi * var) + d * math.log(2))


def rotation(d: int, seed: int = 0) -> torch.Tensor:
    """A fixed random orthogonal (d, d) matrix, float64."""
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


class RotatedGaussianEps(torch.nn.Module):
    """Exact noise prediction for z_0 | y ~ N(mean[y], S) with one full covariance S for all classes.

    S = R diag(stds^2) R^T with a rotation R, so the score is linear in z with the Jacobian
    -(alpha^2 S + sigma^2 I)^-1: not diagonal, not a multiple of the identity, the same for every
    class and every z. A Rademacher probe then does NOT give the exact trace (it does for any
    diagonal Jacobian), and the Hutchinson noise of two classes evaluated with the same probe
    at the same times is identical -- their difference is exact.
    Images are (N, 1, side, side) in [0, 1]; model space z = 2x - 1 has D = side^2 dimensions.
    """

    def __init__(self, sde, means, stds, side=2, seed=0):
        super().__init__()
        d = side * side
        self.sde, self.num_classes, self.in_channels, self.image_size = sde, len(means), 1, side
        self.means = torch.as_tensor(means, dtype=torch.float64).reshape(len(means), d)
        self.rot = rotation(d, seed)
        self.var0 = torch.as_tensor(stds, dtype=torch.float64) ** 2      # eigenvalues of S
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def cov_t(self, t: float) -> torch.Tensor:
        """alpha^2 S + sigma^2 I at time t, (D, D) float64."""
        a, s = self.sde.marginal(torch.tensor(float(t), dtype=torch.float64))
        return self.rot @ torch.diag(a * a * self.var0 + s * s) @ self.rot.T

    def forward(self, x, t, y):
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        a, s = self.sde.marginal(t)
        z = x.flatten(1).double()
        r = (z - a[:, None] * self.means[y]) @ self.rot                  # rotated residual (N, D)
        prec = 1.0 / (a[:, None] ** 2 * self.var0 + s[:, None] ** 2)      # eigenvalues of the precision
        eps = s[:, None] * ((r * prec) @ self.rot.T)                     # sigma (alpha^2 S + sigma^2 I)^-1 (z - alpha mu)
        return eps.to(x.dtype).view_as(x)

    def logp01(self, x, y, t=1e-5):
        """Analytic log-density of x in [0, 1]^D at diffusion time t (nats), (N,) float64."""
        z = (2 * x - 1).flatten(1).double()
        a, _ = self.sde.marginal(torch.tensor(t, dtype=torch.float64))
        dist = torch.distributions.MultivariateNormal(a * self.means[y], self.cov_t(t))
        return dist.log_prob(z) + z.shape[1] * math.log(2)
