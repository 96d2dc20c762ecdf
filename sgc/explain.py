"""Class-evidence maps through the denoising bound, with the sanity checks that keep them honest.

The evidence for class a over class b at image x is the gradient of the log-likelihood ratio,

    E_ab(x) = grad_x [log p(x | a) - log p(x | b)]        (nats per unit intensity, shape of x)

estimated through the Monte-Carlo bound of ``sgc.elbo`` with *paired* draws: both classes see
the same times t and noise e, so the prior term and the control variate cancel and

    log p(x | a) - log p(x | b) ~ -1/M sum_m Z/2 (||eps(z_t, t, a) - e||^2 - ||eps(z_t, t, b) - e||^2),
    z_t = alpha(t) (2x - 1) + sigma(t) e.

Differentiating this average is cheap (M forward + backward passes per class) and, because
every draw sees a noised copy of x, the average over draws smooths the map as SmoothGrad
(Smilkov et al. 2017) does with added noise. Positive values: raising that pixel makes a more
likely than b.

Sanity checks (Adebayo et al. 2018, "Sanity checks for saliency maps"): a map that survives
randomising the model's weights explains the image, not the model (``randomized_model``,
``rank_similarity``); deletion / insertion curves (Petsiuk et al. 2018) check that the pixels
ranked first by the map move the classifier most (``deletion_insertion``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from .sde import SDE, TimeSampler, _bcast

__all__ = ["EvidenceMap", "evidence_map", "randomized_model", "rank_similarity", "deletion_insertion"]


@dataclass
class EvidenceMap:
    maps: np.ndarray        # (N, C, H, W) grad_x [log p(x|a) - log p(x|b)], nats per unit intensity of x in [0, 1]
    log_ratio: np.ndarray   # (N,) estimate of log p(x|a) - log p(x|b), nats
    stderr: np.ndarray      # (N,) Monte-Carlo standard error of log_ratio (paired draws), nats
    a: np.ndarray           # (N,) class of the numerator
    b: np.ndarray           # (N,) class of the denominator
    n_draws: int            # draws (t, e) per image, shared by both classes
    seconds: float


def evidence_map(model, sde: SDE, x, a, b, *,
                 n_draws: int = 32,          # Monte-Carlo draws per image, shared by classes a and b
                 eps: float = 1e-5,          # smallest diffusion time
                 draws_per_pass: int = 16,   # draws evaluated together (memory: N x this rows)
                 seed: int = 0,              # seeds times and noise
                 ) -> EvidenceMap:
    """Evidence maps of images x (N, C, H, W) in [0, 1] for class a over class b (ints or (N,) arrays)."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    n = len(x)
    a_t = torch.as_tensor(np.broadcast_to(np.asarray(a), (n,)).copy(), dtype=torch.long, device=device)
    b_t = torch.as_tensor(np.broadcast_to(np.asarray(b), (n,)).copy(), dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(seed)
    sampler = TimeSampler(sde, "likelihood", eps)
    u = (torch.arange(n_draws).double() + torch.rand(n, n_draws, generator=gen, dtype=torch.float64)) / n_draws
    t_all = sampler.sample(n * n_draws, u=u.flatten())[0].view(n, n_draws)  # stratified, density g^2/sigma^2
    noise = torch.randn((n, n_draws, *x.shape[1:]), generator=gen)
    xg = x.to(device).requires_grad_(True)
    grad = torch.zeros_like(xg)
    values = torch.zeros(n, n_draws, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for j0 in range(0, n_draws, draws_per_pass):
                j1 = min(n_draws, j0 + draws_per_pass)
                m = j1 - j0
                z0 = (2 * xg - 1).unsqueeze(1).expand(n, m, *x.shape[1:]).reshape(n * m, *x.shape[1:])
                t = t_all[:, j0:j1].reshape(-1).to(device)
                e = noise[:, j0:j1].reshape(n * m, *x.shape[1:]).to(device)
                alpha, sigma = sde.marginal(t)
                zt = _bcast(alpha, z0) * z0 + _bcast(sigma, z0) * e
                err_a = (model(zt, t, a_t.repeat_interleave(m)) - e).flatten(1).pow(2).sum(1)
                err_b = (model(zt, t, b_t.repeat_interleave(m)) - e).flatten(1).pow(2).sum(1)
                ratio = -0.5 * sampler.Z * (err_a - err_b)          # per-draw log p(x|a) - log p(x|b)
                values[:, j0:j1] = ratio.detach().double().view(n, m).cpu()
                (g,) = torch.autograd.grad(ratio.sum() / n_draws, xg)
                grad += g
    finally:
        model.train(was_training)
    stderr = values.std(1, unbiased=True) / np.sqrt(n_draws)
    return EvidenceMap(grad.detach().cpu().numpy(), values.mean(1).numpy(), stderr.numpy(),
                       a_t.cpu().numpy(), b_t.cpu().numpy(), n_draws, time.perf_counter() - start)


def randomized_model(model, seed: int = 0):
    """A copy of ``model`` with every layer re-initialised (Adebayo et al.'s full randomisation)."""
    rnd = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in rnd.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return rnd.eval()


def rank_similarity(maps_a, maps_b, absolute: bool = True) -> np.ndarray:
    """Spearman rank correlation per image between two sets of maps (N, ...) -> (N,)."""
    from scipy.stats import spearmanr
    a, b = np.asarray(maps_a).reshape(len(maps_a), -1), np.asarray(maps_b).reshape(len(maps_b), -1)
    if absolute:
        a, b = np.abs(a), np.abs(b)
    return np.array([spearmanr(u, v).statistic for u, v in zip(a, b)])


def deletion_insertion(score_fn,               # images (N, C, H, W) -> (N,) e.g. p(a | x)
                       x,                      # (N, C, H, W) in [0, 1]
                       order,                  # (N, D) pixel indices, most important first
                       *,
                       steps: int = 8,         # points after the start (fractions k / steps)
                       baseline: float = 0.0,  # value of a deleted pixel (digits: the background)
                       ) -> dict:
    """Deletion (remove the top pixels from x) and insertion (add them to the baseline) curves.

    Returns {"fractions" (S+1,), "deletion" (N, S+1), "insertion" (N, S+1)} of score_fn values;
    a faithful order makes deletion fall and insertion rise quickly (small / large area)."""
    x = np.asarray(x, dtype=np.float32)
    n, d = len(x), int(np.prod(x.shape[1:]))
    order = np.asarray(order)
    fractions = np.linspace(0, 1, steps + 1)
    dele, ins = np.zeros((n, steps + 1)), np.zeros((n, steps + 1))
    flat = x.reshape(n, d)
    for s, f in enumerate(fractions):
        k = int(round(f * d))
        mask = np.zeros((n, d), dtype=bool)
        np.put_along_axis(mask, order[:, :k], True, axis=1)
        deleted = np.where(mask, baseline, flat).reshape(x.shape).astype(np.float32)
        inserted = np.where(mask, flat, baseline).reshape(x.shape).astype(np.float32)
        dele[:, s], ins[:, s] = score_fn(deleted), score_fn(inserted)
    return {"fractions": fractions, "deletion": dele, "insertion": ins}
