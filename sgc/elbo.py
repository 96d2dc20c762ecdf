"""Monte-Carlo likelihood bound -log p(x | y) <= L(x, y) from the denoising error.

The bound (Song et al. 2021, "Maximum likelihood training of score-based diffusion
models", Theorem 1) for a linear SDE dz = a(t) z dt + g(t) dw and a noise-prediction net
eps_hat (score s = -eps_hat / sigma):

    L(z) = -E log pi(z_T) + 1/2 int_eps^T E[ g^2 ||s - grad log p_0t(z_t | z)||^2
                                          - g^2 ||grad log p_0t(z_t | z)||^2 - 2 div f ] dt

with z_t = alpha z + sigma e, grad log p_0t = -e / sigma and div f = a(t) D. Per draw
(t, e) this is (g^2 / sigma^2) (||eps_hat - e||^2 - c(t) ||e||^2) with
c(t) = 1 + 2 a(t) sigma^2 / g^2 (VP: c = alpha^2), where D was replaced by ||e||^2 (same mean)
as a control variate that removes the 1/t blow-up of the variance near t = 0. t is
importance-sampled with density g^2 / sigma^2 (``TimeSampler(weighting="likelihood")``),
stratified by default, so every draw carries the same weight Z. The prior term is
analytic. For an exact score the bound is tight up to the prior mismatch KL(p_T || pi).

Every class of an image is evaluated at the SAME times and the SAME noise (common random
numbers), so the class differences have a far smaller variance than the bounds themselves.
With ``eliminate=True`` classes whose bound is worse than the best class by more than
``eliminate_z`` paired standard errors after a round are dropped (Li et al. 2023,
Diffusion Classifier) and the remaining draws go to the survivors; with
``stop_when_decided=True`` an image whose classes are down to one gets no more draws, so the
draws go where the classes are close.

Variance reduction, all unbiased: ``t_sampling`` "stratified" (one draw per stratum of the
density, strata shuffled), "sobol" (a scrambled Sobol sequence per image: every prefix of
2^k draws is stratified, so an estimate from the first draws is as good as a run with that
many) or "iid"; ``noise_sampling`` "iid", "antithetic" (pairs e, -e at the same t: the part of
the error linear in e cancels within a pair) or "sobol" (scrambled Sobol points mapped
through the normal quantile). ``keep_draws=True`` returns every draw's (u, t, value), the
material of per-noise-level evidence (``sgc.evidence``).

Units: images enter in [0, 1] (N, C, H, W); the model sees z = 2x - 1. Results are
log-densities of x on [0, 1]^D in nats (= -L + D ln 2) and bits/dim of the discrete data.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass

import torch

from . import graphs
from .errors import BoundError
from .likelihood import ENGINES, to_bits_per_dim, validate_images
from .nets import check_labels, compiled
from .sde import SDE, TimeSampler, _bcast

__all__ = ["ElboResult", "elbo_class_scores", "prior_term", "draw_terms", "control_coef",
           "T_SAMPLING", "NOISE_SAMPLING"]

T_SAMPLING = ("stratified", "sobol", "iid")
NOISE_SAMPLING = ("iid", "antithetic", "sobol")


@dataclass
class ElboResult:
    logp: torch.Tensor     # (N, K) estimate of log p(x | y) = -bound, nats, density of x on [0, 1]^D
    bpd: torch.Tensor      # (N, K) bits/dim of the discrete data (an upper-bound estimate)
    stderr: torch.Tensor   # (N, K) Monte-Carlo standard error of logp, nats
    draws: torch.Tensor    # (N, K) int, draws spent on each image x class
    alive: torch.Tensor    # (N, K) bool, classes not eliminated
    evals: torch.Tensor    # (N,) int, network forward passes spent on each image (all classes)
    nfe: int               # largest number of draws of one image x class (= forward passes)
    seconds: float         # wall-clock time
    prior: torch.Tensor    # (N,) -E log pi(z_T), nats, model space
    u: torch.Tensor | None = None       # (N, M) keep_draws: draw's position in [0, 1) of the t density's CDF
    t: torch.Tensor | None = None       # (N, M) keep_draws: the draw's diffusion time
    values: torch.Tensor | None = None  # (N, K, M) keep_draws: per-draw bound values, nats, float64, NaN = not drawn


def control_coef(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """c(t) = 1 + 2 a(t) sigma(t)^2 / g(t)^2, so that the per-draw term is (g/sigma)^2 (||eps_hat-e||^2 - c ||e||^2)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    _, sigma = sde.marginal(t)
    return 1 + 2 * sde.drift_coef(t).double() * sigma ** 2 / sde.diffusion(t) ** 2


def prior_term(sde: SDE, z0: torch.Tensor) -> torch.Tensor:
    """-E_{z_T | z_0} log N(z_T; 0, s^2 I) in nats, exactly. z0 (N, ...) in model space -> (N,)."""
    alpha, sigma = sde.marginal(torch.tensor(sde.T, dtype=torch.float64))
    s2 = sde.prior_std ** 2
    d = z0[0].numel()
    sq = z0.double().flatten(1).pow(2).sum(1)
    return (0.5 * d * math.log(2 * math.pi * s2) + (alpha ** 2 * sq + d * sigma ** 2) / (2 * s2)).float()


def draw_terms(model, sde: SDE, z0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
               Z: float, autocast: str | None = None) -> torch.Tensor:
    """Per-draw values of the diffusion part of the bound, nats (unbiased for its integral).

    z0 (R, C, H, W) model space, y (R,) labels, t (R,) times drawn with density g^2/sigma^2 / Z,
    noise (R, C, H, W) -> (R,) values 1/2 Z (||eps_hat - e||^2 - c(t) ||e||^2).
    """
    alpha, sigma = sde.marginal(t)
    zt = _bcast(alpha, z0) * z0 + _bcast(sigma, z0) * noise
    ctx = (torch.autocast(z0.device.type, dtype=torch.bfloat16, cache_enabled=False) if autocast == "bf16"
           else contextlib.nullcontext())
    if autocast not in (None, "bf16"):
        raise ValueError(f"autocast must be None or 'bf16', got {autocast!r}")
    with ctx:
        eps_hat = model(zt, t, y)
    eps_hat = eps_hat.float()
    err = (eps_hat - noise).flatten(1).pow(2).sum(1)
    ctl = control_coef(sde, t).float().to(z0.device) * noise.flatten(1).pow(2).sum(1)
    return 0.5 * Z * (err - ctl)


def _terms_fn(model, sde: SDE, Z: float, autocast: str | None, compile: str | None):
    """draw_terms(z0, y, t, noise) of ``model``: eager, torch.compile'd, or (compile="graph") replayed
    from a CUDA graph captured once per model, SDE and number of rows (``sgc.graphs``)."""
    if compile != "graph":
        net = compiled(model, compile)
        return lambda zr, yr, tr, er: draw_terms(net, sde, zr, yr, tr, er, Z, autocast)
    sde_key = json.dumps(sde.config(), sort_keys=True)

    def terms(zr, yr, tr, er):
        key = ("bound terms", graphs.model_key(model), sde_key, Z, autocast, tuple(zr.shape), zr.dtype)
        fn = graphs.cached(key, lambda: graphs.GraphedFunction(
            lambda a, b, c, d: draw_terms(model, sde, a, b, c, d, Z, autocast), (zr, yr, tr, er), zr.device,
            name="bound's network evaluation"))
        return fn(zr, yr, tr, er)
    return terms


def _seed_from(generator) -> int:
    """A 62-bit seed drawn from ``generator`` (scrambling seeds of the Sobol engines)."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator))


def _sobol(n: int, m: int, dims: int, generator) -> torch.Tensor:
    """(n, m, dims) scrambled Sobol points in (0, 1), one independently scrambled sequence per row."""
    out = torch.empty(n, m, dims, dtype=torch.float64)
    for i in range(n):
        eng = torch.quasirandom.SobolEngine(dims, scramble=True, seed=_seed_from(generator))
        out[i] = eng.draw(m, dtype=torch.float64)
    return out.clamp(2.0 ** -40, 1 - 2.0 ** -40)  # the normal quantile needs the open interval


def _times(sampler: TimeSampler, n: int, m: int, method: str, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, t), both (n, m): positions u in [0, 1) of the density's CDF and the times t in [eps, T].

    method: "stratified" (one draw per stratum of width 1/m, strata in random order), "sobol"
    (scrambled Sobol order: the first 2^k draws hit each stratum of width 2^-k once) or "iid".
    """
    if method == "stratified":
        perm = torch.argsort(torch.rand(n, m, generator=generator), dim=1)
        u = (perm + torch.rand(n, m, generator=generator)) / m
    elif method == "sobol":
        u = _sobol(n, m, 1, generator)[..., 0]
    elif method == "iid":
        u = torch.rand(n, m, generator=generator)
    else:
        raise ValueError(f"t_sampling must be one of {T_SAMPLING}, got {method!r}")
    t, _ = sampler.sample(n * m, u=u.flatten())
    return u.double(), t.view(n, m)


def _noise(n: int, m: int, shape, method: str, generator) -> torch.Tensor:
    """(n, m, *shape) standard normal draws for one round: "iid", "antithetic" (draw 2j + 1 =
    -draw 2j; m even) or "sobol" (scrambled Sobol points through the normal quantile)."""
    if method == "iid":
        return torch.randn((n, m, *shape), generator=generator)
    if method == "antithetic":
        half = torch.randn((n, m // 2, *shape), generator=generator)
        return torch.stack([half, -half], 2).reshape(n, m, *shape)
    if method == "sobol":
        d = math.prod(shape)
        return torch.special.ndtri(_sobol(n, m, d, generator)).float().reshape(n, m, *shape)
    raise ValueError(f"noise_sampling must be one of {NOISE_SAMPLING}, got {method!r}")


@torch.no_grad()
def elbo_class_scores(model, sde: SDE, x: torch.Tensor, classes=None, *,
                      n_draws: int = 64,              # Monte-Carlo draws (t, noise) per image x class
                      levels: int = 256,              # intensity levels of the source data (bits/dim)
                      dequantize: bool = False,       # uniform dequantization, shared by all classes
                      stratified: bool = True,        # stratified importance-sampled t (else i.i.d.)
                      t_sampling: str | None = None,  # "stratified", "sobol", "iid" (None: from `stratified`)
                      noise_sampling: str = "iid",    # "iid", "antithetic" (e, -e at one t), "sobol"
                      keep_draws: bool = False,       # also return every draw's (u, t, value)
                      eps: float = 1e-5,              # smallest diffusion time
                      eliminate: bool = False,        # adaptive class elimination between rounds
                      first_round: int | None = None,  # draws before the first elimination (n_draws // 4)
                      round_size: int | None = None,  # draws per later round (first_round)
                      eliminate_z: float = 3.0,       # drop a class when its bound is worse by > z paired s.e.
                      min_classes: int = 1,           # never eliminate below this many classes per image
                      stop_when_decided: bool = False,  # eliminate: no more draws for an image down to one class
                      max_batch: int = 4096,          # network rows per forward pass
                      autocast: str | None = None,    # None (float32) or "bf16" for the network
                      compile: str | None = None,     # "graph" (CUDA graphs, sgc.graphs) or a torch.compile mode
                      generator: torch.Generator | None = None,
                      ) -> ElboResult:
    """Estimate log p(x_i | y = k) for images x (N, C, H, W) in [0, 1] and every class k.

    Returns an ``ElboResult`` of (N, K) tensors; logp = -(bound) + D ln 2 in nats. Classes
    default to all of ``model.num_classes``. Draw values are kept in float64 for the sums.
    With ``noise_sampling="antithetic"`` the draws come in pairs (e, -e) at one t, so n_draws
    and the elimination rounds must be even; the standard error then treats a pair as one draw.
    """
    validate_images(x, model)
    if n_draws < 2:
        raise ValueError(f"n_draws must be >= 2 to report a standard error, got {n_draws}")
    method = t_sampling or ("stratified" if stratified else "iid")
    if method not in T_SAMPLING:
        raise ValueError(f"t_sampling must be one of {T_SAMPLING}, got {method!r}")
    if noise_sampling not in NOISE_SAMPLING:
        raise ValueError(f"noise_sampling must be one of {NOISE_SAMPLING}, got {noise_sampling!r}")
    pairs = noise_sampling == "antithetic"
    if pairs and (n_draws % 2 or n_draws < 4):
        raise ValueError(f"antithetic noise needs an even n_draws >= 4 (pairs e, -e), got {n_draws}")
    classes = list(range(model.num_classes)) if classes is None else list(classes)
    check_labels(torch.tensor(classes, dtype=torch.long), model.num_classes)
    if compile not in ENGINES:
        raise ValueError(f"compile must be one of {ENGINES}, got {compile!r}")
    n, k = x.shape[0], len(classes)
    device = next(model.parameters()).device
    start = time.perf_counter()
    if dequantize:
        x = (torch.round(x * (levels - 1)) + torch.rand(x.shape, generator=generator)) / levels
    z0 = (2 * x.float() - 1).to(device)
    shape, dims = z0.shape[1:], z0[0].numel()
    sampler = TimeSampler(sde, "likelihood", eps)
    terms = _terms_fn(model, sde, sampler.Z, autocast, compile)
    if pairs:  # one time per pair: (u, t) of pair j at draws 2j and 2j + 1
        u_all, t_all = (v.repeat_interleave(2, dim=1) for v in _times(sampler, n, n_draws // 2, method, generator))
    else:
        u_all, t_all = _times(sampler, n, n_draws, method, generator)  # (N, M), shared by the classes
    ycls = torch.tensor(classes, dtype=torch.long, device=device)

    if eliminate:
        first = max(2, min(n_draws, first_round or n_draws // 4))
        step = max(1, round_size or first)
        if pairs:  # rounds of whole pairs
            first, step = first + first % 2, max(2, step + step % 2)
        bounds = [first] + list(range(first + step, n_draws, step)) + [n_draws]
        bounds = sorted(set(b for b in bounds if b <= n_draws))
    else:
        bounds = [n_draws]
    vals = torch.full((n, k, n_draws), float("nan"), dtype=torch.float64)
    alive = torch.ones(n, k, dtype=torch.bool)    # not eliminated
    drawing = alive.clone()                       # still drawn (alive, image not decided)
    done = 0
    for stop in bounds:
        m = stop - done
        noise = _noise(n, m, shape, noise_sampling, generator)  # drawn for every image: reproducible
        img, cls = drawing.nonzero(as_tuple=True)
        if len(img):
            rows = len(img)
            chunk = max(1, max_batch // rows)  # draws per forward pass
            for j0 in range(0, m, chunk):
                j1 = min(m, j0 + chunk)
                mm = j1 - j0
                zr = z0[img].unsqueeze(1).expand(rows, mm, *shape).reshape(rows * mm, *shape)
                tr = t_all[img, done + j0:done + j1].reshape(-1).to(device)
                er = noise[img, j0:j1].reshape(rows * mm, *shape).to(device)
                yr = ycls[cls.to(device)].repeat_interleave(mm)
                v = terms(zr, yr, tr, er)
                vals[img, cls, done + j0:done + j1] = v.view(rows, mm).double().cpu()
        done = stop
        if eliminate and done < n_draws:
            alive &= ~_eliminated(_pair_means(vals[:, :, :done]) if pairs else vals[:, :, :done], drawing,
                                  eliminate_z, min_classes)
            drawing &= alive
            if stop_when_decided:  # an image down to one class is decided: no more draws for it
                drawing &= drawing.sum(1, keepdim=True) > 1

    units = _pair_means(vals) if pairs else vals   # independent units for the standard error
    draws = (~torch.isnan(vals)).sum(2)
    n_units = (~torch.isnan(units)).sum(2)
    mean = torch.nansum(units, 2) / n_units
    var = torch.nansum((units - mean[..., None]) ** 2, 2) / (n_units - 1).clamp_min(1)
    stderr = (var / n_units).sqrt()
    most = n_units == n_units.max(1, keepdim=True).values  # classes with every draw of their image
    if eliminate and not most.all():
        mean, stderr = _paired_to_survivor(units, mean, stderr, most)
    prior = prior_term(sde, z0).cpu()
    logp = -(prior.double()[:, None] + mean) + dims * math.log(2.0)
    if not torch.isfinite(logp).all():
        raise BoundError("the denoising bound is not finite. Check the model output (NaN/inf weights in the "
                         "checkpoint?) or use autocast=None")
    logp = logp.float()
    return ElboResult(logp=logp, bpd=to_bits_per_dim(logp, dims, levels), stderr=stderr.float(),
                      draws=draws, alive=alive, evals=draws.sum(1), nfe=int(draws.max()),
                      seconds=time.perf_counter() - start, prior=prior,
                      **({"u": u_all, "t": t_all, "values": vals} if keep_draws else {}))


def _pair_means(vals: torch.Tensor) -> torch.Tensor:
    """(N, K, M) draw values in antithetic pairs -> (N, K, M // 2) pair means (NaN where not drawn)."""
    return vals.view(*vals.shape[:2], -1, 2).mean(3)


def _eliminated(vals: torch.Tensor, alive: torch.Tensor, z: float, min_classes: int) -> torch.Tensor:
    """(N, K) bool: alive classes whose bound exceeds the best alive class's by > z paired s.e.

    vals (N, K, M) draw values of the bound (all M present for alive classes; rows without an
    alive class, e.g. images no longer drawn, are never dropped from).
    """
    m = vals.shape[2]
    mean = vals.mean(2).masked_fill(~alive, float("inf"))
    best = mean.argmin(1)                                           # lowest bound = most likely
    diff = vals - vals[torch.arange(len(best)), best][:, None, :]   # paired by draw
    dmean = diff.mean(2)
    dse = diff.std(2) / math.sqrt(m)
    drop = alive & (dmean > z * dse + 1e-12)
    # keep the min_classes best alive classes whatever their margins
    rank = mean.argsort(1).argsort(1)
    drop &= rank >= min_classes
    return drop


def _paired_to_survivor(vals, mean, stderr, alive):
    """Re-express eliminated classes relative to the best survivor (which has every draw).

    An eliminated class saw only the first draws; its own mean carries the noise those draws
    share with every class, which the survivors averaged away with more draws. Its bound is
    estimated as mean(best survivor, all draws) + mean(difference on the shared draws), so the
    common noise cancels as it does between survivors; s.e. = sqrt(se_best^2 + se_diff^2).
    """
    mean, stderr = mean.clone(), stderr.clone()
    ref = mean.masked_fill(~alive, float("inf")).argmin(1)
    rows = torch.arange(len(ref))
    for k in range(vals.shape[1]):
        dead = ~alive[:, k]
        if not dead.any():
            continue
        i = rows[dead]
        diff = vals[i, k] - vals[i, ref[i]]          # NaN where class k had no draw
        m = (~torch.isnan(diff)).sum(1)
        dmean = torch.nansum(diff, 1) / m
        dvar = torch.nansum((diff - dmean[:, None]) ** 2, 1) / (m - 1).clamp_min(1)
        mean[i, k] = mean[i, ref[i]] + dmean
        stderr[i, k] = (stderr[i, ref[i]] ** 2 + dvar / m).sqrt()
    return mean, stderr
