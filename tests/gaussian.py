"""An analytic class-conditional Gaussian 'network' for tests with known answers."""
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
